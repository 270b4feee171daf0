"""Training of the UV-texture completion net (`morph3d.neural.completion`): self-supervised
samples collected by fitting photos and video frames (the pipeline's own fit and opening
hiding), synthetic visibility masks, held-out metrics and the training loop.
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
from morph3d.neural.completion import (
    FORMAT,
    NET_INPUT_REGIONS,
    SEEN,
    CompletionConfig,
    CompletionNet,
    _area,
    build_net,
    correction_weight,
    mirror_skin,
    net_input,
    uv_features,
)
from morph3d.neural.texture_completion import CompletedTexture, complete_uv_texture
from morph3d.neural.training import common
from morph3d.neural.training.common import (
    Checkpoint,
    TrainOptionsBase,
    cache_key,
    for_each_frame,
    load_cached,
    progress_bar,
    seed_torch,
    source_weights,
    split_media,
    train_loop,
)
from morph3d.neural.weights import manifest_path, save_npz, state_arrays, write_weights

# Held-out people of the development media (README there): mark.jpg and aligned_source3.png
# are the same person; khabenskii.jpg, aligned_source1.png and aligned_target2.png appear in
# no other file. ghost_* are another method's swaps of mark / khabenskii onto orig.webm.
DEFAULT_HOLDOUT = ("mark.*", "aligned_source3.*", "khabenskii.*", "aligned_source1.*",
                   "aligned_target2.*")
DEFAULT_EXCLUDE = ("ghost_*",)
EXTRACT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def save_weights(path: str | os.PathLike, net: Any, config: CompletionConfig,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """float32 arrays + an ``arch`` JSON string, and the manifest with the sha256."""
    arch = {"format": FORMAT, **config.to_dict()}
    return write_weights(path, state_arrays(net), arch, arch, manifest)


# --------------------------------------------------------------------------------------------
# Training data: fitted textures + synthetic visibility
# --------------------------------------------------------------------------------------------


@dataclass
class TextureSample:
    """One fitted face: T x T texture (uint8), its confidence (uint8, x255), and K synthetic
    visibility maps (uint8, x255) of the same head seen from other poses / occluded."""

    name: str
    texture: np.ndarray
    confidence: np.ndarray
    synthetic: np.ndarray  # K x T x T


@dataclass
class TextureSamples:
    train: list[TextureSample] = field(default_factory=list)
    heldout: list[TextureSample] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"train_textures": len(self.train), "heldout_textures": len(self.heldout),
                "train_sources": sorted({s.name.split("#")[0] for s in self.train}),
                "heldout_sources": sorted({s.name.split("#")[0] for s in self.heldout}),
                "masks_per_texture": int(self.train[0].synthetic.shape[0]) if self.train
                else 0}


def _turned_visibility(model, fit, yaw: float, pitch: float, size: int,
                       max_side: int = 320) -> np.ndarray:
    """T x T confidence of the fitted head turned by `yaw`, `pitch` (radians) about its
    centre, seen by the fit's camera (at most `max_side` px: visibility only)."""
    import torch

    from fitting.model_arrays import vertex_positions
    from fitting.params import CameraParams
    from fitting.pose import axis_angle, rotation_matrix
    from render.helpers import extract_texture

    verts = vertex_positions(model, fit.identity.coefficients, fit.faces.expression[0])
    R = rotation_matrix(fit.faces.rotation[0])
    t = np.asarray(fit.faces.translation[0], np.float64)
    centre = R @ verts.mean(0) + t
    turn = rotation_matrix(np.array([0.0, yaw, 0.0])) @ rotation_matrix(np.array([pitch, 0, 0]))
    R2 = turn @ R
    t2 = turn @ t - turn @ centre + centre
    cam = fit.camera
    scale = min(1.0, max_side / max(cam.width, cam.height))
    w, h = max(1, round(cam.width * scale)), max(1, round(cam.height * scale))
    small = CameraParams(cam.fx * scale, cam.fy * scale, (cam.cx + 0.5) * scale - 0.5,
                         (cam.cy + 0.5) * scale - 0.5, w, h)
    camera = small.to_camera(axis_angle(R2), t2)
    image = torch.zeros(1, h, w, 3)
    _, conf = extract_texture(image, torch.as_tensor(verts, dtype=torch.float32)[None],
                              torch.as_tensor(np.asarray(model.triangles, np.int64)),
                              torch.as_tensor(np.asarray(model.data.uv_coords, np.float32)),
                              torch.as_tensor(np.asarray(model.data.uv_triangles, np.int64)),
                              camera, size, dilate=0)
    return conf[0, ..., 0].numpy()


def _blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """T x T visibility with 1-3 random soft ellipses hidden in the skin square (hair over
    the forehead, glasses, a hand)."""
    mask = np.ones((size, size), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.25, 0.75) * size, rng.uniform(0.05, 0.75) * size
        ax, ay = rng.uniform(0.05, 0.2) * size, rng.uniform(0.03, 0.12) * size
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)),
                    0, 360, 0.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), size / 256.0)


def synthetic_visibility(model, fit, count: int, rng: np.random.Generator) -> np.ndarray:
    """count x T x T uint8 (x255) visibility maps: the head turned by a random yaw of
    20-60 degrees either way and pitch of up to 20 degrees, and in 1 of 3 maps also random
    UV blobs."""
    size = int(fit.identity.texture.shape[0])
    maps = []
    for _ in range(count):
        yaw = math.radians(rng.uniform(20, 60)) * (1 if rng.random() < 0.5 else -1)
        pitch = math.radians(rng.uniform(-20, 20))
        # Unprojected at half the texture's size (4x cheaper; visibility is smooth).
        vis = cv2.resize(_turned_visibility(model, fit, yaw, pitch, size // 2), (size, size),
                         interpolation=cv2.INTER_LINEAR)
        if rng.random() < 1 / 3:
            vis = np.minimum(vis, _blob_mask(size, rng))
        maps.append(np.clip(np.rint(vis * 255), 0, 255).astype(np.uint8))
    return np.stack(maps)


def collect_texture_samples(data_dir: str | os.PathLike, model, *,
                            holdout: Sequence[str] = DEFAULT_HOLDOUT,
                            exclude: Sequence[str] = DEFAULT_EXCLUDE, frame_step: int = 6,
                            masks: int = 4, seed: int = 0, bundled: bool = True,
                            openings: bool = True, use_cache: bool = True,
                            progress: bool = True) -> TextureSamples:
    """Fit every face of every photo and every `frame_step`-th video frame under `data_dir`
    (plus the two photos bundled with matplotlib / scikit-image when `bundled`) and make
    `masks` synthetic visibility maps per fit. Files matching `holdout` go to the held-out
    set (every 7th file when none matches). `openings`: hide the photo's eye and mouth
    openings in each confidence as the swap does (`morph3d.swap.fits.hide_openings`), so the
    net is trained on the holes it will fill and never on lids that took the eye's white.
    Cached in the user cache (``completion_data/``), never in the repository."""
    from fitting.photo import fit_photo
    from morph3d.io.paths import cache_dir

    root = Path(data_dir)
    files, rel, is_held = split_media(root, holdout, exclude)
    keyed = list(files)
    if bundled:
        from morph3d.io.paths import bundled_source, bundled_target_photo

        for extra in (bundled_source(), bundled_target_photo()):
            if extra.is_file():
                files.append(extra)
                rel.append(f"bundled/{extra.name}")
                is_held.append(False)
    if not files:
        raise InputError(f"no photos or videos found in {root}")
    params = {"v": EXTRACT_VERSION, "holdout": is_held, "frame_step": frame_step,
              "masks": masks, "seed": seed, "model": model.name, "rel": rel}
    if openings:  # (absent when off: keeps the key of caches made before the option)
        params["openings"] = True
    cache = cache_dir() / "completion_data" / f"{cache_key(keyed, root, params)}.npz"
    cached = load_cached(cache, _load_samples, use_cache)
    if cached is not None:
        return cached

    samples = TextureSamples()
    rng = np.random.default_rng(seed)

    def visit(frame: Any, name: str, held: bool, detector: Any) -> None:
        faces = detector.detect(frame.rgb)
        for k in range(len(faces.boxes)):
            box = faces.boxes[k]
            if max(box[2] - box[0], box[3] - box[1]) < 60:
                continue
            lm = {s: v[k].astype(np.float64) for s, v in faces.landmarks.items()}
            fit = fit_photo(frame.rgb, model, landmarks=lm)[0]
            if fit.identity.texture is None:
                continue
            if openings:
                from morph3d.swap.fits import hide_openings

                hide_openings([fit], model, [lm])
            sample = TextureSample(
                f"{name}#{frame.index}.{k}",
                np.clip(np.rint(fit.identity.texture * 255), 0, 255).astype(np.uint8),
                np.clip(np.rint(fit.identity.confidence * 255), 0, 255).astype(np.uint8),
                synthetic_visibility(model, fit, masks, rng))
            (samples.heldout if held else samples.train).append(sample)

    for_each_frame(files, rel, is_held, frame_step=frame_step, desc="fitting textures",
                   progress=progress, visit=visit, skip=(InputError, ValueError))
    if use_cache:
        _save_samples(cache, samples)
    return samples


def _save_samples(path: Path, samples: TextureSamples) -> None:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "heldout"):
        for i, s in enumerate(getattr(samples, split)):
            arrays[f"{split}/{i:05d}/texture"] = s.texture
            arrays[f"{split}/{i:05d}/confidence"] = s.confidence
            arrays[f"{split}/{i:05d}/synthetic"] = s.synthetic
        arrays[f"{split}_names"] = np.array([s.name for s in getattr(samples, split)], str)
    save_npz(path, arrays)


def _load_samples(path: Path) -> TextureSamples:
    samples = TextureSamples()
    with np.load(path, allow_pickle=False) as z:
        for split in ("train", "heldout"):
            names = [str(n) for n in z[f"{split}_names"]]
            setattr(samples, split, [TextureSample(
                n, z[f"{split}/{i:05d}/texture"], z[f"{split}/{i:05d}/confidence"],
                z[f"{split}/{i:05d}/synthetic"]) for i, n in enumerate(names)])
    return samples


@dataclass
class Case:
    """One training / evaluation case: the texture with synthetic holes, its classical
    completion and the ground truth on the hidden texels."""

    name: str
    truth: np.ndarray  # T x T x 3 float32
    seen: np.ndarray  # T x T: the real confidence
    visible: np.ndarray  # T x T: the input confidence (real x synthetic)
    classic: np.ndarray  # T x T x 3 float32: classical completion of the input

    @property
    def hidden(self) -> np.ndarray:
        """T x T bool: texels the real photo saw but the input hides (the target)."""
        return (self.seen >= SEEN) & (self.visible < SEEN)


def make_case(sample: TextureSample, k: int) -> Case:
    truth = sample.texture.astype(np.float32) / 255.0
    seen = sample.confidence.astype(np.float32) / 255.0
    visible = np.minimum(seen, sample.synthetic[k].astype(np.float32) / 255.0)
    classic = complete_uv_texture(truth, visible).texture
    return Case(f"{sample.name}/{k}", truth, seen, visible, classic)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def hidden_metrics(result: np.ndarray, case: Case) -> tuple[float, float, int]:
    """(mean L1 over the hidden texels and channels, mean SSIM over the hidden texels, count).
    SSIM: Gaussian window sigma 1.5 on the whole texture, its map averaged on the hidden."""
    from skimage.metrics import structural_similarity

    hidden = case.hidden
    n = int(hidden.sum())
    if n == 0:
        return math.nan, math.nan, 0
    l1 = float(np.abs(result - case.truth)[hidden].mean())
    _, smap = structural_similarity(result, case.truth, channel_axis=2, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return l1, float(smap.mean(2)[hidden].mean()), n


def evaluate(net: CompletionNet | None, samples: Sequence[TextureSample], model,
             min_hidden: int = 200) -> dict[str, Any]:
    """Mean hidden-texel L1 / SSIM of the classical and the neural completion over every
    synthetic mask of `samples` (cases with fewer than `min_hidden` hidden texels skipped),
    at the texture's full resolution."""
    rows, per_source = [], {}
    for sample in samples:
        for k in range(sample.synthetic.shape[0]):
            case = make_case(sample, k)
            if int(case.hidden.sum()) < min_hidden:
                continue
            row = list(hidden_metrics(case.classic, case)[:2])
            if net is not None:
                classic = CompletedTexture(case.classic, case.visible, np.zeros(1), 0, 0, 0)
                ours = net.complete(case.truth, case.visible, model, classic).texture
                row += list(hidden_metrics(ours, case)[:2])
            rows.append(row)
            per_source.setdefault(sample.name.split("#")[0], []).append(row)
    if not rows:
        raise InputError("no held-out textures with hidden texels to evaluate on")
    m = np.mean(np.array(rows, np.float64), axis=0)
    result: dict[str, Any] = {"cases": len(rows), "l1_classic": float(m[0]),
                              "ssim_classic": float(m[1])}
    if net is not None:
        result.update(l1_ours=float(m[2]), ssim_ours=float(m[3]))
        result["per_source"] = {
            name: {"cases": len(r), **dict(zip(("l1_classic", "ssim_classic", "l1_ours",
                                                "ssim_ours"),
                                               np.mean(np.array(r), 0).round(5).tolist(),
                                               strict=True))}
            for name, r in sorted(per_source.items())}
    return result


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class CompletionTrainOptions(TrainOptionsBase):
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    batch: int = 8
    crop: int = 96
    mirror: bool = True
    masks: int = 4
    frame_step: int = 6
    openings: bool = True  # hide the photos' eye / mouth openings as the swap does
    # Weight of the loss term that keeps the fill at the classical one on hidden texels with
    # no ground truth (never seen by the photo either: far borders, the hidden openings).
    unknown_weight: float = 0.5

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue a checkpoint."""
        return {**super().identity(), "widths": list(self.widths), "batch": self.batch,
                "crop": self.crop, "mirror": self.mirror, "masks": self.masks,
                "frame_step": self.frame_step, "openings": self.openings,
                "unknown_weight": self.unknown_weight}


def default_checkpoint() -> Path:
    return common.default_checkpoint("completion")


def default_trained_weights() -> Path:
    return common.default_trained_weights("completion")


@dataclass
class _NetCase:
    """A case at the net's resolution (what a training step needs)."""

    x: np.ndarray  # C x S x S input
    classic: np.ndarray  # 3 x S x S
    gate: np.ndarray  # 1 x S x S: correction_weight of the input confidence
    truth: np.ndarray  # 3 x S x S
    hidden: np.ndarray  # 1 x S x S float 0/1
    unknown: np.ndarray  # 1 x S x S float 0/1: not visible, not seen either (no truth)


def _net_case(case: Case, features: np.ndarray, mirror: bool) -> _NetCase:
    from morph3d.neural.texture_completion import skin_rows

    size = features.shape[1]
    classic = _area(case.classic, size)
    visible = _area(case.visible, size)
    seen = _area(case.seen, size)
    hidden = (seen >= SEEN) & (visible < SEEN)
    covered = features[len(NET_INPUT_REGIONS)] > 0.5
    unknown = (seen < SEEN) & (visible < SEEN) & covered & skin_rows(size)[:, None]
    return _NetCase(net_input(classic, visible, features, mirror), classic.transpose(2, 0, 1),
                    correction_weight(visible)[None], _area(case.truth, size).transpose(2, 0, 1),
                    hidden[None].astype(np.float32), unknown[None].astype(np.float32))


def _batch(cases: Sequence[_NetCase], indices: np.ndarray, rng: np.random.Generator,
           skin: np.ndarray, crop: int, mirror: bool) -> tuple[Any, ...]:
    """Stacked tensors with augmentation: a random colour gain (0.8-1.2 per channel, the
    classical fill is linear in the colours), a left/right flip of the skin rows, and a
    random `crop` x `crop` window (the net is convolutional and sees its position in the
    input channels; crops make a step ~1.8x cheaper than whole 128-texel grids)."""
    import torch

    xs, cl, gt, tr, hd, uk = [], [], [], [], [], []
    for i in indices:
        c = cases[int(i)]
        gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)[:, None, None]
        x, classic, truth = c.x.copy(), c.classic * gain, c.truth * gain
        x[:3] = classic - 0.5
        if mirror:
            x[4:7] = mirror_skin(classic) - 0.5
        gate, hidden, unknown = c.gate, c.hidden, c.unknown
        if rng.random() < 0.5:
            arrays = [x, classic, truth, gate.copy(), hidden.copy(), unknown.copy()]
            for a in arrays:
                a[:, skin] = a[:, skin, ::-1]
            x, classic, truth, gate, hidden, unknown = arrays
            x[len(x) - 3:] = c.x[len(x) - 3:]  # position channels stay put
        size = x.shape[1]
        if crop < size:
            y0, x0 = (int(v) for v in rng.integers(0, size - crop + 1, 2))
            window = (slice(None), slice(y0, y0 + crop), slice(x0, x0 + crop))
            x, classic, gate, truth, hidden, unknown = (
                a[window] for a in (x, classic, gate, truth, hidden, unknown))
        xs.append(x)
        cl.append(classic)
        gt.append(gate)
        tr.append(truth)
        hd.append(hidden)
        uk.append(unknown)
    return tuple(torch.from_numpy(np.ascontiguousarray(np.stack(a), np.float32))
                 for a in (xs, cl, gt, tr, hd, uk))


def train_completion(opts: CompletionTrainOptions, log: Callable[[str], None] = print,
                     samples: TextureSamples | None = None, model=None) -> dict[str, Any]:
    """Train the completion net (Adam, cosine schedule over `steps`, L1 on the hidden
    texels + `unknown_weight` x the correction's size on hidden texels with no truth),
    checkpointing every `checkpoint_every` steps; stops at `steps` or after
    `minutes` of training across resumes. Reproducible with a fixed seed, `steps` alone and
    the same thread count. Writes weights + manifest to `opts.out`; returns the manifest."""
    import torch

    from morph3d.neural.texture_completion import skin_rows

    if model is None:
        from morph3d.model.registry import load_model

        model = load_model("default")
    seed_torch(opts.threads, opts.seed)
    if samples is None:
        log(f"fitting textures in {opts.data_dir}")
        samples = collect_texture_samples(opts.data_dir, model, holdout=opts.holdout,
                                          exclude=opts.exclude, frame_step=opts.frame_step,
                                          masks=opts.masks, seed=opts.seed,
                                          openings=opts.openings, progress=opts.progress)
    data = samples.describe()
    if not samples.train:
        raise InputError(f"no face textures to train on in {opts.data_dir}")
    log(f"{data['train_textures']} training textures from {len(data['train_sources'])} files, "
        f"{data['heldout_textures']} held-out from {len(data['heldout_sources'])} files")
    config = CompletionConfig(tuple(opts.widths), opts.mirror)
    features = uv_features(model, config.size)
    cases: list[_NetCase] = []
    names: list[str] = []
    bar = progress_bar(total=len(samples.train), desc="classical fills", enabled=opts.progress)
    for sample in samples.train:
        for k in range(sample.synthetic.shape[0]):
            nc = _net_case(make_case(sample, k), features, config.mirror)
            if nc.hidden.sum() >= 10:
                cases.append(nc)
                names.append(sample.name.split("#")[0])
        bar.update(1)
    bar.close()
    p = source_weights(names)  # videos vs photos
    skin = skin_rows(config.size)

    net = build_net(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr)
    ckpt = Checkpoint(opts.checkpoint, opts.identity(), {"net": net}, optimizer,
                      np.random.default_rng(opts.seed))
    if opts.resume:
        ckpt.resume(log)

    def train_step() -> dict[str, float]:
        rng = ckpt.rng
        x, classic, gate, truth, hidden, unknown = _batch(
            cases, rng.choice(len(cases), opts.batch, p=p), rng, skin, opts.crop, config.mirror)
        correction = net(x) * gate
        err = torch.sqrt((classic + correction - truth) ** 2 + 1e-6) * hidden
        l1 = err.sum() / (3 * hidden.sum()).clamp(min=1.0)
        loss = l1
        if opts.unknown_weight > 0:
            # No truth there: stay at the classical fill (the swap's holes in a frontal photo
            # are mostly of this kind, and a guess there moved the identity away).
            keep = (torch.sqrt(correction ** 2 + 1e-6) - 1e-3) * unknown
            loss = loss + opts.unknown_weight * keep.sum() / (3 * unknown.sum()).clamp(min=1.0)
        loss.backward()
        return {"L1": float(l1.detach()), "loss": float(loss.detach())}

    net.train()
    stopped = train_loop(ckpt, train_step, steps=opts.steps, minutes=opts.minutes, lr=opts.lr,
                         checkpoint_every=opts.checkpoint_every, progress=opts.progress,
                         log=log)
    step, elapsed = ckpt.step, ckpt.elapsed
    completion = CompletionNet(net, config)
    metrics = evaluate(completion, samples.heldout, model) if samples.heldout else {}
    manifest = {
        "trained": {"steps": step, "target_steps": opts.steps, "stopped_by": stopped,
                    "train_minutes": round(elapsed / 60, 2), "seed": opts.seed,
                    "batch": opts.batch, "crop_texels": opts.crop, "learning_rate": opts.lr,
                    "loss": "Charbonnier (L1) on the hidden texels"
                            + (f" + {opts.unknown_weight} x Charbonnier of the correction on "
                               "hidden texels the photo did not see either"
                               if opts.unknown_weight > 0 else ""),
                    "threads": opts.threads,
                    "torch": torch.__version__, "training_cases": len(cases),
                    "parameters": int(sum(q.numel() for q in net.parameters()))},
        "data": {"folder": opts.data_dir.name, "holdout_patterns": list(opts.holdout),
                 "hide_openings": opts.openings,
                 "exclude_patterns": list(opts.exclude), "frame_step": opts.frame_step,
                 "masks": "per fitted texture: the head turned by yaw 20-60 deg either way "
                          "and pitch up to 20 deg (1 in 3 also random UV blobs), "
                          "intersected with the real visibility", **data},
        "metrics_heldout": metrics,
    }
    manifest = save_weights(opts.out, net, config, manifest)
    log(f"wrote {opts.out} and {manifest_path(opts.out).name}")
    if metrics:
        log(f"  held-out hidden texels ({metrics['cases']} cases): L1 classic "
            f"{metrics['l1_classic']:.4f} ours {metrics['l1_ours']:.4f}; SSIM classic "
            f"{metrics['ssim_classic']:.4f} ours {metrics['ssim_ours']:.4f}")
    return manifest
