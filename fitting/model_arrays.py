"""The morphable model as float64 numpy arrays for the photo fit (`fitting.fit`): `ModelArrays`,
gathered once per model by `model_arrays`, with what the fit reads of the model's surface:
the landmark tables' surface points, smoothed normals of the mean head, the mediapipe478
points a fit uses, and each iBUG jaw point's candidates on the occluding contour (the model
side of step 5; `fitting.correspondence.update_jaw_contour` picks among them per pose).

Units: millimetres.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from morph3d.model.geometry import vertex_normals

IBUG68 = "ibug68"
MEDIAPIPE478 = "mediapipe478"
# The model's iBUG-68 table in the iBUG 300-W annotation convention
# (see `fitting.correspondence.ibug68_table`).
IBUG68_ANNOTATION = "ibug68_annotation"
JAW = tuple(range(17))
CHIN = 8
CONTOUR_JAW = (0, 1, 2, 3, 4, 12, 13, 14, 15, 16)  # the sides: always on the contour
# The lower jaw beside the chin: at its table point while that faces the camera, on the
# contour once it turns away (the far side of a turned head, where annotators follow the
# visible outline); the chin (8) stays put.
LOWER_JAW = (5, 6, 7, 9, 10, 11)
# mediapipe's face oval (silhouette points: they slide over the surface like the iBUG jaw)
# and the 10 iris points (gaze is not modelled well enough): left out of the fit.
MEDIAPIPE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379,
                  378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127,
                  162, 21, 54, 103, 67, 109)


@dataclass
class ContourGather:
    """The contour candidates of one iBUG table's jaw points (`ModelArrays.contour_edges`)
    in flat arrays, with the model's bases at the vertices they touch, so that a pose's
    contour (`fitting.correspondence.update_jaw_contour`, several times per frame) costs a
    small matrix product instead of gathers from the V x 3 x K bases.

    Candidate rows are grouped by jaw point: point `jaw[k]`'s rows are
    `starts[k]:starts[k + 1]`."""

    jaw: tuple[int, ...]  # iBUG jaw indices that have candidates
    starts: np.ndarray  # len(jaw) + 1 row offsets
    edge_ids: np.ndarray  # C x 2 vertex ids
    edge_weights: np.ndarray  # C x 2
    local: np.ndarray  # C x 2 rows into the vertex arrays below
    vertex_ids: np.ndarray  # U distinct vertex ids the candidates touch
    mean: np.ndarray  # U x 3 mm
    identity: np.ndarray  # 3U x K (mm per std), rows x, y, z of each vertex in turn
    expression: np.ndarray  # 3U x J
    _neutral: tuple[np.ndarray, np.ndarray] | None = None  # (identity, U x 3 mm) last made

    @classmethod
    def gather(cls, arrays: ModelArrays, edges: dict[int, tuple[np.ndarray, np.ndarray]]
               ) -> ContourGather:
        jaw = tuple(j for j in CONTOUR_JAW + LOWER_JAW if j in edges)
        ids = np.concatenate([edges[j][0] for j in jaw]).astype(np.int64)
        weights = np.concatenate([edges[j][1] for j in jaw]).astype(np.float64)
        starts = np.cumsum([0] + [len(edges[j][0]) for j in jaw])
        uniq, inv = np.unique(ids, return_inverse=True)
        return cls(jaw, starts, ids, weights, inv.reshape(ids.shape), uniq,
                   np.ascontiguousarray(arrays.mean[uniq]),
                   arrays.identity[uniq].reshape(3 * len(uniq), -1),
                   arrays.expression[uniq].reshape(3 * len(uniq), -1))

    def vertices(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """U x 3 mm: the candidate vertices of a face. The neutral shape of the last identity
        is kept: a clip's frames share one."""
        n = len(self.vertex_ids)
        neutral = self._neutral
        if neutral is None or not np.array_equal(neutral[0], identity):
            neutral = (identity.copy(), self.mean + (self.identity @ identity).reshape(n, 3))
            self._neutral = neutral
        return neutral[1] + (self.expression @ expression).reshape(n, 3)

    def rows(self, jaw: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The candidate rows of jaw points `jaw` (in that order) and their group sizes."""
        at = {j: k for k, j in enumerate(self.jaw)}
        parts = [np.arange(self.starts[at[j]], self.starts[at[j] + 1]) for j in jaw]
        return np.concatenate(parts), np.array([len(p) for p in parts])


@dataclass
class ModelArrays:
    """Per-vertex arrays of a model for the linear solvers: V x 3, V x 3 x K (mm per std),
    V x 3 x J (mm per unit weight)."""

    mean: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    triangles: np.ndarray
    landmarks: dict[str, tuple[np.ndarray, np.ndarray]]  # scheme -> (L x 3 vertex ids, L x 3)
    # iBUG table (IBUG68 or IBUG68_ANNOTATION) -> iBUG jaw index -> candidate vertex ids
    contour_rows: dict[str, dict[int, np.ndarray]]
    face_vertices: np.ndarray  # vertex ids of the face_skin region
    mediapipe_selected: np.ndarray | None = None  # mediapipe478 indices used in fits
    # iBUG table -> iBUG jaw index -> (C x 2 vertex ids, C x 2 weights): points where mesh
    # edges cross the jaw point's horizontal plane on the mean head (the contour candidates
    # of that row; each table has its own jaw heights).
    contour_edges: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=dict)
    normals: np.ndarray | None = None  # V x 3 unit smoothed normals of the mean head
    edges: np.ndarray | None = None  # E x 2 the mesh's edges (vertex ids, sorted), when made
    # iBUG table -> `contour_edges` of every jaw point gathered into flat arrays
    contour_gather: dict[str, ContourGather] = field(default_factory=dict)

    @property
    def num_identity(self) -> int:
        return self.identity.shape[2]

    @property
    def num_expression(self) -> int:
        return self.expression.shape[2]


# Keyed weakly by the model object: a batch worker loads a model per job, and an entry keyed
# by id() would outlive its model (and could be handed to a later model at the same address).
_ARRAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_arrays(model) -> ModelArrays:
    """`ModelArrays` of a `MorphableModel` (cached per model object)."""
    cached = _ARRAYS.get(model)
    if cached is not None and cached.mean.shape[0] == model.num_vertices:
        return cached
    data = model.data
    mean = data.mean.astype(np.float64)
    identity = np.ascontiguousarray(
        (data.identity_basis * data.identity_std[:, None, None]).transpose(1, 2, 0), np.float64)
    expression = np.ascontiguousarray(data.expression_basis.transpose(1, 2, 0), np.float64)
    landmarks = {}
    for scheme, points in data.landmarks.items():
        landmarks[scheme] = (data.triangles[points.triangles].astype(np.int64),
                             points.barycentrics.astype(np.float64))
    regions = data.regions
    face = np.flatnonzero(regions["face_skin"]) if "face_skin" in regions else np.arange(len(mean))
    arrays = ModelArrays(mean, identity, expression, data.triangles.astype(np.int64), landmarks,
                         {}, face, normals=_smooth_normals(mean, data.triangles))
    for table in (IBUG68, IBUG68_ANNOTATION):
        if table in landmarks:
            arrays.contour_rows[table] = _contour_rows(arrays, regions, table)
            arrays.contour_edges[table] = _contour_edges(arrays, regions, table)
            if arrays.contour_edges[table]:
                arrays.contour_gather[table] = ContourGather.gather(
                    arrays, arrays.contour_edges[table])
    if MEDIAPIPE478 in landmarks:
        arrays.mediapipe_selected = _selected_mediapipe(arrays)
    _ARRAYS[model] = arrays
    return arrays


def _basis_rows(arrays: ModelArrays, ids: np.ndarray, bary: np.ndarray):
    """Mean (L x 3), identity (L x 3 x K) and expression (L x 3 x J) of surface points."""
    mean = np.einsum("lc,lcd->ld", bary, arrays.mean[ids])
    identity = np.einsum("lc,lcdk->ldk", bary, arrays.identity[ids])
    expression = np.einsum("lc,lcdk->ldk", bary, arrays.expression[ids])
    return mean, identity, expression


def _selected_mediapipe(arrays: ModelArrays) -> np.ndarray:
    ids, bary = arrays.landmarks[MEDIAPIPE478]
    # Keep points whose mean-shape surface faces the front: they stay visible and do not
    # slide with pose like silhouette points do.
    normals = vertex_normals(arrays.mean, arrays.triangles)
    n = np.einsum("lc,lcd->ld", bary, normals[ids])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    keep = n[:, 2] > 0.5
    keep[list(MEDIAPIPE_OVAL)] = False
    keep[468:] = False
    return np.flatnonzero(keep)


def vertex_positions(model, identity: np.ndarray, expression: np.ndarray,
                     offset: np.ndarray | None = None) -> np.ndarray:
    """V x 3 model-space vertices (mm) for one face, float64 (`offset`: the identity's
    corrective deformation, V x 3 mm, `Identity.offset`)."""
    arrays = model_arrays(model)
    verts = arrays.mean + arrays.identity @ identity + arrays.expression @ expression
    return verts if offset is None else verts + offset


def offset_at(offset: np.ndarray | None, ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """The corrective deformation (mm) at surface points (ids, bary: L x 3); 0 if None."""
    if offset is None:
        return np.zeros((len(ids), 3))
    return np.einsum("lc,lcd->ld", bary, np.asarray(offset, np.float64)[ids])


# --------------------------------------------------------------------------------------------
# The model side of the jaw contour (step 5): candidate points per iBUG jaw point
# --------------------------------------------------------------------------------------------


def _smooth_normals(vertices: np.ndarray, triangles: np.ndarray, radius_mm: float = 8.0
                    ) -> np.ndarray:
    """V x 3 unit vertex normals averaged over `radius_mm`: the orientation of the face's
    surface around a point (which way it faces the camera), without the eyelids' and lips'
    creases, whose own normals point sideways even on a frontal face."""
    from scipy.spatial import cKDTree

    normals = vertex_normals(vertices, triangles.astype(np.int64))
    pairs = cKDTree(vertices).query_pairs(radius_mm, output_type="ndarray")
    out = normals.copy()
    np.add.at(out, pairs[:, 0], normals[pairs[:, 1]])
    np.add.at(out, pairs[:, 1], normals[pairs[:, 0]])
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-12)


def _contour_rows(arrays: ModelArrays, regions: dict[str, np.ndarray], table: str = IBUG68
                  ) -> dict[int, np.ndarray]:
    """For each iBUG jaw point (not the chin) of iBUG table `table`: skin vertices on its
    horizontal row of the mean head, on its side, between the ear and the face. The
    occluding contour of that row is always one of them."""
    ids, bary = arrays.landmarks[table]
    jaw = np.einsum("lc,lcd->ld", bary[:17], arrays.mean[ids[:17]])
    skin = _contour_skin(arrays, regions)
    v = arrays.mean
    back = jaw[0, 2] - 5.0  # the ear end of the jaw line
    rows = {}
    for j in CONTOUR_JAW:
        side = np.sign(jaw[j, 0])
        near = (np.abs(v[:, 1] - jaw[j, 1]) < 4.0) & (np.sign(v[:, 0]) == side)
        near &= v[:, 2] > max(back, jaw[j, 2] - 25.0)
        near &= np.abs(v[:, 0]) > 0.5 * abs(jaw[j, 0])
        rows[j] = np.flatnonzero(near & skin)
    return rows


def _contour_skin(arrays: ModelArrays, regions: dict[str, np.ndarray]) -> np.ndarray:
    """Vertices a jaw contour point may take: skin, not eyes, mouth or lips."""
    skin = regions.get("skin", np.ones(len(arrays.mean), bool))
    for name in ("eyes", "eyeballs", "mouth_interior", "teeth", "tongue", "lips"):
        if name in regions:
            skin = skin & ~regions[name]
    return skin


def contour_candidates(arrays: ModelArrays, skin: np.ndarray, point: np.ndarray, back: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Where the mean head's mesh edges cross the horizontal plane through a jaw `point`
    (mm), on its side, in front of `back` (z, mm): (C x 2 vertex ids, C x 2 weights).

    A row of whole vertices (+-4 mm) lets the contour point jump up and down by the band
    width as the silhouette vertex changes; edge crossings keep it at the point's height.
    """
    v = arrays.mean
    near = (np.abs(v[:, 1] - point[1]) < 15.0) & (np.sign(v[:, 0]) == np.sign(point[0]))
    near &= v[:, 2] > max(back, point[2] - 25.0)
    near &= np.abs(v[:, 0]) > 0.5 * abs(point[0])
    near &= skin
    if arrays.edges is None:  # the mesh's edges, made once (a unique over all of them)
        tri = arrays.triangles
        edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        arrays.edges = np.unique(np.sort(edges, axis=1), axis=0)
    edges = arrays.edges[near[arrays.edges].all(1)]
    ya, yb = v[edges[:, 0], 1] - point[1], v[edges[:, 1], 1] - point[1]
    cross = (ya * yb <= 0) & (ya != yb)
    edges, ya, yb = edges[cross], ya[cross], yb[cross]
    t = ya / (ya - yb)  # weight of the second vertex
    return edges, np.stack([1.0 - t, t], 1)


def _contour_edges(arrays: ModelArrays, regions: dict[str, np.ndarray], table: str = IBUG68
                   ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`contour_candidates` of each iBUG jaw point (not the chin) of iBUG table `table`;
    a side point falls back to the vertex row where a plane crosses no edge, a lower jaw
    point (`LOWER_JAW`) to none (it keeps its table point)."""
    ids, bary = arrays.landmarks[table]
    jaw = np.einsum("lc,lcd->ld", bary[:17], arrays.mean[ids[:17]])
    skin = _contour_skin(arrays, regions)
    out = {}
    for j in CONTOUR_JAW + LOWER_JAW:
        e, w = contour_candidates(arrays, skin, jaw[j], jaw[0, 2] - 5.0)
        if len(e) == 0 and j in CONTOUR_JAW:
            row = arrays.contour_rows[table][j]
            e, w = np.stack([row, row], 1), np.tile([1.0, 0.0], (len(row), 1))
        if len(e):
            out[j] = (e, w)
    return out
