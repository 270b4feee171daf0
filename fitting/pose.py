"""One face's parameters in one image (`FrameState`), rotations (axis-angle radians <->
matrices) and the pinhole projection to pixels, shared by every step of the photo fit
(`fitting.fit`).

Units: pixels (OpenCV convention), millimetres, radians. Poses: X_cam = R X_model + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fitting.params import CameraParams


@dataclass
class FrameState:
    """The parameters of one face in one image (float64)."""

    rotation: np.ndarray  # 3, axis-angle rad
    translation: np.ndarray  # 3, mm
    expression: np.ndarray  # J
    sh: np.ndarray | None = None  # 9 x 3

    def copy(self) -> FrameState:
        return FrameState(self.rotation.copy(), self.translation.copy(), self.expression.copy(),
                          None if self.sh is None else self.sh.copy())


def rotation_matrix(axis_angle: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis_angle, np.float64).reshape(3, 1))[0]


def axis_angle(matrix: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(matrix, np.float64))[0].reshape(3)


def project(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
            camera: CameraParams) -> np.ndarray:
    """Model-space points (N x 3 mm) -> pixels N x 2."""
    cam = points @ rotation_matrix(rotation).T + translation
    z = np.maximum(cam[:, 2], 1e-6)
    return np.stack([camera.fx * cam[:, 0] / z + camera.cx, camera.fy * cam[:, 1] / z + camera.cy],
                    1)
