"""The jaw contour and the corrective offset (`fitting.correspondence.update_jaw_contour`,
`fitting.fit.fit_corrective`): the reported jaw points are the points the offset was solved
at."""

from __future__ import annotations

import numpy as np
import pytest

from fitting import correspondence as FC
from fitting import model_arrays as FM
from fitting import photo as FP
from fitting import pose as FPose
from fitting.synthetic import synthetic_face


def annotation_set(model, offset=None) -> FC.LandmarkSet:
    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks[FM.IBUG68_ANNOTATION]
    return FC.LandmarkSet(np.full((68, 2), np.nan), np.ones(68), ids.copy(), bary.copy(),
                          {FM.IBUG68: slice(0, 68)}, arrays=arrays,
                          ibug_table=FM.IBUG68_ANNOTATION, offset=offset)


@pytest.mark.parametrize("yaw", [-35.0, 20.0, 40.0])
def test_contour_points_are_picked_on_the_3dmm_face(model, yaw):
    # A smooth offset that moves the front of the face sideways more than its back (a few
    # mm, the corrective's size) changes which point of a jaw row projects farthest out;
    # the pick must not follow it, or the offset solved at one point lands on another.
    alpha, state, camera, _ = synthetic_face(model, np.random.default_rng(3), yaw_deg=yaw)
    arrays = FM.model_arrays(model)
    z = arrays.mean[:, 2]
    offset = np.zeros_like(arrays.mean)
    offset[:, 0] = 0.08 * (z - z.mean()) * np.sign(arrays.mean[:, 0])
    plain, shifted = annotation_set(model), annotation_set(model, offset)
    FC.update_jaw_contour(plain, alpha, state, camera)
    FC.update_jaw_contour(shifted, alpha, state, camera)
    assert np.array_equal(plain.ids, shifted.ids)
    assert np.array_equal(plain.bary, shifted.bary)
    # ... while the points themselves carry the offset
    moved = np.linalg.norm(shifted.positions(alpha, state.expression)
                           - plain.positions(alpha, state.expression), axis=1)
    assert moved[:17].max() > 0.5


@pytest.mark.parametrize(("seed", "yaw"), [(11, -30.0), (13, 40.0)])
def test_reported_jaw_stays_on_the_detected_jaw_of_a_turned_face(model, seed, yaw):
    # A turned face whose detected lower jaw sits above the model's (as a detector's often
    # does): the corrective moves the fitted jaw there, and the reported points (picked
    # again with the offset) stay there (measured: at most 0.40 / 0.35 px; 1.67 / 1.40 px
    # when the pick followed the offset).
    alpha, state, camera, _ = synthetic_face(model, np.random.default_rng(seed), yaw_deg=yaw)
    ls = annotation_set(model)
    FC.update_jaw_contour(ls, alpha, state, camera)
    points = FPose.project(ls.positions(alpha, state.expression), state.rotation,
                           state.translation, camera)
    target = points.copy()
    target[4:13, 1] -= 1.5 * np.array([2, 3, 4, 5, 5, 5, 4, 3, 2], float)  # px, up
    fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks={"ibug68": target},
                       backend="dlib", focal=camera.fx, photometric=False)[0]
    reported = FP.projected_landmarks(fit, model)[0]
    err = np.linalg.norm(reported - target, axis=1)
    assert err[:17].max() < 0.8, err[:17].round(2)
