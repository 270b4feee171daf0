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
    """Packed z-buffer (B*H*W int64 keys, int64 max = empty) and the id bit count.

    Scanline spans: every (triangle, pixel row) pair gets the exact run of pixel centres
    inside the triangle, so candidates are (almost) only covered pixels. Each edge is
    evaluated from its endpoints in a canonical order (lower vertex id first), so two
    triangles sharing an edge compute the same crossing x per row: a centre on the edge is
    claimed by both, never by neither (watertight). Per-row and per-triangle work is float64;
    per-pixel work is one index gather, one fused multiply-add and the key packing.
    """
    B = clip.shape[0]
    F = triangles.shape[0]
    device = clip.device
    id_bits = max(1, int(F).bit_length())
    if id_bits > 31:
        raise ValueError(f"too many triangles for the torch rasterizer: {F}")
    key_empty = torch.iinfo(torch.int64).max
    zbuf = torch.full((B * H * W,), key_empty, dtype=torch.int64, device=device)
    if F == 0:
        return zbuf, id_bits
    sx, sy, sz, _, valid = screen_space(clip.double(), H, W)
    flat_tri = triangles.reshape(-1)
    # B x F x 3 corner values.
    x = sx.index_select(1, flat_tri).reshape(B, F, 3)
    y = sy.index_select(1, flat_tri).reshape(B, F, 3)
    z = sz.index_select(1, flat_tri).reshape(B, F, 3)
    ok = valid.index_select(1, flat_tri).reshape(B, F, 3).all(-1)
    x = torch.where(ok.unsqueeze(-1), x, 0.0)  # culled anyway; keeps the arithmetic finite
    y = torch.where(ok.unsqueeze(-1), y, 0.0)
    area2 = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (
        x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    ok &= area2.abs() > 1e-12
    if cull_backfaces:
        # Counter-clockwise seen from outside in model space becomes clockwise in our y-down
        # screen space, i.e. positive area2 here means front-facing.
        ok &= area2 > 0
    z_lo, z_hi = z.amin(-1), z.amax(-1)
    ok &= (z_hi >= -1) & (z_lo <= 1)
    y_lo, y_hi = y.amin(-1), y.amax(-1)
    ymin = torch.ceil(y_lo.clamp(-1, H)).clamp_min(0)
    ymax = torch.floor(y_hi.clamp(-1, H)).clamp_max(H - 1)
    ok &= (ymin <= ymax) & (x.amax(-1) >= 0) & (x.amin(-1) <= W - 1)
    inst = ok.reshape(-1).nonzero().squeeze(1)  # live (batch, triangle) instances
    if inst.numel() == 0:
        return zbuf, id_bits
    need_depth_test = bool(((z_lo < -1) | (z_hi > 1)).reshape(-1).index_select(0, inst).any())
    xi = x.reshape(-1, 3).index_select(0, inst)
    yi = y.reshape(-1, 3).index_select(0, inst)
    zi = z.reshape(-1, 3).index_select(0, inst)
    vi = triangles.repeat(B, 1).index_select(0, inst)  # vertex ids (canonical edge order)
    area_i = area2.reshape(-1).index_select(0, inst)
    # Edge k joins corners (k+1)%3 and (k+2)%3; P is the endpoint with the lower vertex id.
    a_idx = torch.tensor([1, 2, 0], device=device)
    b_idx = torch.tensor([2, 0, 1], device=device)
    va, vb = vi[:, a_idx], vi[:, b_idx]
    swap = va > vb
    xa, xb, ya, yb = xi[:, a_idx], xi[:, b_idx], yi[:, a_idx], yi[:, b_idx]
    px = torch.where(swap, xb, xa)
    py = torch.where(swap, yb, ya)
    dx = torch.where(swap, xa, xb) - px
    dy = torch.where(swap, ya, yb) - py
    horizontal = dy == 0
    slope = torch.where(horizontal, 0.0, dx / torch.where(horizontal, 1.0, dy))
    # The interior is right of the edge (x >= crossing) iff cross(d, R - P) * dy < 0, where
    # R is the opposite corner k; cross(d, R - P) has the sign of the triangle's area.
    cross_sign = torch.where(swap, -1.0, 1.0) * area_i.sign().unsqueeze(1)
    lower = (cross_sign * dy < 0) & ~horizontal
    upper = (cross_sign * dy > 0) & ~horizontal
    inf = torch.tensor(float("inf"), dtype=px.dtype, device=device)
    lo_x = torch.where(lower, px, -inf)  # horizontal edges bound no x: +-inf with slope 0
    hi_x = torch.where(upper, px, inf)
    # Depth plane z = z0 + az (x - x0) + bz (y - y0) (z/w is affine in screen space).
    d1x, d1y, d2x, d2y = xi[:, 1] - xi[:, 0], yi[:, 1] - yi[:, 0], xi[:, 2] - xi[:, 0], yi[:, 2] - yi[:, 0]
    dz1, dz2 = zi[:, 1] - zi[:, 0], zi[:, 2] - zi[:, 0]
    det = d1x * d2y - d1y * d2x
    az = (dz1 * d2y - dz2 * d1y) / det
    bz = (dz2 * d1x - dz1 * d2x) / det

    # Rows: one per (instance, pixel row inside its vertical extent).
    ymin_i = ymin.reshape(-1).index_select(0, inst)
    n_rows = (ymax.reshape(-1).index_select(0, inst) - ymin_i).to(torch.int64) + 1
    row_inst = torch.repeat_interleave(n_rows)
    row_start = torch.cumsum(n_rows, 0) - n_rows
    row_y = ymin_i.index_select(0, row_inst) + (
        torch.arange(row_inst.numel(), device=device) - row_start.index_select(0, row_inst))
    rel_y = row_y.unsqueeze(1) - py.index_select(0, row_inst)  # rows x 3
    crossing = rel_y * slope.index_select(0, row_inst)
    left = (lo_x.index_select(0, row_inst) + crossing).amax(1)
    right = (hi_x.index_select(0, row_inst) + crossing).amin(1)
    x_first = torch.ceil(left.clamp(-1, W)).clamp_min(0)
    x_last = torch.floor(right.clamp(-1, W)).clamp_max(W - 1)
    counts = (x_last - x_first + 1).clamp_min(0).to(torch.int64)
    live = counts.nonzero().squeeze(1)
    if live.numel() == 0:
        return zbuf, id_bits
    row_inst, row_y, x_first, counts = (t.index_select(0, live) for t in (
        row_inst, row_y, x_first, counts))
    # Per row: depth (scaled to the key's fixed point) at the row's first pixel and per
    # pixel step; flat pixel index of the first pixel.
    depth_scale = float(2**30)  # (z/w + 1) * 2^30 < 2^31: ordered, 2^-30 resolution
    az_r = az.index_select(0, row_inst)
    z_first = (zi[:, 0].index_select(0, row_inst)
               + az_r * (x_first - xi[:, 0].index_select(0, row_inst))
               + bz.index_select(0, row_inst) * (row_y - yi[:, 0].index_select(0, row_inst)))
    inst_of_row = inst.index_select(0, row_inst)
    batch_of = torch.div(inst_of_row, F, rounding_mode="floor")
    tri_of = inst_of_row - batch_of * F
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    # Per pixel n (position in the chunk): z = z_row + step * n, pixel = offset_row + n.
    z_row = (z_first + 1) * depth_scale
    step_row = az_r * depth_scale
    offset_row = (batch_of * (H * W) + row_y.to(torch.int64) * W
                  + x_first.to(torch.int64))

    # Chunks of consecutive rows with at most `chunk` candidates each (a row is never split).
    total = int(ends[-1])
    if total <= chunk:
        bounds = [(0, counts.numel())]
    else:
        cuts = torch.searchsorted(ends, torch.arange(chunk, total, chunk, device=device),
                                  right=True).tolist()
        edges = sorted(set([0, *cuts, counts.numel()]))
        bounds = list(zip(edges[:-1], edges[1:], strict=False))
    for lo, hi in bounds:
        first = int(starts[lo])
        n = int(ends[hi - 1]) - first
        if n == 0:
            continue
        r = torch.repeat_interleave(counts[lo:hi], output_size=n)
        local = torch.arange(n, device=device)
        # Position within the row = chunk position - row start (folded into the row terms).
        s = (starts[lo:hi] - first)
        pix = (offset_row[lo:hi] - s).index_select(0, r).add_(local)
        zrow = (z_row[lo:hi] - step_row[lo:hi] * s.to(z_row.dtype)).index_select(0, r)
        zq = zrow.addcmul_(step_row[lo:hi].index_select(0, r), local.to(zrow.dtype))
        if need_depth_test:
            keep = ((zq >= 0) & (zq <= 2 * depth_scale)).nonzero().squeeze(1)
            zq, pix, r = zq.index_select(0, keep), pix.index_select(0, keep), r.index_select(0, keep)
        key = zq.to(torch.int64).clamp_(0, 2**31 - 1).bitwise_left_shift_(id_bits)
        key.bitwise_or_(tri_of[lo:hi].index_select(0, r))
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
