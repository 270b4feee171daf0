"""Which model surface point each detected 2D landmark is (steps 1 and 5 of `fitting.fit`).

- `LandmarkSet`: one face's 2D points matched to model surface points, with weights.
- `ibug68_convention` / `ibug68_table`: the 68 points come in two conventions (derived from
  mediapipe's mesh, or the iBUG annotation's, as dlib's), each with its model table.
- `landmark_set`: builds the `LandmarkSet` of detected landmarks.
- `update_jaw_contour` (step 5): the correspondences that move with the pose (the jaw on
  the occluding contour, self-occluded points down-weighted).

Units: pixels (OpenCV convention), millimetres, radians.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fitting.landmark_maps import ibug68_from_mediapipe478
from fitting.model_arrays import (
    CHIN,
    CONTOUR_JAW,
    IBUG68,
    IBUG68_ANNOTATION,
    JAW,
    LOWER_JAW,
    MEDIAPIPE478,
    ModelArrays,
    _basis_rows,
    model_arrays,
    offset_at,
)
from fitting.params import CameraParams
from fitting.pose import FrameState, project, rotation_matrix
from morph3d.errors import ModelError, Morph3dError

# Conventions of detected iBUG-68 points (`ibug68_convention`): "annotation" = a detector
# trained on the iBUG annotation (dlib, FAN); "mediapipe" = derived from mediapipe's 478
# points (`fitting.landmark_maps`), which come with them.
ANNOTATION = "annotation"
MEDIAPIPE = "mediapipe"
# Self-occlusion: a non-jaw point's weight falls linearly from 1 (its surface faces the
# camera at least GRAZING_FACING = cos of the angle between the normal and the view ray)
# to OCCLUDED_WEIGHT (grazing or turned away): detectors guess such points.
GRAZING_FACING = 0.25
OCCLUDED_WEIGHT = 0.1
# Weights per point (relative to an inner iBUG point), for mediapipe-derived 68 points
# (the swap's input) ...
JAW_WEIGHT = 0.5
MEDIAPIPE_WEIGHT = 0.35
# ... and for annotation-convention 68 points (dlib's): the model's mediapipe478 points
# (found on renders) disagree with that convention, so mediapipe's points enter as their
# derived 68 (`fitting.landmark_maps`, made against dlib on real faces), matched to the same
# annotation table, without their jaw (mediapipe's jaw line is its weakest part: real-photo
# NME 7-12 % of IOD); dlib's jaw line is followed at full weight. (A weaker identity prior
# would follow dlib's points closer still, real-photo NME -0.1 / -0.25 % of IOD, but the 3D
# shape overfits: synthetic 68-point faces 1.8 -> 2.7 mm; BENCHMARKS.md.)
ANNOTATION_JAW_WEIGHT = 1.0
ANNOTATION_MEDIAPIPE_WEIGHT = 0.0  # the 478 points themselves
ANNOTATION_MP68_WEIGHT = 0.6  # mediapipe's derived 68 points (jaw 0-16 left out)


# --------------------------------------------------------------------------------------------
# Step 1: which model point each 2D landmark is
# --------------------------------------------------------------------------------------------


@dataclass
class LandmarkSet:
    """The 2D points of one face matched to model surface points.

    `points` L x 2 pixels (NaN = missing), `weights` L, `ids`/`bary` L x 3 (vertex ids and
    barycentrics of each model point; contour points are single vertices), `scheme_slices`
    where each scheme's points are. `mean`/`identity`/`expression` are the linear bases.
    `ibug_table`: the model table the ibug68 rows use (`ibug68_table`). `offset`: a fixed
    corrective deformation (V x 3 mm, `Identity.offset`; None = none): its value at each
    point joins `mean`.
    """

    points: np.ndarray
    weights: np.ndarray
    ids: np.ndarray
    bary: np.ndarray
    scheme_slices: dict[str, slice]
    mean: np.ndarray = field(init=False)
    identity: np.ndarray = field(init=False)
    expression: np.ndarray = field(init=False)
    arrays: ModelArrays | None = None
    ibug_table: str = IBUG68
    offset: np.ndarray | None = None
    # `weights` before the self-occlusion factor (`update_jaw_contour` sets weights from it)
    base_weights: np.ndarray = field(init=False)
    # L x 3 unit mean-head normals at the points as matched first (the jaw's are unused)
    normals: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.identity, self.expression = self._rows(self.ids, self.bary)
        self.base_weights = np.asarray(self.weights, np.float64).copy()
        n = np.einsum("lc,lcd->ld", self.bary, self.arrays.normals[self.ids])
        self.normals = n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)

    def _rows(self, ids: np.ndarray, bary: np.ndarray):
        m, i, e = _basis_rows(self.arrays, ids, bary)
        if self.offset is not None:
            m = m + offset_at(self.offset, ids, bary)
        return m, i, e

    def set_rows(self, rows: np.ndarray, vertex_ids: np.ndarray) -> None:
        """Point rows `rows` now correspond to single vertices `vertex_ids`."""
        self.ids[rows] = vertex_ids[:, None]
        self.bary[rows] = (1.0, 0.0, 0.0)
        m, i, e = self._rows(self.ids[rows], self.bary[rows])
        self.mean[rows], self.identity[rows], self.expression[rows] = m, i, e

    def set_points(self, rows: np.ndarray, ids: np.ndarray, bary: np.ndarray) -> None:
        """Point rows `rows` now correspond to surface points (ids, bary: n x 3)."""
        self.ids[rows], self.bary[rows] = ids, bary
        m, i, e = self._rows(self.ids[rows], self.bary[rows])
        self.mean[rows], self.identity[rows], self.expression[rows] = m, i, e

    def positions(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """L x 3 model-space positions (mm)."""
        # As 2-D matrix-vector products (one BLAS call each, not one per point).
        n = len(self.mean)
        return (self.mean + (self.identity.reshape(3 * n, -1) @ identity).reshape(n, 3)
                + (self.expression.reshape(3 * n, -1) @ expression).reshape(n, 3))

    def copy_for(self, points: np.ndarray) -> LandmarkSet:
        """The same correspondences for new 2D points (same layout)."""
        out = object.__new__(LandmarkSet)
        out.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v)
                             for k, v in self.__dict__.items()})
        out.points = np.asarray(points, np.float64)
        return out

    @property
    def jaw_rows(self) -> np.ndarray:
        s = self.scheme_slices.get(IBUG68)
        return np.array([s.start + j for j in CONTOUR_JAW]) if s is not None else np.zeros(0, int)


def ibug68_convention(backend: str, landmarks: dict[str, np.ndarray] | None = None) -> str:
    """The convention of the ibug68 points a landmark backend gives: MEDIAPIPE for the
    "mediapipe" backend (its 68 points are derived from its 478, which come with them),
    ANNOTATION for the others (dlib, "dlib+mediapipe", FAN: trained on the iBUG 300-W
    annotation; "dlib+mediapipe" uses mediapipe's derived 68 where dlib misses the face,
    and those were made against dlib's points, `fitting.landmark_maps`). A `landmarks` dict
    without mediapipe478 points cannot hold derived points, so it is ANNOTATION whatever
    the backend."""
    if landmarks is not None and MEDIAPIPE478 not in landmarks:
        return ANNOTATION
    return MEDIAPIPE if backend.strip().lower() == "mediapipe" else ANNOTATION


def ibug68_table(arrays: ModelArrays, convention: str) -> str:
    """The model's iBUG-68 table for detected points of `convention`.

    The default model carries two tables, because the two kinds of detected 68 points put
    some points in different places (brows, jaw side):
    - IBUG68 ("ibug68", found by dlib on renders of the mean head): matched to the
      mediapipe-derived 68 points, as the swap has always fitted them; the swap's
      compositor also reads this table (`morph3d.swap.driver`), so the swap does not change.
    - IBUG68_ANNOTATION (derived from dlib on real faces, `tools/derive_ibug68.py`): the
      iBUG annotation convention, matched to dlib's points and used for the reported 68
      points (`projected_landmarks`, `fit_summary`).
    Models without the second table (BFM) use IBUG68 for both."""
    if convention not in (ANNOTATION, MEDIAPIPE):
        raise ValueError(f"unknown ibug68 convention {convention!r}")
    if convention == ANNOTATION and IBUG68_ANNOTATION in arrays.landmarks:
        return IBUG68_ANNOTATION
    return IBUG68


def landmark_set(model, landmarks: dict[str, np.ndarray], convention: str | None = None,
                 offset: np.ndarray | None = None) -> LandmarkSet:
    """Match detected 2D landmarks ({scheme: L x 2}) to the model's landmark points.

    Uses ibug68 (jaw points at half weight) and, when both the detection and the model have
    it, the front-facing non-silhouette mediapipe478 points at a lower weight.
    convention: of the ibug68 points (ANNOTATION or MEDIAPIPE; None: MEDIAPIPE when the
    mediapipe478 points are given, i.e. the mediapipe backend's output, else ANNOTATION;
    see `ibug68_convention`); it picks the model table (`ibug68_table`). offset: a fixed
    corrective deformation of the face (`LandmarkSet.offset`).
    """
    arrays = model_arrays(model)
    if IBUG68 not in arrays.landmarks:
        raise ModelError(f"model '{model.name}' has no ibug68 landmarks: it cannot be fitted "
                         "to photos (add landmarks to the model)")
    if IBUG68 not in landmarks:
        raise Morph3dError("the landmarks to fit need the ibug68 scheme")
    if convention is None:
        convention = ibug68_convention("mediapipe", landmarks)
    table = ibug68_table(arrays, convention)
    parts, weights, ids, bary, slices = [], [], [], [], {}
    start = 0
    ib_ids, ib_bary = arrays.landmarks[table]
    pts = np.asarray(landmarks[IBUG68], np.float64).reshape(68, 2)
    w = np.ones(68)
    w[list(JAW)] = JAW_WEIGHT if table == IBUG68 else ANNOTATION_JAW_WEIGHT
    parts.append(pts), weights.append(w), ids.append(ib_ids), bary.append(ib_bary)
    slices[IBUG68] = slice(0, 68)
    start = 68
    mp_weight = MEDIAPIPE_WEIGHT if table == IBUG68 else ANNOTATION_MEDIAPIPE_WEIGHT
    if MEDIAPIPE478 in landmarks and MEDIAPIPE478 in arrays.landmarks and mp_weight > 0:
        sel = arrays.mediapipe_selected
        mp_ids, mp_bary = arrays.landmarks[MEDIAPIPE478]
        mp = np.asarray(landmarks[MEDIAPIPE478], np.float64).reshape(478, 2)[sel]
        parts.append(mp), weights.append(np.full(len(sel), mp_weight))
        ids.append(mp_ids[sel]), bary.append(mp_bary[sel])
        slices[MEDIAPIPE478] = slice(start, start + len(sel))
        start += len(sel)
    if table == IBUG68_ANNOTATION and MEDIAPIPE478 in landmarks and ANNOTATION_MP68_WEIGHT > 0:
        # A block of its own (scheme "ibug68_from_mediapipe"): the same model points as the
        # ibug68 block, without the jaw (missing = NaN).
        mp68 = ibug68_from_mediapipe478(np.asarray(landmarks[MEDIAPIPE478], np.float64)
                                        .reshape(478, 2))
        mp68[list(JAW)] = np.nan
        parts.append(mp68), weights.append(np.full(68, ANNOTATION_MP68_WEIGHT))
        ids.append(ib_ids), bary.append(ib_bary)
        slices["ibug68_from_mediapipe"] = slice(start, start + 68)
    return LandmarkSet(np.concatenate(parts), np.concatenate(weights),
                       np.concatenate(ids).copy(), np.concatenate(bary).copy(), slices,
                       arrays=arrays, ibug_table=table, offset=offset)


# --------------------------------------------------------------------------------------------
# Step 5: the correspondences that move with the pose
# --------------------------------------------------------------------------------------------


def update_jaw_contour(ls: LandmarkSet, identity: np.ndarray, state: FrameState,
                       camera: CameraParams) -> None:
    """Step 5: the correspondences that move with the pose.

    - Each iBUG side jaw point (`CONTOUR_JAW`) moves to the occluding contour: the point of
      its horizontal model row (mesh edges crossing the point's height) that projects
      farthest outwards in the image. The point is picked on the 3DMM face (identity and
      expression), not on the face deformed by `ls.offset`: the corrective offset
      (`fitting.fit.fit_corrective`) is solved at the contour points picked while fitting,
      when there was no offset yet, and moves them onto the detector's points; picked again
      on the deformed face, a point could jump to another part of its row (a corner of the
      chin, the neck side) and land far from where the offset put it.
    - Each lower jaw point (`LOWER_JAW`) does the same once its table point faces away from
      the camera (beyond the outline of a turned head, where the annotation follows the
      outline), else it keeps its table point. Turning away, the table point reaches the
      outline first, so the switch barely moves it.
    - Every other point's weight is its base weight times a self-occlusion factor: 1 where
      its (mean-head) surface faces the camera, down to `OCCLUDED_WEIGHT` at grazing or
      beyond (a detector guesses where hidden points are).
    """
    arrays = ls.arrays
    gather = arrays.contour_gather.get(ls.ibug_table)
    R = rotation_matrix(state.rotation)
    # View rays to the points of the mean face: a face's shape moves them by a few mm at a
    # distance of hundreds, and skipping identity and expression keeps this cheap.
    pos = ls.mean @ R.T + state.translation
    ray = pos / (np.linalg.norm(pos, axis=1, keepdims=True) + 1e-12)
    facing = -np.einsum("ld,ld->l", ls.normals @ R.T, ray)
    factor = OCCLUDED_WEIGHT + (1.0 - OCCLUDED_WEIGHT) * np.clip(facing / GRAZING_FACING, 0, 1)
    if IBUG68 in ls.scheme_slices:
        factor[ls.scheme_slices[IBUG68].start + np.arange(17)] = 1.0
    ls.weights = ls.base_weights * factor
    if gather is None or IBUG68 not in ls.scheme_slices:
        return
    base = ls.scheme_slices[IBUG68].start
    table_ids, table_bary = arrays.landmarks[ls.ibug_table]
    lower = [j for j in LOWER_JAW if j in gather.jaw]
    at = np.einsum("lc,lcd->ld", table_bary[lower], arrays.mean[table_ids[lower]]) @ R.T \
        + state.translation
    facing_lower = -np.einsum("ld,ld->l", ls.normals[base + np.array(lower, int)] @ R.T,
                              at / np.linalg.norm(at, axis=1, keepdims=True))
    hidden = [j for j, f in zip(lower, facing_lower, strict=True) if f <= 0.0]
    visible = [j for j, f in zip(lower, facing_lower, strict=True) if f > 0.0]
    if visible and not np.array_equal(ls.ids[base + np.array(visible)], table_ids[visible]):
        ls.set_points(base + np.array(visible), table_ids[visible], table_bary[visible])
    jaw = [j for j in CONTOUR_JAW if j in gather.jaw] + hidden
    rows, sizes = gather.rows(jaw)
    # Every candidate vertex (a few hundred), then the candidates (points on mesh edges).
    vu = gather.vertices(identity, state.expression)
    local, w = gather.local[rows], gather.edge_weights[rows]
    verts = w[:, :1] * vu[local[:, 0]] + w[:, 1:] * vu[local[:, 1]]
    uv = project(verts, state.rotation, state.translation, camera)
    # Outward direction in the image: the model's x axis (sign by side), projected.
    centre = verts.mean(0)
    ends = project(np.stack([centre, centre + np.array([10.0, 0.0, 0.0])]), state.rotation,
                   state.translation, camera)
    right = ends[1] - ends[0]
    right /= np.linalg.norm(right) + 1e-12
    # Each jaw point takes its group's candidate farthest out on its side (the first of ties).
    side = np.repeat(np.where(np.array(jaw) > CHIN, 1.0, -1.0), sizes)
    score = (uv @ right) * side
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    group = np.repeat(np.arange(len(jaw)), sizes)
    top = score == np.maximum.reduceat(score, starts)[group]
    best = rows[np.flatnonzero(top)[np.searchsorted(group[top], np.arange(len(jaw)))]]
    ids = np.zeros((len(jaw), 3), np.int64)
    bary = np.zeros((len(jaw), 3))
    ids[:, :2], ids[:, 2] = gather.edge_ids[best], gather.edge_ids[best, 0]
    bary[:, :2] = gather.edge_weights[best]
    target = base + np.array(jaw)
    if not (np.array_equal(ls.ids[target], ids) and np.array_equal(ls.bary[target], bary)):
        ls.set_points(target, ids, bary)
