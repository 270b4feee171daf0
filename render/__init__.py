"""Differentiable rasterizer: parameters -> pixels.

Four verbs in the spirit of nvdiffrast: `rasterize`, `interpolate`, `texture`, `antialias`,
plus `sh_shading`, `vertex_normals`, the `Camera` and the pipeline helpers `render_mesh`
and `unproject_to_uv`.

Conventions (stated once):
- Model space: millimetres, x right, y up, z towards the viewer. Camera space: OpenCV
  (x right, y down, z forward), `X_cam = R X_model + t`, t in mm (see `render.camera`).
- Images: OpenCV convention, origin top-left, pixel centres at integer coordinates,
  tensors B x H x W x C, RGB float in [0, 1].
- Clip space (B x V x 4, homogeneous): x/w = 2 (u + 0.5) / W - 1 and y/w = 2 (v + 0.5) / H - 1
  for pixel (u, v), i.e. NDC y grows downwards with the image rows (nvdiffrast's memory
  layout, no flips); w = camera depth (perspective) or 1 (orthographic); only
  -1 <= z/w <= 1 is drawn; triangles with a vertex at w <= 0 are culled, never wrapped.
- Barycentrics are perspective-correct weights of the triangle's corners 0, 1, 2; depth is
  z/w (1.0 on background); triangle id -1 is background.
- UV: u right, v up; row 0 of a texture image is v = 1, texel (i, j) is centred at
  u = (j + 0.5) / Wt, v = 1 - (i + 0.5) / Ht.

Backends: `torch` (PyTorch, default on CPU; its non-differentiable z-buffer and antialias
edge search run as compiled numba kernels on CPU when numba is importable, see
`render.kernels`), `nvdiffrast` (default on CUDA when installed), `pytorch3d`; pick with
`backend=` or MORPH3D_RENDERER=torch|nvdiffrast|pytorch3d|auto.
"""

from render.backends import antialias, available_backends, get_backend, rasterize
from render.camera import Camera, axis_angle_to_matrix, clip_to_pixels
from render.helpers import RenderOutput, extract_texture, render_mesh, unproject_to_uv
from render.ops import interpolate, sh_shading, texture, vertex_normals
from render.raster import Raster

__all__ = [
    "Camera",
    "Raster",
    "RenderOutput",
    "antialias",
    "available_backends",
    "axis_angle_to_matrix",
    "clip_to_pixels",
    "extract_texture",
    "get_backend",
    "interpolate",
    "rasterize",
    "render_mesh",
    "sh_shading",
    "texture",
    "unproject_to_uv",
    "vertex_normals",
]
