"""The mediapipe landmark backend: BlazeFace boxes and the 478-point face mesh.

mediapipe's full-range BlazeFace detector gives boxes and scores; the 478-point face mesh
(with iris refinement) is run on a square crop around each face, so small faces in big
frames get landmarks too. Gives ``mediapipe478`` and ``ibug68`` (derived through
`fitting.landmark_maps`). `MediapipeBackend.detect_video` runs a deterministic tracking
mode that re-uses the previous frame's landmarks instead of running the detector.
Conventions (pixels, boxes as edges) are those of `fitting.faces`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np

from fitting.faces import (
    IBUG68,
    MEDIAPIPE478,
    FrameFaces,
    LandmarkBackend,
    as_rgb_uint8,
    box_iou,
    landmark_box,
)
from fitting.landmark_maps import ibug68_from_mediapipe478
from morph3d.errors import Morph3dError
from morph3d.io.media import VideoPicture
from morph3d.io.native_stderr import native_stderr_captured

Picture = np.ndarray | VideoPicture  # an (H, W, 3) uint8 RGB frame, or one made on demand


def _drop_sounddevice_traceback() -> None:
    """mediapipe 0.10.14 keeps the error of its failed `import sounddevice` (no PortAudio
    here) with its traceback, which holds the frames of whatever imported mediapipe alive
    (memory the landmark stage never gets back). We never record audio: drop the traceback."""
    import sys

    module = sys.modules.get("mediapipe.tasks.python.audio.core.audio_record")
    error = getattr(module, "sd_error", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None


class MediapipeBackend(LandmarkBackend):
    """BlazeFace full-range boxes + 478-point mesh on a square crop around each face.

    The mesh graph is run on a `crop_size` square crop whose side is `crop_scale` times the
    face size, so faces of any size reach it at the scale it was trained for; its own
    short-range detector re-finds the face inside the crop and sets the rotation.
    """

    name = "mediapipe"
    schemes = (MEDIAPIPE478, IBUG68)

    # Crop side over the longer side of the face's box. The detector's box and the mesh's
    # tight box are about the same height (the mesh's is ~10 % narrower), so one factor
    # gives about the same crop from either.
    CROP_SCALE_FROM_BOX = 2.0
    CROP_SCALE_FROM_MESH = 2.0

    def __init__(self, min_score: float = 0.5, crop_size: int = 256) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise Morph3dError("the mediapipe backend needs mediapipe==0.10.14") from exc
        if not hasattr(mp, "solutions"):
            raise Morph3dError("this mediapipe has no legacy solutions API: use 0.10.14")
        _drop_sounddevice_traceback()
        self.min_score = float(min_score)
        self.crop_size = int(crop_size)
        detection = mp.solutions.face_detection
        # The graphs' native start-up lines (TFLite, absl) go to fd 2, not to the terminal;
        # they are shown only when the set-up fails.
        with native_stderr_captured():
            self._full_range = started_solution(detection.FaceDetection(
                min_detection_confidence=min_score, model_selection=1))
            self._short_range = started_solution(detection.FaceDetection(
                min_detection_confidence=min_score, model_selection=0))
            self._mesh = started_solution(mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=2, refine_landmarks=True,
                min_detection_confidence=0.5))

    def close(self) -> None:
        for graph in (self._full_range, self._short_range, self._mesh):
            graph.close()

    # -- building blocks ----------------------------------------------------------------------

    def _detect_boxes(self, rgb: Picture) -> tuple[np.ndarray, np.ndarray]:
        """Full-range detector; the short-range one only when it finds nothing (close-ups)."""
        rgb = np.asarray(rgb)
        h, w = rgb.shape[:2]
        detections = _process(self._full_range, rgb).detections
        if not detections:
            detections = _process(self._short_range, rgb).detections
        boxes, scores = [], []
        for det in detections or ():
            bb = det.location_data.relative_bounding_box
            x0, y0 = bb.xmin * w - 0.5, bb.ymin * h - 0.5
            x1, y1 = x0 + bb.width * w, y0 + bb.height * h
            boxes.append([max(x0, -0.5), max(y0, -0.5), min(x1, w - 0.5), min(y1, h - 0.5)])
            scores.append(det.score[0])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)

    def _mesh_in_square(self, rgb: Picture, centre: np.ndarray, side: float) -> list[np.ndarray]:
        """Run the mesh on the square (centre, side) of `rgb`; meshes in image pixels."""
        h, w = rgb.shape[:2]
        side_px = max(int(round(side)), 8)
        x0 = int(round(centre[0] - side_px / 2))
        y0 = int(round(centre[1] - side_px / 2))
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side_px, w), min(y0 + side_px, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return []
        inside = _region(rgb, sy0, sy1, sx0, sx1)
        if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + side_px, y0 + side_px):
            crop = inside
        else:  # pad with black where the square leaves the image
            crop = np.zeros((side_px, side_px, 3), np.uint8)
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = inside
        size = self.crop_size
        interp = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interp)
        result = _process(self._mesh, crop).multi_face_landmarks or []
        meshes = []
        for face in result:
            xy = np.array([(p.x, p.y) for p in face.landmark], np.float64)
            # normalised [0, 1] crop coordinates (edges) -> image pixel centres
            meshes.append((xy * side_px + [x0 - 0.5, y0 - 0.5]).astype(np.float32))
        return meshes

    def _best_mesh(self, rgb: Picture, centre: np.ndarray, side: float,
                   expected_box: np.ndarray) -> np.ndarray | None:
        meshes = self._mesh_in_square(rgb, centre, side)
        if not meshes:
            return None
        overlaps = box_iou(expected_box, np.stack([landmark_box(m) for m in meshes]))[0]
        best = int(np.argmax(overlaps))
        return meshes[best] if overlaps[best] > 0.1 else None

    def _mesh_for_box(self, rgb: Picture, box: np.ndarray) -> np.ndarray | None:
        centre = (box[:2] + box[2:]) / 2
        side = self.CROP_SCALE_FROM_BOX * float(max(box[2] - box[0], box[3] - box[1]))
        return self._best_mesh(rgb, centre, side, box)

    def _mesh_from_previous(self, rgb: Picture, previous: np.ndarray) -> np.ndarray | None:
        box = landmark_box(previous)
        centre = (box[:2] + box[2:]) / 2
        side = self.CROP_SCALE_FROM_MESH * float(max(box[2] - box[0], box[3] - box[1]))
        return self._best_mesh(rgb, centre, side, box)

    def _frame(self, image_size: tuple[int, int], boxes: list, scores: list,
               meshes: list) -> FrameFaces:
        if not meshes:
            return FrameFaces.empty(image_size, self.schemes)
        mesh = np.stack(meshes)
        frame = FrameFaces(boxes=np.array(boxes), scores=np.array(scores),
                           landmarks={MEDIAPIPE478: mesh, IBUG68: ibug68_from_mediapipe478(mesh)},
                           image_size=image_size)
        return _drop_duplicates(frame, MEDIAPIPE478)

    # -- public -------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> FrameFaces:
        rgb = as_rgb_uint8(image)
        boxes, scores = self._detect_boxes(rgb)
        kept_boxes, kept_scores, meshes = [], [], []
        for box, score in zip(boxes, scores, strict=True):
            mesh = self._mesh_for_box(rgb, box)
            if mesh is not None:  # no mesh: almost always a false detection
                kept_boxes.append(box)
                kept_scores.append(score)
                meshes.append(mesh)
        return self._frame(rgb.shape[:2], kept_boxes, kept_scores, meshes)

    def detect_video(self, frames: Iterable[np.ndarray | VideoPicture], detect_every: int = 10,
                     **options: Any) -> Iterator[FrameFaces]:
        """Tracking mode: between detector runs, each face's mesh crop comes from its mesh in
        the previous frame, and its box and score are carried along (the box follows the
        mesh's shift and scale). The detector runs on the first frame, every `detect_every`
        frames (to pick up new faces and refresh boxes and scores), whenever no face is being
        tracked, and when a tracked face is lost. Deterministic: same frames, same output.
        A `VideoPicture` frame is converted to RGB only where the graphs look: its crops
        between detector runs, the whole picture at them (the same pixels either way)."""
        if options:
            raise TypeError(f"unexpected options {sorted(options)}")
        previous: FrameFaces | None = None
        since_detection = 0
        for frame in frames:
            rgb = frame if isinstance(frame, VideoPicture) else as_rgb_uint8(frame)
            result = None
            if previous is not None and len(previous) and since_detection < detect_every:
                result = self._track(rgb, previous)
            if result is None:
                result = self._redetect(rgb, previous)
                since_detection = 0
            since_detection += 1
            previous = result
            yield result

    def _track(self, rgb: Picture, previous: FrameFaces) -> FrameFaces | None:
        """Every previous face re-meshed from its previous mesh, or None if one is lost."""
        boxes, meshes = [], []
        for box, old in zip(previous.boxes, previous.landmarks[MEDIAPIPE478], strict=True):
            mesh = self._mesh_from_previous(rgb, old)
            if mesh is None:
                return None
            boxes.append(_move_box(box, old, mesh))
            meshes.append(mesh)
        return self._frame(rgb.shape[:2], boxes, list(previous.scores), meshes)

    def _redetect(self, rgb: Picture, previous: FrameFaces | None) -> FrameFaces:
        """Detector boxes; a box that overlaps a previous face is meshed from that face's
        previous mesh (the same crop rule as tracked frames, so no jump at detector frames)."""
        boxes, scores = self._detect_boxes(rgb)
        old_meshes = previous.landmarks[MEDIAPIPE478] if previous is not None else np.zeros((0,))
        overlaps = (box_iou(boxes, previous.boxes) if previous is not None and len(previous)
                    else np.zeros((len(boxes), 0)))
        kept_boxes, kept_scores, meshes = [], [], []
        for i, (box, score) in enumerate(zip(boxes, scores, strict=True)):
            mesh = None
            if overlaps.shape[1] and overlaps[i].max() > 0.5:
                mesh = self._mesh_from_previous(rgb, old_meshes[int(np.argmax(overlaps[i]))])
            if mesh is None:
                mesh = self._mesh_for_box(rgb, box)
            if mesh is not None:
                kept_boxes.append(box)
                kept_scores.append(score)
                meshes.append(mesh)
        return self._frame(rgb.shape[:2], kept_boxes, kept_scores, meshes)


def _region(rgb: Picture, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]`` (bounds inside the picture) as an array."""
    if isinstance(rgb, VideoPicture):
        return rgb.region(y0, y1, x0, x1)
    return rgb[y0:y1, x0:x1]


def started_solution(graph: Any) -> Any:
    """Wait until a solution graph's calculators have opened: they open in the graph's own
    threads after the constructor returns, and log (to fd 2) as they do."""
    inner = getattr(graph, "_graph", None)
    if inner is not None:
        inner.wait_until_idle()
    return graph


def _process(graph: Any, rgb: np.ndarray) -> Any:
    """Run a mediapipe solution graph, hiding the protobuf deprecation warning it emits."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GetPrototype", category=UserWarning)
        return graph.process(rgb)


def _move_box(box: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Shift and scale `box` as the point set moved from `old` to `new`."""
    old_centre, new_centre = old.mean(axis=0), new.mean(axis=0)
    scale = float(np.sqrt(((new - new_centre) ** 2).sum() / max(((old - old_centre) ** 2).sum(),
                                                                 1e-9)))
    corners = box.reshape(2, 2)
    return ((corners - old_centre) * scale + new_centre).reshape(4)


def _drop_duplicates(frame: FrameFaces, scheme: str, max_iou: float = 0.5) -> FrameFaces:
    """Two detections that ended on the same face: keep the higher-scoring one."""
    if len(frame) < 2:
        return frame
    lm_boxes = landmark_box(frame.landmarks[scheme])
    overlaps = box_iou(lm_boxes, lm_boxes)
    keep: list[int] = []
    for i in np.argsort(-frame.scores, kind="stable"):
        if all(overlaps[i, j] <= max_iou for j in keep):
            keep.append(int(i))
    return frame if len(keep) == len(frame) else frame.select(sorted(keep))
