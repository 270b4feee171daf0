"""Landmarks that stop jittering without lagging behind the face.

Two stages, usable apart:

1. `FlowRefiner` (online, needs only the previous frame): each landmark is tracked from the
   previous frame with pyramidal Lucas-Kanade optical flow (checked forward-backward) and
   blended with the new detection. Where flow and detection agree (the usual case: both see
   the same motion, the detection adds jitter) the flow point gets most of the weight; where
   they disagree (flow lost on an occlusion or blur, or a real change the flow missed) the
   detection wins. Flow follows real motion, so this adds no lag; the detection's pull keeps
   it from drifting.
2. `smooth_trajectory` (offline over the landmark arrays, which are small): a
   Rauch-Tung-Striebel smoother (Kalman forward pass + backward pass) with a
   constant-velocity model. Being two-sided it has zero lag, unlike any causal filter, and
   it is run separately on each run of consecutive frames, never across a gap.

Noise levels are fractions of the face size (the geometric mean of the landmarks' box
sides), so the same settings suit near and far faces.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import cv2
import numpy as np

from fitting.faces import IBUG68, MEDIAPIPE478, as_rgb_uint8
from fitting.landmark_maps import ibug68_from_mediapipe478
from fitting.track import Tracks


def face_size(points: np.ndarray) -> np.ndarray:
    """(..., L, 2) -> (...) sqrt(width * height) of the points' box, in pixels."""
    points = np.asarray(points, np.float64)
    extent = points.max(axis=-2) - points.min(axis=-2)
    return np.sqrt(np.clip(extent[..., 0], 1e-6, None) * np.clip(extent[..., 1], 1e-6, None))


# --------------------------------------------------------------------------------------------
# Stage 1: optical-flow refinement
# --------------------------------------------------------------------------------------------


class FlowRefiner:
    """Online optical-flow refinement of landmarks for any number of faces (by key).

    Call `update(frame, {key: points})` once per frame, in order; a key absent from a frame
    (or given None) loses its history, so a face is never flowed across a gap.

    agreement: disagreement (fraction of face size) at which the flow's weight has fallen
        to exp(-1/2) of its maximum.
    max_flow_weight: the flow's weight when flow and detection agree exactly; below 1 so the
        detection always pulls a little and errors cannot accumulate.
    max_fb_error: forward-backward flow error (fraction of face size) above which a point's
        flow is not trusted at all.
    """

    def __init__(self, agreement: float = 0.02, max_flow_weight: float = 0.8,
                 max_fb_error: float = 0.01, window: int = 21, levels: int = 3) -> None:
        self.agreement = float(agreement)
        self.max_flow_weight = float(max_flow_weight)
        self.max_fb_error = float(max_fb_error)
        self.window = (int(window), int(window))
        self.levels = int(levels)
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)
        self._previous_grey: np.ndarray | None = None
        self._previous_points: dict[Hashable, np.ndarray] = {}

    def reset(self) -> None:
        self._previous_grey = None
        self._previous_points = {}

    @staticmethod
    def _grey(frame: np.ndarray) -> np.ndarray:
        image = np.asarray(frame)
        if image.ndim == 2 and image.dtype == np.uint8:
            return np.ascontiguousarray(image)
        return cv2.cvtColor(as_rgb_uint8(image), cv2.COLOR_RGB2GRAY)

    def _flow(self, src: np.ndarray, dst: np.ndarray,
              points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moved, status, _ = cv2.calcOpticalFlowPyrLK(
            src, dst, points.reshape(-1, 1, 2).astype(np.float32), None,
            winSize=self.window, maxLevel=self.levels, criteria=self._criteria)
        return moved.reshape(-1, 2).astype(np.float64), status.reshape(-1).astype(bool)

    def _flow_in_roi(self, previous_grey: np.ndarray, grey: np.ndarray, previous: np.ndarray,
                     detected: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward flow of `previous` and its forward-backward error, computed on the crop
        around both point sets only (fast for small faces in big frames)."""
        both = np.concatenate([previous, detected])
        margin = max(0.5 * float(face_size(both)), self.window[0] * 2.0)
        h, w = grey.shape
        x0, y0 = (int(max(np.floor(v - margin), 0)) for v in both.min(axis=0))
        x1, y1 = (int(np.ceil(v + margin)) + 1 for v in both.max(axis=0))
        x1, y1 = min(x1, w), min(y1, h)
        offset = np.array([x0, y0], np.float64)
        src = np.ascontiguousarray(previous_grey[y0:y1, x0:x1])
        dst = np.ascontiguousarray(grey[y0:y1, x0:x1])
        flowed, ok = self._flow(src, dst, previous - offset)
        back, ok_back = self._flow(dst, src, flowed)
        fb_error = np.linalg.norm(back - (previous - offset), axis=-1)
        return flowed + offset, ok & ok_back, fb_error

    def flow_weights(self, detected: np.ndarray, flowed: np.ndarray, fb_error: np.ndarray,
                     ok: np.ndarray) -> np.ndarray:
        """(L,) weight of the flow point against the detection, per point."""
        size = float(face_size(detected))
        disagreement = np.linalg.norm(flowed - detected, axis=-1) / size
        weight = self.max_flow_weight * np.exp(-0.5 * (disagreement / self.agreement) ** 2)
        trusted = ok & np.isfinite(flowed).all(axis=-1) & (fb_error <= self.max_fb_error * size)
        return np.where(trusted, weight, 0.0)

    def update(self, frame: np.ndarray,
               detections: dict[Hashable, np.ndarray | None]) -> dict[Hashable, np.ndarray]:
        """Refined (L, 2) float32 points for each key with points in this frame."""
        grey = self._grey(frame)
        refined: dict[Hashable, np.ndarray] = {}
        for key, points in detections.items():
            if points is None:
                continue
            detected = np.asarray(points, np.float64)
            previous = self._previous_points.get(key)
            if (previous is None or previous.shape != detected.shape
                    or self._previous_grey is None or self._previous_grey.shape != grey.shape
                    or not np.isfinite(detected).all()):
                refined[key] = detected.astype(np.float32)
                continue
            flowed, ok, fb_error = self._flow_in_roi(self._previous_grey, grey, previous,
                                                     detected)
            weight = self.flow_weights(detected, flowed, fb_error, ok)[:, None]
            flowed = np.where(np.isfinite(flowed), flowed, detected)
            refined[key] = (weight * flowed + (1 - weight) * detected).astype(np.float32)
        self._previous_grey = grey
        self._previous_points = {k: v.astype(np.float64) for k, v in refined.items()}
        return refined


def refine_with_flow(frames: Iterable[np.ndarray], trajectory: np.ndarray,
                     refiner: FlowRefiner | None = None) -> np.ndarray:
    """Flow-refine one face's (T, L, 2) trajectory (NaN rows = absent) over a frame stream.

    Holds one previous frame at a time; `frames` must yield the T frames in order."""
    trajectory = np.asarray(trajectory, np.float32)
    refiner = refiner or FlowRefiner()
    out = trajectory.copy()
    count = 0
    for t, frame in enumerate(frames):
        if t >= len(trajectory):
            break
        points = trajectory[t] if np.isfinite(trajectory[t]).all() else None
        result = refiner.update(frame, {0: points})
        if 0 in result:
            out[t] = result[0]
        count += 1
    if count < len(trajectory):
        raise ValueError(f"the stream ended after {count} of {len(trajectory)} frames")
    return out


def _refined_schemes(tracks: Tracks) -> list[str]:
    """Schemes to flow: ibug68 is re-derived from the mesh when the mesh is there."""
    if MEDIAPIPE478 in tracks.landmarks:
        return [s for s in tracks.landmarks if s != IBUG68]
    return list(tracks.landmarks)


def refine_tracks_with_flow(frames: Iterable[np.ndarray], tracks: Tracks,
                            refiner: FlowRefiner | None = None) -> Tracks:
    """All tracks' landmarks flow-refined over a second pass through the frames.

    Each row's landmark sets are flowed together; with a mediapipe mesh present, ibug68 is
    recomputed from the refined mesh so both sets stay consistent."""
    refiner = refiner or FlowRefiner()
    schemes = _refined_schemes(tracks)
    sizes = [tracks.landmarks[s].shape[1] for s in schemes]
    joined = np.concatenate([tracks.landmarks[s] for s in schemes], axis=1)
    out = joined.copy()
    count = 0
    for t, frame in enumerate(frames):
        if t >= tracks.n_frames:
            break
        rows = tracks.rows_in_frame(t)
        if tracks.scene_cut[t]:
            refiner.reset()
        result = refiner.update(frame, {int(tracks.track_id[r]): joined[r] for r in rows})
        for r in rows:
            out[r] = result[int(tracks.track_id[r])]
        count += 1
    if count < tracks.n_frames:
        raise ValueError(f"the stream ended after {count} of {tracks.n_frames} frames")
    split = np.split(out, np.cumsum(sizes)[:-1], axis=1)
    landmarks = dict(zip(schemes, split, strict=True))
    if MEDIAPIPE478 in landmarks and IBUG68 in tracks.landmarks:
        landmarks[IBUG68] = ibug68_from_mediapipe478(landmarks[MEDIAPIPE478])
    return tracks.with_landmarks(landmarks)


# --------------------------------------------------------------------------------------------
# Stage 2: zero-lag smoothing (Rauch-Tung-Striebel, constant velocity)
# --------------------------------------------------------------------------------------------


def _rts_gains(n: int, measurement_var: float, accel_var: float) -> tuple[np.ndarray, ...]:
    """Kalman gains and smoother gains for n steps of a 1-D constant-velocity model.

    They do not depend on the data, so they are computed once and applied to every
    coordinate at the same time."""
    f = np.array([[1.0, 1.0], [0.0, 1.0]])
    q = accel_var * np.array([[0.25, 0.5], [0.5, 1.0]])  # acceleration held over one frame
    p_pred = np.zeros((n, 2, 2))
    p_filt = np.zeros((n, 2, 2))
    gains = np.zeros((n, 2))
    p = np.diag([measurement_var, measurement_var + 1e6 * accel_var + 1e6])  # vague start
    for t in range(n):
        if t > 0:
            p = f @ p_filt[t - 1] @ f.T + q
        p_pred[t] = p
        k = p[:, 0] / (p[0, 0] + measurement_var)
        gains[t] = k
        p_filt[t] = p - np.outer(k, p[0, :])
    smoother = np.zeros((n, 2, 2))
    for t in range(n - 1):
        smoother[t] = p_filt[t] @ f.T @ np.linalg.inv(p_pred[t + 1])
    return gains, smoother


def _rts_segment(values: np.ndarray, measurement_var: float, accel_var: float,
                 two_sided: bool = True) -> np.ndarray:
    """Smooth (T, K) values (T consecutive frames, K coordinates) with one shared model."""
    n = len(values)
    if n < 3:
        return values.copy()
    gains, smoother = _rts_gains(n, measurement_var, accel_var)
    state = np.zeros((n, 2, values.shape[1]))
    x = np.stack([values[0], np.zeros(values.shape[1])])
    for t in range(n):
        if t > 0:
            x = np.stack([state[t - 1, 0] + state[t - 1, 1], state[t - 1, 1]])
        innovation = values[t] - x[0]
        state[t] = x + gains[t][:, None] * innovation[None, :]
    if not two_sided:
        return state[:, 0]
    smoothed = state.copy()
    for t in range(n - 2, -1, -1):
        predicted = np.stack([state[t, 0] + state[t, 1], state[t, 1]])
        smoothed[t] = state[t] + smoother[t] @ (smoothed[t + 1] - predicted)
    return smoothed[:, 0]


def present_runs(present: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the runs of True in a (T,) bool array."""
    present = np.asarray(present, bool)
    edges = np.diff(np.concatenate([[0], present.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))


def segments(points: np.ndarray, breaks: np.ndarray | None = None,
             max_jump: float = 0.5) -> list[tuple[int, int]]:
    """[start, stop) runs of a (T, L, 2) trajectory that may be smoothed as one: frames with
    points, split at `breaks` (True where a frame starts a new shot) and where the face
    jumps by more than `max_jump` face sizes or changes size by more than that fraction
    between consecutive frames (a cut the caller did not flag)."""
    points = np.asarray(points, np.float64)
    present = np.isfinite(points).all(axis=(1, 2))
    split = np.zeros(len(points), bool) if breaks is None else np.asarray(breaks, bool).copy()
    if points.shape[1] > 1:
        sizes = face_size(np.where(present[:, None, None], points, 0.0))
        centres = points.mean(axis=1)
        both = present[1:] & present[:-1]
        jump = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(sizes[:-1], 1e-6)
        growth = np.abs(np.log(np.maximum(sizes[1:], 1e-6) / np.maximum(sizes[:-1], 1e-6)))
        split[1:] |= both & ((jump > max_jump) | (growth > np.log1p(max_jump)))
    runs = []
    for start, stop in present_runs(present):
        cuts = [start] + [t for t in range(start + 1, stop) if split[t]] + [stop]
        runs.extend(zip(cuts[:-1], cuts[1:], strict=True))
    return runs


def smooth_trajectory(points: np.ndarray, measurement_noise: float = 0.006,
                      motion_noise: float = 0.01, causal: bool = False,
                      breaks: np.ndarray | None = None, max_jump: float = 0.5) -> np.ndarray:
    """Zero-lag smoothing of a (T, L, 2) landmark trajectory; NaN frames are gaps.

    measurement_noise: landmark jitter, as a fraction of face size (standard deviation).
    motion_noise: how fast the velocity may change, as a fraction of face size per frame
        (standard deviation of the per-frame velocity change); larger follows faster
        motion more closely and smooths less.
    causal: run only the forward (Kalman) pass: the online filter this module avoids,
        for comparison; it lags behind motion.
    breaks, max_jump: where to split besides gaps; see `segments`.

    Each run (see `segments`) is smoothed on its own; gaps stay NaN.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected (T, L, 2) points, got {points.shape}")
    out = np.full(points.shape, np.nan, np.float32)
    for start, stop in segments(points, breaks, max_jump):
        segment = points[start:stop]
        size = float(np.median(face_size(segment))) if segment.shape[1] > 1 else 1.0
        measurement_var = (measurement_noise * size) ** 2
        accel_var = (motion_noise * size) ** 2
        flat = segment.reshape(stop - start, -1)
        out[start:stop] = _rts_segment(flat, measurement_var, accel_var,
                                       two_sided=not causal).reshape(segment.shape)
    return out


def smooth_unique_frames(points: np.ndarray, repeated: np.ndarray | None,
                         measurement_noise: float, motion_noise: float,
                         breaks: np.ndarray | None = None) -> np.ndarray:
    """`smooth_trajectory` over the frames that are not repeats of their predecessor; each
    repeated frame then takes its predecessor's smoothed points.

    A clip converted from 25 to 30 fps shows every 6th picture twice: the face stands still
    for one frame and then jumps two frames' worth. Smoothed over all frames, the points
    would glide through the repeat and sit off the face on both sides of it; on nggyup.mp4
    that was most of the swap's added jitter. A repeat's own detection is dropped (it saw
    the same picture).
    """
    points = np.asarray(points, np.float64)
    count = len(points)
    if repeated is None or not np.any(repeated[:count]):
        return smooth_trajectory(points, measurement_noise, motion_noise, breaks=breaks)
    repeated = np.asarray(repeated, bool)[:count]
    unique = np.flatnonzero(~repeated)
    unique_breaks = None
    if breaks is not None:
        # A cut on a dropped frame starts the shot at the next unique frame.
        cuts_so_far = np.cumsum(np.asarray(breaks, bool)[:count])
        unique_breaks = np.zeros(len(unique), bool)
        unique_breaks[0] = bool(cuts_so_far[unique[0]])
        unique_breaks[1:] = np.diff(cuts_so_far[unique]) > 0
    out = np.full(points.shape, np.nan, np.float32)
    out[unique] = smooth_trajectory(points[unique], measurement_noise, motion_noise,
                                    breaks=unique_breaks)
    for i in np.flatnonzero(repeated):
        copy = out[i - 1] if i > 0 else np.full(points.shape[1:], np.nan, np.float32)
        # No predecessor with the face: keep the frame's own (unsmoothed) detection.
        out[i] = copy if np.isfinite(copy).all() else points[i]
    return out


def smooth_tracks(tracks: Tracks, measurement_noise: float = 0.004,
                  motion_noise: float = 0.02) -> Tracks:
    """Every track's landmark sets smoothed with `smooth_unique_frames` (gaps respected,
    repeated frames held).

    The defaults are light: in `morph3d eval` of swaps into nggyup.mp4 (a singer moving
    fast; mediapipe landmarks) the swap's added jitter hardly depends on them once repeated
    frames are held (0.029 IOD per frame with these, 0.029 without smoothing, 0.030 with
    0.008 / 0.02, against 0.048 with these before the repeats were held), and the mouth's
    motion followed best with them (mar_corr 0.90 vs 0.88-0.89). The second differences on
    the near-still shot after the cut drop to 0.80 of the raw ones (0.71 with 0.008 / 0.02).
    """
    landmarks = {s: p.copy() for s, p in tracks.landmarks.items()}
    schemes = _refined_schemes(tracks)
    for track_id in tracks.ids:
        rows = np.flatnonzero(tracks.track_id == track_id)
        frames = tracks.frame_index[rows]
        for scheme in schemes:
            trajectory = tracks.trajectory(int(track_id), scheme)
            smoothed = smooth_unique_frames(trajectory, tracks.repeated, measurement_noise,
                                            motion_noise, breaks=tracks.scene_cut)
            landmarks[scheme][rows] = smoothed[frames]
    if MEDIAPIPE478 in landmarks and IBUG68 in landmarks:
        landmarks[IBUG68] = ibug68_from_mediapipe478(landmarks[MEDIAPIPE478])
    return tracks.with_landmarks(landmarks)
