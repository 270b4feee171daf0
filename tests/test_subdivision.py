"""One step of Loop subdivision (morph3d.model.subdivision) on small meshes whose answer is
known: an octahedron (closed, every vertex of valence 4) and a single triangle (all
boundary). The real head is subdivided in test_model.py."""

import numpy as np
import pytest

from morph3d.model.model import ModelData, MorphableModel, SurfacePoints
from morph3d.model.subdivision import (
    _child_landmarks,
    _midpoint_matrix,
    loop_matrix,
    subdivide_model,
)

OCTAHEDRON_VERTICES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                                [0, 0, -1]], np.float64)
OCTAHEDRON_TRIANGLES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5],
                                 [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.int64)


def test_loop_matrix_sizes_and_affine_rows() -> None:
    s, children = loop_matrix(OCTAHEDRON_TRIANGLES, 6)
    assert s.shape == (6 + 12, 6)  # V + E rows: the octahedron has 12 edges
    assert children.shape == (4 * 8, 3)
    # every new position is an affine combination: translations move the mesh rigidly
    np.testing.assert_allclose(np.asarray(s.sum(1)).ravel(), 1.0, atol=1e-12)
    # each child triangle uses vertices that exist, and every edge vertex is used
    assert children.max() == 6 + 12 - 1 and set(np.unique(children)) == set(range(18))


def test_loop_weights_on_a_closed_mesh() -> None:
    s = loop_matrix(OCTAHEDRON_TRIANGLES, 6)[0].toarray()
    # valence 4: beta = (5/8 - (3/8 + cos(2 pi / 4) / 4)^2) / 4
    beta = (5 / 8 - (3 / 8) ** 2) / 4
    np.testing.assert_allclose(s[0, 0], 1 - 4 * beta)
    assert np.count_nonzero(s[0]) == 5 and s[0, 1] == 0.0  # the opposite vertex is no neighbour
    # an inner edge vertex: 3/8 of its two ends, 1/8 of the two opposite corners
    for row in s[6:]:
        assert sorted(row[row > 0].round(6)) == [0.125, 0.125, 0.375, 0.375]
    # the octahedron's corners move in along their axes by the vertex rule; an edge's new
    # vertex is 3/8 of its ends (its two opposite corners cancel out)
    radii = np.linalg.norm(s @ OCTAHEDRON_VERTICES, axis=1)
    np.testing.assert_allclose(radii[:6], 1 - 4 * beta)
    np.testing.assert_allclose(radii[6:], 3 / 8 * np.sqrt(2))


def test_boundary_rules_on_one_triangle() -> None:
    s, children = loop_matrix(np.array([[0, 1, 2]]), 3)
    s = s.toarray()
    for v in range(3):  # boundary corner: 3/4 itself, 1/8 each boundary neighbour
        assert s[v, v] == 0.75 and sorted(s[v][s[v] > 0]) == [0.125, 0.125, 0.75]
    for row in s[3:]:  # boundary edge: its midpoint
        assert sorted(row[row > 0]) == [0.5, 0.5]
    assert len(children) == 4


def test_child_landmarks_sit_where_the_parent_points_were() -> None:
    """Re-expressed on the children of midpoint subdivision, every surface point keeps its
    position (the four child triangles tile the parent exactly)."""
    rng = np.random.default_rng(3)
    bary = rng.dirichlet(np.ones(3), size=200)
    bary[:4] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]]
    faces = rng.integers(0, len(OCTAHEDRON_TRIANGLES), 200)
    points = SurfacePoints(faces.astype(np.int64), bary.astype(np.float32))
    m, children = _midpoint_matrix(OCTAHEDRON_TRIANGLES, 6)
    child = _child_landmarks(points, len(OCTAHEDRON_TRIANGLES))
    assert (child.barycentrics >= -1e-6).all()
    np.testing.assert_allclose(child.barycentrics.sum(1), 1.0, atol=1e-6)
    before = points.positions(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    after = child.positions(m @ OCTAHEDRON_VERTICES, children)
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.fixture
def octahedron_model() -> ModelData:
    rng = np.random.default_rng(0)
    data = ModelData(
        name="octahedron",
        mean=(OCTAHEDRON_VERTICES * 50).astype(np.float32),
        identity_basis=rng.normal(size=(3, 6, 3)).astype(np.float32),
        identity_std=np.array([5.0, 3.0, 1.0], np.float32),
        expression_basis=rng.normal(size=(2, 6, 3)).astype(np.float32),
        expression_names=["a", "b"],
        triangles=OCTAHEDRON_TRIANGLES,
        uv_coords=rng.random((6, 2)).astype(np.float32),
        uv_triangles=OCTAHEDRON_TRIANGLES.copy(),
        regions={"top": np.array([0, 0, 0, 0, 1, 0], bool),
                 "equator": np.array([1, 1, 1, 1, 0, 0], bool)},
        landmarks={"tips": SurfacePoints(np.array([0, 5], np.int64),
                                         np.array([[1, 0, 0], [0.2, 0.3, 0.5]], np.float32))},
    )
    data.validate()
    return data


def test_subdivided_model_is_the_subdivided_mesh_at_every_parameter(octahedron_model) -> None:
    data = octahedron_model
    dense = subdivide_model(data)
    dense.validate()
    assert dense.num_vertices == 18 and dense.num_triangles == 32
    assert dense.identity_std is not data.identity_std
    np.testing.assert_array_equal(dense.identity_std, data.identity_std)
    # Loop subdivision is linear: the dense model at any parameters is the coarse model's
    # mesh at those parameters, subdivided
    s = loop_matrix(data.triangles, 6)[0]
    coarse, fine = MorphableModel(data), MorphableModel(dense)
    import torch

    identity = torch.tensor([[1.0, -0.5, 2.0]])
    expression = torch.tensor([[0.3, -1.0]])
    with torch.no_grad():
        v = coarse.vertices(identity, expression)[0].double().numpy()
        w = fine.vertices(identity, expression)[0].double().numpy()
    np.testing.assert_allclose(w, s @ v, atol=1e-3)
    # an edge vertex is in a region only when both of its ends are
    assert not dense.regions["top"][6:].any()
    assert dense.regions["equator"][6:].sum() == 4  # the 4 equator edges
    assert dense.metadata["subdivided"] == "loop-1"
    # landmarks stay on the surface at the same barycentric spot of the midpoint mesh
    np.testing.assert_array_equal(dense.landmarks["tips"].triangles[0], 0)
