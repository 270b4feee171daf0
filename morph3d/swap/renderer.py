"""Stage 5 of the swap, per frame: the swapped face made from the actor's own pixels
(`morph3d.swap.transfer`) in a face window of the frame, with its region masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from morph3d.swap.options import SwapOptions
from morph3d.swap.window import REGION_CHANNELS

if TYPE_CHECKING:  # torch is imported where it is used: bad paths fail in well under 1 s
    import torch

    from morph3d.swap.albedo import TransferSetup


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
