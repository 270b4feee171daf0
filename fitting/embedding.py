"""Identity embeddings: dlib's 128-D face descriptor (a ResNet trained for face recognition).

Two faces whose descriptors are less than `SAME_PERSON_THRESHOLD` (0.6, dlib's figure)
apart in Euclidean distance are the same person. The face is located by a box (then dlib's
5-point predictor finds the alignment points) or by landmarks: 68 iBUG points (from either
landmark backend) or dlib's 5 points. The models are loaded once per process.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fitting.dlib_backend import _import_dlib, dlib_model_path, dlib_rectangle, dlib_shape_predictor
from fitting.faces import as_rgb_uint8, landmark_box

EMBEDDING_SIZE = 128
SAME_PERSON_THRESHOLD = 0.6


@functools.cache
def dlib_face_recognizer() -> Any:
    """dlib's face recognition ResNet, loaded once per process."""
    dlib = _import_dlib()
    path = dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
    return dlib.face_recognition_model_v1(str(path))


def _shape_from(image: np.ndarray, face: np.ndarray) -> Any:
    """A dlib full_object_detection from a (4,) box, (68, 2) or (5, 2) landmarks."""
    dlib = _import_dlib()
    face = np.asarray(face, np.float64)
    if face.shape == (4,):
        return dlib_shape_predictor(5)(image, dlib_rectangle(face))
    if face.shape in ((68, 2), (5, 2)):
        if not np.all(np.isfinite(face)):
            raise ValueError("landmarks contain NaN or inf")
        rect = dlib_rectangle(landmark_box(face) + [-0.5, -0.5, 0.5, 0.5])
        points = dlib.points()
        for x, y in np.rint(face).astype(np.int64):
            points.append(dlib.point(int(x), int(y)))
        return dlib.full_object_detection(rect, points)
    raise ValueError(f"expected a (4,) box or (68, 2) / (5, 2) landmarks, got {face.shape}")


def face_embeddings(image: np.ndarray, faces: np.ndarray | list[np.ndarray],
                    num_jitters: int = 0) -> np.ndarray:
    """(N, 128) float32 descriptors of N faces in one image.

    faces: (N, 4) boxes, (N, 68, 2) iBUG landmarks or (N, 5, 2) dlib 5-point landmarks, in
    pixels (see `fitting.faces` for the conventions). `num_jitters` > 0 averages that many
    randomly jittered crops (slower, slightly more stable, no longer deterministic).
    """
    rgb = as_rgb_uint8(image)
    faces = list(faces)
    if not faces:
        return np.zeros((0, EMBEDDING_SIZE), np.float32)
    dlib = _import_dlib()
    shapes = dlib.full_object_detections()
    for face in faces:
        shapes.append(_shape_from(rgb, face))
    descriptors = dlib_face_recognizer().compute_face_descriptor(rgb, shapes, num_jitters)
    return np.array([np.array(d) for d in descriptors], np.float32).reshape(-1, EMBEDDING_SIZE)


def face_embedding(image: np.ndarray, box_or_landmarks: np.ndarray,
                   num_jitters: int = 0) -> np.ndarray:
    """(128,) float32 descriptor of one face given by a (4,) box or (68, 2) / (5, 2) points."""
    return face_embeddings(image, [np.asarray(box_or_landmarks)], num_jitters)[0]


def embedding_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Euclidean distance between descriptors along the last axis (broadcasting); a float for
    two single descriptors. Below `SAME_PERSON_THRESHOLD` means the same person."""
    distance = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
    return float(distance) if distance.ndim == 0 else distance


def same_person(a: np.ndarray, b: np.ndarray,
                threshold: float = SAME_PERSON_THRESHOLD) -> bool:
    """Whether two single descriptors are closer than `threshold`."""
    return float(embedding_distance(a, b)) < threshold
