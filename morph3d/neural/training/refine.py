"""Training of the face super-resolver (`morph3d.neural.refine`): face crops collected from a
folder of photos and videos, realistic degradations made on the fly, held-out PSNR / SSIM
against bicubic, and the training loop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.errors import InputError
from morph3d.neural.refine import (
    FORMAT,
    SCALES,
    SRConfig,
    SuperResolver,
    _to_float,
    bicubic_upscale,
    build_net,
)
from morph3d.neural.training import common
from morph3d.neural.training.common import (
    Checkpoint,
    TrainOptionsBase,
    cache_key,
    for_each_frame,
    load_cached,
    seed_torch,
    source_weights,
    split_media,
    train_loop,
)
from morph3d.neural.weights import manifest_path, save_npz, state_arrays, write_weights

# The development split of /work/shared/media (README there), by person: held out are
# nggyup.mp4's singer, khabenskii.jpg, and the two aligned crops of people who appear nowhere
# else; everyone else (orig.webm's person, mark, murakami, three_people, takeo, lenna, ...)
# trains. The ghost_* clips are another method's swaps onto orig.webm (synthetic faces on
# orig's person), so they are excluded. orig.webm is on the training side because its fine
# structure is codec block noise that no upscaler can predict (see BENCHMARKS.md).
DEFAULT_HOLDOUT = ("nggyup.*", "khabenskii.*", "aligned_source1.*", "aligned_target2.*")
DEFAULT_EXCLUDE = ("ghost_*",)


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB of two [0, 1] images, ignoring `shave` pixels at each border."""
    a, b = _to_float(a), _to_float(b)
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5) over the RGB channels."""
    from skimage.metrics import structural_similarity

    a, b = _to_float(a), _to_float(b)
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


# --------------------------------------------------------------------------------------------
# Weights: save, load, hash check
# --------------------------------------------------------------------------------------------


def save_weights(path: str | os.PathLike, nets: dict[int, Any], configs: dict[int, SRConfig],
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Write float32 weights (``x{scale}/{param}`` arrays + an ``arch`` JSON string) and the
    manifest (with the file's sha256) atomically; returns the manifest written."""
    arrays: dict[str, np.ndarray] = {}
    for scale, net in nets.items():
        arrays.update(state_arrays(net, f"x{scale}/"))
    arch = {"format": FORMAT, "nets": [configs[s].to_dict() for s in sorted(nets)]}
    return write_weights(path, arrays, arch, arch["nets"], manifest)


# --------------------------------------------------------------------------------------------
# Degradations: high-resolution crop -> realistic low-resolution input
# --------------------------------------------------------------------------------------------


def _quantize(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.rint(image * 255.0), 0, 255) / 255.0).astype(np.float32)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def _downscale(hr: np.ndarray, scale: int, kernel: str) -> np.ndarray:
    h, w = hr.shape[:2]
    size = (w // scale, h // scale)
    if kernel == "area":
        return cv2.resize(hr, size, interpolation=cv2.INTER_AREA)
    # Gaussian anti-aliasing then bilinear/bicubic sampling: a softer camera-like kernel.
    sigma = 0.45 * scale
    blurred = cv2.GaussianBlur(hr, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    interp = cv2.INTER_LINEAR if kernel == "gauss-linear" else cv2.INTER_CUBIC
    return np.clip(cv2.resize(blurred, size, interpolation=interp), 0.0, 1.0)


def degrade(hr: np.ndarray, scale: int, profile: str = "clean",
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Low-resolution input for a float32 [0, 1] high-resolution crop (sides divisible by
    `scale`), quantised to 8 bits like a real frame.

    profiles: ``clean`` (area downscale: a clean render or frame at lower resolution);
    ``degraded`` (area downscale, Gaussian noise sigma 2/255, JPEG quality 75; the noise
    is seeded by `rng` or seed 0); ``mixed`` (training: random optical blur, resampling
    kernel, noise and JPEG, each with some probability, drawn from `rng`).
    """
    if profile == "clean":
        return _quantize(_downscale(hr, scale, "area"))
    if rng is None:
        rng = np.random.default_rng(0)
    if profile == "degraded":
        lr = _downscale(hr, scale, "area")
        lr = lr + rng.normal(0.0, 2.0 / 255.0, lr.shape).astype(np.float32)
        return _jpeg(np.clip(lr, 0, 1), 75)
    if profile != "mixed":
        raise ValueError(f"unknown degradation profile {profile!r}")
    if rng.random() < 0.25:  # defocus blur on the scene
        sigma = rng.uniform(0.3, 1.0) * scale / 2
        hr = cv2.GaussianBlur(hr, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    kernel = ("area", "gauss-linear", "gauss-cubic")[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    lr = _downscale(hr, scale, kernel)
    if rng.random() < 0.25:
        sigma = rng.uniform(1.0, 6.0) / 255.0
        if rng.random() < 0.5:
            noise = rng.normal(0.0, sigma, lr.shape[:2] + (1,))
        else:
            noise = rng.normal(0.0, sigma, lr.shape)
        lr = np.clip(lr + noise.astype(np.float32), 0.0, 1.0)
    if rng.random() < 0.35:
        return _jpeg(lr, int(rng.integers(45, 96)))
    return _quantize(lr)


# --------------------------------------------------------------------------------------------
# Data: face crops from a folder of photos and videos
# --------------------------------------------------------------------------------------------


CROP_FACTOR = 1.7  # crop side over the detector box's longer side
TRAIN_MAX_SIDE = 256  # training crops are area-downscaled to at most this (sharper targets)
HELDOUT_MAX_SIDE = 256  # held-out crops: the output size the pipeline uses
EXTRACT_VERSION = 1


@dataclass
class FaceCrops:
    """uint8 RGB square crops with the source file (relative name) of each."""

    train: list[np.ndarray] = field(default_factory=list)
    train_sources: list[str] = field(default_factory=list)
    heldout: list[np.ndarray] = field(default_factory=list)
    heldout_sources: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        def count(sources: list[str]) -> dict[str, int]:
            out: dict[str, int] = {}
            for s in sources:
                out[s] = out.get(s, 0) + 1
            return out

        return {"train_crops": len(self.train), "heldout_crops": len(self.heldout),
                "train_sources": count(self.train_sources),
                "heldout_sources": count(self.heldout_sources)}


def square_crop(image: np.ndarray, box: np.ndarray, factor: float = CROP_FACTOR,
                shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The square of side `factor` x the box's longer side around the box centre (moved by
    `shift` x side), slid inside the image and shrunk to fit when needed."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = min(factor * max(x1 - x0, y1 - y0), h, w)
    side_px = max(int(round(side)), 1)
    cx = (x0 + x1) / 2 + shift[0] * side
    cy = (y0 + y1) / 2 + shift[1] * side
    left = int(round(cx - side_px / 2 + 0.5))  # box edges -> pixel index of the first column
    top = int(round(cy - side_px / 2 + 0.5))
    left = min(max(left, 0), w - side_px)
    top = min(max(top, 0), h - side_px)
    return np.ascontiguousarray(image[top:top + side_px, left:left + side_px])


def _fit_side(crop: np.ndarray, max_side: int) -> np.ndarray:
    side = crop.shape[0]
    if side > max_side:
        crop = cv2.resize(crop, (max_side, max_side), interpolation=cv2.INTER_AREA)
    return crop


def face_crops_in_image(rgb: np.ndarray, detector: Any, *, min_face_px: int = 40,
                        jitters: int = 0, rng: np.random.Generator | None = None,
                        max_side: int = HELDOUT_MAX_SIDE) -> list[np.ndarray]:
    """Square face crops of one uint8 image: one centred crop per face when `jitters` is 0,
    else `jitters` crops with random size (x0.85..1.2) and centre (+-8 %) from `rng`."""
    faces = detector.detect(rgb)
    crops = []
    for box in faces.boxes:
        if max(box[2] - box[0], box[3] - box[1]) < min_face_px:
            continue
        if jitters == 0 or rng is None:
            crops.append(_fit_side(square_crop(rgb, box), max_side))
            continue
        for _ in range(jitters):
            factor = CROP_FACTOR * rng.uniform(0.85, 1.2)
            shift = (rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08))
            crops.append(_fit_side(square_crop(rgb, box, factor, shift), max_side))
    return crops


def collect_face_crops(data_dir: str | os.PathLike, *, holdout: Sequence[str] = DEFAULT_HOLDOUT,
                       exclude: Sequence[str] = DEFAULT_EXCLUDE, frame_step: int = 3,
                       jitters: int = 2, seed: int = 0, use_cache: bool = True,
                       progress: bool = True) -> FaceCrops:
    """Detect faces in every photo and every `frame_step`-th video frame under `data_dir`
    and cut square crops: jittered ones (training) or centred ones (held-out files, those
    whose relative path or name matches a `holdout` pattern). Files matching `exclude` are
    skipped. When no file matches `holdout`, every 7th file (sorted) is held out.

    The crops are cached in the user cache (``sr_crops/``), keyed by the files' names,
    sizes and times and these parameters; media is never copied anywhere else.
    """
    from morph3d.io.paths import cache_dir

    root = Path(data_dir)
    files, rel, is_held = split_media(root, holdout, exclude)
    if not files:
        raise InputError(f"no photos or videos found in {root}")
    params = {"v": EXTRACT_VERSION, "holdout": is_held, "frame_step": frame_step,
              "jitters": jitters, "seed": seed, "factor": CROP_FACTOR,
              "train_max": TRAIN_MAX_SIDE, "held_max": HELDOUT_MAX_SIDE}
    cache = cache_dir() / "sr_crops" / f"{cache_key(files, root, params)}.npz"
    cached = load_cached(cache, _load_crops, use_cache)
    if cached is not None:
        return cached

    crops = FaceCrops()
    rng = np.random.default_rng(seed)

    def visit(frame: Any, name: str, held: bool, detector: Any) -> None:
        if held:
            found = face_crops_in_image(frame.rgb, detector)
            crops.heldout += found
            crops.heldout_sources += [name] * len(found)
        else:
            found = face_crops_in_image(frame.rgb, detector, jitters=jitters, rng=rng,
                                        max_side=TRAIN_MAX_SIDE)
            crops.train += found
            crops.train_sources += [name] * len(found)

    for_each_frame(files, rel, is_held, frame_step=frame_step, desc="finding faces",
                   progress=progress, visit=visit)
    if use_cache:
        _save_crops(cache, crops)
    return crops


def _save_crops(path: Path, crops: FaceCrops) -> None:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "heldout"):
        for i, crop in enumerate(getattr(crops, split)):
            arrays[f"{split}/{i:05d}"] = crop
        arrays[f"{split}_sources"] = np.array(getattr(crops, f"{split}_sources"), dtype=str)
    save_npz(path, arrays)


def _load_crops(path: Path) -> FaceCrops:
    crops = FaceCrops()
    with np.load(path, allow_pickle=False) as z:
        for split in ("train", "heldout"):
            keys = sorted(k for k in z.files if k.startswith(f"{split}/"))
            setattr(crops, split, [z[k] for k in keys])
            setattr(crops, f"{split}_sources", [str(s) for s in z[f"{split}_sources"]])
    return crops


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(resolver: SuperResolver | None, crops: Sequence[np.ndarray], scale: int,
             profile: str = "clean") -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of bicubic and of the net on crops downscaled by `scale`
    (`degrade` profile), shaving `scale` border pixels; the ``degraded`` noise is seeded
    per crop index so every run sees the same inputs."""
    rows = []
    for i, crop in enumerate(crops):
        side = crop.shape[0] - crop.shape[0] % scale
        hr = _to_float(crop[:side, :side])
        lr = degrade(hr, scale, profile, np.random.default_rng(1000 + i))
        bic = bicubic_upscale(lr, scale)
        row = [psnr(bic, hr, scale), ssim(bic, hr, scale)]
        if resolver is not None:
            out = resolver.upscale(lr, scale)
            row += [psnr(out, hr, scale), ssim(out, hr, scale)]
        rows.append(row)
    if not rows:
        raise InputError("no held-out face crops to evaluate on")
    m = np.mean(np.array(rows, np.float64), axis=0)
    result = {"crops": len(rows), "psnr_bicubic": float(m[0]), "ssim_bicubic": float(m[1])}
    if resolver is not None:
        result.update(psnr_ours=float(m[2]), ssim_ours=float(m[3]),
                      psnr_gain_db=float(m[2] - m[0]), ssim_gain=float(m[3] - m[1]))
    return result


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainOptions(TrainOptionsBase):
    steps: int = 6000
    checkpoint_every: int = 200
    threads: int = 2
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    scales: tuple[int, ...] = SCALES
    channels: int = 32
    layers: int = 5
    batch: int = 16
    lr_patch: dict[int, int] = field(default_factory=lambda: {2: 32, 4: 24})

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue a checkpoint."""
        return {**super().identity(), "scales": list(self.scales), "channels": self.channels,
                "layers": self.layers, "batch": self.batch, "lr_patch": self.lr_patch}


def default_checkpoint() -> Path:
    return common.default_checkpoint("sr")


def default_trained_weights() -> Path:
    return common.default_trained_weights("sr")


class _PatchSampler:
    """Random (low-res, high-res) training pairs from the crops; all randomness from one
    numpy Generator whose state is checkpointed."""

    def __init__(self, crops: Sequence[np.ndarray], sources: Sequence[str],
                 max_hr_patch: int) -> None:
        usable = [i for i, c in enumerate(crops) if c.shape[0] >= max_hr_patch]
        if not usable:
            raise InputError(f"no training face crop is at least {max_hr_patch} px wide")
        self.crops = [crops[i] for i in usable]
        self.p = source_weights([sources[i] for i in usable])

    def pair(self, scale: int, size: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (low-res, high-res) pair with a `size` x `size` high-res patch."""
        crop = self.crops[int(rng.choice(len(self.crops), p=self.p))]
        side = crop.shape[0]
        # Random zoom-out: a region up to 2x the patch, area-downscaled to the patch, so
        # soft (upscaled) sources still give targets with detail at the pixel scale.
        region = int(round(size * rng.uniform(1.0, min(2.0, side / size))))
        y, x = (int(v) for v in rng.integers(0, side - region + 1, 2))
        patch = crop[y:y + region, x:x + region]
        if region != size:
            patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        hr = np.ascontiguousarray(patch, dtype=np.float32) / 255.0
        return degrade(hr, scale, "mixed", rng), hr

    def batch(self, scale: int, size: int, n: int,
              rng: np.random.Generator) -> tuple[Any, Any]:
        import torch

        pairs = [self.pair(scale, size, rng) for _ in range(n)]
        lr = torch.from_numpy(np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2).copy())
        hr = torch.from_numpy(np.stack([p[1] for p in pairs]).transpose(0, 3, 1, 2).copy())
        return lr, hr


def train_super_resolver(opts: TrainOptions, log: Callable[[str], None] = print,
                         crops: FaceCrops | None = None) -> dict[str, Any]:
    """Train the per-scale nets, checkpointing every `checkpoint_every` steps, until
    `steps` (cosine learning-rate schedule over them) or `minutes` of training in all
    (a safety cap across resumes: it stops early and still writes weights). With a fixed
    seed and `steps` alone the result is reproducible. Writes the weights and manifest to
    `opts.out` and returns the manifest. `crops` replaces the folder's face crops (tests)."""
    import torch

    seed_torch(opts.threads, opts.seed)
    for s in opts.scales:
        if s not in SCALES:
            raise InputError(f"scales must be among {SCALES}, got {s}")

    if crops is None:
        log(f"collecting face crops from {opts.data_dir}")
        crops = collect_face_crops(opts.data_dir, holdout=opts.holdout, exclude=opts.exclude,
                                   seed=opts.seed, progress=opts.progress)
    data = crops.describe()
    log(f"{data['train_crops']} training crops from {len(data['train_sources'])} files, "
        f"{data['heldout_crops']} held-out crops from {len(data['heldout_sources'])} files")
    hr_patch = {s: opts.lr_patch[s] * s for s in opts.scales}
    sampler = _PatchSampler(crops.train, crops.train_sources, max(hr_patch.values()))

    configs = {s: SRConfig(s, opts.channels, opts.layers) for s in opts.scales}
    nets = {s: build_net(c) for s, c in configs.items()}
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    ckpt = Checkpoint(opts.checkpoint, opts.identity(), {"nets": nets}, optimizer,
                      np.random.default_rng(opts.seed))
    if opts.resume:
        ckpt.resume(log)

    def train_step() -> dict[str, float]:
        losses = {}
        for s, net in nets.items():
            lr_batch, hr_batch = sampler.batch(s, hr_patch[s], opts.batch, ckpt.rng)
            # Charbonnier (smooth L1) loss
            loss = torch.sqrt((net(lr_batch) - hr_batch) ** 2 + 1e-6).mean()
            loss.backward()
            losses[f"x{s}"] = float(loss.detach())
        return losses

    for net in nets.values():
        net.train()
    stopped = train_loop(ckpt, train_step, steps=opts.steps, minutes=opts.minutes, lr=opts.lr,
                         checkpoint_every=opts.checkpoint_every, progress=opts.progress,
                         log=log, describe=lambda smooth: " ".join(
                             f"{k} loss {v:.4f}" for k, v in smooth.items()))
    step, elapsed = ckpt.step, ckpt.elapsed

    for net in nets.values():
        net.eval()
    resolver = SuperResolver(nets)
    metrics: dict[str, Any] = {}
    for s in opts.scales:
        for profile in ("clean", "degraded"):
            metrics[f"x{s}_{profile}"] = evaluate(resolver, crops.heldout, s, profile)
    manifest = {
        "trained": {"steps": step, "target_steps": opts.steps, "stopped_by": stopped,
                    "train_minutes": round(elapsed / 60, 2), "seed": opts.seed,
                    "batch_per_scale": opts.batch, "hr_patch": hr_patch,
                    "learning_rate": opts.lr, "loss": "Charbonnier (L1)",
                    "threads": opts.threads, "torch": torch.__version__},
        "data": {"folder": opts.data_dir.name, "holdout_patterns": list(opts.holdout),
                 "exclude_patterns": list(opts.exclude),
                 "degradations": "random blur (p 0.25), area / Gaussian+bilinear / "
                                 "Gaussian+bicubic downscale, noise (p 0.25, sigma 1-6/255), "
                                 "JPEG (p 0.35, quality 45-95), 8-bit quantisation",
                 **data},
        "metrics_heldout": metrics,
    }
    manifest = save_weights(opts.out, nets, configs, manifest)
    log(f"wrote {opts.out} and {manifest_path(opts.out).name}")
    for key, m in metrics.items():
        log(f"  {key}: bicubic {m['psnr_bicubic']:.2f} dB / {m['ssim_bicubic']:.4f}, "
            f"ours {m['psnr_ours']:.2f} dB / {m['ssim_ours']:.4f} "
            f"(gain {m['psnr_gain_db']:+.2f} dB, {m['ssim_gain']:+.4f})")
    return manifest
