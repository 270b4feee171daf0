"""3DMM fitting: synthetic ground truth (landmarks projected from known faces) and real media."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fitting import correspondence as FC
from fitting import fit as F
from fitting import lighting as FL
from fitting import model_arrays as FM
from fitting import photo as FP
from fitting import pose as FPose
from fitting import solvers as FS
from fitting.params import CameraParams, FaceParams, Identity, VideoFit
from fitting.synthetic import (
    nme,
    pose_error_deg,
    rigid_vertex_error,
    synthetic_face,
    true_landmarks,
)
from morph3d.errors import Morph3dError


def test_synthetic_landmark_fit(model):
    rng = np.random.default_rng(1)
    vertex, pose = [], []
    for _ in range(4):
        alpha, state, camera, lms = synthetic_face(model, rng)
        ident, states, _, _ = FP.fit_landmarks(model, [lms], [(480, 640)], focal=camera.fx)
        vertex.append(rigid_vertex_error(model, ident, states[0].expression, alpha,
                                         state.expression))
        pose.append(pose_error_deg(states[0].rotation, state.rotation))
    # Landmarks alone leave the face's depth vs distance ambiguous, which dominates the rigid
    # error; measured median 1.25 mm and 1.07 deg with the joint refinement (was 3.0 / 3.0
    # bounds for ~1.5-2.5 mm before it; see BENCHMARKS.md).
    assert np.median(vertex) < 1.8, vertex
    assert np.median(pose) < 2.0, pose
    # Much better than the mean face.
    mean_err = rigid_vertex_error(model, np.zeros_like(alpha), np.zeros(model.num_expression),
                                  alpha, state.expression)
    assert vertex[-1] < mean_err


def test_joint_refinement_beats_block_alternation(model):
    # Steps 2-6 alone crawl along the depth/identity valley; step 7 (joint Gauss-Newton)
    # should land closer to the true face and pose on the same landmarks.
    rng = np.random.default_rng(3)
    errors = {0: [], 20: []}
    poses = {0: [], 20: []}
    for _ in range(6):  # single faces can go either way (3 faces: ratio 0.9 +- 0.1)
        alpha, state, camera, lms = synthetic_face(model, rng)
        for steps in errors:
            ident, states, _, _ = FP.fit_landmarks(model, [lms], [(480, 640)], focal=camera.fx,
                                                  refine_steps=steps)
            errors[steps].append(rigid_vertex_error(model, ident, states[0].expression, alpha,
                                                    state.expression))
            poses[steps].append(pose_error_deg(states[0].rotation, state.rotation))
    assert np.mean(errors[20]) < 0.9 * np.mean(errors[0]), errors
    assert np.mean(poses[20]) < np.mean(poses[0]), poses


def test_identity_prior_mean_keeps_what_the_landmarks_leave_open(model):
    # A swap fits its source photo about the actor's identity (`Priors.identity_mean`):
    # the coefficients the landmarks decide move to the photo's face, the rest stay at the
    # prior's mean. Fitted about the true identity, the fit lands much nearer it than
    # about the model's mean face; about an unrelated identity it does not jump to it.
    rng = np.random.default_rng(5)
    alpha, state, camera, lms = synthetic_face(model, rng)
    other = rng.standard_normal(alpha.shape)
    fitted = {}
    for name, mean in (("zero", None), ("true", alpha), ("other", other)):
        fitted[name] = FP.fit_landmarks(model, [lms], [(480, 640)], focal=camera.fx,
                                        priors=FS.Priors(identity_mean=mean))[0]
    err = {name: float(np.linalg.norm(a - alpha)) for name, a in fitted.items()}
    assert err["true"] < 0.5 * err["zero"], err
    assert np.linalg.norm(fitted["other"] - other) > 0.3 * np.linalg.norm(alpha - other), err


def test_single_threaded_restores_thread_counts():
    import torch
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info()
                if pool["user_api"] == "blas"]

    before, blas_before = torch.get_num_threads(), blas_threads()
    assert blas_before, "numpy's BLAS is not visible to threadpoolctl"
    with FS.single_threaded():
        assert torch.get_num_threads() == 1
        assert blas_threads() == [1] * len(blas_before)
    assert torch.get_num_threads() == before
    assert blas_threads() == blas_before


def test_contour_handling_helps_jaw_at_yaw_40(model):
    rng = np.random.default_rng(5)
    jaw_with, jaw_without = [], []
    for _ in range(2):
        alpha, state, camera, lms = synthetic_face(model, rng, yaw_deg=40.0, noise_px=0.5)
        for contour, out in ((True, jaw_with), (False, jaw_without)):
            ident, states, cams, lss = FP.fit_landmarks(model, [lms], [(480, 640)],
                                                       focal=camera.fx, contour=contour,
                                                       refine_steps=0)
            res = FS._residuals(lss[0], ident, states[0], cams[0])[0]
            out.append(float(np.linalg.norm(res[list(FM.CONTOUR_JAW)], axis=1).mean()))
    assert np.mean(jaw_with) < 0.7 * np.mean(jaw_without), (jaw_with, jaw_without)


def test_jaw_contour_points_keep_their_row_height(model):
    # The contour point slides around the head along its row (mesh edges crossing the jaw
    # point's height on the mean), so its height does not jump with the silhouette vertex.
    rng = np.random.default_rng(9)
    alpha, state, camera, lms = synthetic_face(model, rng, yaw_deg=35.0)
    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks["ibug68"]
    height = np.einsum("lc,lc->l", bary, arrays.mean[ids, 1])
    ls = FC.landmark_set(model, lms)
    before = ls.mean[list(FM.CONTOUR_JAW)].copy()
    FC.update_jaw_contour(ls, alpha, state, camera)
    jaw = list(FM.CONTOUR_JAW)
    assert np.allclose(ls.mean[jaw, 1], height[jaw], atol=1e-6)
    assert np.abs(ls.mean[jaw, 2] - before[:, 2]).max() > 1.0  # yaw 35: they did slide


def test_outlier_robustness(model):
    rng = np.random.default_rng(7)
    alpha, state, camera, lms = synthetic_face(model, rng)
    bad = {k: v.copy() for k, v in lms.items()}
    for i in (30, 36, 48, 57, 19):  # nose, eye, mouth, brow: shifted by 40 px
        bad["ibug68"][i] += rng.normal(size=2) / np.sqrt(2) * 40.0 + 20.0
    _, states, _, _ = FP.fit_landmarks(model, [bad], [(480, 640)], focal=camera.fx)
    assert pose_error_deg(states[0].rotation, state.rotation) < 3.0


def test_multi_photo_joint_fit_shares_identity(model):
    rng = np.random.default_rng(11)
    alpha, s1, camera, l1 = synthetic_face(model, rng, yaw_deg=-25)
    s2_rng = np.random.default_rng(12)
    a2, s2, _, _ = synthetic_face(model, s2_rng, yaw_deg=25)
    # Same person (alpha) in a second pose: reproject with alpha.
    l2 = {scheme: pts + s2_rng.normal(0, 1.5, pts.shape)
          for scheme, pts in true_landmarks(model, alpha, s2, camera).items()}
    joint, states, _, _ = FP.fit_landmarks(model, [l1, l2], [(480, 640)] * 2, focal=camera.fx)
    single, sst, _, _ = FP.fit_landmarks(model, [l1], [(480, 640)], focal=camera.fx)
    assert len(states) == 2
    e_joint = rigid_vertex_error(model, joint, states[0].expression, alpha, s1.expression)
    e_single = rigid_vertex_error(model, single, sst[0].expression, alpha, s1.expression)
    assert e_joint < e_single + 0.3
    assert pose_error_deg(states[1].rotation, s2.rotation) < 4.0


def test_save_load_round_trip(tmp_path):
    faces = FaceParams.empty(3, 52)
    faces.rotation[:] = np.random.default_rng(0).normal(size=(3, 3))
    faces.valid[[0, 2]] = True
    fit = VideoFit(Identity(np.arange(74.0), np.random.rand(8, 8, 3), np.random.rand(8, 8)),
                   faces, CameraParams.default_for(640, 480), fps=25.0, faceless=[1],
                   landmarks={"ibug68": np.zeros((3, 68, 2))}, source="x.mp4")
    fit.save(tmp_path / "fit.npz")
    back = VideoFit.load(tmp_path / "fit.npz")
    assert np.allclose(back.faces.rotation, fit.faces.rotation)
    assert np.array_equal(back.faces.valid, fit.faces.valid)
    assert np.allclose(back.identity.texture, fit.identity.texture)
    assert back.camera == fit.camera and back.fps == 25.0 and back.faceless.tolist() == [1]
    assert back.landmarks["ibug68"].shape == (3, 68, 2)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Morph3dError):
        VideoFit.load(tmp_path / "bad.npz")


def test_save_uncompressed_for_a_cache(tmp_path):
    """A work folder's fit is stored, not deflated, and reads back the same."""
    import zipfile

    fit = VideoFit(Identity(np.arange(74.0), np.random.rand(8, 8, 3).astype(np.float32),
                            np.random.rand(8, 8).astype(np.float32)),
                   FaceParams.empty(2, 52), CameraParams.default_for(640, 480), fps=25.0)
    fit.save(tmp_path / "kept.npz")
    fit.save(tmp_path / "cache.npz", compress=False)
    with zipfile.ZipFile(tmp_path / "kept.npz") as kept, \
            zipfile.ZipFile(tmp_path / "cache.npz") as cache:
        assert {i.compress_type for i in kept.infolist()} == {zipfile.ZIP_DEFLATED}
        assert {i.compress_type for i in cache.infolist()} == {zipfile.ZIP_STORED}
    back = VideoFit.load(tmp_path / "cache.npz")
    assert np.array_equal(back.identity.texture, fit.identity.texture)
    assert np.array_equal(back.identity.coefficients, fit.identity.coefficients)


def test_head_pose_angles_convention():
    # Nose turned towards image right -> positive yaw; chin down -> positive pitch.
    yaw = FP.head_pose_degrees(FPose.axis_angle(FP.FRONT @ Rotation.from_euler(
        "Y", 20, degrees=True).as_matrix()))
    assert yaw[0] == pytest.approx(20, abs=1e-6) and abs(yaw[1]) < 1e-6
    pitch = FP.head_pose_degrees(FPose.axis_angle(FP.FRONT @ Rotation.from_euler(
        "X", 10, degrees=True).as_matrix()))
    assert pitch[1] == pytest.approx(10, abs=1e-6)


def test_model_without_landmarks_is_a_clear_error(model):
    import copy

    from morph3d.errors import ModelError
    from morph3d.model.model import MorphableModel

    data = copy.copy(model.data)
    data.landmarks = {}
    with pytest.raises(ModelError, match="no ibug68 landmarks"):
        FC.landmark_set(MorphableModel(data), {"ibug68": np.zeros((68, 2))})


# -------------------------------------------------------------------------------- real media


@pytest.mark.media
def test_mark_photo_landmarks_agree_with_detector(model, media_dir):
    from morph3d.io.images import read_image

    image = read_image(media_dir / "mark.jpg")
    detected = F.detect_landmarks(image, "mediapipe")
    fit = FP.fit_photo(image, model, landmarks=detected, photometric=True, photometric_steps=5)[0]
    summary = FP.fit_summary(fit, model)
    lm = np.array(summary["frames"][0]["landmarks68"])
    det = detected["ibug68"]
    iod = np.linalg.norm(det[36] - det[45])
    # Median over the 68 points (the model's inner lower-lip corners 65/67 sit on the upper
    # lip, so an open mouth puts those two far off; see the report).
    assert np.median(np.linalg.norm(lm - det, axis=1)) / iod < 0.05
    assert fit.identity.texture is not None and fit.identity.confidence.max() > 0.5
    assert np.isfinite(fit.faces.sh).all()


@pytest.mark.media
@pytest.mark.parametrize("name", ["takeo", "lenna"])
def test_annotated_nme_close_to_dlib(model, media_dir, name):
    from morph3d.io.images import read_image

    folder = media_dir / "annotated"
    if name == "takeo":
        image = read_image(folder / "takeo.ppm")
        lines = (folder / "takeo.pts").read_text().split("{")[1].split("}")[0].split()
        truth = np.array(lines, float).reshape(68, 2) - 1.0
    else:
        image = read_image(folder / "lenna.png")
        data = json.loads((folder / "lenna.ljson").read_text())
        truth = np.array(data["groups"]["LJSON"]["landmarks"]["points"], float)[:, ::-1]
    landmarks = F.detect_landmarks(image, "dlib+mediapipe")
    dlib = F.detect_landmarks(image, "dlib")["ibug68"]
    assert np.array_equal(landmarks["ibug68"], dlib)
    fitted = {}
    for key, lms in (("mediapipe", {"mediapipe478": landmarks["mediapipe478"],
                                    "ibug68": F.detect_landmarks(image)["ibug68"]}),
                     ("dlib+mediapipe", landmarks)):
        fit = FP.fit_photo(image, model, landmarks=lms, photometric=False, backend=key)[0]
        fitted[key] = nme(FP.projected_landmarks(fit, model)[0], truth)
    # dlib's points are matched to the model's annotation-convention iBUG table
    # (fitting.correspondence.ibug68_table): takeo ~3.3 % vs dlib 3.2 %, lenna ~3.9 % vs
    # 3.4 % of IOD (4.0 / 4.7 % when they were matched to the render-derived table).
    # mediapipe input, reported in the annotation convention: ~4.5 / 5.5 % (BENCHMARKS.md).
    assert fitted["mediapipe"] < nme(dlib, truth) + 0.03, (fitted, nme(dlib, truth))
    assert fitted["dlib+mediapipe"] < nme(dlib, truth) + 0.008, (fitted, nme(dlib, truth))


@pytest.mark.media
def test_video_first_frames(model, media_dir):
    from fitting.video import fit_video

    fit = fit_video(media_dir / "orig.webm", model, max_frames=12, progress=False,
                    identity_frames=6, photometric=True)
    assert fit.num_frames == 12
    assert fit.identity.coefficients.shape == (model.num_identity,)
    for arr in (fit.faces.rotation, fit.faces.translation, fit.faces.expression, fit.faces.sh):
        assert np.isfinite(arr).all()
    assert fit.faces.valid.sum() + len(fit.faceless) == 12
    assert ((fit.faces.expression >= 0) & (fit.faces.expression <= 1)).all()


def test_cli_no_face_is_one_line_error(tmp_path):
    from morph3d.io.images import write_image

    blank = tmp_path / "blank.png"
    write_image(blank, np.full((200, 200, 3), 90, np.uint8))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "morph3d", "fit", str(blank), "--quiet"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("morph3d:")]
    assert errors == [f"morph3d: error: no face found in {blank}"], proc.stderr


def test_lighting_adam_steps_as_torch_adam_does():
    """The lighting fit's own Adam gives torch.optim.Adam's numbers bit for bit (a parameter
    without a gradient skipped, as torch skips it)."""
    import torch

    def run(make):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(9, 3, generator=gen, requires_grad=True)
        b = torch.rand(3, generator=gen, requires_grad=True)
        target = torch.randn(9, 3, generator=gen)
        opt = make([a, b])
        for k in range(25):
            opt.zero_grad()
            loss = torch.sqrt(((a * b - target) ** 2).sum(-1) + 1e-6).sum()
            (loss if k % 5 else (a ** 2).sum()).backward()  # b has no grad every 5th step
            opt.step()
            with torch.no_grad():
                b.clamp_(0.02, 1.0)
        return a.detach(), b.detach()

    ours = run(lambda p: FL.Adam(p, lr=0.03))
    theirs = run(lambda p: torch.optim.Adam(p, lr=0.03))
    assert all(torch.equal(x, y) for x, y in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[1], run(lambda p: FL.Adam(p, lr=0.01))[1])


def test_lighting_adam_does_not_import_dynamo():
    """torch's optimizers import torch._dynamo (seconds of CPU) on first use; the lighting
    fit's steps do not."""
    code = ("import sys, torch\n"
            "from fitting.lighting import Adam\n"
            "p = torch.zeros(3, requires_grad=True)\n"
            "opt = Adam([p], lr=0.03)\n"
            "(p - 1).pow(2).sum().backward()\n"
            "opt.step()\n"
            "assert 'torch._dynamo' not in sys.modules\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_highlights_are_toned_down_in_the_albedo():
    rng = np.random.default_rng(0)
    skin_colour = np.array([0.62, 0.45, 0.38])
    albedo = skin_colour * rng.uniform(0.9, 1.1, (64, 64, 1))
    albedo[30:34, 30:34] = (0.97, 0.97, 1.0)  # a flash reflection on the nose tip
    albedo[2:6, 2:6] = (0.95, 0.95, 0.95)  # bright, but outside the skin mask (an eye white)
    skin = np.ones((64, 64), bool)
    skin[:8, :8] = False
    out = FL.compress_highlights(albedo, skin)
    spot = out[31, 31]
    assert spot.mean() < 0.7  # down to about the skin's brightest
    assert spot[0] > spot[1] > spot[2]  # and skin-coloured, not a white or blue glint
    assert np.array_equal(out[4, 4], albedo[4, 4])  # outside the skin: untouched
    ordinary = np.ones((64, 64), bool)
    ordinary[30:34, 30:34] = False
    ordinary[:8, :8] = False
    assert np.array_equal(out[ordinary], albedo[ordinary])  # plain skin keeps its detail
