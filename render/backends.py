"""Rasterizer backends: pure torch (always), nvdiffrast and pytorch3d (when importable).

Choice: the `backend=` argument, else the environment variable MORPH3D_RENDERER
(torch | nvdiffrast | pytorch3d | auto), else auto = nvdiffrast for CUDA tensors when it is
importable, torch otherwise. Every backend returns the same `Raster` (our clip-space and
pixel conventions, see `render.camera`), so interpolate/texture/shading are shared; each
backend provides `rasterize` and `antialias`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from morph3d.errors import Morph3dError
from render.ops import antialias_torch
from render.raster import BACKGROUND_DEPTH, MIN_W, Raster, finish_raster, prepare_inputs
from render.raster import rasterize_torch as _rasterize_torch

BACKEND_NAMES = ("torch", "nvdiffrast", "pytorch3d")
ENV_VAR = "MORPH3D_RENDERER"


class TorchBackend:
    """Pure PyTorch, CPU and CUDA, exact z-buffer (see render.raster)."""

    name = "torch"

    def rasterize(self, clip_vertices: torch.Tensor, triangles: torch.Tensor,
                  size: tuple[int, int], **options: Any) -> Raster:
        return _rasterize_torch(clip_vertices, triangles, size, **options)

    def antialias(self, color: torch.Tensor, raster: Raster) -> torch.Tensor:
        return antialias_torch(color, raster)


class NvdiffrastBackend:
    """Adapter for nvdiffrast.torch (CUDA only).

    Our clip space is exactly nvdiffrast's: NDC (-1, -1) is the first pixel in memory, so
    images come out in OpenCV row order with no flip. rast[..., :2] = (u, v) are the
    perspective-correct weights of corners 0 and 1 (corner 2 gets 1 - u - v), rast[..., 2]
    is z/w, rast[..., 3] is triangle id + 1 (0 = background). nvdiffrast clips triangles
    against the near plane properly instead of culling them.
    """

    name = "nvdiffrast"

    def __init__(self) -> None:
        import nvdiffrast.torch as dr  # noqa: PLC0415 - optional dependency

        self.dr = dr
        self._contexts: dict[torch.device, Any] = {}

    def _context(self, device: torch.device) -> Any:
        if device not in self._contexts:
            self._contexts[device] = self.dr.RasterizeCudaContext(device=device)
        return self._contexts[device]

    def rasterize(self, clip_vertices: torch.Tensor, triangles: torch.Tensor,
                  size: tuple[int, int], **options: Any) -> Raster:
        clip, triangles, H, W = prepare_inputs(clip_vertices, triangles, size)
        if clip.device.type != "cuda":
            raise Morph3dError("the nvdiffrast renderer needs CUDA tensors; use backend='torch'")
        pos = clip.float().contiguous()
        tri32 = triangles.to(torch.int32).contiguous()
        rast, _ = self.dr.rasterize(self._context(clip.device), pos, tri32, resolution=(H, W),
                                    grad_db=False)
        tri_plus_one = rast[..., 3].detach().round().to(torch.int64).reshape(-1)
        pixel_index = (tri_plus_one > 0).nonzero().squeeze(1)
        pixel_triangle = tri_plus_one[pixel_index] - 1
        uv = rast[..., :2].reshape(-1, 2)[pixel_index]
        bary = torch.cat([uv, 1 - uv.sum(1, keepdim=True)], 1).to(clip.dtype)
        depth = rast[..., 2].reshape(-1)[pixel_index].to(clip.dtype)
        raster = finish_raster(clip, triangles, H, W, pixel_index, pixel_triangle,
                               backend=self.name, bary=bary, depth=depth,
                               native=(rast, pos, tri32))
        return raster

    def antialias(self, color: torch.Tensor, raster: Raster) -> torch.Tensor:
        if raster.backend != self.name or raster.native is None:
            return antialias_torch(color, raster)
        rast, pos, tri32 = raster.native
        out = self.dr.antialias(color.float().contiguous(), rast, pos, tri32)
        return out.to(color.dtype)


class Pytorch3dBackend:
    """Adapter for pytorch3d.renderer.mesh.rasterize_meshes (CPU and CUDA).

    pytorch3d's NDC has +x left and +y up with the shorter image side spanning [-1, 1], so
    x_p3d = -x_ndc * W / min(H, W) and y_p3d = -y_ndc * H / min(H, W) put pixel centres in
    the same places. For perspective input we pass z = w (view depth, > 0) so that its
    perspective correction is right and nearest-first order equals z/w order; for an
    orthographic input (constant w) we pass z = z/w + 2 without correction. Triangles with a
    vertex at w <= 0 are removed before rasterizing (culled, as in the torch backend).
    """

    name = "pytorch3d"

    def __init__(self) -> None:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: PLC0415
        from pytorch3d.structures import Meshes  # noqa: PLC0415

        self._rasterize_meshes = rasterize_meshes
        self._meshes = Meshes

    def rasterize(self, clip_vertices: torch.Tensor, triangles: torch.Tensor,
                  size: tuple[int, int], **options: Any) -> Raster:
        clip, triangles, H, W = prepare_inputs(clip_vertices, triangles, size)
        B = clip.shape[0]
        pos = clip.float()
        w = pos[..., 3]
        good_vertex = (w > MIN_W) & torch.isfinite(pos).all(-1)
        safe_w = torch.where(good_vertex, w, torch.ones_like(w))
        short = float(min(H, W))
        x = -(pos[..., 0] / safe_w) * (W / short)
        y = -(pos[..., 1] / safe_w) * (H / short)
        perspective = bool((w - w[..., :1]).abs().max() > 1e-6 * w.abs().max())
        z = safe_w if perspective else pos[..., 2] / safe_w + 2
        verts = torch.stack([x, y, z], -1)
        kept_faces = [triangles[good_vertex[b][triangles].all(1)] for b in range(B)]
        kept_ids = [good_vertex[b][triangles].all(1).nonzero().squeeze(1) for b in range(B)]
        meshes = self._meshes(verts=list(verts), faces=kept_faces)
        pix_to_face, _, _, _ = self._rasterize_meshes(
            meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1,
            perspective_correct=perspective, clip_barycentric_coords=False,
            cull_backfaces=bool(options.get("cull_backfaces", False)),
        )
        packed = pix_to_face[..., 0].reshape(B, -1)  # B x HW, index into packed faces
        first = meshes.mesh_to_faces_packed_first_idx()
        pixel_index_parts, triangle_parts = [], []
        for b in range(B):
            covered = (packed[b] >= 0).nonzero().squeeze(1)
            local = packed[b][covered] - first[b]
            pixel_index_parts.append(covered + b * H * W)
            triangle_parts.append(kept_ids[b][local])
        pixel_index = torch.cat(pixel_index_parts)
        pixel_triangle = torch.cat(triangle_parts)
        # pytorch3d chooses the visible triangle; barycentrics and depth are recomputed in
        # our own differentiable formulation so that every backend has identical gradients.
        return finish_raster(clip, triangles, H, W, pixel_index, pixel_triangle,
                             backend=self.name)

    def antialias(self, color: torch.Tensor, raster: Raster) -> torch.Tensor:
        return antialias_torch(color, raster)


_FACTORIES = {"torch": TorchBackend, "nvdiffrast": NvdiffrastBackend,
              "pytorch3d": Pytorch3dBackend}
_MODULES = {"torch": "torch", "nvdiffrast": "nvdiffrast.torch", "pytorch3d": "pytorch3d"}
_INSTANCES: dict[str, Any] = {}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Names of the backends that can run here (nvdiffrast only with CUDA available)."""
    names = ["torch"]
    if _importable("nvdiffrast") and torch.cuda.is_available():
        names.append("nvdiffrast")
    if _importable("pytorch3d"):
        names.append("pytorch3d")
    return names


def get_backend(name: str | None = None, device: torch.device | str | None = None) -> Any:
    """The backend object for `name` (None: $MORPH3D_RENDERER, then 'auto')."""
    chosen = (name or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if chosen == "auto":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        chosen = "nvdiffrast" if on_cuda and "nvdiffrast" in available_backends() else "torch"
    if chosen not in _FACTORIES:
        raise Morph3dError(
            f"unknown renderer '{chosen}' (choose one of {', '.join(BACKEND_NAMES)} or auto)")
    if chosen not in _INSTANCES:
        if not _importable(_MODULES[chosen].split(".")[0]):
            raise Morph3dError(f"renderer '{chosen}' is not installed; use {ENV_VAR}=torch")
        try:
            _INSTANCES[chosen] = _FACTORIES[chosen]()
        except ImportError as exc:
            raise Morph3dError(f"renderer '{chosen}' cannot be imported: {exc}") from None
    return _INSTANCES[chosen]


def rasterize(
    clip_vertices: torch.Tensor,
    triangles: torch.Tensor,
    size: tuple[int, int],
    *,
    backend: str | None = None,
    cull_backfaces: bool = False,
) -> Raster:
    """Rasterize B x V x 4 clip-space vertices (or V x 4) and F x 3 triangles into (H, W).

    Returns a `Raster` (triangle ids, perspective-correct barycentrics, z/w depth).
    Differentiable w.r.t. `clip_vertices` through the barycentrics and depth.
    """
    impl = get_backend(backend, clip_vertices.device)
    options = {"cull_backfaces": True} if cull_backfaces else {}
    return impl.rasterize(clip_vertices, triangles, size, **options)


def antialias(color: torch.Tensor, raster: Raster, *, backend: str | None = None) -> torch.Tensor:
    """Blend colours B x H x W x C across silhouette edges so they carry position gradients.

    Uses the raster's backend unless told otherwise (nvdiffrast's own antialias there; the
    equivalent torch implementation for the others).
    """
    impl = get_backend(backend or raster.backend, color.device)
    return impl.antialias(color, raster)


__all__ = ["BACKGROUND_DEPTH", "available_backends", "get_backend", "rasterize", "antialias"]
