"""Video fitting across shot cuts: the per-frame fit restarts at a cut instead of dragging the
previous shot's pose along (which made the swapped face lag and nearly vanish for ~10 frames
after each cut of nggyup.mp4)."""

import numpy as np
import pytest

from fitting.video import landmark_jumps


def _moving_face(frames: int = 12) -> np.ndarray:
    """A 68-point face box drifting 2 px per frame (F x 68 x 2 pixels)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (68, 2))
    return np.stack([base + [200 + 2 * t, 150] for t in range(frames)])


def test_landmark_jumps_flags_a_cut_only():
    points = _moving_face()
    assert not landmark_jumps(points).any()  # smooth motion is not a cut
    points[6:] += [300, 40]  # the face is somewhere else from frame 6 on
    assert np.flatnonzero(landmark_jumps(points)).tolist() == [6]
    points[9:] = (points[9:] - points[9:].mean(1, keepdims=True)) * 2 + points[9:].mean(
        1, keepdims=True)  # and twice as large from frame 9 (a zoom cut)
    assert np.flatnonzero(landmark_jumps(points)).tolist() == [6, 9]


def test_landmark_jumps_skips_faceless_frames():
    points = _moving_face()
    points[4:7] = np.nan  # no face for three frames, then the same face a bit further on
    assert not landmark_jumps(points).any()


def test_scene_cut_survives_save_and_load(tmp_path):
    from fitting.params import CameraParams, FaceParams, Identity, VideoFit

    faces = FaceParams.empty(5, 52)
    cut = np.array([False, False, True, False, False])
    fit = VideoFit(Identity(np.zeros(74)), faces, CameraParams.default_for(64, 48), fps=25.0,
                   scene_cut=cut)
    fit.save(tmp_path / "fit.npz")
    assert VideoFit.load(tmp_path / "fit.npz").scene_cut.tolist() == cut.tolist()


@pytest.mark.media
def test_fit_restarts_at_the_cut(media_dir, model):
    """nggyup.mp4 cuts to another shot at frame 22: the fitted landmarks must sit on the
    detected ones right after the cut, not several frames later."""
    from fitting.photo import projected_landmarks
    from fitting.video import fit_video, video_landmarks

    clip = media_dir / "nggyup.mp4"
    found = video_landmarks(clip, max_frames=40, progress=False)
    assert found.scene_cut[22] and found.scene_cut.sum() <= 2
    fit = fit_video(clip, model, landmarks=found.points, max_frames=40, progress=False,
                    photometric=False, identity_frames=8, scene_cut=found.scene_cut)
    assert fit.scene_cut[22]
    fitted = projected_landmarks(fit, model)
    detected = found.points["ibug68"]
    size = np.ptp(detected[:, :, 0], axis=1)  # face width in pixels per frame
    error = np.linalg.norm(fitted - detected, axis=2).mean(1) / size
    # as close on the first frames of the new shot as before the cut (measured: ~0.011 of
    # the face width before, 0.008 after; 0.038 at frame 22 without the restart)
    assert error[22:26].max() < 1.5 * np.median(error[:22]) + 0.005, error[18:28].round(3)


def test_photo_prior_fits_the_clip_identity_as_one_photo(model, monkeypatch):
    """A synthetic clip of one face (24 frames turning -20..20 deg of yaw, the same 2 px
    offset on every point in every frame, as a detector's bias repeats, plus 0.5 px noise):
    with `photo_prior` the clip's identity is the same kind of estimate as a one-photo fit of
    one of its frames (what the swap subtracts it from); without it the repeated offset
    outweighs the prior and the identity strays from the photo's."""
    import types

    from scipy.spatial.transform import Rotation

    import morph3d.io.media as media
    from fitting import photo as FP
    from fitting import pose as FPose
    from fitting.params import CameraParams
    from fitting.synthetic import true_landmarks
    from fitting.video import fit_video

    monkeypatch.setattr(media, "probe_video",
                        lambda path: types.SimpleNamespace(fps=25.0, height=480, width=640))
    rng = np.random.default_rng(0)
    alpha = rng.standard_normal(model.num_identity)
    camera = CameraParams.default_for(640, 480, 800.0)
    bias, frames = None, {}
    for yaw in np.linspace(-20, 20, 24):
        head = Rotation.from_euler("YXZ", [yaw, rng.uniform(-6, 6), 0], degrees=True)
        state = FPose.FrameState(FPose.axis_angle(FP.FRONT @ head.as_matrix()),
                                 np.array([0.0, 0.0, 600.0]), np.zeros(model.num_expression))
        points = true_landmarks(model, alpha, state, camera)
        bias = bias or {s: rng.normal(0, 2.0, p.shape) for s, p in points.items()}
        for s, p in points.items():
            frames.setdefault(s, []).append(p + bias[s] + rng.normal(0, 0.5, p.shape))
    landmarks = {s: np.stack(v) for s, v in frames.items()}
    photo, _, _, _ = FP.fit_landmarks(model, [{s: v[12] for s, v in landmarks.items()}],
                                      [(480, 640)], focal=800.0)
    clip = {weigh: fit_video("clip.mp4", model, landmarks=landmarks, photometric=False,
                             smooth=False, progress=False, focal=800.0,
                             photo_prior=weigh).identity.coefficients
            for weigh in (False, True)}
    # measured: |a| photo 4.54, clip 4.25 with the photo prior, 9.66 without; distance to the
    # photo's coefficients 0.85 with, 6.90 without
    norm = np.linalg.norm
    assert abs(norm(clip[True]) - norm(photo)) < 0.2 * norm(photo), (norm(photo), norm(clip[True]))
    assert norm(clip[True] - photo) < 0.35 * norm(photo), norm(clip[True] - photo)
    assert norm(clip[False] - photo) > 3 * norm(clip[True] - photo)  # the prior is what does it
