"""The `Raster` result and the pure-PyTorch rasterizer (the embedded default backend).

Design of `rasterize_torch` (no dense pixels x triangles tensors anywhere):
1. under no_grad, per (batch, triangle) instance in float64: project, cull, split the
   triangle at its middle vertex into two halves with one left and one right edge each;
2. per (half, pixel row): the exact run of pixel centres between the two edge crossings
   (float32; edges are evaluated in a canonical order, lower vertex id first, so two
   triangles sharing an edge compute identical crossings: a centre on the edge is claimed by
   both, never by neither, i.e. the mesh is watertight). Candidates are therefore only the
   covered pixels of each triangle (about 2.7 per visible pixel on a head: back faces and
   occluded front faces), enumerated in chunks of at most `chunk`;
3. the z-buffer is one `scatter_reduce(amin)` over a packed int64 key
   (quantised z/w << bits | triangle id): exact, deterministic (ties -> lower triangle id);
4. with autograd: perspective-correct barycentrics and depth for the winning triangle of
   each covered pixel only, from per-triangle planes (see `barycentric_fields`).

On CPU with numba importable, steps 1-3 run as one compiled scanline loop with the same
arithmetic (`render.kernels.zbuffer_numba`: identical triangle ids), and the per-pixel part
of step 4 as a compiled autograd Function; the torch code here is the CUDA path and the
fallback (no numba, MORPH3D_NUMBA=0, or a kernel self-test failure).

Clipping policy: a triangle with any vertex at w <= 1e-8 (at or behind the eye), a
non-finite vertex or zero screen area is culled (never wrapped); fragments outside
-1 <= z/w <= 1 are discarded per pixel (near/far planes).
"""

from __future__ import annotations

import functools
import warnings
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
    `depth` B x H x W (z/w in [-1, 1], 1.0 on background); the last two are built on first
    access (the render path only needs the sparse views, and building them costs as much as
    shading). Sparse views over the M covered pixels (what `interpolate` uses):
    `pixel_index` (M,) into the flattened B*H*W grid, `pixel_triangle` (M,),
    `pixel_barycentrics` M x 3, `pixel_depth` (M,).
    `clip_vertices` and `triangles` are kept for `antialias`; `native` holds a backend's own
    output (nvdiffrast's rast tensor) when there is one.
    """

    triangle_id: torch.Tensor
    pixel_index: torch.Tensor
    pixel_triangle: torch.Tensor
    pixel_barycentrics: torch.Tensor
    pixel_depth: torch.Tensor
    clip_vertices: torch.Tensor
    triangles: torch.Tensor
    backend: str = "torch"
    native: Any = None

    @functools.cached_property
    def barycentrics(self) -> torch.Tensor:
        B, (H, W) = self.batch, self.size
        bary = self.pixel_barycentrics
        dense = bary.new_zeros(B * H * W, 3).index_copy(0, self.pixel_index, bary)
        return dense.reshape(B, H, W, 3)

    @functools.cached_property
    def depth(self) -> torch.Tensor:
        B, (H, W) = self.batch, self.size
        depth = self.pixel_depth
        dense = depth.new_full((B * H * W,), BACKGROUND_DEPTH).index_copy(
            0, self.pixel_index, depth)
        return dense.reshape(B, H, W)

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
        return self.coverage.unsqueeze(-1).to(dtype or self.pixel_barycentrics.dtype)

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


def _canonical_edge(
    xa: torch.Tensor, ya: torch.Tensor, va: torch.Tensor,
    xb: torch.Tensor, yb: torch.Tensor, vb: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(px, py, dx/dy) of the edge a-b with P its endpoint of lower vertex id, so that every
    triangle sharing the edge computes bit-identical crossings px + (y - py) dx/dy."""
    swap = va > vb
    px, py = torch.where(swap, xb, xa), torch.where(swap, yb, ya)
    dx = torch.where(swap, xa, xb) - px
    dy = torch.where(swap, ya, yb) - py
    return px, py, dx / torch.where(dy == 0, torch.ones_like(dy), dy)


def _zbuffer(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int, chunk: int,
    cull_backfaces: bool,
) -> tuple[torch.Tensor, int]:
    """Packed z-buffer (B*H*W int64 keys, int64 max = empty) and the id bit count.

    Scanline spans: each triangle is split at its middle vertex (in y) into a top and a
    bottom half with one left and one right edge each; every pixel row of a half gets the
    exact run [ceil(left crossing), floor(right crossing)] of pixel centres inside, so
    candidates are only covered pixels (of every triangle, before the depth test). Edges are
    evaluated in a canonical order (lower vertex id first), so two triangles sharing an edge
    compute the same crossing per row: a centre exactly on the edge is claimed by both,
    never by neither (watertight). Per pixel: one gather per row quantity, one fused
    multiply-add for the depth, the key packing and the `scatter_reduce(amin)`.
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
    sx, sy, sz = (torch.where(valid, v, 0.0) for v in (sx, sy, sz))  # culled: keep finite
    cols = [triangles[:, k].contiguous() for k in range(3)]
    x0, x1, x2 = (sx.index_select(1, c).reshape(-1) for c in cols)  # B*F each
    y0, y1, y2 = (sy.index_select(1, c).reshape(-1) for c in cols)
    z0, z1, z2 = (sz.index_select(1, c).reshape(-1) for c in cols)
    ok = (valid.index_select(1, cols[0]) & valid.index_select(1, cols[1])
          & valid.index_select(1, cols[2])).reshape(-1)
    area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok &= area2.abs() > 1e-12
    if cull_backfaces:
        # Counter-clockwise seen from outside in model space becomes clockwise in our y-down
        # screen space, i.e. positive area2 here means front-facing.
        ok &= area2 > 0
    z_lo = torch.minimum(torch.minimum(z0, z1), z2)
    z_hi = torch.maximum(torch.maximum(z0, z1), z2)
    y_lo = torch.minimum(torch.minimum(y0, y1), y2)
    y_hi = torch.maximum(torch.maximum(y0, y1), y2)
    ok &= (z_hi >= -1) & (z_lo <= 1) & (y_hi >= 0) & (y_lo <= H - 1)
    ok &= (torch.maximum(torch.maximum(x0, x1), x2) >= 0)
    ok &= (torch.minimum(torch.minimum(x0, x1), x2) <= W - 1)
    ok &= torch.ceil(y_lo) <= torch.floor(y_hi)  # at least one pixel row
    inst = ok.nonzero().squeeze(1)  # live (batch, triangle) instances
    if inst.numel() == 0:
        return zbuf, id_bits
    need_depth_test = bool(((z_lo < -1) | (z_hi > 1)).index_select(0, inst).any())
    X = torch.stack([x0, x1, x2], 1).index_select(0, inst)  # I x 3
    Y = torch.stack([y0, y1, y2], 1).index_select(0, inst)
    tri_of = inst % F if B > 1 else inst
    vid = triangles.index_select(0, tri_of)
    # Corners sorted by y: top, middle, bottom.
    Ys, order = Y.sort(1)
    Xs, Vs = X.gather(1, order), vid.gather(1, order)
    xt, xm, xb = Xs.unbind(1)
    yt, ym, yb = Ys.unbind(1)
    vt, vm, vb = Vs.unbind(1)
    long_edge = _canonical_edge(xt, yt, vt, xb, yb, vb)
    upper_edge = _canonical_edge(xt, yt, vt, xm, ym, vm)
    lower_edge = _canonical_edge(xm, ym, vm, xb, yb, vb)
    flat_bottom = ym == yb  # the lower half is one row on the horizontal edge: use upper
    lower_edge = tuple(torch.where(flat_bottom, u, w) for u, w in zip(upper_edge, lower_edge,
                                                                        strict=True))
    mid_left = (xb - xt) * (ym - yt) - (yb - yt) * (xm - xt) > 0
    # Halves: top rows [ceil(yt), ceil(ym) - 1], bottom rows [ceil(ym), floor(yb)].
    y_mid = torch.ceil(ym).clamp(0, H)
    first = torch.cat([torch.ceil(yt).clamp_min(0), y_mid])
    last = torch.cat([y_mid - 1, torch.floor(yb).clamp_max(H - 1)])
    short = [torch.cat([u, w]) for u, w in zip(upper_edge, lower_edge, strict=True)]
    longe = [torch.cat([u, u]) for u in long_edge]
    left_is_short = torch.cat([mid_left, mid_left])
    left = [torch.where(left_is_short, u, w).float() for u, w in zip(short, longe, strict=True)]
    right = [torch.where(left_is_short, w, u).float() for u, w in zip(short, longe, strict=True)]
    half_inst = torch.arange(inst.numel(), device=device).repeat(2)

    # Rows: one per (half, pixel row); crossings in float32 (|y - py| stays within the
    # edge's own y extent, so the products are small).
    n_rows = (last - first + 1).clamp_min(0).to(torch.int64)
    h = torch.repeat_interleave(n_rows)
    row_start = torch.cumsum(n_rows, 0) - n_rows
    row_y = (first - row_start.to(first.dtype)).index_select(0, h) + torch.arange(
        h.numel(), device=device, dtype=first.dtype)  # exact: integers < 2^53
    y32 = row_y.float()
    # Separate multiply and add (no fused addcmul): render.kernels computes the same
    # roundings, so both paths pick identical pixels.
    lx = (y32 - left[1].index_select(0, h)).mul_(left[2].index_select(0, h)).add_(
        left[0].index_select(0, h))
    rx = (y32 - right[1].index_select(0, h)).mul_(right[2].index_select(0, h)).add_(
        right[0].index_select(0, h))
    x_first = torch.ceil(lx.clamp_(-1, W)).clamp_min_(0)
    x_last = torch.floor(rx.clamp_(-1, W)).clamp_max_(W - 1)
    counts = (x_last - x_first + 1).clamp_min_(0).to(torch.int64)
    live = counts.nonzero().squeeze(1)
    if live.numel() == 0:
        return zbuf, id_bits
    counts = counts.index_select(0, live)
    row_y = row_y.index_select(0, live)
    x_first = x_first.index_select(0, live).double()
    row_i = half_inst.index_select(0, h.index_select(0, live))  # instance of each row
    # Depth plane z = zc + az x + bz y per instance (z/w is affine in screen space).
    Z = torch.stack([z0, z1, z2], 1).index_select(0, inst)
    d1x, d2x = X[:, 1] - X[:, 0], X[:, 2] - X[:, 0]
    d1y, d2y = Y[:, 1] - Y[:, 0], Y[:, 2] - Y[:, 0]
    dz1, dz2 = Z[:, 1] - Z[:, 0], Z[:, 2] - Z[:, 0]
    det = area2.index_select(0, inst)
    az = (dz1 * d2y - dz2 * d1y) / det
    bz = (dz2 * d1x - dz1 * d2x) / det
    zc = Z[:, 0] - az * X[:, 0] - bz * Y[:, 0]
    depth_scale = float(2**30)  # (z/w + 1) * 2^30 < 2^31: ordered, 2^-30 resolution
    az_r = az.index_select(0, row_i)
    z_row = (zc.index_select(0, row_i) + az_r * x_first
             + bz.index_select(0, row_i) * row_y + 1) * depth_scale  # at the row's first pixel
    step_row = az_r * depth_scale
    inst_r = inst.index_select(0, row_i)
    if B > 1:
        batch_r = torch.div(inst_r, F, rounding_mode="floor")
        tri_r = inst_r - batch_r * F
        offset_row = batch_r * (H * W) + row_y.to(torch.int64) * W + x_first.to(torch.int64)
    else:
        tri_r = inst_r
        offset_row = row_y.to(torch.int64) * W + x_first.to(torch.int64)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts

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
        first_pixel = int(starts[lo])
        n = int(ends[hi - 1]) - first_pixel
        if n == 0:
            continue
        r = torch.repeat_interleave(counts[lo:hi], output_size=n)
        in_row = torch.arange(first_pixel, first_pixel + n, device=device).sub_(
            starts[lo:hi].index_select(0, r))  # position of each pixel within its row
        pix = offset_row[lo:hi].index_select(0, r).add_(in_row)
        zq = step_row[lo:hi].index_select(0, r).mul_(in_row.double()).add_(
            z_row[lo:hi].index_select(0, r))
        if need_depth_test:
            keep = ((zq >= 0) & (zq <= 2 * depth_scale)).nonzero().squeeze(1)
            zq, pix, r = (t.index_select(0, keep) for t in (zq, pix, r))
        key = zq.to(torch.int64).clamp_(0, 2**31 - 1).bitwise_left_shift_(id_bits)
        key.bitwise_or_(tri_r[lo:hi].index_select(0, r))
        zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
    return zbuf, id_bits


def rasterize_torch(
    clip_vertices: torch.Tensor,
    triangles: torch.Tensor,
    size: tuple[int, int],
    *,
    chunk: int = 1 << 18,
    cull_backfaces: bool = False,
    use_kernel: bool | None = None,
) -> Raster:
    """The torch backend's rasterizer (CPU or CUDA); see the module docstring.

    The z-buffer (which triangle covers each pixel, not differentiable) runs in the compiled
    scanline kernel of `render.kernels` for CPU tensors when numba is importable
    (`use_kernel=None`: automatic), else in torch (CUDA, or no numba); both give identical
    triangle ids. Barycentrics and depth are then recomputed in torch, differentiably.
    """
    clip, triangles, H, W = prepare_inputs(clip_vertices, triangles, size)
    if use_kernel is None:
        use_kernel = clip.device.type == "cpu" and kernels_available()
    tri_dense = None
    with torch.no_grad():
        if use_kernel:
            from render import kernels  # noqa: PLC0415 - imports numba on first use only

            sx, sy, sz, _, valid = screen_space(clip.detach().double(), H, W)
            tri_dense, pixel_index, pixel_triangle = kernels.zbuffer_numba(
                sx, sy, sz, valid, triangles, H, W, cull_backfaces)
        else:
            zbuf, id_bits = _zbuffer(clip.detach(), triangles, H, W, chunk, cull_backfaces)
            pixel_index = (zbuf != torch.iinfo(torch.int64).max).nonzero().squeeze(1)
            pixel_triangle = zbuf[pixel_index] & ((1 << id_bits) - 1)
    return finish_raster(clip, triangles, H, W, pixel_index, pixel_triangle, backend="torch",
                         tri_dense=tri_dense)


_KERNELS_AVAILABLE: bool | None = None


def kernels_available() -> bool:
    """Whether render.kernels (numba) can be used; the import is attempted once."""
    global _KERNELS_AVAILABLE
    if _KERNELS_AVAILABLE is None:
        _KERNELS_AVAILABLE = False  # also while the self-test below runs
        try:
            from render import kernels  # noqa: PLC0415

            if kernels.available():
                kernels.self_test()  # compiles once (then cached on disk), ~0.3 s cached
                _KERNELS_AVAILABLE = True
        except Exception as exc:  # noqa: BLE001 - a broken numba must not break rendering
            warnings.warn(f"render.kernels unusable, using the pure-torch rasterizer: {exc}",
                          RuntimeWarning, stacklevel=2)
    return _KERNELS_AVAILABLE


def barycentric_fields(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int,
    pixel_index: torch.Tensor, pixel_triangle: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable perspective-correct barycentrics (M x 3) and z/w (M,) at pixel centres.

    Per (batch, triangle) that owns a covered pixel, in float64 and differentiable w.r.t. the
    clip vertices: the screen-affine functions u_k = b_k / w_k (k = 0, 1, 2) and z/w as planes
    a dx + b dy + c around an integer origin o near the triangle (dx = px - ox, dy = py - oy).
    Per covered pixel, in the working precision: gather the 14 numbers, evaluate the four
    planes, bary_k = u_k / sum_j u_j. The origin keeps dx, dy small exact integers, so float32
    evaluation stays accurate even for thin triangles (absolute pixel coordinates would cost
    ~W * 6e-8 px, i.e. up to ~1e-4 in the weights of slivers).
    The barycentrics come back as a transposed view of a 3 x M tensor (columns contiguous).
    On CPU with numba the per-pixel part (both directions) is one compiled pass
    (`render.kernels.BarycentricEval`, float64 arithmetic); with nothing to differentiate the
    planes are too (`render.kernels.barycentrics_no_grad`, the same numbers).
    """
    B = clip.shape[0]
    F = triangles.shape[0]
    out_dtype = clip.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    c = clip.double()
    with torch.no_grad():  # culled vertices get harmless values (and zero gradients)
        valid = (c[..., 3] > MIN_W) & torch.isfinite(c).all(-1)
    c = torch.where(valid.unsqueeze(-1), c, c.new_tensor([0.0, 0.0, 0.0, 1.0]))
    inv_w = 1.0 / c[..., 3]
    sx = (c[..., 0] * inv_w + 1) * (W * 0.5) - 0.5
    sy = (c[..., 1] * inv_w + 1) * (H * 0.5) - 0.5
    zw = c[..., 2] * inv_w
    if (c.device.type == "cpu" and kernels_available()
            and not (torch.is_grad_enabled() and clip.requires_grad)):
        # nothing to differentiate: the planes too in one compiled pass
        from render.kernels import barycentrics_no_grad  # noqa: PLC0415

        bary, depth = barycentrics_no_grad(sx, sy, inv_w, zw, triangles, H, W, pixel_index,
                                           pixel_triangle, out_dtype)
        return bary.t(), depth
    # Planes only for the U (batch, triangle) instances that own a pixel (about 40 % of a
    # head's triangles are visible), per corner as contiguous (U,) tensors gathered from
    # the flattened B*V vertex values (cheap 1-D gathers, no U x 3 reductions).
    V = clip.shape[1]
    with torch.no_grad():
        if B > 1:
            pixel_b = torch.div(pixel_index, H * W, rounding_mode="floor")
            instance = pixel_triangle + pixel_b * F
        else:
            instance = pixel_triangle
        seen = torch.zeros(B * F, dtype=torch.bool, device=clip.device)
        seen[instance] = True
        used = seen.nonzero().squeeze(1)  # (U,) instance ids b * F + f
        compact = torch.empty(B * F, dtype=torch.int64, device=clip.device)
        compact[used] = torch.arange(used.numel(), device=clip.device)
        rows = compact.index_select(0, instance)  # (M,) into the U planes
        tri_used = used % F if B > 1 else used
        vertex_offset = torch.div(used, F, rounding_mode="floor") * V if B > 1 else 0
        cols = [triangles[:, k].index_select(0, tri_used) + vertex_offset for k in range(3)]

    def corners(values: torch.Tensor) -> list[torch.Tensor]:
        flat = values.reshape(-1)
        return [flat.index_select(0, col) for col in cols]

    x, y, iw, z = corners(sx), corners(sy), corners(inv_w), corners(zw)
    with torch.no_grad():
        ox = ((x[0] + x[1] + x[2]) / 3).clamp(-W, 2 * W).round()
        oy = ((y[0] + y[1] + y[2]) / 3).clamp(-H, 2 * H).round()
    x = [v - ox for v in x]
    y = [v - oy for v in y]
    # Edge function of corner k (edge from corner k+1 to k+2) = ea dx + eb dy + ec.
    ea = [y[(k + 1) % 3] - y[(k + 2) % 3] for k in range(3)]
    eb = [x[(k + 2) % 3] - x[(k + 1) % 3] for k in range(3)]
    ec = [x[(k + 1) % 3] * y[(k + 2) % 3] - x[(k + 2) % 3] * y[(k + 1) % 3] for k in range(3)]
    area2 = ec[0] + ec[1] + ec[2]  # the edge functions sum to twice the signed area
    inv_area = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)  # 0: never drawn
    scale = [w * inv_area for w in iw]
    za, zb, zc = ((e[0] * z[0] + e[1] * z[1] + e[2] * z[2]) * inv_area for e in (ea, eb, ec))
    planes = [  # B x F each: a_k, b_k, c_k for u_0..2, then z/w's a, b, c
        *(e * w for e, w in zip(ea, scale, strict=True)),
        *(e * w for e, w in zip(eb, scale, strict=True)),
        *(e * w for e, w in zip(ec, scale, strict=True)),
        za, zb, zc,
    ]
    if c.device.type == "cpu" and kernels_available():
        from render.kernels import BarycentricEval  # noqa: PLC0415

        bary, depth = BarycentricEval.apply(out_dtype, pixel_index, rows, H, W, ox, oy,
                                            *planes)
        return bary.t(), depth
    table = torch.stack([*planes, ox, oy], 0).to(work)  # 14 x U
    rem = pixel_index - pixel_b * (H * W) if B > 1 else pixel_index
    py_int = torch.div(rem, W, rounding_mode="floor")
    px = (rem - py_int * W).to(work)
    py = py_int.to(work)
    g = [table[i].index_select(0, rows) for i in range(14)]
    dx = px - g[12]
    dy = py - g[13]
    u = [torch.addcmul(torch.addcmul(g[6 + k], g[k], dx), g[3 + k], dy) for k in range(3)]
    depth = torch.addcmul(torch.addcmul(g[11], g[9], dx), g[10], dy)
    total = u[0] + u[1] + u[2]
    bary = torch.stack([u[0] / total, u[1] / total, u[2] / total], 0)
    return bary.to(out_dtype).t(), depth.to(out_dtype)


def finish_raster(
    clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int,
    pixel_index: torch.Tensor, pixel_triangle: torch.Tensor, backend: str,
    bary: torch.Tensor | None = None, depth: torch.Tensor | None = None, native: Any = None,
    tri_dense: torch.Tensor | None = None,
) -> Raster:
    """Build a Raster from the covered-pixel list (`tri_dense`, B*H*W ids with -1 on
    background, when the caller already has it)."""
    B = clip.shape[0]
    if bary is None or depth is None:
        bary, depth = barycentric_fields(clip, triangles, H, W, pixel_index, pixel_triangle)
    if tri_dense is None:
        tri_dense = torch.full((B * H * W,), -1, dtype=torch.int64, device=clip.device)
        tri_dense[pixel_index] = pixel_triangle
    return Raster(
        triangle_id=tri_dense.reshape(B, H, W),
        pixel_index=pixel_index,
        pixel_triangle=pixel_triangle,
        pixel_barycentrics=bary,
        pixel_depth=depth,
        clip_vertices=clip,
        triangles=triangles,
        backend=backend,
        native=native,
    )
