"""Landmark pinning (morph3d.builders.landmarks): snapping 3D points onto the mesh, the
iBUG-68 symmetry, and the pinned tables of the built default head."""

import numpy as np
import pytest

from morph3d.builders.landmarks import (
    IBUG68_LOWER_INNER_LIP,
    IBUG68_MEAN_MM,
    IBUG68_MIDLINE,
    IBUG68_PAIRS,
    IBUG68_UPPER_INNER_LIP,
    _closest_point_on_triangle,
    closest_surface_points,
    lip_triangles,
    symmetrize_ibug68,
)
from morph3d.model.model import SurfacePoints

OCTAHEDRON_VERTICES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                                [0, 0, -1]], np.float64) * 30.0
OCTAHEDRON_TRIANGLES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5],
                                 [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.int64)


def brute_force_closest(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                        ) -> np.ndarray:
    """The closest of a dense barycentric grid over the triangle (step 1/400)."""
    n = 400
    i, j = np.mgrid[0:n + 1, 0:n + 1].reshape(2, -1) / n
    keep = i + j <= 1
    i, j = i[keep], j[keep]
    grid = (1 - i - j)[:, None] * a + i[:, None] * b + j[:, None] * c
    return grid[np.argmin(((grid - p) ** 2).sum(1))]


def test_closest_point_on_triangle_in_every_region() -> None:
    """Points off every vertex, edge and the face itself, against a dense search."""
    a, b, c = np.array([0.0, 0, 0]), np.array([4.0, 0, 0]), np.array([1.0, 3, 0])
    rng = np.random.default_rng(1)
    probes = np.concatenate([rng.uniform(-3, 7, (60, 3)),
                             [[-1, -1, 2], [5, -1, 0], [1, 4, -1], [2, -2, 1], [3, 2, 1],
                              [-1, 2, 0], [1.5, 1, 5]]])
    for p in probes:
        q, bary = _closest_point_on_triangle(p, a, b, c)
        assert bary.min() >= 0 and abs(bary.sum() - 1) < 1e-9
        np.testing.assert_allclose(bary @ np.stack([a, b, c]), q, atol=1e-9)
        best = brute_force_closest(p, a, b, c)
        assert np.linalg.norm(q - p) <= np.linalg.norm(best - p) + 1e-9
        assert np.linalg.norm(q - best) < 0.02


def test_closest_surface_points_on_an_octahedron() -> None:
    # beyond a corner: the corner; above a face's centre: that centre
    centre = OCTAHEDRON_VERTICES[OCTAHEDRON_TRIANGLES[0]].mean(0)
    points = np.stack([OCTAHEDRON_VERTICES[4] * 1.5, centre * 1.4, centre * 0.5])
    pinned = closest_surface_points(points, OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    at = pinned.positions(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    np.testing.assert_allclose(at[0], OCTAHEDRON_VERTICES[4], atol=1e-5)
    np.testing.assert_allclose(at[1], centre, atol=1e-4)
    np.testing.assert_allclose(at[2], centre, atol=1e-4)  # from inside, too
    assert pinned.triangles[1] == 0 and pinned.triangles[2] == 0
    np.testing.assert_allclose(pinned.barycentrics[1], 1 / 3, atol=1e-5)


def test_closest_surface_points_keep_to_the_allowed_triangles() -> None:
    centre = OCTAHEDRON_VERTICES[OCTAHEDRON_TRIANGLES[0]].mean(0)
    allowed = np.zeros(len(OCTAHEDRON_TRIANGLES), bool)
    allowed[[4, 5, 6, 7]] = True  # the lower half only
    pinned = closest_surface_points(centre[None] * 1.2, OCTAHEDRON_VERTICES,
                                    OCTAHEDRON_TRIANGLES, allowed)
    assert allowed[pinned.triangles].all()
    at = pinned.positions(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)[0]
    assert abs(at[2]) < 1e-5  # the best it can do is the equator, below the upper face


def test_ibug68_pairs_and_mid_line_name_every_point_once() -> None:
    named = [i for pair in IBUG68_PAIRS for i in pair] + list(IBUG68_MIDLINE)
    assert sorted(named) == list(range(68))


def test_symmetrize_ibug68_mirrors_pairs_and_centres_the_mid_line() -> None:
    rng = np.random.default_rng(2)
    points = np.array(IBUG68_MEAN_MM) + rng.normal(0, 2.0, (68, 3))
    sym = symmetrize_ibug68(points)
    for a, b in IBUG68_PAIRS:
        np.testing.assert_allclose(sym[a], sym[b] * [-1, 1, 1])
        # the pair's mean (after mirroring) is kept
        np.testing.assert_allclose(sym[a], (points[a] + points[b] * [-1, 1, 1]) / 2)
    assert (sym[list(IBUG68_MIDLINE), 0] == 0).all()
    np.testing.assert_allclose(symmetrize_ibug68(sym), sym)  # idempotent
    assert np.array_equal(symmetrize_ibug68(np.array(IBUG68_MEAN_MM)), np.array(IBUG68_MEAN_MM))


@pytest.fixture(scope="module")
def default_data(model):
    return model.data


def test_default_head_pins_the_dlib_derived_points_close_to_their_table(default_data) -> None:
    data = default_data
    table = data.landmarks["ibug68_annotation"]
    assert isinstance(table, SurfacePoints) and len(table.triangles) == 68
    at = table.positions(data.mean, data.triangles)
    # eye points go onto the lid margins, inner-lip points onto their own lip: a few mm
    assert np.linalg.norm(at - np.array(IBUG68_MEAN_MM), axis=1).max() < 5.0


def test_inner_lip_points_sit_on_their_own_lip(default_data) -> None:
    from morph3d.builders.parts import vertex_parts

    data = default_data
    upper, lower = lip_triangles(data, vertex_parts(data))
    assert upper.any() and lower.any() and not (upper & lower).any()
    for scheme in ("ibug68", "ibug68_annotation"):
        tris = data.landmarks[scheme].triangles
        assert upper[tris[list(IBUG68_UPPER_INNER_LIP)]].all(), scheme
        assert lower[tris[list(IBUG68_LOWER_INNER_LIP)]].all(), scheme
