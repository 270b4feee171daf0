"""The dlib landmark backend: HOG or MMOD-CNN face detector and the 68-point shape predictor.

The models are the .dat files of the `face-recognition-models` package, each loaded once per
process. Gives ``ibug68``. The CNN detector is slow on CPU (seconds per image); the HOG
detector only finds near-frontal faces. Conventions (pixels, boxes as edges) are those of
`fitting.faces`.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from fitting.faces import IBUG68, FrameFaces, LandmarkBackend, as_rgb_uint8
from morph3d.errors import ModelError, Morph3dError


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
