"""Face-crop super-resolution (inference): upscale a face crop x2 or x4.

The swap makes its face from the actor's own pixels at the frame's resolution, so it does
not call this net; `morph3d train sr` trains it and `tools/bench_refine.py` scores it.

The network is a small ESPCN-like residual net: plain 3x3 convolutions at the low
resolution, a PixelShuffle to the output size, added to the bicubic upscale of the input.
It starts (zero-initialised last layer) as exactly bicubic and learns only the missing
detail, which keeps it tiny (32-43 k parameters per scale) and fast on a CPU.

Shipped weights: ``morph3d/weights/sr.npz`` with a manifest ``sr.json`` beside it that holds
the file's sha256, how it was trained and its held-out metrics (see weights/README.md).
`load_super_resolver` returns None with a warning when the weights are missing and raises
`ModelError` when they are corrupt.

Training (`morph3d.neural.training.refine`, run by ``morph3d train sr`` and
``tools/train_sr.py``) builds its data from any folder of face photos and videos: faces are
detected, square crops are cut around them with jitter and cached in the user cache, and
low-resolution inputs are made on the fly with realistic degradations (blur, resampling
kernels, noise, JPEG). Source files are split into training and held-out sets by file, so
people stay on one side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.errors import InputError, ModelError
from morph3d.neural.weights import WEIGHTS_DIR, load_verified

SCALES = (2, 4)
DEFAULT_WEIGHTS = WEIGHTS_DIR / "sr.npz"
FORMAT = "morph3d-sr-1"


# --------------------------------------------------------------------------------------------
# Metrics and the bicubic baseline
# --------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InputError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return image


def _to_float(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.ascontiguousarray(image, dtype=np.float32)


def _like_input(out: np.ndarray, template: np.ndarray) -> np.ndarray:
    """float32 [0, 1] result back to the caller's dtype (uint8 in, uint8 out)."""
    out = np.clip(out, 0.0, 1.0)
    if template.dtype == np.uint8:
        return np.rint(out * 255.0).astype(np.uint8)
    return out.astype(np.float32, copy=False)


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """The baseline: OpenCV bicubic (a = -0.75) upscale, clipped to [0, 1] (or uint8)."""
    image = _check_image(image)
    h, w = image.shape[:2]
    out = cv2.resize(_to_float(image), (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return _like_input(out, image)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRConfig:
    """Architecture of one per-scale net: `layers` 3x3 convs of `channels` features."""

    scale: int = 2
    channels: int = 32
    layers: int = 6

    def to_dict(self) -> dict[str, int]:
        return {"scale": self.scale, "channels": self.channels, "layers": self.layers}


def build_net(config: SRConfig) -> Any:
    """A fresh `SRNet` (torch is imported here, not at module import)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class SRNet(nn.Module):
        """conv-LeakyReLU stack at low resolution -> PixelShuffle residual over bicubic."""

        def __init__(self, cfg: SRConfig) -> None:
            super().__init__()
            self.scale = cfg.scale
            c, s = cfg.channels, cfg.scale
            # Leaky ReLUs: plain ones died (all-zero features) in short high-rate runs.
            convs: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), nn.LeakyReLU(0.1, True)]
            for _ in range(cfg.layers - 2):
                convs += [nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.1, True)]
            last = nn.Conv2d(c, 3 * s * s, 3, padding=1)
            nn.init.zeros_(last.weight)  # starts as exactly bicubic
            nn.init.zeros_(last.bias)
            convs.append(last)
            self.body = nn.Sequential(*convs)
            self.shuffle = nn.PixelShuffle(s)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            base = functional.interpolate(x, scale_factor=self.scale, mode="bicubic",
                                          align_corners=False)
            return base + self.shuffle(self.body(x - 0.5))

    return SRNet(config)


class SuperResolver:
    """Loaded per-scale nets. `upscale` takes and returns (H, W, 3) [0, 1] float32 images
    (uint8 in gives uint8 out). Scale 4 without its own net is two x2 passes."""

    def __init__(self, nets: dict[int, Any], manifest: dict[str, Any] | None = None) -> None:
        import torch

        self._torch = torch
        self.nets = {}
        for scale, net in nets.items():
            net.eval()
            self.nets[int(scale)] = net.to(memory_format=torch.channels_last)
        self.manifest = manifest or {}

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.nets) | ({4} if 2 in self.nets else set())))

    def _run(self, image: np.ndarray, scale: int) -> np.ndarray:
        """The net's forward with its bicubic base from OpenCV: the same numbers as
        torch's bicubic (align_corners=False, a = -0.75; equal to 4e-7) at a third of the
        time on one CPU thread."""
        torch = self._torch
        net = self.nets[scale]
        h, w = image.shape[:2]
        base = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            detail = net.shuffle(net.body(x - 0.5))[0].permute(1, 2, 0).numpy()
        return np.clip(base + detail, 0.0, 1.0, dtype=np.float32)

    def upscale(self, image: np.ndarray, scale: int = 2) -> np.ndarray:
        """(H, W, 3) -> (scale H, scale W, 3); deterministic for a given thread count."""
        image = _check_image(image)
        if scale not in SCALES:
            raise InputError(f"super-resolution scale must be one of {SCALES}, got {scale}")
        x = _to_float(image)
        if scale in self.nets:
            out = self._run(x, scale)
        elif scale == 4 and 2 in self.nets:
            out = self._run(self._run(x, 2), 2)
        else:
            raise ModelError(f"these super-resolver weights have no x{scale} net")
        return _like_input(out, image)


def _build_nets(arch: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[int, Any]:
    import torch

    nets = {}
    for entry in arch["nets"]:
        config = SRConfig(**entry)
        net = build_net(config)
        prefix = f"x{config.scale}/"
        state = {k[len(prefix):]: torch.from_numpy(v.astype(np.float32))
                 for k, v in arrays.items() if k.startswith(prefix)}
        net.load_state_dict(state)
        nets[config.scale] = net
    return nets


def load_super_resolver(path: str | os.PathLike | None = None) -> SuperResolver | None:
    """The super-resolver at `path` (default: the shipped weights).

    Missing file: warns and returns None. A file whose
    sha256 does not match its manifest (``<name>.json`` beside it; required for the shipped
    weights), or that cannot be read as weights, raises `ModelError`.
    """
    loaded = load_verified(path, DEFAULT_WEIGHTS, FORMAT, _build_nets, label="super-resolver",
                           manifest_label="super-resolver", fallback="nothing loaded",
                           retrain="morph3d train sr")
    if loaded is None:
        return None
    nets, manifest = loaded
    if not nets:
        p = Path(path) if path is not None else DEFAULT_WEIGHTS
        raise ModelError(f"super-resolver weights {p} contain no network")
    return SuperResolver(nets, manifest)
