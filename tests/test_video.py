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
