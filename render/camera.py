"""Pinhole (perspective) and orthographic cameras with explicit intrinsics and extrinsics.

Spaces, stated once:
- model space: millimetres, x right, y up, z towards the viewer (the project convention);
- camera space: OpenCV, x right, y down, z forward (into the scene), millimetres;
  `X_cam = R @ X_model + t` (R: 3 x 3 rotation, t: mm), exactly what `cv2.solvePnP` returns
  for model-space object points. A camera looking at the face from the front has
  `R = diag(1, -1, -1)` (`FRONT`) and `t = (0, 0, distance_mm)`;
- pixels: OpenCV image convention, origin top-left, pixel centres at integer coordinates,
  `u = fx * x / z + cx`, `v = fy * y / z + cy` (orthographic: `u = fx * x + cx`, fx in px/mm);
- clip space (what `render.rasterize` eats): homogeneous (x, y, z, w) with
  `x/w = 2 (u + 0.5) / width - 1`, `y/w = 2 (v + 0.5) / height - 1`, so NDC (-1, -1) is the
  top-left corner of the top-left pixel and y grows downwards like image rows (this is also
  nvdiffrast's memory layout: row 0 <-> y = -1). `w` is the camera depth z (perspective) or 1
  (orthographic); `z/w` is -1 at `near` and +1 at `far`, and only -1 <= z/w <= 1 is drawn.

Every field may be a python float or a torch tensor (scalar or batched B); gradients flow to
all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

FRONT = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))  # model -> OpenCV, frontal view


def _as_tensor(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.tensor(value, device=like.device, dtype=like.dtype)


def _per_batch(value: torch.Tensor, batch: int) -> torch.Tensor:
    """Scalar or (B,) -> (B, 1) for broadcasting against B x V."""
    return value.reshape(-1, 1).expand(batch, 1) if value.numel() == 1 else value.reshape(-1, 1)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) axis-angle in radians -> (..., 3, 3) rotation, differentiable at 0."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with Taylor fallbacks near zero.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


@dataclass
class Camera:
    """Intrinsics in pixels, extrinsics model -> OpenCV camera (see module docstring).

    R: 3 x 3 or B x 3 x 3; t: 3 or B x 3 (mm). fx, fy, cx, cy: floats or tensors (scalar / B).
    For an orthographic camera fx, fy are pixels per millimetre.
    """

    fx: float | torch.Tensor
    fy: float | torch.Tensor
    cx: float | torch.Tensor
    cy: float | torch.Tensor
    width: int
    height: int
    R: torch.Tensor = field(default_factory=lambda: torch.tensor(FRONT))
    t: torch.Tensor = field(default_factory=lambda: torch.tensor([0.0, 0.0, 1000.0]))
    orthographic: bool = False
    near: float = 10.0  # mm, perspective only
    far: float = 10000.0  # mm

    @classmethod
    def looking_at_face(
        cls,
        width: int,
        height: int,
        focal_px: float | None = None,
        distance_mm: float = 600.0,
        orthographic: bool = False,
    ) -> Camera:
        """A frontal camera centred on the model origin (handy default for tests and demos)."""
        if orthographic:
            # Fit ~250 mm into the shorter image side.
            scale = (focal_px or min(width, height) / 250.0)
            return cls(scale, scale, (width - 1) / 2, (height - 1) / 2, width, height,
                       orthographic=True, t=torch.tensor([0.0, 0.0, distance_mm]))
        # Default: a field of view of ~250 mm at the subject's distance (a head fills it).
        focal = focal_px if focal_px is not None else distance_mm / 250.0 * min(width, height)
        return cls(focal, focal, (width - 1) / 2, (height - 1) / 2, width, height,
                   t=torch.tensor([0.0, 0.0, distance_mm]))

    def with_pose(self, R: torch.Tensor, t: torch.Tensor) -> Camera:
        return replace(self, R=R, t=t)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels, the order `rasterize` takes."""
        return (self.height, self.width)

    # -- transforms ------------------------------------------------------------------------
    def to_camera(self, vertices: torch.Tensor) -> torch.Tensor:
        """Model space (B x V x 3 or V x 3, mm) -> OpenCV camera space B x V x 3 (mm)."""
        if vertices.dim() == 2:
            vertices = vertices.unsqueeze(0)
        R = self.R.to(device=vertices.device, dtype=vertices.dtype)
        t = self.t.to(device=vertices.device, dtype=vertices.dtype)
        R = R.unsqueeze(0) if R.dim() == 2 else R
        t = t.reshape(1, 3) if t.dim() == 1 else t
        return torch.einsum("bij,bvj->bvi", R, vertices) + t[:, None, :]

    def camera_to_clip(self, points: torch.Tensor) -> torch.Tensor:
        """OpenCV camera space B x V x 3 -> homogeneous clip space B x V x 4."""
        x, y, z = points.unbind(-1)
        batch = points.shape[0]
        fx, fy, cx, cy = (_per_batch(_as_tensor(v, points), batch)
                          for v in (self.fx, self.fy, self.cx, self.cy))
        W, H = float(self.width), float(self.height)
        if self.orthographic:
            u = fx * x + cx
            v = fy * y + cy
            w = torch.ones_like(z)
            zc = (2 * z - (self.far + self.near)) / (self.far - self.near)
            return torch.stack([2 * (u + 0.5) / W - 1, 2 * (v + 0.5) / H - 1, zc, w], -1)
        # x_clip = x_ndc * w with w = z; x_ndc = 2 (fx x / z + cx + 0.5) / W - 1.
        xc = (2 * fx / W) * x + ((2 * cx + 1) / W - 1) * z
        yc = (2 * fy / H) * y + ((2 * cy + 1) / H - 1) * z
        n, f = self.near, self.far
        zc = (f + n) / (f - n) * z - 2 * f * n / (f - n)
        return torch.stack([xc, yc, zc, z], -1)

    def to_clip(self, vertices: torch.Tensor) -> torch.Tensor:
        """Model space (mm) -> clip space B x V x 4 (the input of `render.rasterize`)."""
        return self.camera_to_clip(self.to_camera(vertices))

    def project(self, vertices: torch.Tensor) -> torch.Tensor:
        """Model space (mm) -> pixel coordinates B x V x 2 (OpenCV, centres at integers)."""
        points = self.to_camera(vertices)
        x, y, z = points.unbind(-1)
        batch = points.shape[0]
        fx, fy, cx, cy = (_per_batch(_as_tensor(v, points), batch)
                          for v in (self.fx, self.fy, self.cx, self.cy))
        if self.orthographic:
            return torch.stack([fx * x + cx, fy * y + cy], -1)
        return torch.stack([fx * x / z + cx, fy * y / z + cy], -1)


def clip_to_pixels(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip space (..., 4) -> pixel coordinates (..., 2) for an image of size (H, W)."""
    H, W = size
    ndc = clip[..., :2] / clip[..., 3:4]
    return torch.stack([(ndc[..., 0] + 1) * (W / 2) - 0.5, (ndc[..., 1] + 1) * (H / 2) - 0.5], -1)
