"""What the pipeline calls: render a shaded mesh into a frame, and unproject a frame to UV."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from render.backends import antialias as antialias_op
from render.backends import rasterize
from render.camera import Camera
from render.ops import (
    interpolate,
    interpolate_channels,
    interpolate_sparse,
    scatter_pixels,
    sh_shading_channels,
    texture_sparse,
    vertex_normals,
)
from render.raster import Raster

# Camera space (OpenCV: y down, z forward) -> lighting frame (x right, y up, z to camera).
_CV_TO_LIGHT = torch.tensor([1.0, -1.0, -1.0])


@dataclass
class RenderOutput:
    """image B x H x W x 3; mask B x H x W x 1 (soft at silhouettes when antialiased);
    coverage B x H x W bool (hard: pixel centre inside a triangle); vertex_visibility B x V
    bool (vertex belongs to a triangle seen in at least one pixel); raster for further use."""

    image: torch.Tensor
    mask: torch.Tensor
    coverage: torch.Tensor
    vertex_visibility: torch.Tensor
    raster: Raster


def _batched(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == dims - 1 else x


def render_mesh(
    vertices: torch.Tensor,
    triangles: torch.Tensor,
    camera: Camera,
    *,
    vertex_colors: torch.Tensor | None = None,
    texture_image: torch.Tensor | None = None,
    uv_coords: torch.Tensor | None = None,
    uv_triangles: torch.Tensor | None = None,
    sh_coeffs: torch.Tensor | None = None,
    background: torch.Tensor | float | None = None,
    antialias: bool = True,
    backend: str | None = None,
    cull_backfaces: bool = False,
) -> RenderOutput:
    """Render model-space vertices (B x V x 3 mm) with albedo from `texture_image`
    (Ht x Wt x 3 or B x Ht x Wt x 3, sampled with uv_coords/uv_triangles) or `vertex_colors`
    (V x 3 or B x V x 3), else white; shaded by SH lighting `sh_coeffs` (B x 9 x 3, see
    `sh_shading`; None = unshaded) with per-pixel normals in the lighting frame; composited
    over `background` (B x H x W x 3, or a grey level; default black).

    Differentiable w.r.t. vertices, colours/texture, SH coefficients and camera parameters.
    """
    verts = _batched(vertices, 3)
    triangles = triangles.to(device=verts.device, dtype=torch.int64)
    clip = camera.to_clip(verts)
    raster = rasterize(clip, triangles, camera.size, backend=backend,
                       cull_backfaces=cull_backfaces)
    B = raster.batch
    V = verts.shape[1]
    # Shading happens on the M covered pixels only, channel-major (C x M: contiguous 1-D
    # ops are what is cheap on CPU), then one scatter to the dense image.
    channels = []  # per-vertex attributes, each B x V x 3
    if texture_image is None and vertex_colors is not None:
        colors = vertex_colors.to(verts.dtype)
        channels.append(colors.expand(B, -1, -1) if colors.dim() == 3 else
                        colors.unsqueeze(0).expand(B, -1, -1))
    if sh_coeffs is not None:
        normals = vertex_normals(verts, triangles)
        R = camera.R.to(verts)
        channels.append(torch.einsum("...ij,bvj->bvi", R, normals) * _CV_TO_LIGHT.to(verts))
    values = None
    if channels:
        per_vertex = torch.cat(channels, -1).reshape(B * V, -1).t()  # C x B*V
        values = interpolate_channels(per_vertex, raster, batched=True)  # C x M
    if texture_image is not None:
        if uv_coords is None or uv_triangles is None:
            raise ValueError("texture_image needs uv_coords and uv_triangles")
        uv = interpolate_sparse(uv_coords.to(verts), raster, uv_triangles)
        albedo = texture_sparse(texture_image.to(verts.dtype), uv, raster.pixel_batch()).t()
    elif vertex_colors is not None:
        albedo = values[:3]
    else:
        albedo = verts.new_ones(3, raster.pixel_index.shape[0])
    if sh_coeffs is not None:
        coeffs = sh_coeffs.to(verts.dtype).reshape(-1, 9, 3)
        albedo = albedo * sh_shading_channels(
            values[-3:], coeffs, raster.pixel_batch() if coeffs.shape[0] > 1 else None)
    if background is None:
        background = 0.0
    if isinstance(background, (int, float)):
        # Constant background: image and mask are built as one B x H x W x 4 scatter (the
        # colour channels start at the background level, the mask channel at 0), which is
        # also the antialias input: no dense concatenation or blending passes.
        rgba = torch.cat([albedo, albedo.new_ones(1, albedo.shape[1])], 0).t()
        fill = torch.tensor([background] * 3 + [0.0], dtype=verts.dtype, device=verts.device)
        H, W = raster.size
        both = fill.expand(B * H * W, 4).index_copy(0, raster.pixel_index, rgba)
        both = both.reshape(B, H, W, 4)
        if antialias:
            both = antialias_op(both, raster)
        image, mask = both[..., :3], both[..., 3:]
    else:
        hard = raster.mask(verts.dtype)
        foreground = scatter_pixels(albedo.t(), raster)
        image = foreground + torch.as_tensor(background, dtype=verts.dtype,
                                             device=verts.device) * (1 - hard)
        mask = hard
        if antialias:
            both = antialias_op(torch.cat([image, hard], -1), raster)
            image, mask = both[..., :3], both[..., 3:]
    coverage = raster.coverage
    visible_tri = torch.zeros(B, triangles.shape[0], dtype=torch.bool, device=verts.device)
    visible_tri[raster.pixel_batch(), raster.pixel_triangle] = True
    vertex_visibility = torch.zeros(B, verts.shape[1], dtype=torch.bool, device=verts.device)
    b_idx, t_idx = visible_tri.nonzero(as_tuple=True)
    vertex_visibility[b_idx.unsqueeze(1).expand(-1, 3), triangles[t_idx]] = True
    return RenderOutput(image=image, mask=mask, coverage=coverage,
                        vertex_visibility=vertex_visibility, raster=raster)


def _dilate(colors: torch.Tensor, valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Fill invalid texels from valid neighbours (3 x 3 mean), `steps` rings outwards."""
    x = colors.permute(0, 3, 1, 2)
    m = valid.permute(0, 3, 1, 2).to(x.dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    C = x.shape[1]
    for _ in range(steps):
        num = nnf.conv2d(x * m, kernel.expand(C, 1, 3, 3), padding=1, groups=C)
        den = nnf.conv2d(m, kernel, padding=1)
        fill = (m == 0) & (den > 0)
        x = torch.where(fill, num / den.clamp_min(1e-12), x)
        m = torch.where(fill, torch.ones_like(m), m)
    return x.permute(0, 2, 3, 1)


def unproject_to_uv(
    image: torch.Tensor,
    vertices_clip: torch.Tensor,
    triangles: torch.Tensor,
    uv_coords: torch.Tensor,
    uv_triangles: torch.Tensor,
    texture_size: int | tuple[int, int],
    *,
    vertices_camera: torch.Tensor | None = None,
    backend: str | None = None,
    dilate: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of rendering: frame colours -> UV texture + per-texel confidence.

    image B x H x W x C, vertices_clip B x V x 4 (as for `rasterize`). Returns texture
    B x Ht x Wt x C and confidence B x Ht x Wt x 1 in [0, 1]: cos of the angle between the
    surface normal and the ray to the camera for texels whose surface point is visible,
    0 for texels not seen (occluded, back-facing, outside the frame or outside the UV
    layout). The cosine needs metric geometry: pass `vertices_camera` (B x V x 3, OpenCV
    camera space, mm); without it a centred pinhole with focal max(H, W) px is assumed
    (perspective) or only visibility is used (orthographic). Unseen texels take colours from
    seen neighbours for `dilate` texels (so bilinear lookups at chart borders stay clean) but
    keep confidence 0. Texel centres follow `render.texture` (v up).
    """
    img = _batched(image, 4)
    clip = _batched(vertices_clip, 3).to(img.dtype)
    B, H, W, C = img.shape
    Ht, Wt = (texture_size, texture_size) if isinstance(texture_size, int) else texture_size
    triangles = triangles.to(device=clip.device, dtype=torch.int64)
    uv = uv_coords.to(device=clip.device, dtype=clip.dtype)
    uv_clip = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2, torch.zeros_like(uv[:, 0]),
                           torch.ones_like(uv[:, 0])], -1)
    uv_raster = rasterize(uv_clip.unsqueeze(0), uv_triangles, (Ht, Wt), backend=backend)
    faces = uv_raster.pixel_triangle  # texel -> triangle
    lam = uv_raster.pixel_barycentrics  # affine in uv == barycentric on the 3D triangle
    texel = uv_raster.pixel_index  # into Ht*Wt
    image_raster = rasterize(clip, triangles, (H, W), backend=backend)
    perspective = bool((clip[..., 3] - clip[..., :1, 3]).abs().max() > 1e-6)
    view_depth = clip[..., 3] if perspective else clip[..., 2] / clip[..., 3]
    pixel_depth = interpolate(view_depth.unsqueeze(-1), image_raster)[..., 0]  # B x H x W
    textures = img.new_zeros(B, Ht * Wt, C)
    confidence = img.new_zeros(B, Ht * Wt)
    for b in range(B):
        corners = clip[b][triangles[faces]]  # M x 3 x 4
        point = (corners * lam.unsqueeze(-1)).sum(1)  # M x 4 clip
        w = point[:, 3]
        ok = w > 1e-8
        ndc = point[:, :2] / torch.where(ok, w, torch.ones_like(w)).unsqueeze(1)
        inside = ok & (ndc.abs() <= 1).all(1)
        samples = nnf.grid_sample(img[b:b + 1].permute(0, 3, 1, 2), ndc.view(1, 1, -1, 2),
                                  mode="bilinear", padding_mode="border", align_corners=False)
        colors = samples[0, :, 0].T  # M x C
        # Visibility: depth test against the frame's z-buffer at the nearest pixel.
        px = ((ndc[:, 0] + 1) * W / 2 - 0.5).round().clamp(0, W - 1).long()
        py = ((ndc[:, 1] + 1) * H / 2 - 0.5).round().clamp(0, H - 1).long()
        depth_here = (corners[..., 3] if perspective else corners[..., 2] / corners[..., 3])
        depth_here = (depth_here * lam).sum(1)
        seen_tri = image_raster.triangle_id[b, py, px]
        buffer_depth = pixel_depth[b, py, px]
        tol = 0.01 * buffer_depth.abs() if perspective else torch.full_like(buffer_depth, 1e-3)
        visible = inside & (seen_tri >= 0) & ((seen_tri == faces)
                                              | (depth_here <= buffer_depth + tol))
        # Grazing-angle confidence.
        if vertices_camera is not None:
            vc = _batched(vertices_camera, 3)[b].to(clip.dtype)
            normals = vertex_normals(vc, triangles)
        elif perspective:
            focal = float(max(H, W))
            vw = clip[b, :, 3]
            vc = torch.stack([clip[b, :, 0] / vw * (W / 2) * vw / focal,
                              clip[b, :, 1] / vw * (H / 2) * vw / focal, vw], -1)
            normals = vertex_normals(vc, triangles)
        else:
            vc = None
        if vc is not None:
            n = nnf.normalize((normals[triangles[faces]] * lam.unsqueeze(-1)).sum(1), dim=-1)
            p = (vc[triangles[faces]] * lam.unsqueeze(-1)).sum(1)
            view = -nnf.normalize(p, dim=-1) if perspective else p.new_tensor([0.0, 0.0, -1.0])
            cos = (n * view).sum(-1).clamp(0, 1)
        else:
            cos = torch.ones_like(w)
        conf = torch.where(visible, cos, torch.zeros_like(cos))
        textures[b, texel] = torch.where((conf > 0).unsqueeze(1), colors, 0)
        confidence[b, texel] = conf
    textures = textures.reshape(B, Ht, Wt, C)
    confidence = confidence.reshape(B, Ht, Wt, 1)
    if dilate > 0:
        textures = _dilate(textures, confidence > 0, dilate)
    return textures, confidence


def extract_texture(
    image: torch.Tensor,
    vertices: torch.Tensor,
    triangles: torch.Tensor,
    uv_coords: torch.Tensor,
    uv_triangles: torch.Tensor,
    camera: Camera,
    texture_size: int | tuple[int, int],
    **options: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`unproject_to_uv` for model-space vertices seen by `camera` (exact grazing angles)."""
    verts = _batched(vertices, 3)
    return unproject_to_uv(image, camera.to_clip(verts), triangles, uv_coords, uv_triangles,
                           texture_size, vertices_camera=camera.to_camera(verts), **options)
