"""morph3d.model.geometry: the point-set alignment the model build and the fitting tests share."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from morph3d.model.geometry import median_aligned_distance, procrustes_align


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
