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

from fitting.faces import IBUG68, MEDIAPIPE478, SCHEME_SIZES, as_rgb_uint8
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


# Smoothing reads the landmark arrays a block at a time, so that its temporaries keep one
# size whatever the clip's length: a float64 copy of a whole trajectory, and the smoother's
# state (two values per coordinate and frame), would each be several times the float32
# landmarks the stage keeps.
_BLOCK_ROWS = 64  # rows converted to float64 at a time for the per-frame statistics
# Landmarks smoothed together: an even number of coordinates, a power of two, so that every
# coordinate meets the same BLAS kernel path in the backward pass's small matrix products as
# it would with all coordinates at once (the results do not depend on the block size).
_BLOCK_POINTS = 32


def _rts_smooth(values: np.ndarray, gains: np.ndarray, smoother: np.ndarray,
                two_sided: bool = True) -> np.ndarray:
    """Smooth (T, K) values (T consecutive frames, K coordinates) with one shared model's
    `_rts_gains`; the backward pass overwrites the forward pass's states in place."""
    n, k = values.shape
    state = np.zeros((n, 2, k))  # position, velocity
    position, velocity = values[0], np.zeros(k)
    for t in range(n):
        if t > 0:
            position, velocity = state[t - 1, 0] + state[t - 1, 1], state[t - 1, 1]
        innovation = values[t] - position
        state[t, 0] = position + gains[t, 0] * innovation
        state[t, 1] = velocity + gains[t, 1] * innovation
    if two_sided:
        error = np.empty((2, k))  # the smoothed next state minus its prediction
        for t in range(n - 2, -1, -1):
            np.subtract(state[t + 1, 0], state[t, 0] + state[t, 1], out=error[0])
            np.subtract(state[t + 1, 1], state[t, 1], out=error[1])
            state[t] += smoother[t] @ error
    return state[:, 0]


def _frame_stats(values: np.ndarray, rows: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the (L, 2) point sets values[rows]: whether all its points are finite,
    its `face_size` (pixels) and its mean point (pixels), float64."""
    present = np.zeros(len(rows), bool)
    sizes = np.zeros(len(rows))
    centres = np.zeros((len(rows), 2))
    for start in range(0, len(rows), _BLOCK_ROWS):
        block = np.asarray(values[rows[start:start + _BLOCK_ROWS]], np.float64)
        part = slice(start, start + len(block))
        present[part] = np.isfinite(block).all(axis=(1, 2))
        sizes[part] = face_size(np.where(present[part, None, None], block, 0.0))
        centres[part] = block.mean(axis=1)
    return present, sizes, centres


def _runs(values: np.ndarray, rows: np.ndarray, position: np.ndarray,
          breaks: np.ndarray | None, max_jump: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The runs (see `segments`) of the point sets values[rows] at strictly increasing
    positions `position` on a timeline: for each, its indices into `rows` and its face sizes
    (pixels). A run holds finite point sets at consecutive positions, unbroken by `breaks`
    (indexed by position) and by jumps."""
    present, sizes, centres = _frame_stats(values, rows)
    seen = np.flatnonzero(present)
    position, sizes, centres = position[seen], sizes[seen], centres[seen]
    start = np.ones(len(seen), bool)
    start[1:] = np.diff(position) != 1
    if breaks is not None:
        start[1:] |= np.asarray(breaks, bool)[position[1:]]
    if values.shape[1] > 1:
        jump = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(sizes[:-1], 1e-6)
        growth = np.abs(np.log(np.maximum(sizes[1:], 1e-6) / np.maximum(sizes[:-1], 1e-6)))
        start[1:] |= (jump > max_jump) | (growth > np.log1p(max_jump))
    starts = np.flatnonzero(start)
    stops = np.r_[starts[1:], len(seen)].astype(np.int64)
    return [(seen[a:b], sizes[a:b]) for a, b in zip(starts, stops, strict=True)]


def _smooth_rows(values: np.ndarray, rows: np.ndarray, frames: np.ndarray, count: int,
                 repeated: np.ndarray | None, breaks: np.ndarray | None, out: np.ndarray,
                 measurement_noise: float, motion_noise: float, causal: bool = False,
                 max_jump: float = 0.5) -> None:
    """Smooth one face's point sets values[rows] ((L, 2) pixels each) into out[rows]
    (float32, NaN beforehand), read and written in place, a block at a time.

    frames: (R,) the frame of each row, strictly increasing, in [0, count); frames without
        a row are gaps.
    repeated, breaks: (count,) bool or None, as in `smooth_unique_frames`.
    Rows in no run (non-finite points) keep their NaN, unless a repeated frame copies its
    predecessor into them.
    """
    frames = np.asarray(frames, np.int64)
    if np.any(np.diff(frames) <= 0):
        raise ValueError("a face has at most one row per frame, in frame order")
    repeated = None if repeated is None else np.asarray(repeated, bool)[:count]
    if repeated is not None and not repeated.any():
        repeated = None
    if repeated is None:
        kept, position = np.arange(len(rows)), frames
    else:
        # Smoothed over the frames that are not repeats; a cut on a dropped frame starts
        # the shot at the next unique frame.
        unique = np.flatnonzero(~repeated)
        kept = np.flatnonzero(~repeated[frames])
        position = np.searchsorted(unique, frames[kept])
        if breaks is not None and len(unique):
            cuts_so_far = np.cumsum(np.asarray(breaks, bool)[:count])
            unique_breaks = np.zeros(len(unique), bool)
            unique_breaks[0] = bool(cuts_so_far[unique[0]])
            unique_breaks[1:] = np.diff(cuts_so_far[unique]) > 0
            breaks = unique_breaks
    for run, sizes in _runs(values, rows[kept], position, breaks, max_jump):
        where = rows[kept[run]]
        n = len(where)
        if n < 3:
            out[where] = values[where]
            continue
        size = float(np.median(sizes)) if values.shape[1] > 1 else 1.0
        gains, smoother = _rts_gains(n, (measurement_noise * size) ** 2,
                                     (motion_noise * size) ** 2)
        for first in range(0, values.shape[1], _BLOCK_POINTS):
            block = np.asarray(values[where, first:first + _BLOCK_POINTS], np.float64)
            smoothed = _rts_smooth(block.reshape(n, -1), gains, smoother, not causal)
            out[where, first:first + _BLOCK_POINTS] = smoothed.reshape(block.shape)
    if repeated is None:
        return
    # A repeated frame takes its predecessor's smoothed points (a frame without this face
    # passes on what its own predecessor had, if it is a repeat too); with none there, it
    # keeps its own detection.
    for r in np.flatnonzero(repeated[frames]):
        frame = int(frames[r]) - 1
        while frame >= 0 and repeated[frame] and not _has_row(frames, frame):
            frame -= 1
        previous = (out[rows[np.searchsorted(frames, frame)]]
                    if frame >= 0 and _has_row(frames, frame) else None)
        finite = previous is not None and bool(np.isfinite(previous).all())
        out[rows[r]] = previous if finite else values[rows[r]]


def _has_row(frames: np.ndarray, frame: int) -> bool:
    i = int(np.searchsorted(frames, frame))
    return i < len(frames) and int(frames[i]) == frame


def _trajectory(points: np.ndarray) -> np.ndarray:
    """(T, L, 2) float32 or float64 points, as given when they are."""
    points = np.asarray(points)
    if points.dtype not in (np.float32, np.float64):
        points = points.astype(np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected (T, L, 2) points, got {points.shape}")
    return points


def segments(points: np.ndarray, breaks: np.ndarray | None = None,
             max_jump: float = 0.5) -> list[tuple[int, int]]:
    """[start, stop) runs of a (T, L, 2) trajectory that may be smoothed as one: frames with
    points, split at `breaks` (True where a frame starts a new shot) and where the face
    jumps by more than `max_jump` face sizes or changes size by more than that fraction
    between consecutive frames (a cut the caller did not flag)."""
    points = _trajectory(points)
    every = np.arange(len(points))
    return [(int(run[0]), int(run[-1]) + 1)
            for run, _ in _runs(points, every, every, breaks, max_jump)]


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

    Each run (see `segments`) is smoothed on its own; gaps stay NaN. Returns float32.
    """
    points = _trajectory(points)
    out = np.full(points.shape, np.nan, np.float32)
    every = np.arange(len(points))
    _smooth_rows(points, every, every, len(points), None, breaks, out, measurement_noise,
                 motion_noise, causal, max_jump)
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
    points = _trajectory(points)
    out = np.full(points.shape, np.nan, np.float32)
    every = np.arange(len(points))
    _smooth_rows(points, every, every, len(points), repeated, breaks, out, measurement_noise,
                 motion_noise)
    return out


def _ibug68_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """`ibug68_from_mediapipe478` of (M, 478, 2) float32 points, a block of rows at a time
    (it works in float64)."""
    out = np.empty((len(mesh), SCHEME_SIZES[IBUG68], 2), np.float32)
    for start in range(0, len(mesh), _BLOCK_ROWS):
        out[start:start + _BLOCK_ROWS] = ibug68_from_mediapipe478(
            mesh[start:start + _BLOCK_ROWS])
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
    schemes = _refined_schemes(tracks)
    smoothed = {s: np.full(tracks.landmarks[s].shape, np.nan, np.float32) for s in schemes}
    for track_id in tracks.ids:
        rows = np.flatnonzero(tracks.track_id == track_id)
        frames = tracks.frame_index[rows]
        for scheme in schemes:
            _smooth_rows(tracks.landmarks[scheme], rows, frames, tracks.n_frames,
                         tracks.repeated, tracks.scene_cut, smoothed[scheme],
                         measurement_noise, motion_noise)
    if MEDIAPIPE478 in smoothed and IBUG68 in tracks.landmarks:
        smoothed[IBUG68] = _ibug68_from_mesh(smoothed[MEDIAPIPE478])
    return tracks.with_landmarks(smoothed)
