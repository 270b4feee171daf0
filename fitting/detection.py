"""Face detection by backend name: every face in a frame, with boxes, scores and landmarks.

Backends (`get_landmark_backend(name)`):
- ``mediapipe`` (default, `fitting.mediapipe_backend`): mediapipe's full-range BlazeFace
  detector for boxes and scores, then the 478-point face mesh (with iris refinement) run on
  a square crop around each face, so small faces in big frames get landmarks too. Gives
  ``mediapipe478`` and ``ibug68`` (derived through `fitting.landmark_maps`). `detect_video`
  runs it in a deterministic tracking mode that re-uses the previous frame's landmarks
  instead of running the detector.
- ``dlib`` / ``dlib-hog`` and ``dlib-cnn`` (`fitting.dlib_backend`): dlib's HOG or MMOD-CNN
  detector and the 68-point shape predictor from `face-recognition-models`. Gives
  ``ibug68``. The CNN detector is slow on CPU (seconds per image); the HOG detector only
  finds near-frontal faces.
- ``face-alignment`` (`fitting.face_alignment_backend`): Bulat's FAN with its S3FD
  detector, only when the `face_alignment` package and its weights are already on disk
  (nothing is ever downloaded). Gives ``ibug68``.

Results are `fitting.faces.FrameFaces`, in the conventions of `fitting.faces`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fitting.dlib_backend import DlibBackend
from fitting.face_alignment_backend import FaceAlignmentBackend
from fitting.faces import MEDIAPIPE478, FrameFaces, LandmarkBackend, face_crop, scaled_copy
from fitting.mediapipe_backend import MediapipeBackend
from morph3d.errors import Morph3dError

BACKEND_NAMES = ("mediapipe", "dlib", "dlib-hog", "dlib-cnn", "face-alignment")


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
