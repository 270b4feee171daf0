"""Learned UV-texture completion: fill what the photo did not see (inference).

The classical completion (`morph3d.neural.texture_completion.complete_uv_texture`: mirror,
pull-push, seam feather) gives a smooth but flat fill: the far cheek copies the near one with the
photo's shading asymmetry, and pull-push averages the colours around a hole. The net learns
the correction: a compact U-Net in UV space at 128 x 128 texels takes the classical result,
the visibility/confidence map, the per-texel region masks of the model (skin, lips, eyes,
mouth interior, teeth, tongue, eyeballs) and the texel's position, and predicts a residual
colour that is added to the classical fill on the texels the photo did not see (upsampled to
the texture's size; texels seen with confidence >= 0.5 are left exactly as they are). Its
last layer starts at zero, so an untrained net is exactly the classical completion.

Training (`morph3d.neural.training.completion`) is self-supervised on textures the tool
extracts itself:
every photo and every few video frames of a folder are fitted (`fitting.photo.fit_photo`), and
synthetic visibility masks are made by unprojecting the fitted head turned by another yaw /
pitch (what a camera at that pose would see) plus random UV blobs (hair, glasses),
intersected with the real visibility: the texels the real photo saw but the synthetic view
did not are hidden from the input and are the target. The photos' eye and mouth openings
are hidden first, as the swap hides them (`morph3d.swap.fits.hide_openings`), and a second
loss term keeps the fill at the classical one on hidden texels no photo saw (the far borders,
the openings): with no truth there, the first shipped net's guesses (darker lids and
borders) moved the swapped faces away from the source's identity.

Shipped weights: ``morph3d/weights/completion.npz`` + ``completion.json`` (sha256, training
data, steps, held-out metrics). `load_completion_net` returns None with a warning when the
file is missing (callers use the classical completion) and raises `ModelError` when corrupt.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.errors import InputError
from morph3d.model.model import REGION_CHANNELS
from morph3d.neural.texture_completion import CompletedTexture, complete_uv_texture, skin_rows
from morph3d.neural.weights import WEIGHTS_DIR, load_verified

NET_SIZE = 128  # texels per side of the net's UV grid
DEFAULT_WEIGHTS = WEIGHTS_DIR / "completion.npz"
FORMAT = "morph3d-completion-2"
# Per-texel region channels of the net's input (model regions, rasterised in UV space), in
# the order the trained weights expect: the model's REGION_CHANNELS with lips before eyes.
NET_INPUT_REGIONS = ("face_skin", "lips", "eyes", "mouth_interior", "teeth", "tongue",
                     "eyeballs")
assert sorted(NET_INPUT_REGIONS) == sorted(REGION_CHANNELS), "not a permutation of the model's"
SEEN = 0.5  # confidence at or above which a texel counts as seen (as in the classical fill)
# Bump when `CompletionNet.complete` changes its output for the same weights: the swap's
# source-fit cache key holds it, so cached textures completed by older code are not reused.
INFERENCE_VERSION = 3


# --------------------------------------------------------------------------------------------
# Per-texel features of the model's UV layout
# --------------------------------------------------------------------------------------------


def uv_features(model, size: int = NET_SIZE) -> np.ndarray:
    """(len(NET_INPUT_REGIONS) + 3, size, size) float32: region memberships rasterised in UV
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
    for region in NET_INPUT_REGIONS:
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
        return (8 if self.mirror else 4) + len(NET_INPUT_REGIONS) + 3

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
    from morph3d.neural.texture_completion import skin_rows

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
