"""Photo fitting: 2D landmarks (and pixels) -> 3DMM identity, expression, pose, lighting.

The solver follows eos's recipe, as named steps a reader can follow in order (run in turn by
`fitting.photo.fit_photo`). The steps live here unless another module is named:

1. `detect_landmarks`: the largest face's ibug68 (+ mediapipe478) points (backend
   "dlib+mediapipe": dlib's 68 with mediapipe's 478); `LandmarkSet`
   (built by `landmark_set`, `fitting.correspondence`) says which model surface point each
   2D point corresponds to, with a weight. The 68 points come in two conventions
   (`ibug68_convention`: derived from mediapipe's mesh, or the iBUG annotation's, as
   dlib's) and each has its model table (`ibug68_table`; both `fitting.correspondence`).
2. `estimate_camera_pose`: focal by a small search (`estimate_focal`, or given), pose by
   `cv2.solvePnP` on the current shape, then weighted Gauss-Newton (`gauss_newton`,
   `fitting.solvers`).
3. `fit_identity`: the model is linear in identity, so given the pose the regularised
   (N(0, I) prior) least-squares fit is one linear solve.
4. `fit_expression`: the same for expression, with the weights bounded to [0, 1].
5. `update_jaw_contour` (`fitting.correspondence`): the iBUG side jaw points (0-4, 12-16)
   lie on the occluding contour, which moves over the surface with pose: each takes the
   silhouette point of its horizontal model row (as eos does with its contour lists; the
   row is where mesh edges cross the point's height, so the point keeps its height; the
   rows are gathered once per model in `fitting.model_arrays`); the lower jaw beside the
   chin (5-7, 9-11) does too once it faces away from the camera (the far side of a turned
   head). Points whose surface turns away from the camera (self-occluded) get a low weight.
6. repeat 2-5 a few times, with robust (Huber IRLS) weights against landmark outliers.
7. `refine_joint`: everything jointly (identity, every pose and expression), bounded
   Gauss-Newton with Huber IRLS weights + priors, the jaw contour re-picked each iteration
   (the bounded, Schur-complement solve: `fitting.solvers`).
8. `fit_corrective` (annotation-convention points only, e.g. dlib's): a smooth local
   per-vertex offset (`Identity.offset`) towards the detected points the model could not
   reach.
9. `fit_lighting_and_texture` (`fitting.lighting`): SH lighting by a photometric loss
   through `render/`, then the albedo texture + confidence with `render.unproject_to_uv`.

Under the steps: `fitting.model_arrays` (the model as float64 arrays, once per model),
`fitting.pose` (`FrameState`, rotations, projection), `fitting.solvers` (residuals,
Gauss-Newton, bounded solves, IRLS weights, `Priors`).

Several photos of one person are fitted jointly (shared identity, per-photo pose,
expression and lighting). Videos are in `fitting.video`.

Units: pixels (OpenCV convention), millimetres, radians. Poses: X_cam = R X_model + t.
The entry points run numpy and torch single-threaded (`fitting.solvers.single_threaded`):
small matrices.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fitting.correspondence import LandmarkSet, update_jaw_contour
from fitting.model_arrays import IBUG68
from fitting.params import CameraParams
from fitting.pose import FrameState, axis_angle, rotation_matrix
from fitting.solvers import (
    Priors,
    _bounded_solve,
    _chain,
    _point_jacobians,
    _residuals,
    face_scale,
    gauss_newton,
    identity_prior_offset,
    robust_weights,
)
from morph3d.errors import Morph3dError

# Photo fits to annotation-convention points end with a corrective deformation
# (`fit_corrective`): a Gaussian RBF over the neutral face (length scale in mm) through the
# offsets that would put the model's 68 points on the detector's, regularised (kernel
# ridge, relative to the kernel's peak 1) so it follows the detector only part of the way
# (a point alone: 1 / (1 + regularise) of the way). The regularisation is the smallest that
# follows detector noise no more than the synthetic renders allow (chosen on renders, not
# on the annotated photos; BENCHMARKS.md).
CORRECTIVE_LENGTH_MM = 8.0
CORRECTIVE_REGULARISE = 0.15


# --------------------------------------------------------------------------------------------
# Step 1: the landmarks
# --------------------------------------------------------------------------------------------


def detect_landmarks(image: np.ndarray, backend: str = "mediapipe",
                     source: str = "image") -> dict[str, np.ndarray]:
    """Step 1: the largest face's landmarks {scheme: L x 2} (pixels); Morph3dError if none.

    The face is chosen as `morph3d fit` chooses it (`fitting.choice.choose_photo_face`: one
    detector's boxes for every backend, so every backend measures the same face). Backend
    "dlib+mediapipe": mediapipe's 478 points with dlib's 68 of that face, which follow the
    iBUG annotation convention (jaw, brows) more closely (fitted real-photo NME ~4 % vs
    ~5 %); where dlib's detector misses the face (a turned head), dlib's shape predictor on
    the chosen box, far closer than mediapipe's derived 68 on real turned faces.
    """
    from fitting.choice import choose_photo_face, parse_face_choice

    return choose_photo_face(image, backend, parse_face_choice("auto"), source).landmarks


# --------------------------------------------------------------------------------------------
# Steps 2-6
# --------------------------------------------------------------------------------------------


def estimate_pose_pnp(ls: LandmarkSet, identity: np.ndarray, expression: np.ndarray,
                      camera: CameraParams) -> FrameState:
    """Step 2a: pose from cv2.solvePnP on the current shape's landmarks (robust to a few
    outliers through RANSAC when there are many points)."""
    ok = np.isfinite(ls.points).all(1)
    if IBUG68 in ls.scheme_slices:  # the jaw slides: leave it out of the first estimate
        ok[ls.jaw_rows] = False
    obj = ls.positions(identity, expression)[ok].astype(np.float64)
    img = ls.points[ok].astype(np.float64)
    K = camera.matrix
    found, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
    if not found:
        raise Morph3dError("could not estimate the head pose from the landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, None, rvec, tvec)
    state = FrameState(rvec.reshape(3), tvec.reshape(3), expression.copy())
    if tvec[2] <= 0:
        raise Morph3dError("could not estimate the head pose (face behind the camera)")
    return state


def fit_identity(ls_list: list[LandmarkSet], identity: np.ndarray, states: list[FrameState],
                 cameras: list[CameraParams], weights: list[np.ndarray], priors: Priors
                 ) -> np.ndarray:
    """Step 3: identity by regularised linear least squares over all images (closed form
    given the poses and expressions: one linearised Gauss-Newton step is exact up to the
    perspective division)."""
    rows_A, rows_b = [], []
    K = len(identity)
    for ls, st, cam, w in zip(ls_list, states, cameras, weights, strict=True):
        res, model_pts, pts_cam, R = _residuals(ls, identity, st, cam)
        ok = np.isfinite(ls.points).all(1) & (w > 0)
        sig = max(priors.min_sigma_px, priors.sigma_fraction * face_scale(ls.points))
        x, y, z = pts_cam[ok, 0], pts_cam[ok, 1], np.maximum(pts_cam[ok, 2], 1e-6)
        dproj = np.zeros((len(x), 2, 3))
        dproj[:, 0, 0], dproj[:, 0, 2] = cam.fx / z, -cam.fx * x / z ** 2
        dproj[:, 1, 1], dproj[:, 1, 2] = cam.fy / z, -cam.fy * y / z ** 2
        Jm = _chain(dproj @ R, ls.identity, ok)
        sw = np.sqrt(w[ok])[:, None] / sig
        rows_A.append((Jm * sw[:, :, None]).reshape(-1, K))
        rows_b.append(-(res[ok] * sw).reshape(-1))
    rows_A.append(np.eye(K) * math.sqrt(priors.identity))
    rows_b.append(-identity_prior_offset(identity, priors) * math.sqrt(priors.identity))
    A, b = np.concatenate(rows_A), np.concatenate(rows_b)
    return identity + np.linalg.solve(A.T @ A, A.T @ b)


def fit_expression(ls: LandmarkSet, identity: np.ndarray, state: FrameState,
                   camera: CameraParams, weights: np.ndarray, priors: Priors) -> FrameState:
    """Step 4: expression weights by bounded least squares (each in [0, 1])."""
    return gauss_newton(ls, identity, state, camera, pose=False, expression=True,
                        weights=weights, priors=priors)[1]


def estimate_camera_pose(ls: LandmarkSet, identity: np.ndarray, state: FrameState | None,
                         camera: CameraParams, weights: np.ndarray, priors: Priors,
                         iterations: int = 3) -> FrameState:
    """Step 2: pose (PnP the first time, then weighted Gauss-Newton from the last pose)."""
    if state is None:
        expression = np.zeros(ls.expression.shape[2])
        state = estimate_pose_pnp(ls, identity, expression, camera)
    return gauss_newton(ls, identity, state, camera, pose=True, expression=False,
                        weights=weights, priors=priors, iterations=iterations)[1]


def _alternate(ls_list: list[LandmarkSet], cameras: list[CameraParams], identity: np.ndarray,
               states: list[FrameState | None], priors: Priors, rounds: int,
               contour: bool = True, fit_shape: bool = True
               ) -> tuple[np.ndarray, list[FrameState], list[np.ndarray], float]:
    """Steps 2-6: alternate pose, identity, expression and contour, with IRLS weights."""
    weights = [ls.weights.copy() for ls in ls_list]
    states = list(states)
    cost = math.inf
    for r in range(rounds):
        for i, ls in enumerate(ls_list):
            states[i] = estimate_camera_pose(ls, identity, states[i], cameras[i], weights[i],
                                             priors)
            if contour:
                update_jaw_contour(ls, identity, states[i], cameras[i])
        if fit_shape:
            identity = fit_identity(ls_list, identity, states, cameras, weights, priors)
        cost = 0.0
        for i, ls in enumerate(ls_list):
            states[i] = fit_expression(ls, identity, states[i], cameras[i], weights[i], priors)
            if contour:
                update_jaw_contour(ls, identity, states[i], cameras[i])
            res = _residuals(ls, identity, states[i], cameras[i])[0]
            sig = max(priors.min_sigma_px, priors.sigma_fraction * face_scale(ls.points))
            if r >= 1:  # the first round's residuals mix pose and shape errors
                weights[i] = robust_weights(res, ls.weights, sig)
            ok = np.isfinite(res).all(1)
            cost += float((weights[i][ok] * (res[ok] ** 2).sum(1)).sum()) / sig ** 2
        prior = identity_prior_offset(identity, priors)
        cost += priors.identity * float(prior @ prior)
    return identity, states, weights, cost


def estimate_focal(ls_list: list[LandmarkSet], sizes: list[tuple[int, int]], priors: Priors
                   ) -> float:
    """Focal (as a multiple of max(H, W)) by a small search over the fit cost; 1.2 when the
    cost is flat (landmarks barely constrain the focal of a small or frontal face)."""
    factors = np.array([0.6, 0.85, 1.2, 1.7, 2.4, 3.4, 5.0])
    if len(ls_list) > 4:  # a few spread images decide it as well as many
        pick = np.linspace(0, len(ls_list) - 1, 4).round().astype(int)
        ls_list, sizes = [ls_list[i] for i in pick], [sizes[i] for i in pick]
    costs = []
    for f in factors:
        cams = [CameraParams.default_for(w, h, f * max(h, w)) for h, w in sizes]
        lss = [ls.copy_for(ls.points) for ls in ls_list]
        try:
            cost = _alternate(lss, cams, np.zeros(ls_list[0].identity.shape[2]),
                              [None] * len(lss), priors, rounds=2)[3]
        except Morph3dError:
            cost = math.inf
        costs.append(cost)
    costs = np.array(costs)
    best = int(np.argmin(costs))
    if not np.isfinite(costs[best]) or (np.nanmax(costs[np.isfinite(costs)]) - costs[best]
                                        < 0.05 * costs[best]):
        return 1.2
    if 0 < best < len(factors) - 1:  # parabola through the best three, in log focal
        x = np.log(factors[best - 1:best + 2])
        y = costs[best - 1:best + 2]
        a = np.polyfit(x, y, 2)
        if a[0] > 0:
            return float(np.exp(np.clip(-a[1] / (2 * a[0]), x[0], x[2])))
    return float(factors[best])


# --------------------------------------------------------------------------------------------
# Step 7: joint robust refinement (Gauss-Newton on every parameter at once)
# --------------------------------------------------------------------------------------------


def refine_joint(ls_list: list[LandmarkSet], cameras: list[CameraParams], identity: np.ndarray,
                 states: list[FrameState], priors: Priors, iterations: int = 20,
                 contour: bool = True, fit_shape: bool = True, tolerance: float = 1e-4
                 ) -> tuple[np.ndarray, list[FrameState]]:
    """Step 7: identity, every pose and every expression in one bounded Gauss-Newton step
    per iteration (Huber IRLS weights, N(mean, I) identity prior, expressions in [0, 1]), the
    jaw contour re-picked each iteration; stops when the cost changes by < `tolerance`.

    Steps 2-6 alternate between blocks, which crawls along the valley where face depth
    (identity) trades against distance and pose; the joint step follows it (synthetic
    faces: 1.5 -> 1.1 mm vertex error, 1.3 -> 1.0 deg pose, see BENCHMARKS.md). The normal
    equations are assembled block-wise (identity shared, pose + expression per image).
    """
    K = len(identity) if fit_shape else 0
    J = ls_list[0].expression.shape[2]
    n = len(ls_list)
    local = 6 + J
    P = K + n * local
    identity = identity.copy()
    states = [s.copy() for s in states]
    last = math.inf
    for _ in range(iterations):
        H = np.zeros((P, P))
        g = np.zeros(P)
        lo, hi = np.full(P, -np.inf), np.full(P, np.inf)
        prior = identity_prior_offset(identity, priors)
        cost = priors.identity * float(prior @ prior) if fit_shape else 0.0
        if fit_shape:
            H[:K, :K] += np.eye(K) * priors.identity
            g[:K] -= priors.identity * prior
        for i, (ls, st, cam) in enumerate(zip(ls_list, states, cameras, strict=True)):
            if contour:
                update_jaw_contour(ls, identity, st, cam)
            ok = np.isfinite(ls.points).all(1) & (ls.weights > 0)
            sig = max(priors.min_sigma_px, priors.sigma_fraction * face_scale(ls.points))
            res, j_pose, j_id, j_ex = _point_jacobians(ls, identity, st, cam, ok)
            w = robust_weights(res, ls.weights[ok], sig) / sig ** 2  # per point
            cost += float((w * (res ** 2).sum(1)).sum())
            jl = np.concatenate([j_pose, j_ex], 2).reshape(-1, local)  # 2n x local
            w2 = np.repeat(w, 2)
            r = res.reshape(-1)
            s = slice(K + i * local, K + (i + 1) * local)
            H[s, s] += jl.T @ (jl * w2[:, None])
            g[s] -= jl.T @ (w2 * r)
            e = slice(s.start + 6, s.stop)
            H[e, e] += np.eye(J) * priors.expression
            g[e] -= priors.expression * st.expression
            cost += priors.expression * float(st.expression @ st.expression)
            lo[e], hi[e] = -st.expression, 1.0 - st.expression
            if fit_shape:
                ji = j_id.reshape(-1, K)
                H[:K, :K] += ji.T @ (ji * w2[:, None])
                H[:K, s] += (ji * w2[:, None]).T @ jl
                H[s, :K] = H[:K, s].T
                g[:K] -= ji.T @ (w2 * r)
        delta = _bounded_solve(H, g, lo, hi, arrow=(K, local))
        if fit_shape:
            identity = identity + delta[:K]
        for i, st in enumerate(states):
            d = delta[K + i * local:K + (i + 1) * local]
            st.rotation = axis_angle(rotation_matrix(d[:3]) @ rotation_matrix(st.rotation))
            st.translation = st.translation + d[3:6]
            st.expression = np.clip(st.expression + d[6:], 0.0, 1.0)
        if abs(last - cost) < tolerance * cost:
            break
        last = cost
    if contour:
        for ls, st, cam in zip(ls_list, states, cameras, strict=True):
            update_jaw_contour(ls, identity, st, cam)
    return identity, states


# --------------------------------------------------------------------------------------------
# Step 8: corrective deformation (step 9 is `fitting.lighting`)
# --------------------------------------------------------------------------------------------


def fit_corrective(ls_list: list[LandmarkSet], identity: np.ndarray, states: list[FrameState],
                   cameras: list[CameraParams], priors: Priors,
                   length_mm: float = CORRECTIVE_LENGTH_MM,
                   regularise: float = CORRECTIVE_REGULARISE) -> np.ndarray:
    """A smooth per-vertex offset (V x 3 mm) of the neutral shape towards the detected
    iBUG-68 points the 3DMM could not reach (photo fits to annotation-convention points).

    Why: the model's 74 identity components under their N(0, I) prior smooth the
    detector's points (fitted real-photo NME 3.3 / 3.9 % of IOD vs raw dlib 3.2 / 3.4 %);
    a weaker prior reaches further but bends the whole 3D shape (BENCHMARKS.md). This
    deformation is local instead: each ibug68 point's remaining image residual is lifted
    to a model-space offset parallel to the image plane at the point's depth, and the
    offsets are interpolated over the neutral fitted face by a Gaussian RBF (kernel
    ridge: `regularise` relative to the kernel's peak, divided by each point's Huber
    weight so outliers move the surface less). A point moves by its triangle's barycentric
    mix of the deformation at the triangle's vertices, not by the deformation at the point,
    so the solve is posed for that mix: where the mesh is coarse (the temples, the jaw's
    sides) a vertex can sit a good part of a length scale from the point, and a solve for
    the field at the points alone moves those points less than `regularise` says, by an
    amount set by the mesh, not by the face. mediapipe's points do not enter: the
    reported 68 points follow the annotation convention. Several photos: all their points
    in one solve. Vertices beyond 4 length scales from every point keep 0 (exp(-8) there).
    Landmark sets that carry an offset already (`LandmarkSet.offset`) get an increment.
    """
    arrays = ls_list[0].arrays
    neutral = arrays.mean + arrays.identity @ identity
    centres, offsets, lams, ids, bary = [], [], [], [], []
    for ls, st, cam in zip(ls_list, states, cameras, strict=True):
        s = ls.scheme_slices.get(IBUG68)
        if s is None:
            continue
        res, _, pts_cam, R = _residuals(ls, identity, st, cam)
        sig = max(priors.min_sigma_px, priors.sigma_fraction * face_scale(ls.points))
        robust = robust_weights(res, ls.weights, sig)
        rows = np.arange(s.start, s.stop)
        ok = np.isfinite(ls.points[rows]).all(1) & (ls.weights[rows] > 0)
        rows = rows[ok]
        rel = robust[rows] / ls.weights[rows]
        z = pts_cam[rows, 2]
        r = -res[rows]
        cam_off = np.stack([r[:, 0] * z / cam.fx, r[:, 1] * z / cam.fy, np.zeros(len(rows))], 1)
        centres.append(np.einsum("lc,lcd->ld", ls.bary[rows], neutral[ls.ids[rows]]))
        ids.append(ls.ids[rows]), bary.append(ls.bary[rows])
        offsets.append(cam_off @ R)  # camera -> model axes
        lams.append(regularise / np.maximum(rel, 1e-3))
    if not centres:
        return np.zeros_like(neutral)
    X, D, lam = np.concatenate(centres), np.concatenate(offsets), np.concatenate(lams)
    ids, bary = np.concatenate(ids), np.concatenate(bary)
    gauss = -0.5 / length_mm ** 2
    # L x L: how far point l moves per unit weight of the kernel at point j (the kernel at
    # l's three vertices, mixed by l's barycentrics).
    at_vertices = np.exp(gauss * ((neutral[ids][:, :, None] - X[None, None]) ** 2).sum(-1))
    moves = np.einsum("lc,lcj->lj", bary, at_vertices)
    beta = np.linalg.solve(moves + np.diag(lam), D)
    d2 = np.maximum((neutral ** 2).sum(1)[:, None] + (X ** 2).sum(1)[None]
                    - 2.0 * neutral @ X.T, 0.0)  # V x L squared distances, mm^2
    near = d2.min(1) < (4.0 * length_mm) ** 2
    out = np.zeros_like(neutral)
    out[near] = np.exp(gauss * d2[near]) @ beta
    return out
