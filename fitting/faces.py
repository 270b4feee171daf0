"""Face detection and 2D landmarks: every face in a frame, behind one small backend interface.

Backends (`get_landmark_backend(name)`):
- ``mediapipe`` (default): mediapipe's full-range BlazeFace detector for boxes and scores, then
  the 478-point face mesh (with iris refinement) run on a square crop around each face, so
  small faces in big frames get landmarks too. Gives ``mediapipe478`` and ``ibug68``
  (derived through `fitting.landmark_maps`). `detect_video` runs it in a deterministic
  tracking mode that re-uses the previous frame's landmarks instead of running the detector.
- ``dlib`` / ``dlib-hog`` and ``dlib-cnn``: dlib's HOG or MMOD-CNN detector and the 68-point
  shape predictor from `face-recognition-models`. Gives ``ibug68``. The CNN detector is slow
  on CPU (seconds per image); the HOG detector only finds near-frontal faces.
- ``face-alignment``: Bulat's FAN with its S3FD detector, only when the `face_alignment`
  package and its weights are already on disk (nothing is ever downloaded). Gives ``ibug68``.

Coordinates follow OpenCV: origin top-left, pixel centres at integer coordinates. Landmarks
are points in that frame. Boxes ``(x0, y0, x1, y1)`` are edges in the same frame, so the box
around pixel columns ``a..b`` (inclusive) has ``x0 = a - 0.5`` and ``x1 = b + 0.5``, and a
box's centre is the face's centre with no half-pixel offset.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import inspect
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fitting.landmark_maps import ibug68_from_mediapipe478
from morph3d.errors import InputError, ModelError, Morph3dError
from morph3d.io.atomic import atomic_write
from morph3d.io.native_stderr import native_stderr_captured

IBUG68 = "ibug68"
MEDIAPIPE478 = "mediapipe478"
SCHEME_SIZES: dict[str, int] = {IBUG68: 68, MEDIAPIPE478: 478}
BACKEND_NAMES = ("mediapipe", "dlib", "dlib-hog", "dlib-cnn", "face-alignment")


# --------------------------------------------------------------------------------------------
# The per-frame result
# --------------------------------------------------------------------------------------------


@dataclass
class FrameFaces:
    """All faces found in one image.

    boxes: (N, 4) float32 ``x0, y0, x1, y1`` in pixels (edges; see the module docstring).
    scores: (N,) float32 detector confidences; higher is surer. mediapipe's are
        probabilities in [0, 1]; dlib HOG's are SVM margins (about 0..3); dlib CNN's and
        face-alignment's are the detectors' own confidences.
    landmarks: scheme name -> (N, L, 2) float32 pixel coordinates, one row per face.
    image_size: (H, W) of the image, in pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: dict[str, np.ndarray]
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, np.float32).reshape(n)
        landmarks = {}
        for scheme, points in self.landmarks.items():
            points = np.asarray(points, np.float32)
            size = SCHEME_SIZES.get(scheme, points.shape[1] if points.ndim == 3 else -1)
            landmarks[scheme] = points.reshape(n, size, 2)
        self.landmarks = landmarks
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, image_size: tuple[int, int], schemes: Iterable[str]) -> FrameFaces:
        """No faces, but with the landmark schemes the backend would have given."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            landmarks={s: np.zeros((0, SCHEME_SIZES[s], 2), np.float32) for s in schemes},
            image_size=image_size,
        )

    def areas(self) -> np.ndarray:
        """(N,) box areas in square pixels."""
        return box_areas(self.boxes)

    def select(self, indices: Sequence[int] | np.ndarray) -> FrameFaces:
        """The faces at `indices`, in that order."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        return FrameFaces(
            boxes=self.boxes[indices],
            scores=self.scores[indices],
            landmarks={s: p[indices] for s, p in self.landmarks.items()},
            image_size=self.image_size,
        )

    def sorted_by_area(self, descending: bool = True) -> FrameFaces:
        """The faces ordered by box area (largest first unless `descending` is False)."""
        order = np.argsort(-self.areas() if descending else self.areas(), kind="stable")
        return self.select(order)

    def save(self, path: str | os.PathLike) -> None:
        """Write an npz atomically."""
        arrays = {"boxes": self.boxes, "scores": self.scores,
                  "image_size": np.array(self.image_size, np.int64)}
        arrays.update({f"landmarks/{s}": p for s, p in self.landmarks.items()})
        save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FrameFaces:
        """Read a file written by `save`; a missing or unreadable file raises InputError."""
        with _open_npz(path) as z:
            return cls(
                boxes=z["boxes"],
                scores=z["scores"],
                landmarks={k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("landmarks/")},
                image_size=tuple(z["image_size"]),
            )


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) boxes -> (...) areas, zero for degenerate boxes."""
    boxes = np.asarray(boxes, np.float64)
    w = np.clip(boxes[..., 2] - boxes[..., 0], 0, None)
    h = np.clip(boxes[..., 3] - boxes[..., 1], 0, None)
    return w * h


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (N, 4) with every box in `b` (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 1, 4)
    b = np.asarray(b, np.float64).reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = box_areas(a) + box_areas(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """(..., L, 2) points -> (..., 4) tight box around them."""
    points = np.asarray(points)
    return np.concatenate([points.min(axis=-2), points.max(axis=-2)], axis=-1)


# --------------------------------------------------------------------------------------------
# Small helpers shared with the other fitting modules
# --------------------------------------------------------------------------------------------


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A C-contiguous (H, W, 3) uint8 RGB copy-or-view of a grey/RGB/RGBA uint8 or [0,1] float
    image (the pipeline's float32 frames)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise InputError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if image.dtype.kind != "f":
            raise InputError(f"expected a uint8 or float image, got {image.dtype}")
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temp file beside `path`, then rename over it."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _open_npz(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile/numpy raise many types for a corrupt file
        raise InputError(f"cannot read {path}: {exc}") from exc


def dlib_model_path(filename: str) -> Path:
    """Path of a .dat model shipped by the `face-recognition-models` package.

    Found with importlib instead of importing the package, whose __init__ needs pkg_resources.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the dlib models are missing: install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise ModelError(f"dlib model file missing: {path} (reinstall face-recognition-models)")
    return path


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise Morph3dError("the dlib backend needs dlib: install dlib-bin") from exc
    return dlib


@functools.cache
def dlib_hog_detector() -> Any:
    return _import_dlib().get_frontal_face_detector()


@functools.cache
def dlib_cnn_detector() -> Any:
    dlib = _import_dlib()
    return dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))


@functools.cache
def dlib_shape_predictor(points: int = 68) -> Any:
    """dlib's 68- or 5-point shape predictor, loaded once per process."""
    if points not in (5, 68):
        raise ValueError("dlib ships 5- and 68-point shape predictors")
    dlib = _import_dlib()
    path = dlib_model_path(f"shape_predictor_{points}_face_landmarks.dat")
    return dlib.shape_predictor(str(path))


def dlib_rectangle(box: np.ndarray) -> Any:
    """Our edge box -> dlib.rectangle of inclusive pixel indices."""
    dlib = _import_dlib()
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    return dlib.rectangle(int(round(x0 + 0.5)), int(round(y0 + 0.5)),
                          int(round(x1 - 0.5)), int(round(y1 - 0.5)))


def _box_from_dlib_rect(rect: Any) -> list[float]:
    return [rect.left() - 0.5, rect.top() - 0.5, rect.right() + 0.5, rect.bottom() + 0.5]


def _shape_to_array(shape: Any) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


# --------------------------------------------------------------------------------------------
# The backend interface
# --------------------------------------------------------------------------------------------


class LandmarkBackend(abc.ABC):
    """Finds every face in an RGB image, with boxes, scores and named landmark sets."""

    name: str = ""
    schemes: tuple[str, ...] = ()

    @abc.abstractmethod
    def detect(self, image: np.ndarray) -> FrameFaces:
        """All faces in one (H, W[, 3|4]) uint8 or [0, 1] float image, in detector order."""

    def detect_video(self, frames: Iterable[np.ndarray], **options: Any) -> Iterator[FrameFaces]:
        """Faces per frame of a stream; backends with a faster tracking mode override this.

        Results are a pure function of the frame sequence (no wall-clock timestamps)."""
        for frame in frames:
            yield self.detect(frame)

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Release native resources (mediapipe graphs); the backend is unusable afterwards."""

    def __enter__(self) -> LandmarkBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_landmark_backend(name: str = "mediapipe", **options: Any) -> LandmarkBackend:
    """A new backend by name: mediapipe, dlib (= dlib-hog), dlib-cnn, face-alignment.

    `options` go to the backend's constructor (e.g. ``min_score`` for mediapipe,
    ``upsample`` for dlib)."""
    key = name.strip().lower().replace("_", "-")
    if key == "mediapipe":
        return MediapipeBackend(**options)
    if key in ("dlib", "dlib-hog"):
        return DlibBackend(detector="hog", **options)
    if key == "dlib-cnn":
        return DlibBackend(detector="cnn", **options)
    if key in ("face-alignment", "fan"):
        return FaceAlignmentBackend(**options)
    raise Morph3dError(
        f"unknown landmark backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def detect_faces(image: np.ndarray, backend: str = "mediapipe") -> FrameFaces:
    """One-shot convenience: open the backend, detect, close it."""
    with get_landmark_backend(backend) as detector:
        return detector.detect(image)


# Photos whose longer side is above this are searched for faces on a copy scaled down to it:
# the detectors run on small copies internally anyway, while their cost and memory on the
# full picture grow with its pixels (an 8000 x 8000 photo took minutes and gigabytes).
DETECT_MAX_SIDE = 2000
# A face in such a photo is measured (landmarks, texture) on a crop around it, scaled so
# that the face is at most this wide: more pixels add nothing to a 256-1024 px texture.
FACE_MAX_WIDTH = 1024


@dataclass
class FaceCrop:
    """A working copy of part of a large image: `image` is the box `x0, y0` (top-left pixel)
    of the full image, resized by `sx`, `sy`. Maps points between the two pixel frames
    (pixel centres at integers in both)."""

    image: np.ndarray
    x0: int
    y0: int
    sx: float
    sy: float

    def to_full(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        return np.stack([(points[..., 0] + 0.5) / self.sx - 0.5 + self.x0,
                         (points[..., 1] + 0.5) / self.sy - 0.5 + self.y0], -1)

    def faces_to_full(self, faces: FrameFaces, image_size: tuple[int, int]) -> FrameFaces:
        """`faces` found on the crop, in the full image's pixels (boxes are edges: the same
        map, it is one affine map of the coordinate frame)."""
        boxes = self.to_full(faces.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        return FrameFaces(boxes=boxes, scores=faces.scores,
                          landmarks={k: self.to_full(v) for k, v in faces.landmarks.items()},
                          image_size=image_size)


def scaled_copy(image: np.ndarray, max_side: int) -> FaceCrop:
    """The whole image scaled down so its longer side is `max_side` (area averaging)."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return FaceCrop(small, 0, 0, size[0] / w, size[1] / h)


def face_crop(image: np.ndarray, points: np.ndarray, context: float = 2.0,
              face_width: int = FACE_MAX_WIDTH) -> FaceCrop:
    """A square box `context` times the face's extent (its landmarks `points`, full-image
    pixels) around it, clipped to the image, scaled down when the face is wider than
    `face_width` pixels. Only the crop is ever resized, never the full image."""
    h, w = image.shape[:2]
    lo, hi = points.min(0), points.max(0)
    extent = float(max(hi - lo))
    centre = (lo + hi) / 2
    half = max(extent * context / 2, 16.0)
    x0, y0 = (max(0, int(np.floor(c - half))) for c in centre)
    x1, y1 = min(w, int(np.ceil(centre[0] + half)) + 1), min(h, int(np.ceil(centre[1] + half)) + 1)
    crop = image[y0:y1, x0:x1]
    scale = min(1.0, face_width / max(extent, 1.0))
    if scale < 1.0:
        cw, ch = x1 - x0, y1 - y0
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        return FaceCrop(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), x0, y0,
                        size[0] / cw, size[1] / ch)
    return FaceCrop(np.ascontiguousarray(crop), x0, y0, 1.0, 1.0)


def _face_points(faces: FrameFaces, index: int) -> np.ndarray:
    scheme = MEDIAPIPE478 if MEDIAPIPE478 in faces.landmarks else next(iter(faces.landmarks))
    return faces.landmarks[scheme][index].astype(np.float64)


def detect_faces_bounded(image: np.ndarray, backend: str = "mediapipe") -> FrameFaces:
    """`detect_faces` at a bounded cost for photos of any size.

    Up to `DETECT_MAX_SIDE` pixels on the longer side this is `detect_faces` itself (same
    result). A larger photo is searched on a copy scaled down to that size; each face found
    is then measured again on a crop around it (`face_crop`) for landmarks at the face's own
    resolution. Everything is returned in the full photo's pixels."""
    h, w = image.shape[:2]
    if max(h, w) <= DETECT_MAX_SIDE:
        return detect_faces(image, backend)
    small = scaled_copy(image, DETECT_MAX_SIDE)
    with get_landmark_backend(backend) as detector:
        found = small.faces_to_full(detector.detect(small.image), (h, w))
        if not len(found):
            return found
        refined = []
        for k in range(len(found)):
            crop = face_crop(image, _face_points(found, k))
            again = detector.detect(crop.image)
            if len(again):
                again = crop.faces_to_full(again, (h, w))
                centre = (found.boxes[k, :2] + found.boxes[k, 2:]) / 2
                near = np.linalg.norm((again.boxes[:, :2] + again.boxes[:, 2:]) / 2 - centre,
                                      axis=1)
                best = int(np.argmin(near))
                size = float(np.max(found.boxes[k, 2:] - found.boxes[k, :2]))
                if near[best] < 0.25 * size:
                    refined.append(again.select([best]))
                    continue
            refined.append(found.select([k]))
    return FrameFaces(boxes=np.concatenate([f.boxes for f in refined]),
                      scores=np.concatenate([f.scores for f in refined]),
                      landmarks={s: np.concatenate([f.landmarks[s] for f in refined])
                                 for s in found.landmarks},
                      image_size=(h, w))


# --------------------------------------------------------------------------------------------
# mediapipe
# --------------------------------------------------------------------------------------------


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

    def _detect_boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-range detector; the short-range one only when it finds nothing (close-ups)."""
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

    def _mesh_in_square(self, rgb: np.ndarray, centre: np.ndarray, side: float) -> list[np.ndarray]:
        """Run the mesh on the square (centre, side) of `rgb`; meshes in image pixels."""
        h, w = rgb.shape[:2]
        side_px = max(int(round(side)), 8)
        x0 = int(round(centre[0] - side_px / 2))
        y0 = int(round(centre[1] - side_px / 2))
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side_px, w), min(y0 + side_px, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return []
        if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + side_px, y0 + side_px):
            crop = rgb[y0:y0 + side_px, x0:x0 + side_px]
        else:  # pad with black where the square leaves the image
            crop = np.zeros((side_px, side_px, 3), np.uint8)
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
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

    def _best_mesh(self, rgb: np.ndarray, centre: np.ndarray, side: float,
                   expected_box: np.ndarray) -> np.ndarray | None:
        meshes = self._mesh_in_square(rgb, centre, side)
        if not meshes:
            return None
        overlaps = box_iou(expected_box, np.stack([landmark_box(m) for m in meshes]))[0]
        best = int(np.argmax(overlaps))
        return meshes[best] if overlaps[best] > 0.1 else None

    def _mesh_for_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        centre = (box[:2] + box[2:]) / 2
        side = self.CROP_SCALE_FROM_BOX * float(max(box[2] - box[0], box[3] - box[1]))
        return self._best_mesh(rgb, centre, side, box)

    def _mesh_from_previous(self, rgb: np.ndarray, previous: np.ndarray) -> np.ndarray | None:
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

    def detect_video(self, frames: Iterable[np.ndarray], detect_every: int = 10,
                     **options: Any) -> Iterator[FrameFaces]:
        """Tracking mode: between detector runs, each face's mesh crop comes from its mesh in
        the previous frame, and its box and score are carried along (the box follows the
        mesh's shift and scale). The detector runs on the first frame, every `detect_every`
        frames (to pick up new faces and refresh boxes and scores), whenever no face is being
        tracked, and when a tracked face is lost. Deterministic: same frames, same output."""
        if options:
            raise TypeError(f"unexpected options {sorted(options)}")
        previous: FrameFaces | None = None
        since_detection = 0
        for frame in frames:
            rgb = as_rgb_uint8(frame)
            result = None
            if previous is not None and len(previous) and since_detection < detect_every:
                result = self._track(rgb, previous)
            if result is None:
                result = self._redetect(rgb, previous)
                since_detection = 0
            since_detection += 1
            previous = result
            yield result

    def _track(self, rgb: np.ndarray, previous: FrameFaces) -> FrameFaces | None:
        """Every previous face re-meshed from its previous mesh, or None if one is lost."""
        boxes, meshes = [], []
        for box, old in zip(previous.boxes, previous.landmarks[MEDIAPIPE478], strict=True):
            mesh = self._mesh_from_previous(rgb, old)
            if mesh is None:
                return None
            boxes.append(_move_box(box, old, mesh))
            meshes.append(mesh)
        return self._frame(rgb.shape[:2], boxes, list(previous.scores), meshes)

    def _redetect(self, rgb: np.ndarray, previous: FrameFaces | None) -> FrameFaces:
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


# --------------------------------------------------------------------------------------------
# dlib
# --------------------------------------------------------------------------------------------


class DlibBackend(LandmarkBackend):
    """dlib's HOG (default) or MMOD-CNN detector and its 68-point shape predictor.

    `upsample`: how many times the detector doubles the image first (smaller faces are
    found, at 4**upsample the cost). None: for HOG (faces from about 80 px) the smallest
    count that brings the image's long side to at least 640 pixels (at most 2); for the CNN
    (faces from about 40 px, but ~2 s per 512x512 image on this CPU) zero.
    """

    schemes = (IBUG68,)

    # The MMOD detector's boxes sit higher and tighter than the HOG boxes the shape predictor
    # was trained on: grow them about the centre and move them down (fractions of the width).
    # Set by comparing the two detectors' boxes on four photos (mark, murakami_gray, takeo,
    # lenna); without it the 68 points on lenna are off by 9 % NME instead of 3.5 %.
    CNN_BOX_SCALE = 1.1
    CNN_BOX_SHIFT_DOWN = 0.09

    def __init__(self, detector: str = "hog", upsample: int | None = None,
                 min_score: float = 0.0) -> None:
        if detector not in ("hog", "cnn"):
            raise Morph3dError(f"unknown dlib detector {detector!r}; choose hog or cnn")
        self.detector = detector
        self.name = f"dlib-{detector}"
        self.upsample = upsample
        self.min_score = float(min_score)
        self._detector = dlib_hog_detector() if detector == "hog" else dlib_cnn_detector()
        self._predictor = dlib_shape_predictor(68)

    def _upsample_for(self, shape: tuple[int, ...]) -> int:
        if self.upsample is not None:
            return int(self.upsample)
        if self.detector == "cnn":
            return 0
        long_side, count = max(shape[:2]), 0
        while long_side * 2**count < 640 and count < 2:
            count += 1
        return count

    def detect(self, image: np.ndarray) -> FrameFaces:
        rgb = as_rgb_uint8(image)
        upsample = self._upsample_for(rgb.shape)
        rects, scores = [], []
        if self.detector == "hog":
            found, found_scores, _ = self._detector.run(rgb, upsample, self.min_score)
            rects, scores = list(found), list(found_scores)
        else:
            for det in self._detector(rgb, upsample):
                if det.confidence >= self.min_score:
                    rects.append(det.rect)
                    scores.append(det.confidence)
        boxes = np.array([_box_from_dlib_rect(r) for r in rects], np.float32).reshape(-1, 4)
        if self.detector == "cnn" and len(boxes):
            boxes = _adjust_cnn_boxes(boxes, self.CNN_BOX_SCALE, self.CNN_BOX_SHIFT_DOWN)
        points = [_shape_to_array(self._predictor(rgb, dlib_rectangle(b))) for b in boxes]
        return FrameFaces(boxes=boxes, scores=np.array(scores, np.float32),
                          landmarks={IBUG68: np.array(points, np.float32).reshape(-1, 68, 2)},
                          image_size=rgb.shape[:2])


def _adjust_cnn_boxes(boxes: np.ndarray, scale: float, shift_down: float) -> np.ndarray:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    centre[:, 1] += shift_down * (boxes[:, 2] - boxes[:, 0])
    return np.concatenate([centre - half, centre + half], axis=1)


# --------------------------------------------------------------------------------------------
# face-alignment (optional; never downloads)
# --------------------------------------------------------------------------------------------


def _urls_in(table: Any) -> list[str]:
    """All URL strings in a (possibly nested) dict of model URLs."""
    if isinstance(table, str):
        return [table]
    if isinstance(table, dict):
        return [u for value in table.values() for u in _urls_in(value)]
    return []


def find_cached_weights(urls: Iterable[str], cache_dir: Path) -> Path | None:
    """The first of `urls` whose file name is already in `cache_dir`, or None."""
    for url in urls:
        candidate = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and face_alignment) keep downloaded weights."""
    try:
        import torch
        return Path(torch.hub.get_dir()) / "checkpoints"
    except ImportError:
        return Path(os.path.expanduser("~/.cache/torch/hub/checkpoints"))


class FaceAlignmentBackend(LandmarkBackend):
    """Bulat's 2D-FAN (`face_alignment`) with its S3FD detector, CPU only, weights from the
    torch hub cache. Raises Morph3dError when the package or either weight file is absent."""

    name = "face-alignment"
    schemes = (IBUG68,)

    def __init__(self, device: str = "cpu", cache_dir: str | os.PathLike | None = None) -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise Morph3dError("the face-alignment backend needs the face_alignment package "
                               "and its weights on disk; use the mediapipe or dlib backend")
        cache = Path(cache_dir) if cache_dir is not None else torch_hub_checkpoints()
        try:
            import face_alignment
            from face_alignment import api as fa_api
            from face_alignment.detection.sfd import sfd_detector
        except Exception as exc:  # a broken install raises anything from numba to torch
            raise Morph3dError(f"cannot import face_alignment: {exc}") from exc
        fan_urls = [u for u in _urls_in(getattr(fa_api, "models_urls", {}))
                    + _urls_in(getattr(fa_api, "default_model_urls", {})) if "2DFAN" in u]
        fan = find_cached_weights(fan_urls, cache)
        s3fd = find_cached_weights(_urls_in(getattr(sfd_detector, "models_urls", {})), cache)
        if fan is None or s3fd is None:
            missing = " and ".join(n for n, p in (("2D-FAN", fan), ("S3FD", s3fd)) if p is None)
            raise Morph3dError(f"face-alignment weights not found ({missing}) in {cache}; "
                               "they are never downloaded: copy them there or use mediapipe")
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None)
        if landmarks_type is None:
            landmarks_type = face_alignment.LandmarksType._2D
        kwargs: dict[str, Any] = {"device": device, "flip_input": False,
                                  "face_detector": "sfd",
                                  "face_detector_kwargs": {"path_to_detector": str(s3fd)}}
        if "compile" in inspect.signature(face_alignment.FaceAlignment.__init__).parameters:
            kwargs["compile"] = False
        # The FAN weights are found by file name in the hub cache (checked above), so the
        # library's download-if-missing path is never taken.
        if cache != torch_hub_checkpoints():
            import torch
            torch.hub.set_dir(str(cache.parent))
        self._model = face_alignment.FaceAlignment(landmarks_type, **kwargs)

    def detect(self, image: np.ndarray) -> FrameFaces:
        rgb = as_rgb_uint8(image)
        points, _, boxes = self._model.get_landmarks_from_image(rgb, return_bboxes=True,
                                                                return_landmark_score=True)
        if not points:
            return FrameFaces.empty(rgb.shape[:2], self.schemes)
        boxes = np.asarray(boxes, np.float32).reshape(len(points), -1)
        return FrameFaces(boxes=boxes[:, :4] - np.float32(0.5), scores=boxes[:, 4],
                          landmarks={IBUG68: np.stack([p[:, :2] for p in points])},
                          image_size=rgb.shape[:2])
