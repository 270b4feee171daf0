"""Stage 5 of the swap, per frame: the swapped face rendered (or made from the actor's own
pixels by `morph3d.swap.transfer`) in a face window of the frame, with its region masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from morph3d.swap.options import SwapOptions
from morph3d.swap.window import REGION_CHANNELS, crop_camera, face_crop_box, paste_window

if TYPE_CHECKING:  # torch is imported where it is used: bad paths fail in well under 1 s
    import torch

# ---------------------------------------------------------------------------------------------
# Stage 5: rendering the swapped face
# ---------------------------------------------------------------------------------------------


@dataclass
class FaceRenderer:
    """Renders the source identity with per-frame actor parameters, in a face crop.

    With `transfer` set (what the swap does), the face is not rendered but made from the
    frame's own pixels (`morph3d.swap.transfer`): the frame warped into the source's shape, its
    skin tone carried over by an albedo ratio. Without it the source albedo is rendered
    under the actor's relit SH and upscaled."""

    model: object
    source_identity: np.ndarray
    albedo: torch.Tensor  # T x T x 3
    region_channels: torch.Tensor  # V x len(REGION_CHANNELS) one-hot region membership
    work_resolution: int = 256
    backend: str | None = None
    upscaler: object | None = None
    source_ambient: np.ndarray | None = None  # 3: the source photo's SH DC term per channel
    transfer: object | None = None  # morph3d.swap.transfer.TransferSetup

    @classmethod
    def create(cls, model, source_fit, options: SwapOptions, upscaler=None, clip_fit=None,
               photo: np.ndarray | None = None) -> FaceRenderer:
        """The renderer of a job; with the clip fit and the (first) source photo (uint8 RGB)
        it transfers the identity onto the frame's pixels instead of rendering."""
        import torch

        texture = source_fit.identity.texture
        if texture is None:
            texture = np.full((model.data.texture_size,) * 2 + (3,), 0.7, np.float32)
        channels = np.stack([model.region(n) for n in REGION_CHANNELS], 1).astype(np.float32)
        groups = torch.from_numpy(channels)
        ambient = np.asarray(source_fit.faces.sh[0, 0], np.float32)
        transfer = None
        if clip_fit is not None and photo is not None:
            from morph3d.swap.transfer import prepare_transfer

            transfer = prepare_transfer(model, source_fit, clip_fit, photo)
        return cls(model, source_fit.identity.coefficients, torch.from_numpy(texture), groups,
                   options.work_resolution, options.renderer, upscaler, ambient, transfer)

    def relight(self, actor_sh: np.ndarray) -> np.ndarray:
        """The actor's lighting pattern at the source photo's overall level.

        The actor's SH were estimated against the actor's own (unknown) albedo, so their
        scale means nothing for the source's albedo: keep the actor's directional terms
        relative to its ambient term and put the source's ambient level under them. The
        compositor's colour matching then adapts the tint to the scene.
        """
        sh = np.asarray(actor_sh, np.float32)
        dc = np.where(np.abs(sh[0]) > 1e-3, sh[0], 1.0)
        ambient = self.source_ambient if self.source_ambient is not None else np.ones(3)
        return sh / dc[None, :] * ambient[None, :]

    def vertices(self, expression: np.ndarray) -> torch.Tensor:
        import torch

        ident = torch.from_numpy(self.source_identity[None].astype(np.float32))
        expr = torch.from_numpy(np.asarray(expression, np.float32)[None])
        return self.model.vertices(ident, expr)

    def render(self, camera_params, rotation, translation, expression, sh,
               frame_shape: tuple[int, int], frame: np.ndarray | None = None,
               actor_landmarks=None) -> dict[str, np.ndarray]:
        """The face resampled into its frame window: image (h x w x 3 float), coverage
        (h x w), regions (h x w bool each), window (x, y of its top-left frame pixel), and
        the projected landmarks in frame pixels. With `transfer` set, `frame` (uint8 RGB)
        and the actor's detected landmarks of it are what the face is made from."""
        import torch

        from render import interpolate, render_mesh

        if self.transfer is not None and frame is not None and actor_landmarks is not None:
            from morph3d.swap.transfer import transfer_face

            t = self.transfer
            return transfer_face(
                self.model, self.source_identity, t.actor_identity, t.textures,
                self.region_channels, camera_params, rotation, translation, expression, sh,
                frame, actor_landmarks, source_factor=t.source_factor,
                alignment=t.alignment, light_reference=t.light_reference,
                size=self.work_resolution, backend=self.backend)

        verts = self.vertices(expression)
        cam = camera_params.to_camera(rotation, translation)
        lm68 = cam.project(self.model.landmarks(verts, "ibug68"))[0].numpy()
        lm478 = cam.project(self.model.landmarks(verts, "mediapipe478"))[0].numpy()
        box = face_crop_box(lm478, frame_shape)
        size = self.work_resolution
        crop_cam = crop_camera(cam, box, size)
        with torch.no_grad():
            out = render_mesh(verts, self.model.triangles, crop_cam, texture_image=self.albedo,
                              uv_coords=self.model.uv_coords,
                              uv_triangles=self.model.uv_triangles,
                              sh_coeffs=torch.from_numpy(self.relight(sh)[None]),
                              backend=self.backend)
            # Region masks reuse the same raster: one rasterization per frame.
            regions = interpolate(self.region_channels, out.raster)[0].numpy()
        image = out.image[0].numpy().clip(0, 1)
        mask = out.mask[0, ..., 0].numpy()
        if self.upscaler is not None:
            x0, y0, side = box
            points = (lm478 - [x0, y0] + 0.5) * (size / side) - 0.5  # crop pixels
            image = self.upscale_face(image, points)
        # image + coverage in one cubic resampling (OpenCV's cubic takes <= 4 channels),
        # the region masks in one linear one (they are thresholded).
        if mask.shape != image.shape[:2]:  # the image was upscaled
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        window, origin = paste_window(np.concatenate([image, mask[..., None]], 2), box,
                                      frame_shape)
        region_window, _ = paste_window(regions, box, frame_shape, cv2.INTER_LINEAR)
        return {
            "image": window[..., :3], "coverage": window[..., 3].clip(0, 1),
            "regions": {n: region_window[..., i] > 0.5 for i, n in enumerate(REGION_CHANNELS)},
            "window": origin, "ibug68": lm68, "mediapipe478": lm478,
        }


    def upscale_face(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """x2 the crop: the super-resolver on the face's window (its landmarks' box grown by
        what the compositor's mask can reach: forehead, feather, width adaptation; plus the
        net's receptive field), bicubic elsewhere (the mask never takes those pixels). The
        face is about half the crop's area, so this halves the net's cost."""
        size = image.shape[0]
        lo, hi = points.min(0), points.max(0)
        pad = 0.1 * float((hi - lo).max()) + 8.0
        x0, y0 = (np.clip(np.floor(lo - pad), 0, size)).astype(int)
        x1, y1 = (np.clip(np.ceil(hi + pad), 0, size)).astype(int)
        full = cv2.resize(image, (2 * size, 2 * size), interpolation=cv2.INTER_CUBIC)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            full[2 * y0:2 * y1, 2 * x0:2 * x1] = self.upscaler(image[y0:y1, x0:x1])
        return full
