"""The faces found in one image, and the interface of what finds them.

`FrameFaces` is every face of a frame: boxes, detector scores and named landmark sets
(``ibug68``, ``mediapipe478``). Beside it: box geometry (areas, IoU, the box around a point
set), `FaceCrop` working copies of part of a large image, and `LandmarkBackend`, the
interface every detector implements (they live in `fitting.mediapipe_backend`,
`fitting.dlib_backend` and `fitting.face_alignment_backend`; `fitting.detection` picks one
by name).

Coordinates follow OpenCV: origin top-left, pixel centres at integer coordinates. Landmarks
are points in that frame. Boxes ``(x0, y0, x1, y1)`` are edges in the same frame, so the box
around pixel columns ``a..b`` (inclusive) has ``x0 = a - 0.5`` and ``x1 = b + 0.5``, and a
box's centre is the face's centre with no half-pixel offset.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write

IBUG68 = "ibug68"
MEDIAPIPE478 = "mediapipe478"
SCHEME_SIZES: dict[str, int] = {IBUG68: 68, MEDIAPIPE478: 478}


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


# --------------------------------------------------------------------------------------------
# Working copies of part of a large image
# --------------------------------------------------------------------------------------------


# A face in a photo too large to measure whole (`fitting.detection.DETECT_MAX_SIDE`) is
# measured (landmarks, texture) on a crop around it, scaled so that the face is at most this
# wide: more pixels add nothing to a 256-1024 px texture.
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
