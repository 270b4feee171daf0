"""Learned UV-texture completion (issue 7, second part): fill what the photo did not see.

The classical completion (`morph3d.texture_completion.complete_uv_texture`: mirror, pull-push,
seam feather) gives a smooth but flat fill: the far cheek copies the near one with the
photo's shading asymmetry, and pull-push averages the colours around a hole. The net learns
the correction: a compact U-Net in UV space at 128 x 128 texels takes the classical result,
the visibility/confidence map, the per-texel region masks of the model (skin, lips, eyes,
mouth interior, teeth, tongue, eyeballs) and the texel's position, and predicts a residual
colour that is added to the classical fill on the texels the photo did not see (upsampled to
the texture's size; texels seen with confidence >= 0.5 are left exactly as they are). Its
last layer starts at zero, so an untrained net is exactly the classical completion.

Training is self-supervised on textures the tool extracts itself (`collect_texture_samples`):
every photo and every few video frames of a folder are fitted (`fitting.fit.fit_photo`), and
synthetic visibility masks are made by unprojecting the fitted head turned by another yaw /
pitch (what a camera at that pose would see) plus random UV blobs (hair, glasses),
intersected with the real visibility: the texels the real photo saw but the synthetic view
did not are hidden from the input and are the target. The photos' eye and mouth openings
are hidden first, as the swap hides them (`morph3d.swap.hide_openings`), and a second loss
term keeps the fill at the classical one on hidden texels no photo saw (the far borders,
the openings): with no truth there, the first shipped net's guesses (darker lids and
borders) moved the swapped faces away from the source's identity.

Shipped weights: ``morph3d/weights/completion.npz`` + ``completion.json`` (sha256, training
data, steps, held-out metrics). `load_completion_net` returns None with a warning when the
file is missing (callers use the classical completion) and raises `ModelError` when corrupt.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d import training
from morph3d.errors import InputError
from morph3d.refine import WEIGHTS_DIR
from morph3d.texture_completion import CompletedTexture, complete_uv_texture, skin_rows
from morph3d.training import (
    Checkpoint,
    TrainOptionsBase,
    cache_key,
    for_each_frame,
    load_cached,
    load_verified,
    manifest_path,
    progress_bar,
    save_npz,
    seed_torch,
    source_weights,
    split_media,
    state_arrays,
    train_loop,
    write_weights,
)

NET_SIZE = 128  # texels per side of the net's UV grid
DEFAULT_WEIGHTS = WEIGHTS_DIR / "completion.npz"
FORMAT = "morph3d-completion-2"
# Per-texel region channels of the net's input (model regions, rasterised in UV space).
REGION_CHANNELS = ("face_skin", "lips", "eyes", "mouth_interior", "teeth", "tongue",
                   "eyeballs")
# Held-out people of the development media (README there): mark.jpg and aligned_source3.png
# are the same person; khabenskii.jpg, aligned_source1.png and aligned_target2.png appear in
# no other file. ghost_* are another method's swaps of mark / khabenskii onto orig.webm.
DEFAULT_HOLDOUT = ("mark.*", "aligned_source3.*", "khabenskii.*", "aligned_source1.*",
                   "aligned_target2.*")
DEFAULT_EXCLUDE = ("ghost_*",)
SEEN = 0.5  # confidence at or above which a texel counts as seen (as in the classical fill)
EXTRACT_VERSION = 1
# Bump when `CompletionNet.complete` changes its output for the same weights: the swap's
# source-fit cache key holds it, so cached textures completed by older code are not reused.
INFERENCE_VERSION = 3


# --------------------------------------------------------------------------------------------
# Per-texel features of the model's UV layout
# --------------------------------------------------------------------------------------------


def uv_features(model, size: int = NET_SIZE) -> np.ndarray:
    """(len(REGION_CHANNELS) + 3, size, size) float32: region memberships rasterised in UV
    space, a 'covered by any triangle' channel, and |u - 0.5| and v of the texel centre
    (the atlas is left/right symmetric, so the net sees distance from the face's midline)."""
    return _uv_features(model.name, int(model.data.uv_coords.shape[0]), size, model)


@functools.lru_cache(maxsize=8)
def _uv_features(name: str, n_uv: int, size: int, model) -> np.ndarray:
    import torch

    from render import rasterize

    uv = torch.as_tensor(np.asarray(model.data.uv_coords, np.float32))
    uv_clip = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2, torch.zeros_like(uv[:, 0]),
                           torch.ones_like(uv[:, 0])], -1)[None]
    uv_tris = torch.as_tensor(np.asarray(model.data.uv_triangles, np.int64))
    raster = rasterize(uv_clip, uv_tris, (size, size))
    tris = np.asarray(model.triangles, np.int64)[raster.pixel_triangle.numpy()]  # M x 3
    lam = raster.pixel_barycentrics.numpy()
    texel = raster.pixel_index.numpy()
    channels = []
    for region in REGION_CHANNELS:
        mask = np.zeros(size * size, np.float32)
        if region in model.data.regions:
            per_vertex = np.asarray(model.region(region), np.float32)
            mask[texel] = (per_vertex[tris] * lam).sum(1)
        channels.append(mask.reshape(size, size))
    covered = np.zeros(size * size, np.float32)
    covered[texel] = 1.0
    channels.append(covered.reshape(size, size))
    centres = (np.arange(size) + 0.5) / size
    channels.append(np.repeat(np.abs(centres - 0.5)[None, :], size, 0).astype(np.float32))
    channels.append(np.repeat((1.0 - centres)[:, None], size, 1).astype(np.float32))
    return np.stack(channels).astype(np.float32)


def _area(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return np.asarray(image, np.float32)
    return cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionConfig:
    """U-Net widths per level (level 0 at NET_SIZE texels, each next one half the size);
    `mirror`: the input also holds the left/right mirror image of the classical fill and of
    the confidence (convolutions cannot flip: with it, the net can compare each side with
    its mirror where both were seen, i.e. see the face's and the lighting's asymmetry)."""

    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    mirror: bool = True
    size: int = NET_SIZE

    @property
    def in_channels(self) -> int:
        return (8 if self.mirror else 4) + len(REGION_CHANNELS) + 3

    def to_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "in_channels": self.in_channels,
                "mirror": self.mirror, "size": self.size}


def build_net(config: CompletionConfig) -> Any:
    """A fresh `CompletionUNet` (torch imported here, not at module import)."""
    import torch
    from torch import nn
    from torch.nn import functional

    def block(cin: int, cout: int, convs: int = 2) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1),
                       nn.LeakyReLU(0.1, True)]
        return nn.Sequential(*layers)

    class CompletionUNet(nn.Module):
        """Encoder (stride-2 convs) / decoder (bilinear up + skip concat) -> RGB residual.
        One conv at the full 128-texel level (the residual is smooth: most of the work is
        done at the coarser levels, where a hidden cheek is a few texels across)."""

        def __init__(self, cfg: CompletionConfig) -> None:
            super().__init__()
            w = cfg.widths
            self.enc = nn.ModuleList([block(cfg.in_channels, w[0], 1)])
            self.down = nn.ModuleList()
            for i in range(1, len(w)):
                self.down.append(nn.Sequential(nn.Conv2d(w[i - 1], w[i], 3, stride=2,
                                                         padding=1), nn.LeakyReLU(0.1, True)))
                self.enc.append(block(w[i], w[i]))
            self.dec = nn.ModuleList([block(w[i] + w[i - 1], w[i - 1], 2 if i > 1 else 1)
                                      for i in range(len(w) - 1, 0, -1)])
            self.head = nn.Conv2d(w[0], 3, 3, padding=1)
            nn.init.zeros_(self.head.weight)  # starts as exactly the classical completion
            nn.init.zeros_(self.head.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = [self.enc[0](x)]
            h = skips[0]
            for down, enc in zip(self.down, self.enc[1:], strict=True):
                h = enc(down(h))
                skips.append(h)
            for dec, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
                h = functional.interpolate(h, size=skip.shape[-2:], mode="bilinear",
                                           align_corners=False)
                h = dec(torch.cat([h, skip], 1))
            return self.head(h)

    return CompletionUNet(config)


def mirror_skin(values: np.ndarray) -> np.ndarray:
    """(C, S, S) -> the same with the skin rows mirrored left/right (u -> 1 - u; our atlas
    is symmetric there); the rows of part tiles stay as they are."""
    from morph3d.texture_completion import skin_rows

    out = values.copy()
    rows = skin_rows(values.shape[1])
    out[:, rows] = values[:, rows, ::-1]
    return out


def correction_weight(confidence: np.ndarray) -> np.ndarray:
    """Where the net's correction applies: 1 where the photo saw nothing, falling linearly
    to 0 at the `SEEN` confidence, so texels the photo saw keep exactly the classical result
    (the photo's colours: the net must not repaint the face the identity comes from)."""
    return np.clip(1.0 - np.asarray(confidence, np.float32) / SEEN, 0.0, 1.0)


def net_input(classic: np.ndarray, confidence: np.ndarray, features: np.ndarray,
              mirror: bool = True) -> np.ndarray:
    """(C, S, S) float32 input from S x S x 3 classical fill, S x S confidence, features
    (and the mirror images of the first two when `mirror`)."""
    first = np.concatenate([classic.transpose(2, 0, 1) - 0.5, confidence[None] - 0.5], 0)
    parts = [first, mirror_skin(first)] if mirror else [first]
    return np.concatenate([*parts, features], 0).astype(np.float32)


class CompletionNet:
    """Loaded net. `complete` fills a T x T x 3 texture given its confidence and the
    model (for the UV region masks); deterministic for a given thread count."""

    def __init__(self, net: Any, config: CompletionConfig,
                 manifest: dict[str, Any] | None = None) -> None:
        import torch

        self._torch = torch
        net.eval()
        self.net = net
        self.config = config
        self.manifest = manifest or {}

    def residual(self, classic: np.ndarray, confidence: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        """The net's S x S x 3 colour correction for NET_SIZE inputs (not yet gated)."""
        torch = self._torch
        x = torch.from_numpy(net_input(classic, confidence, features, self.config.mirror))[None]
        with torch.inference_mode():
            return self.net(x)[0].permute(1, 2, 0).numpy().astype(np.float32)

    def complete(self, texture: np.ndarray, confidence: np.ndarray, model,
                 classic: CompletedTexture | None = None) -> CompletedTexture:
        """Classical completion + the net's correction on the texels not seen."""
        texture = np.asarray(texture, np.float32)
        if texture.ndim != 3 or texture.shape[2] != 3:
            raise InputError(f"expected an (H, W, 3) UV texture, got shape {texture.shape}")
        confidence = np.clip(np.asarray(confidence, np.float32), 0.0, 1.0)
        if classic is None:
            classic = complete_uv_texture(texture, confidence)
        size = self.config.size
        small_conf = _area(confidence, size)
        res = self.residual(_area(classic.texture, size), small_conf, uv_features(model, size))
        h, w = texture.shape[:2]
        res = cv2.resize(res, (w, h), interpolation=cv2.INTER_LINEAR)
        # The weight as in training (on the net's grid), upsampled: smooth, unlike one made
        # from the full-size confidence, whose texel-level speckle would print into the fill.
        # Texels seen at full size keep the classical result exactly.
        weight = cv2.resize(correction_weight(small_conf), (w, h), interpolation=cv2.INTER_LINEAR)
        weight = weight * (confidence < SEEN)
        # Only the skin square: the synthetic masks never hide the part tiles (mouth
        # interior, teeth, tongue, eyeballs: a photo rarely sees them), so the net has had
        # no training signal there and they keep the classical fill.
        weight = weight * skin_rows(h)[:, None]
        out = np.clip(classic.texture + res * weight[..., None], 0.0, 1.0).astype(np.float32)
        return CompletedTexture(out, classic.confidence, classic.source, classic.seen_fraction,
                                classic.mirrored_fraction, classic.inpainted_fraction)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def save_weights(path: str | os.PathLike, net: Any, config: CompletionConfig,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """float32 arrays + an ``arch`` JSON string, and the manifest with the sha256."""
    arch = {"format": FORMAT, **config.to_dict()}
    return write_weights(path, state_arrays(net), arch, arch, manifest)


def _build(arch: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[Any, CompletionConfig]:
    import torch

    config = CompletionConfig(tuple(arch["widths"]), bool(arch.get("mirror", False)),
                              int(arch["size"]))
    if config.in_channels != int(arch["in_channels"]):
        raise ValueError(f"{arch['in_channels']} input channels do not match the layout")
    net = build_net(config)
    net.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
    return net, config


def load_completion_net(path: str | os.PathLike | None = None) -> CompletionNet | None:
    """The completion net at `path` (default: the shipped weights). Missing: warns and
    returns None (callers use the classical completion). sha256 not matching the manifest
    (required beside the shipped file), or unreadable weights: `ModelError`."""
    loaded = load_verified(path, DEFAULT_WEIGHTS, FORMAT, _build, label="texture-completion",
                           manifest_label="completion", fallback="using the classical completion",
                           retrain="morph3d train completion")
    if loaded is None:
        return None
    (net, config), manifest = loaded
    return CompletionNet(net, config, manifest)


@functools.lru_cache(maxsize=4)
def _cached_net(path: str) -> CompletionNet:
    net = load_completion_net(path)
    if net is None:  # not cached: lru_cache does not store exceptions
        raise FileNotFoundError(path)
    return net


def complete_texture(texture: np.ndarray, confidence: np.ndarray, model,
                     method: str = "neural", weights: str | os.PathLike | None = None
                     ) -> tuple[CompletedTexture, str]:
    """Complete a fitted UV texture with the net (``"neural"``) or the classical fill
    (``"classic"``). Returns (result, the method used): neural falls back to classic with a
    warning when the weights are missing; corrupt weights raise `ModelError`."""
    if method not in ("neural", "classic"):
        raise InputError(f"unknown completion method {method!r}; use 'neural' or 'classic'")
    classic = complete_uv_texture(texture, confidence)
    if method == "classic":
        return classic, "classic"
    path = str(Path(weights) if weights is not None else DEFAULT_WEIGHTS)
    try:
        net = _cached_net(path)
    except FileNotFoundError:
        return classic, "classic"
    return net.complete(texture, confidence, model, classic), "neural"


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

    from fitting.fit import axis_angle, rotation_matrix, vertex_positions
    from fitting.params import CameraParams
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
    openings in each confidence as the swap does (`morph3d.swap.hide_openings`), so the
    net is trained on the holes it will fill and never on lids that took the eye's white.
    Cached in the user cache (``completion_data/``), never in the repository."""
    from fitting.fit import fit_photo
    from morph3d.paths import cache_dir

    root = Path(data_dir)
    files, rel, is_held = split_media(root, holdout, exclude)
    keyed = list(files)
    if bundled:
        from morph3d.demo import bundled_source, bundled_target_photo

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
            fit = fit_photo(frame.rgb, model, landmarks=lm)
            if fit.identity.texture is None:
                continue
            if openings:
                from morph3d.swap import hide_openings

                hide_openings(fit, model, [lm])
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
    return training.default_checkpoint("completion")


def default_trained_weights() -> Path:
    return training.default_trained_weights("completion")


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
    from morph3d.texture_completion import skin_rows

    size = features.shape[1]
    classic = _area(case.classic, size)
    visible = _area(case.visible, size)
    seen = _area(case.seen, size)
    hidden = (seen >= SEEN) & (visible < SEEN)
    covered = features[len(REGION_CHANNELS)] > 0.5
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

    from morph3d.texture_completion import skin_rows

    if model is None:
        from morph3d.models import load_model

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
