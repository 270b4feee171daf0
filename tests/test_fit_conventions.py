"""Which model iBUG-68 table a fit uses: the convention of the detected 68 points."""

from __future__ import annotations

import numpy as np
import pytest

from fitting import correspondence as FC
from fitting import model_arrays as FM
from fitting import photo as FP
from fitting import pose as FPose
from fitting.synthetic import synthetic_face


def test_convention_follows_the_backend(model):
    both = {"ibug68": np.zeros((68, 2)), "mediapipe478": np.zeros((478, 2))}
    assert FC.ibug68_convention("mediapipe", both) == FC.MEDIAPIPE
    assert FC.ibug68_convention("dlib+mediapipe", both) == FC.ANNOTATION
    assert FC.ibug68_convention("dlib") == FC.ANNOTATION
    # 68 points without their 478 cannot be mediapipe-derived, whatever the backend says.
    assert FC.ibug68_convention("mediapipe", {"ibug68": both["ibug68"]}) == FC.ANNOTATION
    with pytest.raises(ValueError):
        FC.ibug68_table(FM.model_arrays(model), "renders")


def test_default_model_has_both_tables(model):
    arrays = FM.model_arrays(model)
    assert {FM.IBUG68, FM.IBUG68_ANNOTATION} <= set(arrays.landmarks)
    assert FC.ibug68_table(arrays, FC.MEDIAPIPE) == FM.IBUG68
    assert FC.ibug68_table(arrays, FC.ANNOTATION) == FM.IBUG68_ANNOTATION
    mean = {t: np.einsum("lc,lcd->ld", arrays.landmarks[t][1],
                         arrays.mean[arrays.landmarks[t][0]]) for t in arrays.contour_edges}
    # The tables differ where the conventions do (brows, jaw side: several mm)...
    assert np.abs(mean[FM.IBUG68] - mean[FM.IBUG68_ANNOTATION]).max() > 3.0
    # ...and each has its own jaw contour rows, at its own jaw heights.
    for table, edges in arrays.contour_edges.items():
        ids, w = edges[3]
        heights = w[:, 0] * arrays.mean[ids[:, 0], 1] + w[:, 1] * arrays.mean[ids[:, 1], 1]
        assert np.allclose(heights, mean[table][3, 1], atol=1e-6)


def test_landmark_set_picks_the_table_of_the_convention(model):
    rng = np.random.default_rng(2)
    _, _, _, lms = synthetic_face(model, rng)
    arrays = FM.model_arrays(model)
    inner = np.arange(17, 68)  # the jaw side rows are re-picked on the contour anyway
    for convention, table in ((FC.MEDIAPIPE, FM.IBUG68), (FC.ANNOTATION, FM.IBUG68_ANNOTATION)):
        ls = FC.landmark_set(model, lms, convention)
        assert ls.ibug_table == table
        assert np.array_equal(ls.ids[inner], arrays.landmarks[table][0][inner])
    assert FC.landmark_set(model, lms).ibug_table == FM.IBUG68  # 478 given: mediapipe-derived
    assert FC.landmark_set(model, {"ibug68": lms["ibug68"]}).ibug_table == FM.IBUG68_ANNOTATION


def test_matching_table_fits_annotation_points_better(model):
    # 68 points projected from the annotation table (as dlib's are, on average) are fitted
    # closer with that table than with the mediapipe one, and the reported 68 points
    # (projected_landmarks, annotation convention) land on them.
    rng = np.random.default_rng(4)
    arrays = FM.model_arrays(model)
    errors = {FC.ANNOTATION: [], FC.MEDIAPIPE: []}
    for _ in range(2):
        alpha, state, camera, _ = synthetic_face(model, rng)
        ids, bary = arrays.landmarks[FM.IBUG68_ANNOTATION]
        ls = FC.LandmarkSet(np.full((68, 2), np.nan), np.ones(68), ids.copy(), bary.copy(),
                            {"ibug68": slice(0, 68)}, arrays=arrays,
                            ibug_table=FM.IBUG68_ANNOTATION)
        FC.update_jaw_contour(ls, alpha, state, camera)
        truth = FPose.project(ls.positions(alpha, state.expression), state.rotation,
                              state.translation, camera)
        lms = {"ibug68": truth + rng.normal(0, 1.0, truth.shape),
               "mediapipe478": np.full((478, 2), np.nan)}
        for convention in errors:
            fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks=lms,
                              focal=camera.fx, photometric=False,
                              backend="mediapipe" if convention == FC.MEDIAPIPE else "dlib")[0]
            pred = FP.projected_landmarks(fit, model)[0]
            errors[convention].append(float(np.linalg.norm(pred - truth, axis=1).mean()))
    # measured: 0.7-0.9 px vs 2.9 px (1 px noise)
    assert np.mean(errors[FC.ANNOTATION]) < 1.3, errors
    assert np.mean(errors[FC.ANNOTATION]) < 0.5 * np.mean(errors[FC.MEDIAPIPE]), errors
