"""Ground truth for fitting's tests and benchmarks: a synthetic face with known parameters,
the true iBUG 68 points in the annotation convention (the jaw on the face's outline), and the
error measures against the truth (outline distance in pixels, pose error in degrees, rigid
vertex error in mm, NME).

The true points are computed from the true mesh, not by the fit's own contour code, so a
test of that code does not check it against itself.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from fitting import correspondence as FC
from fitting import model_arrays as FM
from fitting import photo as FP
from fitting import pose as FPose
from fitting.params import CameraParams
from morph3d.model.geometry import median_aligned_distance, vertex_normals


def synthetic_face(model, rng, yaw_deg: float | None = None, noise_px: float = 1.5):
    """A random face (identity ~ N(0, I), sparse expressions) at a random pose, and its
    landmarks seen by a 640 x 480 camera (f = 800 px): ibug68 with the jaw on the occluding
    contour (where annotators put it) and mediapipe478, plus Gaussian pixel noise.
    Returns (identity, FrameState, camera, {scheme: L x 2 px})."""
    alpha = rng.standard_normal(model.num_identity)
    beta = rng.uniform(0, 0.6, model.num_expression) * (rng.uniform(size=model.num_expression)
                                                        < 0.15)
    yaw = rng.uniform(-30, 30) if yaw_deg is None else yaw_deg
    head = Rotation.from_euler("YXZ", [yaw, rng.uniform(-12, 12), rng.uniform(-8, 8)],
                               degrees=True).as_matrix()
    state = FPose.FrameState(FPose.axis_angle(FP.FRONT @ head),
                             np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), 600.0]), beta)
    camera = CameraParams.default_for(640, 480, 800.0)
    landmarks = {scheme: pts + rng.normal(0, noise_px, pts.shape)
                 for scheme, pts in true_landmarks(model, alpha, state, camera).items()}
    return alpha, state, camera, landmarks


def true_landmarks(model, alpha: np.ndarray, state, camera: CameraParams
                   ) -> dict[str, np.ndarray]:
    """The model's ibug68 (jaw on the occluding contour) and mediapipe478 points of the
    face `alpha` in `state`, projected with `camera`: scheme -> N x 2 pixels, no noise."""
    arrays = FM.model_arrays(model)
    points = {}
    for scheme in ("ibug68", "mediapipe478"):
        ids, bary = arrays.landmarks[scheme]
        ls = FC.LandmarkSet(np.full((len(ids), 2), np.nan), np.ones(len(ids)), ids.copy(),
                            bary.copy(), {scheme: slice(0, len(ids))}, arrays=arrays)
        if scheme == "ibug68":
            FC.update_jaw_contour(ls, alpha, state, camera)
        points[scheme] = FPose.project(ls.positions(alpha, state.expression), state.rotation,
                                       state.translation, camera)
    return points


def annotated_68(model, alpha: np.ndarray, state: FPose.FrameState, camera: CameraParams
                 ) -> np.ndarray:
    """The true iBUG 68 points (68 x 2 px) of a face in the annotation convention: the
    model's annotation table, each jaw point except the chin on the face's outline. The
    outline point of a jaw point is the outermost projection (along the head's projected x
    axis, on its side) of where the true surface crosses the point's horizontal model plane
    (in front of the ear); the side points 0-4 / 12-16 always take it, the lower points
    5-7 / 9-11 once their table point faces away from the camera (true vertex normals)."""
    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks[FC.ibug68_table(arrays, FC.ANNOTATION)]
    verts = FM.vertex_positions(model, alpha, state.expression)
    points = np.einsum("lc,lcd->ld", bary, verts[ids])
    R = FPose.rotation_matrix(state.rotation)
    normals = np.einsum("lc,lcd->ld", bary, vertex_normals(verts, arrays.triangles)[ids])
    cam = points @ R.T + state.translation
    facing = -np.einsum("ld,ld->l", normals @ R.T, cam / np.linalg.norm(cam, axis=1)[:, None])
    truth = FPose.project(points, state.rotation, state.translation, camera)
    mean_jaw = np.einsum("lc,lcd->ld", bary[:17], arrays.mean[ids[:17]])
    skin = FM._contour_skin(arrays, model.data.regions)
    right = (FPose.project(np.array([[10.0, 0, 0]]), state.rotation, state.translation, camera)
             - FPose.project(np.zeros((1, 3)), state.rotation, state.translation, camera))[0]
    right /= np.linalg.norm(right)
    for j in range(17):
        if j == 8 or (j in (5, 6, 7, 9, 10, 11) and facing[j] > 0):
            continue
        edges, w = FM.contour_candidates(arrays, skin, mean_jaw[j], mean_jaw[0, 2] - 5.0)
        if not len(edges):
            continue
        row = w[:, :1] * verts[edges[:, 0]] + w[:, 1:] * verts[edges[:, 1]]
        uv = FPose.project(row, state.rotation, state.translation, camera)
        truth[j] = uv[int(np.argmax(uv @ ((1.0 if j > 8 else -1.0) * right)))]
    return truth


def outline_distance_px(points: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Distance (px) of each point (L x 2 px) to the boundary of a rendered face's coverage
    mask (H x W)."""
    import cv2

    inside = coverage.astype(np.uint8)
    edge = inside - cv2.erode(inside, np.ones((3, 3), np.uint8))
    dist = cv2.distanceTransform((edge == 0).astype(np.uint8), cv2.DIST_L2, 5)
    p = np.clip(np.round(points).astype(int), 0, np.array(coverage.shape[::-1]) - 1)
    return dist[p[:, 1], p[:, 0]]


def pose_error_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two head rotations (axis-angle, radians)."""
    d = FPose.rotation_matrix(r1) @ FPose.rotation_matrix(r2).T
    return float(np.degrees(np.linalg.norm(FPose.axis_angle(d))))


def rigid_vertex_error(model, a_id, a_ex, b_id, b_ex, offset=None) -> float:
    """Median face-region vertex distance (mm) after the best rigid alignment (`offset`:
    a corrective deformation of the first shape)."""
    face = FM.model_arrays(model).face_vertices
    return median_aligned_distance(FM.vertex_positions(model, a_id, a_ex, offset)[face],
                                   FM.vertex_positions(model, b_id, b_ex)[face])


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean point error of 68 iBUG points (68 x 2 px) over the inter-ocular distance (outer
    eye corners 36-45 of `truth`), unitless."""
    iod = np.linalg.norm(truth[36] - truth[45])
    return float(np.linalg.norm(pred - truth, axis=1).mean() / iod)
