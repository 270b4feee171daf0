"""morph3d.model.geometry: the point-set alignment the model build and the fitting tests share,
and the numpy vertex normals of the fitting and the export."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from morph3d.io.gltf import unit_normals
from morph3d.model.geometry import median_aligned_distance, procrustes_align, vertex_normals
from render.ops import vertex_normals as torch_vertex_normals


def test_procrustes_recovers_a_similarity_and_never_reflects():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(300, 3)) * [60.0, 80.0, 40.0]
    rotation = Rotation.from_rotvec([0.4, -0.3, 0.9]).as_matrix()
    target = 1.25 * source @ rotation.T + [5.0, -2.0, 700.0]
    assert np.allclose(procrustes_align(source, target, scale=True), target, atol=1e-9)
    rigid = procrustes_align(source, target)
    # Without scale the shape keeps its size: only rotated and moved.
    size = np.linalg.norm(source - source.mean(0))
    assert np.isclose(np.linalg.norm(rigid - rigid.mean(0)), size)
    assert median_aligned_distance(source, target) > 1.0
    assert median_aligned_distance(source, target, scale=True) < 1e-9
    # A mirrored target is matched by a rotation, not by mirroring the source.
    mirrored = target * [-1.0, 1.0, 1.0]
    aligned = procrustes_align(source, mirrored, scale=True)
    assert median_aligned_distance(source, mirrored, scale=True) > 1.0
    centred = aligned - aligned.mean(0)
    basis = np.linalg.lstsq(source - source.mean(0), centred, rcond=None)[0]
    assert np.linalg.det(basis) > 0


def test_weights_decide_which_points_are_matched():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(50, 3))
    target = source.copy()
    target[:10] += [0.0, 0.0, 5.0]  # ten points moved away
    weights = np.ones(50)
    weights[:10] = 0.0
    aligned = procrustes_align(source, target, weights)
    assert np.allclose(aligned[10:], target[10:], atol=1e-9)


def _tetrahedron_and_a_loose_vertex() -> tuple[np.ndarray, np.ndarray]:
    vertices = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 5]], np.float64)
    triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # outward, CCW
    return vertices, triangles


def test_numpy_normals_match_the_renderers_and_point_outward():
    vertices, triangles = _tetrahedron_and_a_loose_vertex()
    normals = vertex_normals(vertices, triangles)
    assert normals.dtype == np.float64
    rendered = torch_vertex_normals(torch.from_numpy(vertices), torch.from_numpy(triangles))
    assert np.allclose(normals, rendered.numpy(), atol=1e-12)
    centre = vertices[:4].mean(0)
    assert np.all(np.einsum("vc,vc->v", normals[:4], vertices[:4] - centre) > 0)
    assert np.allclose(np.linalg.norm(normals[:4], axis=1), 1.0)
    assert np.all(normals[4] == 0.0)  # on no triangle


def test_gltf_normals_are_unit_float32_even_on_a_loose_vertex():
    vertices, triangles = _tetrahedron_and_a_loose_vertex()
    normals = unit_normals(vertices, triangles)
    assert normals.dtype == np.float32
    assert np.array_equal(normals[4], [0.0, 0.0, 1.0])
    assert np.array_equal(normals[:4], vertex_normals(vertices, triangles)[:4].astype(np.float32))
