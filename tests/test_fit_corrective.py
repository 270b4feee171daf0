"""The photo fit's corrective deformation (`fitting.fit.fit_corrective`, `Identity.offset`)."""

from __future__ import annotations

import numpy as np

from fitting import correspondence as FC
from fitting import model_arrays as FM
from fitting import photo as FP
from fitting import pose as FPose
from fitting.params import VideoFit
from fitting.synthetic import synthetic_face


def annotation_face(model, seed: int, noise_px: float = 0.0):
    """A synthetic face's 68 points projected from the annotation table (as dlib's are)."""
    rng = np.random.default_rng(seed)
    alpha, state, camera, _ = synthetic_face(model, rng)
    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks[FM.IBUG68_ANNOTATION]
    ls = FC.LandmarkSet(np.full((68, 2), np.nan), np.ones(68), ids.copy(), bary.copy(),
                        {"ibug68": slice(0, 68)}, arrays=arrays, ibug_table=FM.IBUG68_ANNOTATION)
    FC.update_jaw_contour(ls, alpha, state, camera)
    pts = FPose.project(ls.positions(alpha, state.expression), state.rotation, state.translation,
                        camera)
    return pts + rng.normal(0, 1.0, pts.shape) * noise_px, camera


def test_corrective_reaches_points_the_model_cannot(model):
    points, camera = annotation_face(model, 5)
    target = points.copy()
    moved = np.array([30, 19, 24, 48, 54])  # nose tip, mid brows, mouth corners
    target[moved] += np.array([[6.0, 0.0], [0.0, -5.0], [0.0, -5.0], [-4.0, 0.0], [4.0, 0.0]])
    image = np.zeros((480, 640, 3), np.uint8)
    fits = {corr: FP.fit_photo(image, model, landmarks={"ibug68": target}, backend="dlib",
                              focal=camera.fx, photometric=False, corrective=corr)[0]
            for corr in (False, True)}
    assert fits[False].identity.offset is None
    offset = fits[True].identity.offset
    assert offset is not None and offset.shape == (model.num_vertices, 3)
    err = {corr: np.linalg.norm(FP.projected_landmarks(fit, model)[0] - target, axis=1)
           for corr, fit in fits.items()}
    # The 3DMM smooths the moved points away; the deformation follows most of the way
    # (measured: 2.9 -> 0.8 px at the moved points, 0.6 -> 0.2 px elsewhere).
    assert err[True][moved].mean() < 0.5 * err[False][moved].mean(), err
    assert err[True].mean() < err[False].mean()
    # Local: vertices far (> 45 mm) from every landmark barely move (the scalp, the back
    # of the head); the largest offset is a few mm.
    size = np.linalg.norm(offset, axis=1)
    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks[FM.IBUG68_ANNOTATION]
    marks = np.einsum("lc,lcd->ld", bary, arrays.mean[ids])
    far = np.linalg.norm(arrays.mean[:, None] - marks[None], axis=2).min(1) > 45.0
    assert far.sum() > 300 and size[far].max() < 0.01
    assert 0.5 < size.max() < 8.0


def test_corrective_is_small_where_the_model_fits(model):
    # Points the model can reach (no noise; only the prior keeps the fit off them): little
    # to correct (measured: at most 0.8 mm; 2.9 mm for the face with moved points above).
    points, camera = annotation_face(model, 6)
    fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks={"ibug68": points},
                      backend="dlib", focal=camera.fx, photometric=False)[0]
    assert np.linalg.norm(fit.identity.offset, axis=1).max() < 1.2


def test_mediapipe_backend_fits_stay_pure_3dmm(model):
    rng = np.random.default_rng(7)
    _, _, camera, lms = synthetic_face(model, rng)
    fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks=lms,
                      backend="mediapipe", focal=camera.fx, photometric=False)[0]
    assert fit.identity.offset is None


def test_offset_is_saved_and_used(model, tmp_path):
    points, camera = annotation_face(model, 8, noise_px=1.5)
    fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks={"ibug68": points},
                      backend="dlib", focal=camera.fx, photometric=False)[0]
    path = tmp_path / "fit.npz"
    fit.save(path)
    loaded = VideoFit.load(path)
    assert np.array_equal(loaded.identity.offset, fit.identity.offset)
    assert np.array_equal(FP.projected_landmarks(loaded, model),
                          FP.projected_landmarks(fit, model))
    loaded.identity.offset = None
    assert not np.allclose(FP.projected_landmarks(loaded, model),
                           FP.projected_landmarks(fit, model))


def test_fixed_identity_and_offset_refit_the_same_face(model):
    # Another photo of a fitted person: identity and offset held, pose and expression
    # fitted. On the same points it lands where the photo fit did.
    points, camera = annotation_face(model, 9, noise_px=1.5)
    fit = FP.fit_photo(np.zeros((480, 640, 3), np.uint8), model, landmarks={"ibug68": points},
                      backend="dlib", focal=camera.fx, photometric=False)[0]
    alpha = fit.identity.coefficients.astype(np.float64)
    reported = FP.projected_landmarks(fit, model)[0]
    errors = {}
    for key, offset in (("with", fit.identity.offset), ("without", None)):
        a, st, cams, ls = FP.fit_landmarks(model, [{"ibug68": points}], [(480, 640)],
                                          focal=camera.fx, identity=alpha, offset=offset)
        rows = ls[0].scheme_slices["ibug68"]
        pred = FPose.project(ls[0].positions(a, st[0].expression)[rows], st[0].rotation,
                             st[0].translation, cams[0])
        errors[key] = float(np.linalg.norm(pred - reported, axis=1).mean())
    # measured: 0.22 px with the offset, 1.14 px without
    assert errors["with"] < 0.4, errors
    assert errors["with"] < 0.5 * errors["without"], errors
