"""The least-squares machinery every step of the photo fit (`fitting.fit`) shares: landmark
residuals and their Jacobians, Huber IRLS weights, the priors, linearised Gauss-Newton
(`gauss_newton`), bounded solves of the normal equations (with the Schur complement for the
joint refinement's arrow-shaped system), and `single_threaded` for the entry points.

Units: pixels (OpenCV convention), millimetres, radians.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import lsq_linear

from fitting.correspondence import LandmarkSet
from fitting.params import CameraParams
from fitting.pose import FrameState, axis_angle, rotation_matrix

# --------------------------------------------------------------------------------------------
# Threads: the solvers' matrices are small (<= ~1000 x 1000); OpenBLAS and torch threads only
# spin against each other on a busy machine (a 132 x 132 solve: 0.3 ms single-threaded,
# ~100 ms with OpenBLAS threads under a load average of 10 on 2 cores).
# --------------------------------------------------------------------------------------------

@functools.cache
def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded in this process, made once. It sees
    only the libraries loaded when it is made: numpy's, scipy's and OpenCV's own are loaded
    first, whoever asks first (the swap asks before anything has imported scipy)."""
    import cv2  # noqa: F401 - its wheel brings its own OpenBLAS
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run numpy/scipy (BLAS) and torch single-threaded inside the block, then restore."""
    torch_before = torch.get_num_threads()
    try:
        with _blas_controller().limit(limits=1, user_api="blas"):
            torch.set_num_threads(1)
            yield
    finally:
        torch.set_num_threads(torch_before)


# --------------------------------------------------------------------------------------------
# The linearised least-squares solver shared by every step
# --------------------------------------------------------------------------------------------


def identity_prior_offset(identity: np.ndarray, priors: Priors) -> np.ndarray:
    """The identity's offset from its prior mean (`Priors.identity_mean`)."""
    return identity if priors.identity_mean is None else identity - priors.identity_mean


def face_scale(points: np.ndarray) -> float:
    """sqrt(area) of the landmarks' bounding box, pixels: the size noise scales with."""
    p = points[np.isfinite(points).all(1)]
    ext = p.max(0) - p.min(0)
    return float(math.sqrt(max(ext[0], 1.0) * max(ext[1], 1.0)))


@dataclass
class Priors:
    """Regularisation, in units of the landmark noise sigma (pixels, from the face size)."""

    sigma_fraction: float = 0.01  # landmark noise sigma as a fraction of face_scale
    min_sigma_px: float = 1.0
    identity: float = 1.0  # N(mean, I) prior weight
    # The identity prior's mean (K coefficients); None = 0, the model's mean face. A swap's
    # source photo is fitted about the actor's identity (`morph3d.swap.fits.fit_source`).
    identity_mean: np.ndarray | None = None
    expression: float = 0.05  # L2 towards 0 (neutral), per unit weight
    temporal_pose: float = 0.0  # video: weight on change from the previous frame (rad, mm/10)
    temporal_expression: float = 0.0


def _residuals(ls: LandmarkSet, identity: np.ndarray, state: FrameState,
               camera: CameraParams):
    """Pixel residuals (L x 2), model points (L x 3) and camera-space points (L x 3)."""
    model_pts = ls.positions(identity, state.expression)
    R = rotation_matrix(state.rotation)
    cam = model_pts @ R.T + state.translation
    z = np.maximum(cam[:, 2], 1e-6)
    uv = np.stack([camera.fx * cam[:, 0] / z + camera.cx, camera.fy * cam[:, 1] / z + camera.cy],
                  1)
    return uv - ls.points, model_pts, cam, R


def robust_weights(residuals: np.ndarray, weights: np.ndarray, sigma: float,
                   k: float = 2.5) -> np.ndarray:
    """Huber IRLS weights: 1 within k sigma (scaled by the residuals' MAD), k sigma/|r| beyond."""
    r = np.linalg.norm(residuals, axis=1)
    ok = np.isfinite(r)
    spread = 1.4826 * np.median(r[ok]) if ok.any() else sigma
    s = k * max(sigma, spread)
    out = weights * np.minimum(1.0, s / np.maximum(r, 1e-9))
    out[~ok] = 0.0
    return out


def gauss_newton(
    ls: LandmarkSet, identity: np.ndarray, state: FrameState, camera: CameraParams, *,
    pose: bool = True, expression: bool = True, solve_identity: bool = False,
    weights: np.ndarray | None = None, priors: Priors | None = None,
    previous: FrameState | None = None, iterations: int = 1, sigma: float | None = None,
) -> tuple[np.ndarray, FrameState, float]:
    """Linearised least-squares updates of the chosen blocks (pose 6, identity K, expression J
    bounded to [0, 1]) for one image. Returns (identity, state, cost)."""
    priors = priors or Priors()
    w = ls.weights if weights is None else weights
    ok = np.isfinite(ls.points).all(1) & (w > 0)
    sig = sigma if sigma is not None else max(priors.min_sigma_px,
                                              priors.sigma_fraction * face_scale(ls.points))
    identity = identity.copy()
    state = state.copy()
    K, J = ls.identity.shape[2], ls.expression.shape[2]
    cost = math.inf
    for _ in range(iterations):
        res, model_pts, cam, R = _residuals(ls, identity, state, camera)
        x, y, z = cam[ok, 0], cam[ok, 1], np.maximum(cam[ok, 2], 1e-6)
        # d(u, v) / d(camera point): L x 2 x 3
        dproj = np.zeros((len(x), 2, 3))
        dproj[:, 0, 0] = camera.fx / z
        dproj[:, 0, 2] = -camera.fx * x / z ** 2
        dproj[:, 1, 1] = camera.fy / z
        dproj[:, 1, 2] = -camera.fy * y / z ** 2
        blocks = []
        if pose:
            rp = model_pts[ok] @ R.T  # rotated model points
            skew = np.zeros((len(x), 3, 3))  # d(exp(w) R X)/dw = -[R X]x
            skew[:, 0, 1], skew[:, 0, 2] = rp[:, 2], -rp[:, 1]
            skew[:, 1, 0], skew[:, 1, 2] = -rp[:, 2], rp[:, 0]
            skew[:, 2, 0], skew[:, 2, 1] = rp[:, 1], -rp[:, 0]
            blocks.append(dproj @ skew)
            blocks.append(dproj)
        dR = dproj @ R
        if solve_identity:
            blocks.append(_chain(dR, ls.identity, ok))
        if expression:
            blocks.append(_chain(dR, ls.expression, ok))
        Jm = np.concatenate(blocks, 2)  # L x 2 x P
        sw = np.sqrt(w[ok])[:, None] / sig
        A = (Jm * sw[:, :, None]).reshape(-1, Jm.shape[2])
        b = -(res[ok] * sw).reshape(-1)
        # The normal equations of the landmark rows, then of each prior's rows: a prior is a
        # row per unknown (weight `scale`, target `target`), so it adds scale^2 to H's
        # diagonal and scale * target to the gradient.
        H, g = A.T @ A, A.T @ b
        cost = float(b @ b)
        P = Jm.shape[2]
        diagonal = np.diagonal(H).copy()
        prior = functools.partial(_add_prior, diagonal, g)
        col = 0
        lo, hi = np.full(P, -np.inf), np.full(P, np.inf)
        if pose:
            if previous is not None and priors.temporal_pose > 0:
                # Change of rotation (rad) and translation (cm) from the previous frame.
                dr = axis_angle(rotation_matrix(state.rotation)
                                @ rotation_matrix(previous.rotation).T)
                dt = (state.translation - previous.translation) / 10.0
                scale = np.repeat([priors.temporal_pose, priors.temporal_pose / 10.0], 3)
                cost += prior(slice(0, 6), scale,
                              -np.concatenate([dr, dt]) * priors.temporal_pose)
            col = 6
        if solve_identity:
            root = math.sqrt(priors.identity)
            cost += prior(slice(col, col + K), root, -identity * root)
            col += K
        if expression:
            e = slice(col, col + J)
            root = math.sqrt(priors.expression)
            cost += prior(e, root, -state.expression * root)
            if previous is not None and priors.temporal_expression > 0:
                cost += prior(e, priors.temporal_expression,
                              -(state.expression - previous.expression)
                              * priors.temporal_expression)
            lo[e] = -state.expression
            hi[e] = 1.0 - state.expression
        H[np.diag_indices_from(H)] = diagonal
        delta = _bounded_solve(H, g, lo, hi)
        col = 0
        if pose:
            state.rotation = axis_angle(rotation_matrix(delta[:3]) @ R)
            state.translation = state.translation + delta[3:6]
            col = 6
        if solve_identity:
            identity = identity + delta[col:col + K]
            col += K
        if expression:
            state.expression = np.clip(state.expression + delta[col:col + J], 0.0, 1.0)
    return identity, state, cost


def _add_prior(diagonal: np.ndarray, g: np.ndarray, cols: slice, scale: float | np.ndarray,
               target: np.ndarray) -> float:
    """Rows `scale` * I on the unknowns `cols` with right-hand side `target`, added to normal
    equations (their diagonal and gradient, in place); returns the rows' cost at the current
    point, |target|^2."""
    diagonal[cols] += scale * scale
    g[cols] += scale * target
    return float(target @ target)


def _solve_arrow(H: np.ndarray, rhs: np.ndarray, free: np.ndarray, shared: int,
                 block: int) -> np.ndarray:
    """Solve H[free, free] y = rhs for an "arrow" matrix: `shared` leading unknowns coupled
    to everything, then independent blocks of `block` unknowns (one per image) that only
    couple to the shared ones. Eliminating the blocks (Schur complement) costs
    n * block^3 + shared^3 instead of (shared + n * block)^3: for 20 video frames with 58
    local unknowns that is ~100x less than the dense solve."""
    idx = np.flatnonzero(free)
    where = np.full(len(free), -1)
    where[idx] = np.arange(len(idx))
    c = idx[idx < shared]
    S = H[np.ix_(c, c)].copy()
    rc = rhs[where[c]].copy()
    parts = []
    for start in range(shared, len(free), block):
        f = idx[(idx >= start) & (idx < start + block)]
        if not len(f):
            continue
        A = H[np.ix_(f, f)]
        B = H[np.ix_(c, f)]
        solved = np.linalg.solve(A, np.concatenate([B.T, rhs[where[f]][:, None]], 1))
        S -= B @ solved[:, :-1]
        rc -= B @ solved[:, -1]
        parts.append((f, solved))
    y = np.empty(len(idx))
    xc = np.linalg.solve(S, rc) if len(c) else np.zeros(0)
    y[where[c]] = xc
    for f, solved in parts:
        y[where[f]] = solved[:, -1] - solved[:, :-1] @ xc
    return y


def _bounded_solve(H: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   arrow: tuple[int, int] | None = None) -> np.ndarray:
    """min 0.5 x'Hx - g'x with lo <= x <= hi: an active-set solve on the (small) normal
    equations, falling back to scipy's BVLS if it does not settle.

    arrow: (shared, block) when H has the structure `_solve_arrow` exploits (the joint
    refinement's identity + per-image blocks); the fallback is then a clipped solve, since
    BVLS on the dense system costs seconds and a Gauss-Newton step need not be exact."""
    H = H.copy()
    H[np.diag_indices_from(H)] += 1e-9 * (np.trace(H) / len(H) + 1.0)
    x = np.zeros(len(g))
    # Unknowns that start on a bound (an expression weight at 0 or 1: its step's bound is 0)
    # start fixed there, x = 0 on the bound; the loop releases those the gradient pulls
    # inside. Most of them stay there from one step (or frame) to the next, so this starts
    # the loop near its final active set: the same solution in a few iterations, where a
    # start with every unknown free can take dozens (on a clip's joint refinement, past the
    # cap, whose clipped answer is not the minimum).
    free = (lo != 0) & (hi != 0)
    for _ in range(min(4 * len(g) // 10 + 10, 60)):
        fixed = ~free
        rhs = g[free] - H[np.ix_(free, fixed)] @ x[fixed]
        if arrow is None:
            x[free] = np.linalg.solve(H[np.ix_(free, free)], rhs)
        else:
            x[free] = _solve_arrow(H, rhs, free, *arrow)
        outside = free & ((x < lo) | (x > hi))
        if outside.any():
            x = np.clip(x, lo, hi)
            free &= ~outside
            continue
        grad = H @ x - g  # of 0.5 x'Hx - g'x
        release = fixed & (((x <= lo) & (grad < 0)) | ((x >= hi) & (grad > 0)))
        if not release.any():
            return np.clip(x, lo, hi)
        free |= release
    if arrow is not None:
        return np.clip(x, lo, hi)
    L = np.linalg.cholesky(H)
    return lsq_linear(L.T, np.linalg.solve(L, g), bounds=(lo, hi), method="bvls", tol=1e-10).x


def _point_jacobians(ls: LandmarkSet, identity: np.ndarray, state: FrameState,
                     camera: CameraParams, ok: np.ndarray):
    """Residuals (n x 2 px) of the `ok` points and their Jacobians: pose n x 2 x 6 (rotation
    increment, translation), identity n x 2 x K, expression n x 2 x J."""
    res, model_pts, cam, R = _residuals(ls, identity, state, camera)
    x, y, z = cam[ok, 0], cam[ok, 1], np.maximum(cam[ok, 2], 1e-6)
    dproj = np.zeros((len(x), 2, 3))
    dproj[:, 0, 0], dproj[:, 0, 2] = camera.fx / z, -camera.fx * x / z ** 2
    dproj[:, 1, 1], dproj[:, 1, 2] = camera.fy / z, -camera.fy * y / z ** 2
    rp = model_pts[ok] @ R.T
    skew = np.zeros((len(x), 3, 3))  # d(exp(w) R X)/dw = -[R X]x
    skew[:, 0, 1], skew[:, 0, 2] = rp[:, 2], -rp[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = -rp[:, 2], rp[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = rp[:, 1], -rp[:, 0]
    pose = np.concatenate([dproj @ skew, dproj], 2)
    dR = dproj @ R
    return res[ok], pose, _chain(dR, ls.identity, ok), _chain(dR, ls.expression, ok)


def _chain(d_point: np.ndarray, basis: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """d(u, v)/d(coefficients), n x 2 x N: the pixels' derivative by the model point
    (n x 2 x 3) times the `ok` points' basis rows (L x 3 x N), as one einsum (a stacked
    matmul of n tiny matrices costs several times more)."""
    rows = basis if ok.all() else basis[ok]
    return np.einsum("lrk,lkj->lrj", d_point, rows)
