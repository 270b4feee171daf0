"""Backend-independent differentiable operations on a `Raster`.

interpolate, texture, the torch antialias (nvdiffrast-style analytic silhouette blending),
spherical-harmonics shading and vertex normals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from render.raster import Raster, kernels_available, screen_space

# -- interpolation --------------------------------------------------------------------------


class _Interpolate(torch.autograd.Function):
    """out[m] = sum_i bary[m, i] * attr[vid[m, i]] without keeping M x 3 x C intermediates."""

    @staticmethod
    def forward(ctx, attr: torch.Tensor, bary: torch.Tensor, vid: torch.Tensor) -> torch.Tensor:
        out = bary[:, :1] * attr.index_select(0, vid[:, 0])
        for i in (1, 2):
            out.addcmul_(bary[:, i:i + 1], attr.index_select(0, vid[:, i]))
        ctx.save_for_backward(attr, bary, vid)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        attr, bary, vid = ctx.saved_tensors
        grad_attr = grad_bary = None
        if ctx.needs_input_grad[0]:
            grad_attr = torch.zeros_like(attr)
            for i in range(3):
                grad_attr.index_add_(0, vid[:, i], bary[:, i:i + 1] * grad)
        if ctx.needs_input_grad[1]:
            grad_bary = torch.stack(
                [(attr.index_select(0, vid[:, i]) * grad).sum(1) for i in range(3)], 1)
        return grad_attr, grad_bary, None


def interpolate_sparse(
    attributes: torch.Tensor,
    raster: Raster,
    attribute_triangles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Like `interpolate` but only for the M covered pixels: M x C, in `raster.pixel_index`
    order (cheaper when the result is consumed per pixel, as `render_mesh` does)."""
    B = raster.batch
    attr = attributes.unsqueeze(0) if attributes.dim() == 2 else attributes
    if attr.dim() != 3 or attr.shape[0] not in (1, B):
        raise ValueError(f"attributes must be V x C or {B} x V x C, got {tuple(attributes.shape)}")
    Ba, Va, C = attr.shape
    tris = raster.triangles if attribute_triangles is None else attribute_triangles.to(
        device=attr.device, dtype=torch.int64)
    vid = tris.index_select(0, raster.pixel_triangle)  # M x 3
    if Ba > 1:
        vid = vid + (raster.pixel_batch() * Va).unsqueeze(1)
    bary = raster.pixel_barycentrics
    dtype = torch.promote_types(attr.dtype, bary.dtype)
    return _Interpolate.apply(attr.reshape(Ba * Va, C).to(dtype), bary.to(dtype), vid)


def scatter_pixels(values: torch.Tensor, raster: Raster, fill: float = 0.0) -> torch.Tensor:
    """M x C per covered pixel -> dense B x H x W x C (`fill` elsewhere), differentiable."""
    H, W = raster.size
    C = values.shape[-1]
    dense = values.new_full((raster.batch * H * W, C), fill)
    return dense.index_copy(0, raster.pixel_index, values).reshape(raster.batch, H, W, C)


def interpolate(
    attributes: torch.Tensor,
    raster: Raster,
    attribute_triangles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel attributes B x H x W x C from per-vertex attributes B x V x C or V x C.

    `attribute_triangles` (F x 3) indexes `attributes` when they live on a different index
    set than the positions (e.g. `uv_triangles` into `uv_coords`); background pixels are 0.
    Differentiable w.r.t. the attributes and (through the barycentrics) vertex positions.
    """
    return scatter_pixels(interpolate_sparse(attributes, raster, attribute_triangles), raster)


def texture_sparse(uv_image: torch.Tensor, uv: torch.Tensor, batch_index: torch.Tensor,
                   *, filter: str = "bilinear") -> torch.Tensor:
    """Sample a texture (Ht x Wt x C or B x Ht x Wt x C) at M uv points (M x 2) -> M x C."""
    image = uv_image.unsqueeze(0) if uv_image.dim() == 3 else uv_image
    if image.shape[0] == 1:
        return texture(image, uv.view(1, 1, -1, 2), filter=filter)[0, 0]
    out = uv.new_zeros(uv.shape[0], image.shape[-1])
    for b in range(image.shape[0]):
        rows = (batch_index == b).nonzero().squeeze(1)
        out = out.index_copy(0, rows, texture(image[b:b + 1], uv[rows].view(1, 1, -1, 2),
                                              filter=filter)[0, 0])
    return out


# -- texture ---------------------------------------------------------------------------------


def texture(
    uv_image: torch.Tensor,
    uv: torch.Tensor,
    *,
    filter: str = "bilinear",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample a texture Ht x Wt x C (or B x Ht x Wt x C) at uv B x H x W x 2.

    uv in [0, 1] with v up: row 0 of the image is v = 1, texel (i, j) has its centre at
    u = (j + 0.5) / Wt, v = 1 - (i + 0.5) / Ht; outside [0, 1] clamps to the border texels.
    `filter` is "bilinear" or "nearest". `mask` (B x H x W x 1) zeroes background pixels.
    Differentiable w.r.t. the texture and uv.
    """
    if filter not in ("bilinear", "nearest"):
        raise ValueError(f"filter must be 'bilinear' or 'nearest', got {filter!r}")
    B = uv.shape[0]
    image = uv_image.unsqueeze(0) if uv_image.dim() == 3 else uv_image
    if image.shape[0] not in (1, B):
        raise ValueError(f"texture batch {image.shape[0]} does not match uv batch {B}")
    image = image.expand(B, -1, -1, -1).permute(0, 3, 1, 2)
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], -1).to(image.dtype)
    out = nnf.grid_sample(image, grid, mode=filter, padding_mode="border", align_corners=False)
    out = out.permute(0, 2, 3, 1)
    return out if mask is None else out * mask.to(out.dtype)


# -- antialias -------------------------------------------------------------------------------

_NEIGHBOUR_CACHE: dict[tuple, torch.Tensor] = {}


def edge_neighbours(triangles: torch.Tensor) -> torch.Tensor:
    """F x 3: the triangle across edge i (opposite corner i), -1 on boundary/non-manifold."""
    key = (triangles.device, triangles.data_ptr(), tuple(triangles.shape), triangles._version)
    cached = _NEIGHBOUR_CACHE.get(key)
    if cached is not None:
        return cached
    F = triangles.shape[0]
    edges = triangles[:, [[1, 2], [2, 0], [0, 1]]].reshape(-1, 2)  # 3F x 2
    lo, hi = edges.amin(1), edges.amax(1)
    n_vertices = int(triangles.max()) + 1 if F else 1
    edge_key = lo * n_vertices + hi
    order = torch.argsort(edge_key)
    _, counts = torch.unique_consecutive(edge_key[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pairs = starts[counts == 2]
    a, b = order[pairs], order[pairs + 1]
    neighbours = torch.full((3 * F,), -1, dtype=torch.int64, device=triangles.device)
    neighbours[a] = torch.div(b, 3, rounding_mode="floor")
    neighbours[b] = torch.div(a, 3, rounding_mode="floor")
    neighbours = neighbours.reshape(F, 3)
    if len(_NEIGHBOUR_CACHE) > 16:
        _NEIGHBOUR_CACHE.clear()
    _NEIGHBOUR_CACHE[key] = neighbours
    return neighbours


def _edge_values(
    sx: torch.Tensor, sy: torch.Tensor, px: torch.Tensor, py: torch.Tensor
) -> torch.Tensor:
    """Unnormalised edge functions (N x 3) of triangles with corners sx, sy (N x 3)."""
    x = sx - px.unsqueeze(1)
    y = sy - py.unsqueeze(1)
    return torch.stack([
        x[:, 1] * y[:, 2] - x[:, 2] * y[:, 1],
        x[:, 2] * y[:, 0] - x[:, 0] * y[:, 2],
        x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0],
    ], 1)


def antialias_torch(color: torch.Tensor, raster: Raster, *,
                    use_kernel: bool | None = None) -> torch.Tensor:
    """Analytic antialiasing of silhouette edges (the method of nvdiffrast's `antialias`).

    For every pair of horizontally or vertically adjacent pixels showing different
    triangles, the nearer pixel's triangle is followed towards the other pixel centre; if it
    ends on a silhouette edge (boundary edge, or one whose neighbour faces the other way)
    crossing at a fraction s of the way, the pixel whose 1-pixel box is partly covered gets
    the colours mixed by the covered length (s - 1/2 or 1/2 - s). The mix is a function of the
    vertex positions, so silhouettes carry gradients w.r.t. geometry and camera.
    The edge search runs in `render.kernels` for CPU tensors when numba is importable
    (`use_kernel=None`: automatic), else in torch; both find the same pairs.
    """
    B, H, W, C = color.shape
    clip = raster.clip_vertices
    triangles = raster.triangles
    V = clip.shape[1]
    flat_color = color.reshape(B * H * W, C)
    if use_kernel is None:
        use_kernel = clip.device.type == "cpu" and kernels_available()
    if use_kernel:
        # The edge search (not differentiable) in the compiled kernel; same pairs and order.
        from render import kernels  # noqa: PLC0415

        with torch.no_grad():
            sx, sy, _, _, valid = screen_space(clip.detach(), H, W)
            f, k, edge = kernels.antialias_pairs(raster, sx, sy, valid,
                                                 edge_neighbours(triangles))
            if f.numel() == 0:
                return color
            b = torch.div(f, H * W, rounding_mode="floor")
            vid = triangles.index_select(0, raster.triangle_id.reshape(-1).index_select(0, f))
            vid = vid + (b * V).unsqueeze(1)
            rem_f, rem_k = f - b * H * W, k - b * H * W
            fy, fx = torch.div(rem_f, W, rounding_mode="floor"), rem_f % W
            ky, kx = torch.div(rem_k, W, rounding_mode="floor"), rem_k % W
        return _antialias_blend(color, flat_color, clip, f, k, edge, vid, fx, fy, kx, ky)
    tri = raster.triangle_id.reshape(-1)
    depth = raster.depth.detach().reshape(-1)
    with torch.no_grad():
        sx, sy, _, _, valid = screen_space(clip.detach(), H, W)
        flat_tri = triangles.reshape(-1)
        cx = sx[:, flat_tri].reshape(B, -1, 3)
        cy = sy[:, flat_tri].reshape(B, -1, 3)
        area2 = (cx[..., 1] - cx[..., 0]) * (cy[..., 2] - cy[..., 0]) - (
            cx[..., 2] - cx[..., 0]) * (cy[..., 1] - cy[..., 0])
        orient = torch.sign(area2) * valid[:, flat_tri].reshape(B, -1, 3).all(-1)
        neighbours = edge_neighbours(triangles)  # F x 3
        nb_orient = orient[:, neighbours.clamp_min(0)]  # B x F x 3
        silhouette = (neighbours < 0).unsqueeze(0) | (nb_orient != orient.unsqueeze(-1))
        # Adjacent pixel pairs with different triangles, at least one of which has a
        # silhouette edge (only those can end on one): a dense boolean prefilter.
        has_silhouette = silhouette.any(-1)  # B x F
        F = triangles.shape[0]
        rows = raster.pixel_triangle
        if B > 1:
            rows = rows + raster.pixel_batch() * F
        flag = torch.zeros(B * H * W, dtype=torch.bool, device=clip.device)
        flag[raster.pixel_index] = has_silhouette.reshape(-1).index_select(0, rows)
        flag = flag.reshape(B, H, W)
        grid = raster.triangle_id
        h_pairs = (grid[:, :, :-1] != grid[:, :, 1:]) & (flag[:, :, :-1] | flag[:, :, 1:])
        v_pairs = (grid[:, :-1, :] != grid[:, 1:, :]) & (flag[:, :-1, :] | flag[:, 1:, :])
        hb, hy, hx = h_pairs.nonzero(as_tuple=True)
        vb, vy, vx = v_pairs.nonzero(as_tuple=True)
        p = torch.cat([(hb * H + hy) * W + hx, (vb * H + vy) * W + vx])
        q = torch.cat([(hb * H + hy) * W + hx + 1, (vb * H + vy + 1) * W + vx])
        if p.numel() == 0:
            return color
        tp, tq = tri[p], tri[q]
        front_is_p = (tq < 0) | ((tp >= 0) & (depth[p] <= depth[q]))
        f = torch.where(front_is_p, p, q)
        k = torch.where(front_is_p, q, p)
        t = tri[f]
        b = torch.div(f, H * W, rounding_mode="floor")
        # Only triangles with a silhouette edge can end on one: drop the other pairs early.
        relevant = has_silhouette[b, t].nonzero().squeeze(1)
        if relevant.numel() == 0:
            return color
        f, k, t, b = f[relevant], k[relevant], t[relevant], b[relevant]
        rem_f, rem_k = f - b * H * W, k - b * H * W
        fy, fx = torch.div(rem_f, W, rounding_mode="floor"), rem_f % W
        ky, kx = torch.div(rem_k, W, rounding_mode="floor"), rem_k % W
        vid = triangles[t] + (b * V).unsqueeze(1)
        tsx, tsy = sx.reshape(-1)[vid], sy.reshape(-1)[vid]
        ef = _edge_values(tsx, tsy, fx.to(tsx.dtype), fy.to(tsx.dtype))
        ek = _edge_values(tsx, tsy, kx.to(tsx.dtype), ky.to(tsx.dtype))
        sign = torch.sign(ef.sum(1, keepdim=True))
        ef, ek = ef * sign, ek * sign
        crossed = (ek < 0) & silhouette[b, t]
        s_all = torch.where(crossed, ef / (ef - ek).clamp_min(1e-30),
                            torch.full_like(ef, math.inf))
        s_min, edge = s_all.min(1)
        keep = torch.isfinite(s_min).nonzero().squeeze(1)
        if keep.numel() == 0:
            return color
        f, k, b, edge = f[keep], k[keep], b[keep], edge[keep]
        vid = vid[keep]
        fx, fy, kx, ky = fx[keep], fy[keep], kx[keep], ky[keep]
    return _antialias_blend(color, flat_color, clip, f, k, edge, vid, fx, fy, kx, ky)


def _antialias_blend(
    color: torch.Tensor, flat_color: torch.Tensor, clip: torch.Tensor,
    f: torch.Tensor, k: torch.Tensor, edge: torch.Tensor, vid: torch.Tensor,
    fx: torch.Tensor, fy: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor,
) -> torch.Tensor:
    """The differentiable part of the antialias: the crossing fraction s of the chosen
    silhouette edge (vertices vid N x 3 into the B*V clip rows) between the centres of the
    front pixel f (fx, fy) and the other pixel k (kx, ky), and the colour mix."""
    B, H, W, C = color.shape
    V = clip.shape[1]
    corners = clip.reshape(B * V, 4)[vid]  # N x 3 x 4
    inv_w = 1.0 / corners[..., 3]
    gx = (corners[..., 0] * inv_w + 1) * (W * 0.5) - 0.5
    gy = (corners[..., 1] * inv_w + 1) * (H * 0.5) - 0.5
    ef = _edge_values(gx, gy, fx.to(gx.dtype), fy.to(gx.dtype)).gather(1, edge[:, None])
    ek = _edge_values(gx, gy, kx.to(gx.dtype), ky.to(gx.dtype)).gather(1, edge[:, None])
    s = ef / (ef - ek)  # N x 1
    cf, ck = flat_color[f], flat_color[k]
    beyond = s >= 0.5
    # s >= 1/2: the front surface covers part of the other pixel; else it leaves part of
    # its own pixel uncovered.
    delta = torch.where(beyond, (s - 0.5) * (cf - ck), (0.5 - s) * (ck - cf))
    target = torch.where(beyond.squeeze(1), k, f)
    out = flat_color.index_add(0, target, delta.to(flat_color.dtype))
    return out.reshape(B, H, W, C)


# -- shading ---------------------------------------------------------------------------------

# Lambertian-convolved real SH basis, normalised so that basis 0 is 1 (coefficient 0 is the
# ambient irradiance). Order (l, m): (0,0) (1,-1) (1,0) (1,1) (2,-2) (2,-1) (2,0) (2,1) (2,2):
# [1, c1 y, c1 z, c1 x, c2 xy, c2 yz, c3 (3z^2 - 1), c2 xz, c4 (x^2 - y^2)].
_C1 = 2.0 / math.sqrt(3.0)
_C2 = math.sqrt(15.0) / 4.0
_C3 = math.sqrt(5.0) / 8.0
_C4 = math.sqrt(15.0) / 8.0


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) basis values (see the constants above)."""
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.ones_like(x), _C1 * y, _C1 * z, _C1 * x,
        _C2 * x * y, _C2 * y * z, _C3 * (3 * z * z - 1), _C2 * x * z, _C4 * (x * x - y * y),
    ], -1)


def sh_shading(normals: torch.Tensor, sh_coeffs: torch.Tensor) -> torch.Tensor:
    """Irradiance (B x ... x 3) for unit normals B x ... x 3 under SH lighting.

    sh_coeffs: B x 9 x 3 (basis index, RGB channel) or B x 27 (the same, flattened row-major,
    i.e. `.reshape(B, 9, 3)`); an unbatched 9 x 3 / 27 is shared by the batch. The normals'
    frame is the lighting frame: `render_mesh` uses view space with model-style axes (x right,
    y up, z towards the camera), so coefficient 2 > 0 lights the face from the front.
    Coefficients [1, 0, ..., 0] per channel give shading 1 everywhere.
    """
    coeffs = sh_coeffs
    if coeffs.dim() == 1 or (coeffs.dim() == 2 and coeffs.shape == (9, 3)):
        coeffs = coeffs.reshape(1, 9, 3)
    coeffs = coeffs.reshape(coeffs.shape[0], 9, 3)
    basis = sh_basis(normals)
    B = normals.shape[0]
    if coeffs.shape[0] not in (1, B):
        raise ValueError(f"sh_coeffs batch {coeffs.shape[0]} does not match normals batch {B}")
    flat = basis.reshape(B, -1, 9)
    out = torch.einsum("bnk,bkc->bnc", flat, coeffs.to(flat.dtype).expand(B, 9, 3))
    return out.reshape(*normals.shape[:-1], 3)


def sh_shading_channels(normals: torch.Tensor, sh_coeffs: torch.Tensor,
                        batch_index: torch.Tensor | None = None) -> torch.Tensor:
    """`sh_shading` for M not necessarily unit normals stored channel-major (3 x M; they are
    normalised here, eps 1e-12 like `nnf.normalize`) -> shading 3 x M. sh_coeffs Bc x 9 x 3;
    pixel m uses lighting batch_index[m] when Bc > 1.

    Order-2 SH irradiance is a quadratic form in the normal: with the 9 features
    (xx, xy, xz, yy, yz, zz, x, y, z) it is one (3 Bc x 9) @ (9 x M) product plus a constant,
    which on CPU is far cheaper than building the M x 9 basis and contracting it per pixel.
    """
    x, y, z = normals.unbind(0)
    inv_sq = 1.0 / (x * x + y * y + z * z).clamp_min(1e-24)
    inv = inv_sq.sqrt()
    features = torch.stack([x * x * inv_sq, x * y * inv_sq, x * z * inv_sq, y * y * inv_sq,
                            y * z * inv_sq, z * z * inv_sq, x * inv, y * inv, z * inv], 0)
    s = sh_coeffs.to(normals.dtype).reshape(-1, 9, 3)
    Bc = s.shape[0]
    weights = torch.stack([  # Bc x 9 x 3, rows as the features (see `sh_basis`)
        _C4 * s[:, 8], _C2 * s[:, 4], _C2 * s[:, 7], -_C4 * s[:, 8], _C2 * s[:, 5],
        3 * _C3 * s[:, 6], _C1 * s[:, 3], _C1 * s[:, 1], _C1 * s[:, 2]], 1)
    constant = s[:, 0] - _C3 * s[:, 6]  # Bc x 3
    out = weights.transpose(1, 2).reshape(3 * Bc, 9) @ features + constant.reshape(3 * Bc, 1)
    if Bc == 1:
        return out
    rows = batch_index.unsqueeze(0) * 3 + torch.arange(3, device=out.device).unsqueeze(1)
    return out.gather(0, rows)


def interpolate_channels(attributes: torch.Tensor, raster: Raster,
                         attribute_triangles: torch.Tensor | None = None, *,
                         batched: bool = False) -> torch.Tensor:
    """`interpolate_sparse` with channel-major storage: attributes C x V (shared by the
    batch) or, with `batched`, C x (B*V) (vertex index b*V + v) -> C x M, covered pixels.
    One 1-D gather and multiply-add per channel and corner: on CPU much cheaper than
    gathering M x C rows and broadcasting the weights."""
    tris = raster.triangles if attribute_triangles is None else attribute_triangles.to(
        device=attributes.device, dtype=torch.int64)
    B = raster.batch
    if attributes.device.type == "cpu" and kernels_available():
        from render.kernels import InterpolateChannels  # noqa: PLC0415

        H, W = raster.size
        step = attributes.shape[1] // B if batched and B > 1 else 0
        return InterpolateChannels.apply(attributes, raster.pixel_barycentrics.t(), tris,
                                         raster.pixel_index, raster.pixel_triangle, H * W,
                                         step)
    corner_ids = [tris[:, k].contiguous().index_select(0, raster.pixel_triangle)
                  for k in range(3)]
    if batched and B > 1:
        step = attributes.shape[1] // B
        offset = raster.pixel_batch() * step
        corner_ids = [ids + offset for ids in corner_ids]
    bary = raster.pixel_barycentrics.to(attributes.dtype)
    weights = [bary[:, k] for k in range(3)]
    rows = []
    for channel in attributes.unbind(0):
        value = channel.index_select(0, corner_ids[0]) * weights[0]
        value = value + channel.index_select(0, corner_ids[1]) * weights[1]
        rows.append(value + channel.index_select(0, corner_ids[2]) * weights[2])
    return torch.stack(rows, 0)


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B x V x 3 or V x 3), outward for CCW triangles."""
    batched = vertices.dim() == 3
    verts = vertices if batched else vertices.unsqueeze(0)
    tris = triangles.to(device=verts.device, dtype=torch.int64)
    B, V = verts.shape[0], verts.shape[1]
    cols = [tris[:, k].contiguous() for k in range(3)]
    c0, c1, c2 = (verts.index_select(1, col) for col in cols)  # B x F x 3 each
    face_normals = torch.linalg.cross(c1 - c0, c2 - c0, dim=-1).reshape(-1, 3)  # |n| = 2 area
    offset = (V * torch.arange(B, device=verts.device)).unsqueeze(1)
    normals = verts.new_zeros(B * V, 3)
    for col in cols:  # one index_add per corner: no 3x repeated copy of the face normals
        normals = normals.index_add(0, (col.unsqueeze(0) + offset).reshape(-1), face_normals)
    normals = nnf.normalize(normals.reshape(B, V, 3), dim=-1, eps=1e-12)
    return normals if batched else normals[0]
