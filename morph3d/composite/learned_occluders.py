"""Learned occluder cues: hands in front of the face, from mediapipe's hand landmarks.

The colour cues (`morph3d.composite.occluders`) find what is not skin-coloured; a hand has
the actor's own skin colour and slips through them. mediapipe's legacy Hands graph (palm
detector + 21 hand landmarks, both shipped inside the mediapipe 0.10.14 wheel) finds it by
shape. It runs on a small square crop around the actor's face, in tracking mode (the palm
detector runs only while no hand is tracked): on every frame while a hand is in the crop,
on every `idle_every`-th frame while none is (most frames of most clips: the palm detector
is most of the cost, and a hand enters the crop at its edge, away from the face). One
graph per clip, closed with `close`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.composite.masks import FaceGeometry, _dilate
from morph3d.errors import ModelError

# The model files the legacy Hands graph loads at complexity 0, relative to mediapipe's
# package folder: checked up front so a broken install fails with one line, not a download.
_HAND_MODELS = ("modules/palm_detection/palm_detection_lite.tflite",
                "modules/hand_landmark/hand_landmark_lite.tflite",
                "modules/hand_landmark/hand_landmark_tracking_cpu.binarypb")


class HandOccluders:
    """Hulls of the hands in front of one actor's face, frame after frame.

    The graph sees a `crop_size`-pixel square whose side is `crop_scale` times the longer
    side of the actor's 68-point box, centred on it: tight enough that a hand over the face
    is big in it (the palm detector misses face-sized hands in a wider crop at this size),
    small enough to cost little. Each hand's 21 landmarks give a convex hull, grown by
    `grow` IOD (the landmarks sit on the fingers' centre lines and the palm, inside the
    hand's outline). A hand in front of the face is at least as near the camera as the face,
    so its palm (the longer of wrist to middle knuckle and index to little knuckle) spans at
    least `min_palm` IOD; smaller "hands" are something else (an ear at the face's side is
    the detector's usual mistake, about half as big as a hand held at the face) and are
    ignored.
    """

    def __init__(self, *, crop_scale: float = 1.6, crop_size: int = 192,
                 min_confidence: float = 0.5, grow: float = 0.08, min_palm: float = 0.7,
                 idle_every: int = 4) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ModelError("hand occluders need mediapipe==0.10.14") from exc
        if not hasattr(mp, "solutions"):
            raise ModelError("this mediapipe has no legacy solutions API: use 0.10.14")
        root = Path(mp.__file__).parent
        missing = [name for name in _HAND_MODELS if not (root / name).is_file()]
        if missing:
            raise ModelError(f"mediapipe's hand models are missing from {root}: {missing}")
        from fitting.mediapipe_backend import started_solution
        from morph3d.io.native_stderr import native_stderr_captured

        self.crop_scale, self.crop_size, self.grow = float(crop_scale), int(crop_size), grow
        self.min_palm = float(min_palm)
        self.idle_every = max(int(idle_every), 1)
        self._idle = 0  # frames since the last one run while no hand was in the crop
        with native_stderr_captured():  # the graph's TFLite/absl start-up lines
            self._graph: Any = started_solution(mp.solutions.hands.Hands(
                static_image_mode=False, max_num_hands=2, model_complexity=0,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence))
        self._tracking = False  # whether the graph has seen a frame since its last reset

    def reset(self) -> None:
        """Forget the tracked hands (a shot cut, a new track); free when nothing was seen."""
        if self._tracking:
            from fitting.mediapipe_backend import started_solution
            from morph3d.io.native_stderr import native_stderr_captured

            with native_stderr_captured():  # the restarted graph logs its start-up again
                self._graph.reset()
                started_solution(self._graph)
            self._tracking = False
        self._idle = 0

    def close(self) -> None:
        """End the graph; a second call does nothing."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def hulls(self, frame: np.ndarray, actor: FaceGeometry,
              roi: tuple[int, int, int, int]) -> np.ndarray:
        """Bool mask of the `roi` = (x0, y0, x1, y1) part of `frame` (H x W x 3 RGB, uint8 or
        float in [0, 1]; `actor` in frame pixels): the grown hulls of the hands found."""
        from fitting.mediapipe_backend import _process

        x0, y0, x1, y1 = roi
        out = np.zeros((y1 - y0, x1 - x0), bool)
        if self._idle % self.idle_every:
            self._idle += 1
            return out
        pts = actor.ibug
        lo, hi = pts.min(0), pts.max(0)
        side = max(int(round(self.crop_scale * float(max(hi - lo)))), 8)
        cx, cy = (lo + hi) / 2
        sx, sy = int(round(cx - side / 2)), int(round(cy - side / 2))
        h, w = frame.shape[:2]
        ax0, ay0, ax1, ay1 = max(sx, 0), max(sy, 0), min(sx + side, w), min(sy + side, h)
        if ax1 <= ax0 or ay1 <= ay0:
            return out
        part = frame[ay0:ay1, ax0:ax1]
        if part.dtype != np.uint8:
            part = (np.clip(part, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        crop = np.zeros((side, side, 3), np.uint8)  # black where the square leaves the frame
        crop[ay0 - sy:ay1 - sy, ax0 - sx:ax1 - sx] = part
        interp = cv2.INTER_AREA if side > self.crop_size else cv2.INTER_LINEAR
        small = cv2.resize(crop, (self.crop_size, self.crop_size), interpolation=interp)
        result = _process(self._graph, np.ascontiguousarray(small))
        self._tracking = True
        hands = result.multi_hand_landmarks or []
        self._idle = 0 if hands else 1
        mask = np.zeros_like(out, np.uint8)
        for hand in hands:
            xy = np.array([(p.x, p.y) for p in hand.landmark], np.float64)
            # normalised crop coordinates (edges) -> ROI pixel centres
            xy = xy * side + [sx - 0.5 - x0, sy - 0.5 - y0]
            palm = max(np.linalg.norm(xy[9] - xy[0]), np.linalg.norm(xy[17] - xy[5]))
            if palm < self.min_palm * actor.iod:
                continue
            hull = cv2.convexHull(np.round(xy * 16).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
        return _dilate(mask.astype(bool), self.grow * actor.iod)
