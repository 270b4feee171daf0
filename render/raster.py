"""The `Raster` result and the pure-PyTorch rasterizer (the embedded default backend).

Design of `rasterize_torch` (no dense pixels x triangles tensors anywhere):
1. under no_grad: project vertices to pixels, build per-triangle screen bounding boxes and
   enumerate candidate (triangle, pixel) pairs only inside each box (repeat_interleave);
   the boxes are processed in chunks of at most `chunk` candidates;
2. edge functions decide coverage. They are evaluated unnormalised from the two edge
   endpoints, so a pixel centre on an edge shared by two triangles is claimed by both (the
   values are exact negations): the mesh is watertight, no cracks;
3. the z-buffer is one `scatter_reduce(amin)` over a packed int64 key
   (quantised z/w << bits | triangle id): exact, deterministic (ties -> lower triangle id);
4. with autograd: perspective-correct barycentrics and depth are recomputed from the clip
   vertices for the winning triangle of each covered pixel only.

Clipping policy: a triangle with any vertex at w <= 1e-8 (at or behind the eye), a
non-finite vertex or zero screen area is culled (never wrapped); fragments outside
-1 <= z/w <= 1 are discarded per pixel (near/far planes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MIN_W = 1e-8
BACKGROUND_DEPTH = 1.0  # z/w of the far plane


@dataclass
class Raster:
    """Per-pixel rasterization result for a batch of B images of size H x W.

    Dense views: `triangle_id` B x H x W int64 (-1 = background), `barycentrics`
    B x H x W x 3 (perspective-correct, weights of triangles[id, 0..2], zeros on background),
    `depth` B x H x W (z/w in [-1, 1], 1.0 on background).
    Sparse views over the M covered pixels (what `interpolate` uses): `pixel_index` (M,) into
    the flattened B*H*W grid, `pixel_triangle` (M,), `pixel_barycentrics` M x 3.
    `clip_vertices` and `triangles` are kept for `antialias`; `native` holds a backend's own
    output (nvdiffrast's rast tensor) when there is one.
    """

    triangle_id: torch.Tensor
    barycentrics: torch.Tensor
    depth: torch.Tensor
    pixel_index: torch.Tensor
    pixel_triangle: torch.Tensor
    pixel_barycentrics: torch.Tensor
    clip_vertices: torch.Tensor
    triangles: torch.Tensor
    backend: str = "torch"
    native: Any = None

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.triangle_id.shape[1]), int(self.triangle_id.shape[2]))

    @property
    def batch(self) -> int:
        return int(self.triangle_id.shape[0])

    @property
    def coverage(self) -> torch.Tensor:
        """B x H x W bool, True where a triangle was drawn."""
        return self.triangle_id >= 0

    def mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Hard coverage as B x H x W x 1 float (use `antialias` for soft edges)."""
        return self.coverage.unsqueeze(-1).to(dtype or self.barycentrics.dtype)

    def pixel_batch(self) -> torch.Tensor:
        """(M,) batch index of each covered pixel."""
        H, W = self.size
        return torch.div(self.pixel_index, H * W, rounding_mode="floor")


def prepare_inputs(
    clip_vertices: torch.Tensor, triangles: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Validate and normalise shapes: clip -> B x V x 4 float, triangles -> F x 3 int64."""
    if clip_vertices.dim() == 2:
        clip_vertices = clip_vertices.unsqueeze(0)
    if clip_vertices.dim() != 3 or clip_vertices.shape[-1] != 4:
        raise ValueError(f"clip_vertices must be B x V x 4, got {tuple(clip_vertices.shape)}")
    if not clip_vertices.is_floating_point():
        clip_vertices = clip_vertices.float()
    triangles = triangles.to(device=clip_vertices.device, dtype=torch.int64)
    if triangles.dim() != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles must be F x 3, got {tuple(triangles.shape)}")
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return clip_vertices, triangles, H, W


def screen_space(clip: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, ...]:
    """Clip B x V x 4 -> pixel x, pixel y, z/w, 1/w, valid (w > MIN_W and finite)."""
    w = clip[..., 3]
    valid = (w > MIN_W) & torch.isfinite(clip).all(-1)
    inv_w = 1.0 / torch.where(valid, w, torch.ones_like(w))
    sx = (clip[..., 0] * inv_w + 1) * (W * 0.5) - 0.5
    sy = (clip[..., 1] * inv_w + 1) * (H * 0.5) - 0.5
    sz = clip[..., 2] * inv_w
    return sx, sy, sz, inv_w, valid


def _zbuffer(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int, chunk: int,
    cull_backfaces: bool,
) -> tuple[torch.Tensor, int]:
    """Packed z-buffer (B*H*W int64 keys, int64 max = empty) and the id bit count."""
    B = clip.shape[0]
    F = triangles.shape[0]
    device = clip.device
    id_bits = max(1, int(F).bit_length())
    key_empty = torch.iinfo(torch.int64).max
    zbuf = torch.full((B * H * W,), key_empty, dtype=torch.int64, device=device)
    if F == 0:
        return zbuf, id_bits
    clip32 = clip.float()
    sx, sy, sz, _, valid = screen_space(clip32, H, W)
    flat_tri = triangles.reshape(-1)
    # B x F x 3 corner values.
    x = sx[:, flat_tri].reshape(B, F, 3)
    y = sy[:, flat_tri].reshape(B, F, 3)
    z = sz[:, flat_tri].reshape(B, F, 3)
    ok = valid[:, flat_tri].reshape(B, F, 3).all(-1)
    area2 = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (
        x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    ok &= area2.abs() > 1e-12
    if cull_backfaces:
        # Counter-clockwise seen from outside in model space becomes clockwise in our y-down
        # screen space, i.e. positive area2 here means front-facing.
        ok &= area2 > 0
    ok &= ~((z < -1).all(-1) | (z > 1).all(-1))
    xmin = torch.ceil(x.amin(-1).clamp(-1, W)).to(torch.int32).clamp_min(0)
    xmax = torch.floor(x.amax(-1).clamp(-1, W)).to(torch.int32).clamp_max(W - 1)
    ymin = torch.ceil(y.amin(-1).clamp(-1, H)).to(torch.int32).clamp_min(0)
    ymax = torch.floor(y.amax(-1).clamp(-1, H)).to(torch.int32).clamp_max(H - 1)
    ok &= (xmin <= xmax) & (ymin <= ymax)
    inst = ok.reshape(-1).nonzero().squeeze(1)  # live (batch, triangle) instances
    if inst.numel() == 0:
        return zbuf, id_bits
    bw = (xmax - xmin + 1).reshape(-1)[inst]
    bh = (ymax - ymin + 1).reshape(-1)[inst]
    counts = bw.to(torch.int64) * bh.to(torch.int64)
    # Orient every triangle counter-clockwise in screen space (swap corners 1 and 2 where
    # needed): shared edges still evaluate to exact negations, so coverage stays watertight.
    flip = (area2.reshape(-1)[inst] < 0).unsqueeze(1)
    xi = x.reshape(-1, 3)[inst]
    yi = y.reshape(-1, 3)[inst]
    zi = z.reshape(-1, 3)[inst]
    order = torch.where(flip, torch.tensor([0, 2, 1], device=device),
                        torch.tensor([0, 1, 2], device=device))
    xi, yi, zi = xi.gather(1, order), yi.gather(1, order), zi.gather(1, order)
    x0f = xmin.reshape(-1)[inst].to(xi.dtype).unsqueeze(1)
    y0f = ymin.reshape(-1)[inst].to(yi.dtype).unsqueeze(1)
    xi = xi - x0f  # corners relative to the bounding-box origin
    yi = yi - y0f
    # Depth plane z = z2 + az (px - x2) + bz (py - y2).
    d1x, d1y = xi[:, 0] - xi[:, 2], yi[:, 0] - yi[:, 2]
    d2x, d2y = xi[:, 1] - xi[:, 2], yi[:, 1] - yi[:, 2]
    dz0, dz1 = zi[:, 0] - zi[:, 2], zi[:, 1] - zi[:, 2]
    det = d1x * d2y - d1y * d2x
    az = (dz0 * d2y - dz1 * d1y) / det
    bz = (dz1 * d1x - dz0 * d2x) / det
    ftable = torch.stack(  # 9 x instances: rows stay contiguous after the gather
        [xi[:, 0], yi[:, 0], xi[:, 1], yi[:, 1], xi[:, 2], yi[:, 2], zi[:, 2], az, bz], 0)
    batch_of = torch.div(inst, F, rounding_mode="floor")
    tri_of = inst - batch_of * F
    base = (batch_of * (H * W) + ymin.reshape(-1)[inst].to(torch.int64) * W
            + xmin.reshape(-1)[inst].to(torch.int64))
    id_mask_key = tri_of  # low bits of the key
    if id_bits > 31:
        raise ValueError(f"too many triangles for the torch rasterizer: {F}")
    depth_scale = float(2**30)  # (z/w + 1) * 2^30 < 2^31: exact for float32, ordered

    # Chunks of consecutive instances with at most `chunk` candidates each (a single
    # instance is never split: it has at most H*W candidates).
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])
    if total <= chunk:
        bounds = [(0, inst.numel())]
    else:
        cuts = torch.searchsorted(ends, torch.arange(chunk, total, chunk, device=device),
                                  right=True).tolist()
        edges = sorted(set([0, *cuts, inst.numel()]))
        bounds = list(zip(edges[:-1], edges[1:], strict=False))
    # Per-instance integers: bbox width and the flat pixel index of the bbox origin.
    bw64 = bw.to(torch.int64)
    for lo, hi in bounds:
        cnt = counts[lo:hi]
        n = int(ends[hi - 1]) - (int(ends[lo - 1]) if lo > 0 else 0)
        if n == 0:
            continue
        local_inst = torch.repeat_interleave(torch.arange(hi - lo, device=device), cnt,
                                             output_size=n)
        starts = torch.cumsum(cnt, 0) - cnt
        local = torch.arange(n, device=device) - starts.index_select(0, local_inst)
        bw_c = bw64[lo:hi].index_select(0, local_inst)
        row = torch.div(local, bw_c, rounding_mode="floor")
        col = local - row * bw_c
        f = ftable[:, lo:hi].index_select(1, local_inst)
        pxf = col.to(f.dtype)
        pyf = row.to(f.dtype)
        ax, ay = f[0] - pxf, f[1] - pyf
        bx, by = f[2] - pxf, f[3] - pyf
        cx, cy = f[4] - pxf, f[5] - pyf
        inside = (bx * cy - cx * by >= 0) & (cx * ay - ax * cy >= 0) & (ax * by - bx * ay >= 0)
        keep = inside.nonzero().squeeze(1)
        fk = f.index_select(1, keep)  # depth plane only where covered
        depth = fk[6] - fk[7] * cx.index_select(0, keep) - fk[8] * cy.index_select(0, keep)
        in_range = ((depth >= -1) & (depth <= 1)).nonzero().squeeze(1)
        if in_range.numel() < keep.numel():
            keep, depth = keep.index_select(0, in_range), depth.index_select(0, in_range)
        if keep.numel() == 0:
            continue
        li = local_inst.index_select(0, keep) + lo
        pix = base.index_select(0, li) + local.index_select(0, keep) + row.index_select(
            0, keep) * (W - bw_c.index_select(0, keep))
        qdepth = ((depth + 1) * depth_scale).to(torch.int64)
        key = (qdepth << id_bits) | id_mask_key.index_select(0, li)
        zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
    return zbuf, id_bits


def rasterize_torch(
    clip_vertices: torch.Tensor,
    triangles: torch.Tensor,
    size: tuple[int, int],
    *,
    chunk: int = 1 << 18,
    cull_backfaces: bool = False,
) -> Raster:
    """Pure-PyTorch rasterizer (CPU or CUDA); see the module docstring for the algorithm."""
    clip, triangles, H, W = prepare_inputs(clip_vertices, triangles, size)
    with torch.no_grad():
        zbuf, id_bits = _zbuffer(clip.detach(), triangles, H, W, chunk, cull_backfaces)
        pixel_index = (zbuf != torch.iinfo(torch.int64).max).nonzero().squeeze(1)
        pixel_triangle = zbuf[pixel_index] & ((1 << id_bits) - 1)
    return finish_raster(clip, triangles, H, W, pixel_index, pixel_triangle, backend="torch")


def barycentric_fields(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int,
    pixel_index: torch.Tensor, pixel_triangle: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable perspective-correct barycentrics (M x 3) and z/w (M,) at pixel centres."""
    B, V = clip.shape[0], clip.shape[1]
    hw = H * W
    b = torch.div(pixel_index, hw, rounding_mode="floor")
    rem = pixel_index - b * hw
    py = torch.div(rem, W, rounding_mode="floor")
    px = rem - py * W
    rows = (triangles.index_select(0, pixel_triangle) + (b * V).unsqueeze(1)).reshape(-1)
    # Thin triangles make barycentrics ill-conditioned: a pixel position error of
    # W * 6e-8 (float32 NDC) becomes ~1e-4 in the weights. So the per-vertex pixel positions
    # are computed in float64 (V work) and made relative to the pixel centre before going
    # back to the working precision; everything per pixel after that is small numbers.
    out_dtype = clip.dtype
    c = clip.reshape(B * V, 4)
    inv_w64 = 1.0 / c[:, 3].double()
    pos64 = torch.stack([(c[:, 0].double() * inv_w64 + 1) * (W * 0.5) - 0.5,
                         (c[:, 1].double() * inv_w64 + 1) * (H * 0.5) - 0.5], 1)
    pixel = torch.stack([px, py], 1).to(torch.float64).repeat_interleave(3, dim=0)
    rel = (pos64.index_select(0, rows) - pixel).to(out_dtype).reshape(-1, 3, 2)
    inv_w = inv_w64.to(out_dtype)
    per_vertex = torch.stack([inv_w, c[:, 2] * inv_w], 1).index_select(0, rows).reshape(-1, 3, 2)
    sx, sy = rel[..., 0], rel[..., 1]
    # Edge functions relative to the pixel centre; their sum is twice the signed area.
    e = torch.stack([
        sx[:, 1] * sy[:, 2] - sx[:, 2] * sy[:, 1],
        sx[:, 2] * sy[:, 0] - sx[:, 0] * sy[:, 2],
        sx[:, 0] * sy[:, 1] - sx[:, 1] * sy[:, 0],
    ], 1)
    screen_bary = e / e.sum(1, keepdim=True)
    depth = (screen_bary * per_vertex[..., 1]).sum(1)
    persp = screen_bary * per_vertex[..., 0]
    bary = persp / persp.sum(1, keepdim=True)
    return bary.to(out_dtype), depth.to(out_dtype)


def finish_raster(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int,
    pixel_index: torch.Tensor, pixel_triangle: torch.Tensor, backend: str,
    bary: torch.Tensor | None = None, depth: torch.Tensor | None = None, native: Any = None,
) -> Raster:
    """Build the dense and sparse views of a Raster from the covered-pixel list."""
    B = clip.shape[0]
    if bary is None or depth is None:
        bary, depth = barycentric_fields(clip, triangles, H, W, pixel_index, pixel_triangle)
    n = B * H * W
    tri_dense = torch.full((n,), -1, dtype=torch.int64, device=clip.device)
    tri_dense[pixel_index] = pixel_triangle
    bary_dense = bary.new_zeros(n, 3).index_copy(0, pixel_index, bary)
    depth_dense = depth.new_full((n,), BACKGROUND_DEPTH).index_copy(0, pixel_index, depth)
    return Raster(
        triangle_id=tri_dense.reshape(B, H, W),
        barycentrics=bary_dense.reshape(B, H, W, 3),
        depth=depth_dense.reshape(B, H, W),
        pixel_index=pixel_index,
        pixel_triangle=pixel_triangle,
        pixel_barycentrics=bary,
        clip_vertices=clip,
        triangles=triangles,
        backend=backend,
        native=native,
    )
