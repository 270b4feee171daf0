"""Compiled (numba) CPU kernels for the non-differentiable parts of the torch renderer.

Why: on CPU the pure-torch z-buffer and antialias edge search are dominated by per-op
overhead and memory traffic of ~100 generic tensor ops per frame; a scanline loop does the
same work in a fraction of the time. Only *which* triangle covers a pixel (and which pixel
pairs straddle a silhouette) is computed here; everything differentiable stays in torch.

`zbuffer_numba` reproduces `render.raster._zbuffer` operation by operation (the same float64
setup, float32 canonical-edge crossings, float64 depth plane and packed int64 keys, no fused
multiply-adds on either side), so both paths give identical triangle ids; the tests check
that on the head model at several poses.

Compiled with `cache=True`: the machine code is stored next to this file (render/__pycache__,
git-ignored) on first use and loaded by later processes (batch workers) in milliseconds.
Importing this module needs numba; `available()` says whether it can be used.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import torch

try:  # optional: the pure-torch path is the fallback
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None

# MORPH3D_NUMBA=0 forces the pure-torch path (benchmarks, debugging).
_ENABLED = _numba is not None and os.environ.get("MORPH3D_NUMBA", "1") != "0"

INT64_MAX = np.iinfo(np.int64).max


def available() -> bool:
    """True when the compiled CPU kernels can be used."""
    return _ENABLED


def _jit(fn):
    if _numba is None:  # pragma: no cover
        return fn
    return _numba.njit(cache=True, nogil=True, error_model="numpy")(fn)


@_jit
def _edge(xa, ya, va, xb, yb, vb):
    """float32 (px, py, dx/dy) of edge a-b from its lower-id endpoint (cf. _canonical_edge)."""
    if va > vb:
        px, py, qx, qy = xb, yb, xa, ya
    else:
        px, py, qx, qy = xa, ya, xb, yb
    dx = qx - px
    dy = qy - py
    if dy == 0.0:
        dy = 1.0
    return np.float32(px), np.float32(py), np.float32(dx / dy)


@_jit
def _zbuffer_kernel(sx, sy, sz, valid, tris, H, W, cull_backfaces, id_bits, zbuf):
    """Fill `zbuf` (B*H*W int64 keys, INT64_MAX = empty) like render.raster._zbuffer."""
    B = sx.shape[0]
    F = tris.shape[0]
    n_inst = B * F
    live = np.zeros(n_inst, dtype=np.bool_)
    need_depth_test = False
    for inst in range(n_inst):  # pass 1: culling (and the global depth-test flag)
        b = inst // F
        f = inst - b * F
        i0, i1, i2 = tris[f, 0], tris[f, 1], tris[f, 2]
        if not (valid[b, i0] and valid[b, i1] and valid[b, i2]):
            continue
        x0, x1, x2 = sx[b, i0], sx[b, i1], sx[b, i2]
        y0, y1, y2 = sy[b, i0], sy[b, i1], sy[b, i2]
        z0, z1, z2 = sz[b, i0], sz[b, i1], sz[b, i2]
        area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if not abs(area2) > 1e-12:
            continue
        if cull_backfaces and not area2 > 0:
            continue
        z_lo = min(min(z0, z1), z2)
        z_hi = max(max(z0, z1), z2)
        y_lo = min(min(y0, y1), y2)
        y_hi = max(max(y0, y1), y2)
        if not (z_hi >= -1 and z_lo <= 1 and y_hi >= 0 and y_lo <= H - 1):
            continue
        if not (max(max(x0, x1), x2) >= 0 and min(min(x0, x1), x2) <= W - 1):
            continue
        if not math.ceil(max(y_lo, -1.0)) <= math.floor(min(y_hi, float(H))):
            continue
        live[inst] = True
        if z_lo < -1 or z_hi > 1:
            need_depth_test = True
    depth_scale = float(2**30)
    z_max = 2 * depth_scale
    key_max = np.int64(2**31 - 1)
    for inst in range(n_inst):  # pass 2: scanline spans and the depth test
        if not live[inst]:
            continue
        b = inst // F
        f = inst - b * F
        ids = (tris[f, 0], tris[f, 1], tris[f, 2])
        X = (sx[b, ids[0]], sx[b, ids[1]], sx[b, ids[2]])
        Y = (sy[b, ids[0]], sy[b, ids[1]], sy[b, ids[2]])
        Z = (sz[b, ids[0]], sz[b, ids[1]], sz[b, ids[2]])
        # Depth plane z = zc + az x + bz y (same operation order as the torch path).
        d1x, d2x = X[1] - X[0], X[2] - X[0]
        d1y, d2y = Y[1] - Y[0], Y[2] - Y[0]
        dz1, dz2 = Z[1] - Z[0], Z[2] - Z[0]
        det = (X[1] - X[0]) * (Y[2] - Y[0]) - (X[2] - X[0]) * (Y[1] - Y[0])
        az = (dz1 * d2y - dz2 * d1y) / det
        bz = (dz2 * d1x - dz1 * d2x) / det
        zc = Z[0] - az * X[0] - bz * Y[0]
        step = az * depth_scale
        # Corners sorted by y (stable): top t, middle m, bottom b.
        xt, yt, vt = X[0], Y[0], ids[0]
        xm, ym, vm = X[1], Y[1], ids[1]
        xb, yb, vb = X[2], Y[2], ids[2]
        if ym < yt:
            xt, yt, vt, xm, ym, vm = xm, ym, vm, xt, yt, vt
        if yb < ym:
            xm, ym, vm, xb, yb, vb = xb, yb, vb, xm, ym, vm
            if ym < yt:
                xt, yt, vt, xm, ym, vm = xm, ym, vm, xt, yt, vt
        long_e = _edge(xt, yt, vt, xb, yb, vb)
        upper_e = _edge(xt, yt, vt, xm, ym, vm)
        lower_e = upper_e if ym == yb else _edge(xm, ym, vm, xb, yb, vb)
        mid_left = (xb - xt) * (ym - yt) - (yb - yt) * (xm - xt) > 0
        # Clamped before the integer conversion (huge coordinates near w = 0 stay finite).
        y_mid = math.ceil(min(max(ym, -1.0), float(H)))
        y_mid = min(max(y_mid, 0), H)
        base = b * H * W
        for half in range(2):
            if half == 0:
                first = max(math.ceil(max(yt, -1.0)), 0)
                last = y_mid - 1
                short_e = upper_e
            else:
                first = y_mid
                last = min(math.floor(min(yb, float(H))), H - 1)
                short_e = lower_e
            if mid_left:
                left_e, right_e = short_e, long_e
            else:
                left_e, right_e = long_e, short_e
            for y in range(first, last + 1):
                y32 = np.float32(y)
                lx = left_e[0] + (y32 - left_e[1]) * left_e[2]
                rx = right_e[0] + (y32 - right_e[1]) * right_e[2]
                lx = min(max(lx, np.float32(-1.0)), np.float32(W))
                rx = min(max(rx, np.float32(-1.0)), np.float32(W))
                x_first = max(math.ceil(lx), 0)
                x_last = min(math.floor(rx), W - 1)
                if x_last < x_first:
                    continue
                z_row = (zc + az * float(x_first) + bz * float(y) + 1) * depth_scale
                offset = base + y * W + x_first
                if need_depth_test:
                    for k in range(x_last - x_first + 1):
                        zq = z_row + step * float(k)
                        if zq >= 0 and zq <= z_max:
                            q = min(max(np.int64(zq), 0), key_max)
                            zbuf[offset + k] = min(zbuf[offset + k], (q << id_bits) | f)
                else:
                    for k in range(x_last - x_first + 1):
                        zq = z_row + step * float(k)
                        q = min(max(np.int64(zq), 0), key_max)
                        zbuf[offset + k] = min(zbuf[offset + k], (q << id_bits) | f)


@_jit
def _resolve_kernel(zbuf, id_bits, tri_dense):
    """Keys -> dense triangle ids (-1 background) and the covered-pixel list."""
    mask = (np.int64(1) << id_bits) - 1
    n = 0
    for i in range(zbuf.shape[0]):
        if zbuf[i] != INT64_MAX:
            n += 1
    pixel_index = np.empty(n, dtype=np.int64)
    pixel_triangle = np.empty(n, dtype=np.int64)
    j = 0
    for i in range(zbuf.shape[0]):
        key = zbuf[i]
        if key != INT64_MAX:
            t = key & mask
            tri_dense[i] = t
            pixel_index[j] = i
            pixel_triangle[j] = t
            j += 1
        else:
            tri_dense[i] = -1
    return pixel_index, pixel_triangle


def zbuffer_numba(
    sx: torch.Tensor, sy: torch.Tensor, sz: torch.Tensor, valid: torch.Tensor,
    triangles: torch.Tensor, H: int, W: int, cull_backfaces: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Visible triangle per pixel from float64 screen coordinates (B x V each, as returned by
    `screen_space` of the float64 clip vertices) -> (dense ids B*H*W int64, -1 background;
    pixel_index (M,); pixel_triangle (M,))."""
    B = sx.shape[0]
    F = triangles.shape[0]
    id_bits = max(1, int(F).bit_length())
    if id_bits > 31:
        raise ValueError(f"too many triangles for the torch rasterizer: {F}")
    zbuf = np.full(B * H * W, INT64_MAX, dtype=np.int64)
    tri_dense = np.empty(B * H * W, dtype=np.int64)
    if F > 0:
        _zbuffer_kernel(sx.contiguous().numpy(), sy.contiguous().numpy(),
                        sz.contiguous().numpy(), valid.contiguous().numpy(),
                        triangles.contiguous().numpy(), H, W, bool(cull_backfaces), id_bits,
                        zbuf)
    pixel_index, pixel_triangle = _resolve_kernel(zbuf, id_bits, tri_dense)
    return (torch.from_numpy(tri_dense), torch.from_numpy(pixel_index),
            torch.from_numpy(pixel_triangle))


@_jit
def _antialias_pairs_kernel(tri, pixel_index, pixel_depth, sx, sy, valid, tris, neighbours,
                            H, W):
    """The edge search of `render.ops.antialias_torch` (same float32 arithmetic, same pair
    order: horizontal pairs by (batch, row, column), then vertical ones).

    Returns per kept pair: front pixel f, other pixel k, batch b, triangle t of f and the
    silhouette edge (0..2) crossed first on the way from f's centre to k's.
    """
    B = sx.shape[0]
    F = tris.shape[0]
    n = tri.shape[0]
    depth = np.empty(n, dtype=pixel_depth.dtype)
    for i in range(pixel_index.shape[0]):
        depth[pixel_index[i]] = pixel_depth[i]
    # Orientation (sign of the screen area, 0 when culled) and silhouette edges per triangle.
    orient = np.zeros((B, F), dtype=np.int8)
    for b in range(B):
        for f in range(F):
            i0, i1, i2 = tris[f, 0], tris[f, 1], tris[f, 2]
            if not (valid[b, i0] and valid[b, i1] and valid[b, i2]):
                continue
            area2 = (sx[b, i1] - sx[b, i0]) * (sy[b, i2] - sy[b, i0]) - (
                sx[b, i2] - sx[b, i0]) * (sy[b, i1] - sy[b, i0])
            orient[b, f] = 1 if area2 > 0 else (-1 if area2 < 0 else 0)
    silhouette = np.zeros((B, F, 3), dtype=np.bool_)
    has_silhouette = np.zeros((B, F), dtype=np.bool_)
    for b in range(B):
        for f in range(F):
            for e in range(3):
                nb = neighbours[f, e]
                s = nb < 0 or orient[b, nb if nb >= 0 else 0] != orient[b, f]
                silhouette[b, f, e] = s
                if s:
                    has_silhouette[b, f] = True
    cap = 1024
    out_f = np.empty(cap, dtype=np.int64)
    out_k = np.empty(cap, dtype=np.int64)
    out_e = np.empty(cap, dtype=np.int64)
    m = 0
    HW = H * W
    tiny = np.float32(1e-30)
    for vertical in range(2):
        for b in range(B):
            for y in range(H - vertical):
                for x in range(W - 1 + vertical):
                    p = b * HW + y * W + x
                    q = p + (W if vertical else 1)
                    tp, tq = tri[p], tri[q]
                    if tp == tq:
                        continue
                    if not ((tp >= 0 and has_silhouette[b, tp])
                            or (tq >= 0 and has_silhouette[b, tq])):
                        continue
                    front_is_p = tq < 0 or (tp >= 0 and depth[p] <= depth[q])
                    f, k = (p, q) if front_is_p else (q, p)
                    t = tri[f]
                    if not has_silhouette[b, t]:
                        continue
                    rf, rk = f - b * HW, k - b * HW
                    fy, fx = rf // W, rf % W
                    ky, kx = rk // W, rk % W
                    i = (tris[t, 0], tris[t, 1], tris[t, 2])
                    # Edge values of corners k at both pixel centres (cf. _edge_values).
                    fxf, fyf = np.float32(fx), np.float32(fy)
                    kxf, kyf = np.float32(kx), np.float32(ky)
                    ax0, ax1, ax2 = sx[b, i[0]] - fxf, sx[b, i[1]] - fxf, sx[b, i[2]] - fxf
                    ay0, ay1, ay2 = sy[b, i[0]] - fyf, sy[b, i[1]] - fyf, sy[b, i[2]] - fyf
                    ef0 = ax1 * ay2 - ax2 * ay1
                    ef1 = ax2 * ay0 - ax0 * ay2
                    ef2 = ax0 * ay1 - ax1 * ay0
                    bx0, bx1, bx2 = sx[b, i[0]] - kxf, sx[b, i[1]] - kxf, sx[b, i[2]] - kxf
                    by0, by1, by2 = sy[b, i[0]] - kyf, sy[b, i[1]] - kyf, sy[b, i[2]] - kyf
                    ek0 = bx1 * by2 - bx2 * by1
                    ek1 = bx2 * by0 - bx0 * by2
                    ek2 = bx0 * by1 - bx1 * by0
                    total = ef0 + ef1 + ef2
                    if total < 0:
                        ef0, ef1, ef2, ek0, ek1, ek2 = -ef0, -ef1, -ef2, -ek0, -ek1, -ek2
                    elif not total > 0:
                        ef0 = ef1 = ef2 = ek0 = ek1 = ek2 = np.float32(0.0)
                    best = np.inf
                    edge = -1
                    for e in range(3):
                        efe = ef0 if e == 0 else (ef1 if e == 1 else ef2)
                        eke = ek0 if e == 0 else (ek1 if e == 1 else ek2)
                        if eke < 0 and silhouette[b, t, e]:
                            s = efe / max(efe - eke, tiny)
                            if s < best:
                                best = s
                                edge = e
                    if edge < 0:
                        continue
                    if m == cap:
                        cap *= 2
                        out_f = _grow(out_f, cap)
                        out_k = _grow(out_k, cap)
                        out_e = _grow(out_e, cap)
                    out_f[m] = f
                    out_k[m] = k
                    out_e[m] = edge
                    m += 1
    return out_f[:m].copy(), out_k[:m].copy(), out_e[:m].copy()


@_jit
def _grow(a, cap):
    out = np.empty(cap, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def antialias_pairs(
    raster, sx: torch.Tensor, sy: torch.Tensor, valid: torch.Tensor, neighbours: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, k, edge) of the pixel pairs `antialias_torch` blends; sx, sy, valid B x V from
    `screen_space` of the clip vertices in their own dtype, neighbours F x 3."""
    H, W = raster.size
    f, k, e = _antialias_pairs_kernel(
        raster.triangle_id.reshape(-1).contiguous().numpy(),
        raster.pixel_index.contiguous().numpy(),
        raster.pixel_depth.detach().contiguous().numpy(),
        sx.contiguous().numpy(), sy.contiguous().numpy(), valid.contiguous().numpy(),
        raster.triangles.contiguous().numpy(), neighbours.contiguous().numpy(), H, W)
    return torch.from_numpy(f), torch.from_numpy(k), torch.from_numpy(e)


# -- per-pixel barycentrics and interpolation (differentiable: forward and backward kernels) --


@_jit
def _plane_at(table, r, rem, W):
    """(dx, dy, u0, u1, u2) of triangle row r's planes at pixel rem (= y * W + x)."""
    dx = float(rem % W) - table[r, 12]
    dy = float(rem // W) - table[r, 13]
    u0 = table[r, 0] * dx + table[r, 3] * dy + table[r, 6]
    u1 = table[r, 1] * dx + table[r, 4] * dy + table[r, 7]
    u2 = table[r, 2] * dx + table[r, 5] * dy + table[r, 8]
    return dx, dy, u0, u1, u2


@_jit
def _bary_forward(table, pixel_index, rows, HW, W, bary, depth):
    """bary (3 x M), depth (M,) from the plane table of `barycentric_fields` (transposed:
    N x 14, one cache line per triangle; float64 arithmetic)."""
    for m in range(pixel_index.shape[0]):
        r = rows[m]
        dx, dy, u0, u1, u2 = _plane_at(table, r, pixel_index[m] % HW, W)
        total = u0 + u1 + u2
        bary[0, m] = u0 / total
        bary[1, m] = u1 / total
        bary[2, m] = u2 / total
        depth[m] = table[r, 9] * dx + table[r, 10] * dy + table[r, 11]


@_jit
def _bary_backward(table, pixel_index, rows, HW, W, grad_bary, grad_depth, grad_table):
    """Accumulate d(loss)/d(table columns 0..11) (grad_table N x 14, float64) per pixel."""
    for m in range(pixel_index.shape[0]):
        r = rows[m]
        dx, dy, u0, u1, u2 = _plane_at(table, r, pixel_index[m] % HW, W)
        inv = 1.0 / (u0 + u1 + u2)
        g0, g1, g2 = float(grad_bary[0, m]), float(grad_bary[1, m]), float(grad_bary[2, m])
        mean = (g0 * u0 + g1 * u1 + g2 * u2) * inv  # sum_j g_j bary_j
        for k, g in ((0, g0), (1, g1), (2, g2)):
            gu = (g - mean) * inv
            grad_table[r, k] += gu * dx
            grad_table[r, 3 + k] += gu * dy
            grad_table[r, 6 + k] += gu
        gd = float(grad_depth[m])
        grad_table[r, 9] += gd * dx
        grad_table[r, 10] += gd * dy
        grad_table[r, 11] += gd


@_jit
def _pack_table(ox, oy, a0, a1, a2, b0, b1, b2, c0, c1, c2, za, zb, zc):
    """14 plane arrays (N,) -> the N x 14 table the per-pixel kernels read."""
    n = ox.shape[0]
    t = np.empty((n, 14), dtype=np.float64)
    for i in range(n):
        t[i, 0], t[i, 1], t[i, 2] = a0[i], a1[i], a2[i]
        t[i, 3], t[i, 4], t[i, 5] = b0[i], b1[i], b2[i]
        t[i, 6], t[i, 7], t[i, 8] = c0[i], c1[i], c2[i]
        t[i, 9], t[i, 10], t[i, 11] = za[i], zb[i], zc[i]
        t[i, 12], t[i, 13] = ox[i], oy[i]
    return t


@_jit
def _plane_table_kernel(sx, sy, iw, zw, tris, pixel_index, pixel_triangle, HW, B, V, W, H):
    """The plane table of `barycentric_fields` (N x 14, float64, the same operations in the
    same order) for the triangle instances that own a pixel, in instance order, and each
    pixel's row in it. sx, sy, iw, zw: flattened B*V screen values of the culled-safe clip."""
    F = tris.shape[0]
    n_inst = B * F
    compact = np.full(n_inst, -1, dtype=np.int64)
    for m in range(pixel_index.shape[0]):
        compact[pixel_triangle[m] + (pixel_index[m] // HW) * F] = 0
    n = 0
    for i in range(n_inst):
        if compact[i] == 0:
            compact[i] = n
            n += 1
    rows = np.empty(pixel_index.shape[0], dtype=np.int64)
    for m in range(pixel_index.shape[0]):
        rows[m] = compact[pixel_triangle[m] + (pixel_index[m] // HW) * F]
    t = np.empty((n, 14), dtype=np.float64)
    for inst in range(n_inst):
        r = compact[inst]
        if r < 0:
            continue
        f = inst % F
        off = (inst // F) * V
        c0, c1, c2 = tris[f, 0] + off, tris[f, 1] + off, tris[f, 2] + off
        x0, x1, x2 = sx[c0], sx[c1], sx[c2]
        y0, y1, y2 = sy[c0], sy[c1], sy[c2]
        ox = np.rint(min(max((x0 + x1 + x2) / 3.0, -float(W)), 2.0 * W))
        oy = np.rint(min(max((y0 + y1 + y2) / 3.0, -float(H)), 2.0 * H))
        x0, x1, x2 = x0 - ox, x1 - ox, x2 - ox
        y0, y1, y2 = y0 - oy, y1 - oy, y2 - oy
        ea0, ea1, ea2 = y1 - y2, y2 - y0, y0 - y1
        eb0, eb1, eb2 = x2 - x1, x0 - x2, x1 - x0
        ec0, ec1, ec2 = x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0
        area2 = ec0 + ec1 + ec2
        inv_area = 1.0 / (1.0 if area2 == 0.0 else area2)
        s0, s1, s2 = iw[c0] * inv_area, iw[c1] * inv_area, iw[c2] * inv_area
        z0, z1, z2 = zw[c0], zw[c1], zw[c2]
        t[r, 0], t[r, 1], t[r, 2] = ea0 * s0, ea1 * s1, ea2 * s2
        t[r, 3], t[r, 4], t[r, 5] = eb0 * s0, eb1 * s1, eb2 * s2
        t[r, 6], t[r, 7], t[r, 8] = ec0 * s0, ec1 * s1, ec2 * s2
        t[r, 9] = (ea0 * z0 + ea1 * z1 + ea2 * z2) * inv_area
        t[r, 10] = (eb0 * z0 + eb1 * z1 + eb2 * z2) * inv_area
        t[r, 11] = (ec0 * z0 + ec1 * z1 + ec2 * z2) * inv_area
        t[r, 12], t[r, 13] = ox, oy
    return t, rows


def barycentrics_no_grad(sx: torch.Tensor, sy: torch.Tensor, inv_w: torch.Tensor,
                         zw: torch.Tensor, triangles: torch.Tensor, H: int, W: int,
                         pixel_index: torch.Tensor, pixel_triangle: torch.Tensor,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`barycentric_fields` without autograd (CPU float64 screen values B x V): its planes and
    their per-pixel evaluation in two compiled passes, the same numbers as its torch ops and
    `BarycentricEval` -> (bary 3 x M, depth M) in `dtype`."""
    B, V = sx.shape
    table, rows = _plane_table_kernel(
        *(v.reshape(-1).contiguous().numpy() for v in (sx, sy, inv_w, zw)),
        triangles.contiguous().numpy(), pixel_index.contiguous().numpy(),
        pixel_triangle.contiguous().numpy(), H * W, B, V, W, H)
    M = pixel_index.shape[0]
    bary = np.empty((3, M), dtype=np.float64)
    depth = np.empty(M, dtype=np.float64)
    _bary_forward(table, pixel_index.contiguous().numpy(), rows, H * W, W, bary, depth)
    return torch.from_numpy(bary).to(dtype), torch.from_numpy(depth).to(dtype)


class BarycentricEval(torch.autograd.Function):
    """Per-pixel evaluation of the planes of `barycentric_fields` -> (bary 3 x M, depth M)
    in `dtype`: one compiled pass each way instead of ~30 tensor ops (and their backward).
    Planes: 12 tensors of U instances (a_k, b_k, c_k of u_0..2, then z/w's a, b, c), float64;
    ox, oy the per-instance integer origins (no gradient); rows (M,): each pixel's instance."""

    @staticmethod
    def forward(ctx, dtype, pixel_index, rows, H: int, W: int, ox, oy, *planes):
        cols = [v.detach().reshape(-1).double().contiguous().numpy() for v in (ox, oy, *planes)]
        table = _pack_table(*cols)
        M = pixel_index.shape[0]
        bary = torch.empty(3, M, dtype=torch.float64)
        depth = torch.empty(M, dtype=torch.float64)
        pi, rows = pixel_index.contiguous(), rows.contiguous()
        _bary_forward(table, pi.numpy(), rows.numpy(), H * W, W, bary.numpy(), depth.numpy())
        ctx.save_for_backward(pi, rows)
        ctx.table = table
        ctx.dims = (H, W, planes[0].shape, planes[0].dtype)
        return bary.to(dtype), depth.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_bary, grad_depth):
        pi, rows = ctx.saved_tensors
        table = ctx.table
        H, W, shape, dtype = ctx.dims
        M = pi.shape[0]
        if grad_bary is None:
            grad_bary = torch.zeros(3, M, dtype=torch.float64)
        if grad_depth is None:
            grad_depth = torch.zeros(M, dtype=torch.float64)
        grad_table = np.zeros((table.shape[0], 14), dtype=np.float64)
        _bary_backward(table, pi.numpy(), rows.numpy(), H * W, W,
                       grad_bary.contiguous().numpy(), grad_depth.contiguous().numpy(),
                       grad_table)
        rows = torch.from_numpy(grad_table[:, :12].T.copy())  # 12 x N
        grads = [g.reshape(shape).to(dtype) for g in rows.unbind(0)]
        return (None, None, None, None, None, None, None, *grads)


@_jit
def _interp_forward(attr, tris, pixel_index, pixel_triangle, HW, step, bary, out):
    """out[c, m] = sum_k bary[k, m] attr[tris[t, k] + batch(m) step, c] (attr is N x C: one
    cache line per vertex)."""
    C = attr.shape[1]
    for m in range(pixel_index.shape[0]):
        t = pixel_triangle[m]
        off = (pixel_index[m] // HW) * step
        v0, v1, v2 = tris[t, 0] + off, tris[t, 1] + off, tris[t, 2] + off
        w0, w1, w2 = bary[0, m], bary[1, m], bary[2, m]
        for c in range(C):
            out[c, m] = attr[v0, c] * w0 + attr[v1, c] * w1 + attr[v2, c] * w2


@_jit
def _interp_backward(attr, tris, pixel_index, pixel_triangle, HW, step, bary, grad,
                     grad_attr, grad_bary, need_attr, need_bary):
    """Scatter-add into grad_attr (N x C, float64) and per-pixel grad_bary (3 x M)."""
    C = attr.shape[1]
    for m in range(pixel_index.shape[0]):
        t = pixel_triangle[m]
        off = (pixel_index[m] // HW) * step
        v0, v1, v2 = tris[t, 0] + off, tris[t, 1] + off, tris[t, 2] + off
        w0, w1, w2 = bary[0, m], bary[1, m], bary[2, m]
        s0 = s1 = s2 = 0.0
        for c in range(C):
            g = grad[c, m]
            if need_attr:
                grad_attr[v0, c] += g * w0
                grad_attr[v1, c] += g * w1
                grad_attr[v2, c] += g * w2
            if need_bary:
                s0 += g * attr[v0, c]
                s1 += g * attr[v1, c]
                s2 += g * attr[v2, c]
        if need_bary:
            grad_bary[0, m] = s0
            grad_bary[1, m] = s1
            grad_bary[2, m] = s2


class InterpolateChannels(torch.autograd.Function):
    """Channel-major interpolation C x N -> C x M (see `render.ops.interpolate_channels`)
    in one compiled pass each way; N = V (shared) or B*V (`step` = V per batch image)."""

    @staticmethod
    def forward(ctx, attributes, bary, triangles, pixel_index, pixel_triangle, HW: int,
                step: int):
        a = attributes.detach().t().contiguous()  # N x C
        w = bary.detach().to(a.dtype).contiguous()
        tris = triangles.contiguous()
        pi, pt = pixel_index.contiguous(), pixel_triangle.contiguous()
        out = torch.empty(a.shape[1], pi.shape[0], dtype=a.dtype)
        _interp_forward(a.numpy(), tris.numpy(), pi.numpy(), pt.numpy(), HW, step, w.numpy(),
                        out.numpy())
        ctx.save_for_backward(a, w, tris, pi, pt)
        ctx.dims = (HW, step, bary.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, w, tris, pi, pt = ctx.saved_tensors
        HW, step, bary_dtype = ctx.dims
        need_attr, need_bary = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_attr = torch.zeros(a.shape, dtype=torch.float64)
        grad_bary = torch.zeros(w.shape, dtype=a.dtype)
        _interp_backward(a.numpy(), tris.numpy(), pi.numpy(), pt.numpy(), HW, step, w.numpy(),
                         grad.to(a.dtype).contiguous().numpy(), grad_attr.numpy(),
                         grad_bary.numpy(), need_attr, need_bary)
        return (grad_attr.t().to(a.dtype) if need_attr else None,
                grad_bary.to(bary_dtype) if need_bary else None,
                None, None, None, None, None)


def self_test() -> None:
    """Compile (or load from the cache) and run every kernel on a tiny scene, both
    directions: raises if numba cannot build them here, so that callers fall back to the
    pure-torch path up front instead of failing mid-render."""
    with torch.inference_mode(False), torch.enable_grad():  # callers may be in no_grad
        _self_test()


def _self_test() -> None:
    # Only this module's own code runs here (render.raster and render.ops call into it), on
    # the inputs those callers pass: float64 screen coordinates for the z-buffer, the clip
    # vertices' own dtype for the antialias edge search.
    H = W = 8
    clip = torch.tensor([[[-0.5, -0.5, 0.1, 1.0], [0.6, -0.4, 0.2, 1.0], [-0.3, 0.7, 0.3, 1.0],
                          [0.7, 0.6, 0.0, 1.0]]], requires_grad=True)
    tris = torch.tensor([[0, 1, 2], [1, 3, 2]])
    neighbours = torch.tensor([[1, -1, -1], [-1, 0, -1]])  # the triangle across each edge
    c = clip.detach()  # w = 1: pixel = (clip + 1) * size / 2 - 0.5, as in raster.screen_space
    sx, sy = (c[..., 0] + 1) * (W * 0.5) - 0.5, (c[..., 1] + 1) * (H * 0.5) - 0.5
    valid = torch.ones(c.shape[:2], dtype=torch.bool)
    tri_dense, pixel_index, pixel_triangle = zbuffer_numba(
        sx.double(), sy.double(), c[..., 2].double(), valid, tris, H, W, False)
    M = pixel_index.shape[0]
    rows = torch.zeros(M, dtype=torch.int64)
    planes = [torch.full((1,), 0.1 * (i + 1), dtype=torch.float64, requires_grad=True)
              for i in range(12)]
    origin = torch.zeros(1, dtype=torch.float64)
    bary, depth = BarycentricEval.apply(torch.float32, pixel_index, rows, H, W,
                                        origin, origin, *planes)
    values = InterpolateChannels.apply(clip[0].t(), bary, tris, pixel_index, pixel_triangle,
                                       H * W, 0)
    raster = SimpleNamespace(size=(H, W), triangle_id=tri_dense.reshape(1, H, W),
                             pixel_index=pixel_index, pixel_depth=depth.detach(),
                             triangles=tris)
    antialias_pairs(raster, sx, sy, valid, neighbours)
    (values.sum() + depth.sum()).backward()
    if not bool(torch.isfinite(clip.grad).all()) or planes[0].grad is None:
        raise RuntimeError("render.kernels self-test failed")
