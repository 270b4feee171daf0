"""Landmark smoothing: optical-flow refinement and the zero-lag trajectory smoother."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitting.faces import IBUG68, MEDIAPIPE478
from fitting.landmark_maps import ibug68_from_mediapipe478
from fitting.people import choose_person, joined_trajectory
from fitting.smooth import (
    FlowRefiner,
    face_size,
    refine_tracks_with_flow,
    refine_with_flow,
    segments,
    smooth_tracks,
    smooth_trajectory,
    smooth_unique_frames,
)
from fitting.track import Tracks, track_faces


def moving_face_trajectory(frames: int = 120, noise_px: float = 1.5, seed: int = 0):
    """68 points of a 200-px face: slow sway plus a fast 80-px move around frame 60, with
    Gaussian detection noise. Returns (truth, noisy), both (T, 68, 2)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)
    template = rng.uniform(-100, 100, (68, 2))
    fast_move = 80 / (1 + np.exp(-(t - 60) / 1.5))  # ~13 px/frame at its fastest
    centre = np.stack([20 * np.sin(2 * np.pi * t / 50) + fast_move,
                       10 * np.cos(2 * np.pi * t / 70)], axis=1)
    truth = template[None] + centre[:, None]
    return truth, truth + rng.normal(0, noise_px, truth.shape)


def lag_frames(estimate: np.ndarray, truth: np.ndarray, window: slice) -> float:
    """The delay (frames, sub-frame) that best aligns the estimate's x with the truth's."""
    x_est = estimate[..., 0].mean(axis=1)
    x_true = truth[..., 0].mean(axis=1)
    t = np.arange(len(x_true), dtype=np.float64)
    shifts = np.linspace(-3, 3, 241)
    errors = [np.mean((x_est[window] - np.interp(t[window] - s, t, x_true)) ** 2)
              for s in shifts]
    return float(shifts[int(np.argmin(errors))])


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_zero_lag_smoother_beats_causal_filters_on_fast_motion():
    truth, noisy = moving_face_trajectory()
    fast = slice(52, 70)
    jitter = lambda x: rms(np.diff(x - truth, axis=0), 0)  # noqa: E731
    smoothed = smooth_trajectory(noisy)
    lag = lag_frames(smoothed, truth, fast)
    print(f"\ntwo-sided: lag {lag:+.2f} frames, jitter {jitter(smoothed):.2f} px, rms error "
          f"{rms(smoothed, truth):.2f} px ({rms(smoothed[fast], truth[fast]):.2f} over the fast "
          f"move); raw jitter {jitter(noisy):.2f}, raw error {rms(noisy, truth):.2f}")
    assert abs(lag) < 0.1
    assert rms(smoothed, truth) < 0.7 * rms(noisy, truth)
    assert jitter(smoothed) < 0.3 * jitter(noisy)
    # The same model run forward only (the online Kalman filter), from responsive to smooth:
    # none gets near the two-sided jitter, and the smoother ones lag and miss the fast move.
    for motion_noise in (0.01, 0.003, 0.001):
        causal = smooth_trajectory(noisy, motion_noise=motion_noise, causal=True)
        causal_lag = lag_frames(causal, truth, fast)
        print(f"causal (motion noise {motion_noise}): lag {causal_lag:+.2f} frames, jitter "
              f"{jitter(causal):.2f}, error over the fast move "
              f"{rms(causal[fast], truth[fast]):.2f}")
        assert jitter(causal) > 1.4 * jitter(smoothed)
        assert rms(causal[fast], truth[fast]) > 1.4 * rms(smoothed[fast], truth[fast])
        assert causal_lag >= lag - 0.05
    # a plain exponential moving average as smooth as the smoothest of those lags a frame
    ema = noisy.copy()
    for t in range(1, len(ema)):
        ema[t] = 0.5 * noisy[t] + 0.5 * ema[t - 1]
    assert lag_frames(ema, truth, fast) > 0.5
    assert jitter(ema) > 1.4 * jitter(smoothed)


def test_a_step_is_centred_not_delayed():
    """A sudden 50-px jump between frames 29 and 30 (under half a face, so not taken for a
    cut): the two-sided smoother's transition is centred on the jump and settles within a
    few frames either side."""
    t = np.arange(60)
    base = np.random.default_rng(2).uniform(-100, 100, (68, 2))
    truth = base[None] + np.where(t >= 30, 50.0, 0.0)[:, None, None] * [1.0, 0.0]
    error = (smooth_trajectory(truth) - truth)[..., 0].mean(axis=1)
    x = smooth_trajectory(truth)[..., 0].mean(axis=1) - base[:, 0].mean()
    assert abs(np.interp(25.0, x, t) - 29.5) < 0.25  # half-way point: at the jump
    assert np.abs(error[:26]).max() < 2.5 and np.abs(error[34:]).max() < 2.5


def test_gaps_and_breaks_are_not_smoothed_across():
    rng = np.random.default_rng(3)
    template = rng.uniform(-100, 100, (68, 2))
    trajectory = np.repeat(template[None], 50, axis=0)
    trajectory[25:] += 30.0  # the face moves 30 px while unseen (frames 20-24)
    trajectory[20:25] = np.nan
    smoothed = smooth_trajectory(trajectory)
    assert np.isnan(smoothed[20:25]).all() and np.isfinite(smoothed[:20]).all()
    np.testing.assert_allclose(smoothed[:20], trajectory[:20], atol=1e-3)
    np.testing.assert_allclose(smoothed[25:], trajectory[25:], atol=1e-3)
    # the same without a gap but with a flagged cut at 25
    no_gap = np.repeat(template[None], 50, axis=0)
    no_gap[25:] += 30.0
    breaks = np.zeros(50, bool)
    breaks[25] = True
    np.testing.assert_allclose(smooth_trajectory(no_gap, breaks=breaks), no_gap, atol=1e-3)
    assert segments(no_gap, breaks) == [(0, 25), (25, 50)]
    # an unflagged jump of a whole face size is split too
    jump = np.repeat(template[None], 50, axis=0)
    jump[25:] += 300.0
    assert segments(jump) == [(0, 25), (25, 50)]


def test_repeated_frames_stay_put_and_do_not_drag_the_smoothed_path():
    """A face moving at 12 px per frame of a 25 fps clip shown at 30 fps: every 6th frame
    repeats the previous picture. The smoothed points must stand still on the repeat, like
    the face, and stay on the face either side of it; smoothing over all frames glides
    through the repeat instead."""
    rng = np.random.default_rng(4)
    template = rng.uniform(-100, 100, (68, 2))
    source_time = np.concatenate([[k - k // 6] for k in range(90)]).astype(np.float64)
    repeated = np.r_[False, np.diff(source_time) == 0]
    truth = template[None] + (12.0 * source_time)[:, None, None] * [1.0, 0.0]
    noisy = truth + rng.normal(0, 1.0, truth.shape)
    plain = smooth_trajectory(noisy, 0.004, 0.02)
    aware = smooth_unique_frames(noisy, repeated, 0.004, 0.02)
    repeats = np.flatnonzero(repeated)
    np.testing.assert_array_equal(aware[repeats], aware[repeats - 1])
    def step_error(points):  # frame-to-frame motion error, as the swap's jitter metric
        return float(np.linalg.norm(np.diff(points - truth, axis=0), axis=2).mean())
    print(f"\nmotion error: all frames {step_error(plain):.2f} px, unique frames "
          f"{step_error(aware):.2f} px, raw {step_error(noisy):.2f} px")
    assert step_error(aware) < 0.5 * step_error(plain)
    assert step_error(aware) < 0.5 * step_error(noisy)
    # no repeats: the same as smooth_trajectory; a cut on a repeat moves to the next frame
    np.testing.assert_array_equal(smooth_unique_frames(noisy, None, 0.004, 0.02), plain)
    jump = truth.copy()
    jump[30:] += [30.0, 0.0]
    breaks = np.zeros(90, bool)
    breaks[30] = True
    repeated_at_cut = repeated.copy()
    repeated_at_cut[30] = True
    smoothed = smooth_unique_frames(jump, repeated_at_cut, 0.004, 0.02, breaks=breaks)
    np.testing.assert_allclose(smoothed[31:], jump[31:], atol=0.05)


@pytest.mark.media
def test_flow_refinement_removes_detector_noise_on_a_textured_image(media_dir: Path):
    """Known ground truth: a real photo translated along a known path; the "detections" are
    the true points plus noise. Flow-refined points are much closer to the truth."""
    image = cv2.cvtColor(cv2.imread(str(media_dir / "mark.jpg")), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (389, 380), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(4)
    points0 = rng.uniform([120, 120], [270, 300], (68, 2))
    frames, truth = [], []
    for k in range(30):
        shift = np.array([6 * np.sin(k / 4), 4 * np.cos(k / 5)])
        matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        frames.append(cv2.warpAffine(image, matrix, (389, 380), borderMode=cv2.BORDER_REFLECT))
        truth.append(points0 + shift)
    truth = np.array(truth)
    detections = truth + rng.normal(0, 1.0, truth.shape)
    detections[12:14] = np.nan  # a gap
    refined = refine_with_flow(frames, detections)
    assert np.isnan(refined[12:14]).all()
    np.testing.assert_array_equal(refined[0], detections[0].astype(np.float32))
    valid = np.isfinite(detections).all(axis=(1, 2))
    valid[[0, 14]] = False  # no history yet at the start and just after the gap
    error_raw = rms(detections[valid], truth[valid])
    error_refined = rms(refined[valid], truth[valid])
    print(f"\nflow refinement: rms error {error_raw:.2f} px -> {error_refined:.2f} px")
    assert error_refined < 0.6 * error_raw


def test_flow_refiner_follows_a_real_jump():
    """When the detection moves far away (the flow lost the face), the detection wins."""
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 255, (200, 200), np.uint8)
    frame = cv2.GaussianBlur(frame, (0, 0), 2)
    points = rng.uniform(60, 140, (20, 2))
    refiner = FlowRefiner()
    refiner.update(frame, {"a": points})
    moved = points + 40.0  # the image did not move, the detection did
    out = refiner.update(frame, {"a": moved})["a"]
    np.testing.assert_allclose(out, moved, atol=1e-3)
    # a key missing from a frame loses its history: it restarts from its detection
    assert refiner.update(frame, {}) == {}
    out = refiner.update(frame, {"a": points})["a"]
    np.testing.assert_allclose(out, points, atol=1e-3)


@pytest.mark.media
def test_smoothing_reduces_jitter_on_real_video(media_dir: Path):
    """nggyup.mp4 frames 22-39 (after the cut; a near-still close-up): second differences
    (jitter) of the landmarks drop, the landmarks stay within a few pixels of the raw ones,
    and nothing is smoothed across the cut at frame 22."""
    import av

    def frames():
        with av.open(str(media_dir / "nggyup.mp4")) as container:
            for frame in itertools.islice(container.decode(video=0), 40):
                yield frame.to_ndarray(format="rgb24")

    tracks = track_faces(frames())
    refined = refine_tracks_with_flow(frames(), tracks)
    smoothed = smooth_tracks(refined)
    raw = tracks.trajectory(0, IBUG68)
    out = smoothed.trajectory(0, IBUG68)
    # Frames 24, 30 and 36 repeat their predecessors (a 25 -> 30 fps conversion): the face
    # stops there for real, so jitter is measured over the other frames.
    still = [i for i in range(22, 40) if not tracks.repeated[i]]
    assert len(still) == 15
    jitter = lambda x: rms(np.diff(x[still], 2, axis=0), 0)  # noqa: E731
    size = float(np.median(face_size(raw[still])))
    print(f"\njitter (rms 2nd difference) raw {jitter(raw):.2f} px, "
          f"refined+smoothed {jitter(out):.2f} px, face size {size:.0f} px")
    # 0.78 with the shipped settings (smooth_tracks' docstring says why they are light)
    assert jitter(out) < 0.85 * jitter(raw)
    assert np.abs(out - raw).mean() < 0.02 * size
    # the first frame after the cut stays near its own detection, not pulled to the old shot
    assert np.abs(out[22] - raw[22]).max() < 0.05 * size
    assert smoothed.landmarks[IBUG68].shape == tracks.landmarks[IBUG68].shape


def mesh_tracks(frames: int, seed: int = 0, tracks: int = 1) -> Tracks:
    """A clip's tracks with mediapipe meshes (and their iBUG points): `tracks` faces moving
    in small random steps, each seen in a random ~80% of the frames (the first in all but
    a few, split into two tracks at frame `frames` // 3, a cut, and joined again by their
    identity embeddings), every 6th frame a repeat."""
    rng = np.random.default_rng(seed)
    present = rng.random((tracks, frames)) < 0.8
    present[0] = rng.random(frames) < 0.97
    rows = sorted((f, t) for t in range(tracks) for f in np.flatnonzero(present[t]))
    frame = np.array([f for f, _ in rows], np.int64)
    face = np.array([t for _, t in rows], np.int64)
    track_id = np.where(face == 0, (frame >= frames // 3).astype(np.int64), face + 1)
    walk = rng.normal(0, 2, (tracks, frames, 2)).cumsum(axis=1)
    mesh = (rng.uniform(-80, 80, (tracks, 478, 2))[face] + walk[face, frame][:, None]
            + rng.normal(0, 1, (len(rows), 478, 2)) + 400 * (face + 1)[:, None, None])
    mesh = mesh.astype(np.float32)
    mesh[rng.random(len(rows)) < 0.02] = np.nan  # a detection with no usable points
    cut = np.zeros(frames, bool)
    cut[frames // 3] = True
    embeddings = np.full((len(rows), 128), np.nan)
    every = np.arange(len(rows)) % 15 == 0  # one person's identity, on both sides of the cut
    embeddings[every] = rng.normal(0, 0.1, (tracks, 128))[face[every]]
    return Tracks(frames, (720, 1280), frame, track_id, np.tile([0, 0, 100, 100], (len(rows), 1)),
                  np.ones(len(rows)), {MEDIAPIPE478: mesh, IBUG68: ibug68_from_mediapipe478(mesh)},
                  embeddings, cut, np.arange(frames) % 6 == 5)


def test_smooth_tracks_smooths_each_track_as_its_trajectory():
    """Rows smoothed in place, track by track, are the tracks' trajectories smoothed on
    their own (`smooth_unique_frames`: gaps, cuts and repeats, a repeat after a frame
    without the face included), bit for bit; iBUG points follow the smoothed mesh."""
    tracks = mesh_tracks(300, seed=3, tracks=3)
    smoothed = smooth_tracks(tracks)
    for t in tracks.ids:
        expected = smooth_unique_frames(tracks.trajectory(int(t), MEDIAPIPE478), tracks.repeated,
                                        0.004, 0.02, breaks=tracks.scene_cut)
        rows = tracks.track_id == t
        np.testing.assert_array_equal(smoothed.landmarks[MEDIAPIPE478][rows],
                                      expected[tracks.frame_index[rows]])
    np.testing.assert_array_equal(smoothed.landmarks[IBUG68],
                                  ibug68_from_mediapipe478(smoothed.landmarks[MEDIAPIPE478]))
    assert np.isfinite(smoothed.landmarks[MEDIAPIPE478]).all(axis=(1, 2)).mean() > 0.9


def test_landmark_pass_memory_grows_only_by_what_it_keeps():
    """Choosing the person, smoothing their tracks and making their trajectories (what
    `fitting.video.video_landmarks` does after tracking) raise the heap's peak per frame by
    about the two results it holds, the smoothed rows and the trajectories (each one copy
    of the landmarks), not by float64 copies of whole trajectories. tracemalloc counts
    numpy's allocations exactly, so this is deterministic (unlike RSS)."""
    import tracemalloc

    def peak(frames: int) -> tuple[int, int]:
        tracks = mesh_tracks(frames)
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            person = choose_person(tracks, tracks, "largest")
            chosen = smooth_tracks(person.tracks)
            trajectories = {s: joined_trajectory(chosen, person.ids, s)
                            for s in chosen.landmarks}
            assert np.isfinite(trajectories[IBUG68]).all(axis=(1, 2)).mean() > 0.9
            return tracemalloc.get_traced_memory()[1] - start, len(tracks)
        finally:
            tracemalloc.stop()

    peak(30)  # what the first call allocates once (imports, caches) is not growth
    (short, short_rows), (long, long_rows) = peak(300), peak(900)
    row = sum(p[0].nbytes for p in mesh_tracks(3).landmarks.values())  # bytes per frame
    growth = (long - short) / (long_rows - short_rows)
    print(f"\npeak growth {growth:.0f} bytes per frame, landmarks {row} bytes per frame")
    assert growth < 3.0 * row
