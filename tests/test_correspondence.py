"""How the corrective deformation (`fitting.fit.fit_corrective`) moves the model's landmark
points, which are barycentric points of mesh triangles, onto the detected ones."""

from __future__ import annotations

import numpy as np
import pytest

from fitting import correspondence as FC
from fitting import fit as F
from fitting import photo as FP
from fitting import pose as FPose
from fitting.params import FaceParams, Identity, VideoFit
from fitting.solvers import Priors
from fitting.synthetic import synthetic_face


def _reported(model, alpha, state, camera, offset) -> np.ndarray:
    faces = FaceParams.empty(1, model.num_expression)
    faces.rotation[0], faces.translation[0] = state.rotation, state.translation
    faces.expression[0], faces.valid[0] = state.expression, True
    fit = VideoFit(Identity(alpha, offset=offset), faces, camera)
    return FP.projected_landmarks(fit, model)[0]


@pytest.mark.parametrize("seed", [5, 6])
def test_corrective_moves_points_as_its_solve_says(model, seed):
    # A model face (its 68 points at their exact projections) with both brow ends moved
    # 2.8 px: the brow ends sit on the temples, where the mesh is coarse (a vertex of the
    # point's triangle is several mm from the point). With almost no regularisation the
    # deformation must put every point where the detector's is: the moved ones on their
    # targets, the others where they were. (Solved for the deformation at the points
    # themselves, the brow ends fell 0.3 px short and the unmoved points shifted by as much.)
    rng = np.random.default_rng(seed)
    alpha, state, camera, _ = synthetic_face(model, rng)
    ls = FC.landmark_set(model, {"ibug68": np.zeros((68, 2))}, FC.ANNOTATION)
    FC.update_jaw_contour(ls, alpha, state, camera)
    exact = FPose.project(ls.positions(alpha, state.expression), state.rotation,
                          state.translation, camera)
    moved = [17, 26]
    target = exact.copy()
    target[moved] += [[-2.0, -2.0], [2.0, -2.0]]
    ls.points = target
    offset = F.fit_corrective([ls], alpha, [state], [camera], Priors(), regularise=1e-3)
    err = np.linalg.norm(_reported(model, alpha, state, camera, offset) - target, axis=1)
    assert err[moved].max() < 0.05, err[moved]
    assert np.delete(err, moved).max() < 0.05, np.delete(err, moved).max()
    # At the default regularisation the moved points go the kernel ridge's share of the way:
    # 1 / (1 + regularise) for a point alone, a little less where unmoved neighbours pull
    # (the old solve: about 0.9 of that share).
    offset = F.fit_corrective([ls], alpha, [state], [camera], Priors())
    step = np.linalg.norm(_reported(model, alpha, state, camera, offset)[moved] - exact[moved],
                          axis=1) / np.linalg.norm(target[moved] - exact[moved], axis=1)
    share = step * (1.0 + F.CORRECTIVE_REGULARISE)
    assert np.all((share > 0.95) & (share < 1.0)), share
