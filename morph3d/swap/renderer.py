"""Stage 5 of the swap, per frame: the swapped face made from the actor's own pixels
(`morph3d.swap.transfer`) in a face window of the frame, with its region masks."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from morph3d.swap.options import SwapOptions
from morph3d.swap.window import REGION_CHANNELS

if TYPE_CHECKING:  # torch is imported where it is used: bad paths fail in well under 1 s
    import torch

    from morph3d.swap.albedo import TransferSetup


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # bytes
# freed heap memory above this (bytes) is handed back to the kernel
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Let the process reuse the memory it frees instead of handing it back to the kernel
    (glibc's malloc; elsewhere nothing is done). True when both settings were taken.

    The render stage and the compositor allocate and free frame- and window-sized arrays
    (megabytes) every frame. By default glibc serves each block above its mmap threshold
    by a fresh mapping that it unmaps on free, and trims the heap's free top once it passes
    a few times that: the next frame's arrays are then page-faulted and zeroed afresh by the
    kernel, thousands of faults a frame for a big face, which cost as much CPU as a large
    step of the transfer. Blocks up to `MMAP_THRESHOLD_MAX` now come from the heap, and up to
    `TRIM_THRESHOLD` of it stays mapped when free (the peak a frame needs is held anyway)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                & mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@dataclass
class FaceRenderer:
    """The per-job state of the identity transfer: the frame warped into the source's shape
    (source identity at the actor's expression and pose), its skin tone carried over by the
    source-to-actor albedo ratio (`morph3d.swap.transfer`)."""

    model: object
    source_identity: np.ndarray
    region_channels: torch.Tensor  # V x len(REGION_CHANNELS) one-hot region membership
    transfer: TransferSetup
    work_resolution: int = 256
    backend: str | None = None

    @classmethod
    def create(cls, model, source_fit, clip_fit, photo: np.ndarray, options: SwapOptions,
               target) -> FaceRenderer:
        """The renderer of a job: the source fit, the clip fit, the first source photo
        (uint8 RGB, the source's colours as seen) and the clip the clip fit was fitted to
        (path: a few of its frames give the actor's albedo, `albedo.actor_albedo`)."""
        import copy
        from dataclasses import replace

        import torch

        from morph3d.swap.albedo import prepare_transfer

        keep_freed_memory()  # for every frame to come, the compositor's too

        # The per-frame tensors live on the model's device (`--device`): moved there once.
        device = model.mean.device
        channels = torch.as_tensor(
            np.stack([model.region(n) for n in REGION_CHANNELS], 1).astype(np.float32),
            device=device)
        # The per-job preparation mixes torch with numpy and OpenCV throughout and runs once:
        # it runs on the CPU (a copy of the model there when the model is elsewhere, with the
        # rasterizer that runs there).
        on_cpu = device.type == "cpu"
        host = model if on_cpu else copy.deepcopy(model).cpu()
        setup = prepare_transfer(host, source_fit, clip_fit, photo, target, channels.cpu(),
                                 quiet=options.quiet, backend=options.renderer if on_cpu else None)
        setup = replace(setup, textures=setup.textures.to(device),
                        source_factor=setup.source_factor.to(device))
        return cls(model, source_fit.identity.coefficients, channels, setup,
                   options.work_resolution, options.renderer)

    def render(self, camera_params, rotation, translation, expression,
               frame: np.ndarray, actor_landmarks) -> dict[str, np.ndarray]:
        """The face made from `frame` (uint8 RGB) and the actor's detected landmarks of it,
        resampled into its frame window: what `morph3d.swap.transfer.transfer_face`
        returns. No lighting is passed: the frame's own pixels carry its light."""
        from morph3d.swap.transfer import transfer_face

        t = self.transfer
        return transfer_face(
            self.model, self.source_identity, t.actor_identity, t.textures,
            self.region_channels, camera_params, rotation, translation, expression,
            frame, actor_landmarks, source_factor=t.source_factor,
            alignment=t.alignment, size=self.work_resolution, backend=self.backend,
            eye_openness=t.eye_openness)
