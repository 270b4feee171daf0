"""The 68 iBUG (300-W) landmarks as fixed combinations of the 478 mediapipe mesh points.

mediapipe's mesh has no vertex for most iBUG points: the iBUG jawline follows the visible
cheek contour, and the brow, lip and eye-corner points sit between mesh vertices. So each
iBUG point here is a convex combination of one, two (a mesh edge) or three (a mesh
triangle) vertices: ``ibug68[k] = sum_j weight_kj * mesh[index_kj]``.

How the table was made (once, by hand; it is data, not code that runs): dlib's 68-point
predictor (trained on iBUG 300-W) and the mediapipe backend were run on 139 real frames
(every 3rd frame of nggyup.mp4, every 2nd of orig.webm, and the photos mark, khabenskii,
murakami_gray, three_people and aligned_*) and on their mirror images (so that a head
turned more to one side in the clip does not bias the table), 278 matched faces in all;
the annotated test images (takeo, lenna) were NOT used. Coordinates were normalised by
dlib's outer-eye-corner distance. For each iBUG point the single vertex, mesh edge
(best t in [0, 1]) or mesh triangle (best barycentric weights inside it) with the least
mean squared distance to dlib's point was kept, and weights under 0.02 were dropped.
Held-out checks (fit on the nggyup frames, test on the rest) gave a mean normalised error
of 4.0 % to dlib against 5.4 % for a plain nearest-vertex table.

Limits: one fixed table cannot follow the silhouette of a strongly turned head (the iBUG
jaw points on the far side move to the outline; these stay on the mesh), so use the jaw
points of profile views with care. Mirror pairs are close to symmetric but not exactly.
"""

from __future__ import annotations

import numpy as np

# One entry per iBUG point, in iBUG order: (mesh vertex indices, weights summing to 1).
IBUG68_FROM_MEDIAPIPE478: tuple[tuple[tuple[int, ...], tuple[float, ...]], ...] = (
    # 0-16: jaw, from the image-left end (subject's right) to the image-right end; 8: chin
    ((34, 127, 234), (0.399, 0.550, 0.051)),  # 0
    ((93, 137, 227), (0.100, 0.299, 0.601)),  # 1
    ((137, 177), (0.306, 0.694)),  # 2
    ((215,), (1.000,)),  # 3
    ((136, 138, 172), (0.033, 0.474, 0.493)),  # 4
    ((136, 150), (0.693, 0.307)),  # 5
    ((149,), (1.000,)),  # 6
    ((148, 176), (0.708, 0.292)),  # 7
    ((152,), (1.000,)),  # 8
    ((377, 400), (0.602, 0.398)),  # 9
    ((378, 379), (0.907, 0.093)),  # 10
    ((365, 379), (0.737, 0.263)),  # 11
    ((367, 397, 435), (0.284, 0.681, 0.035)),  # 12
    ((288, 401, 435), (0.245, 0.115, 0.640)),  # 13
    ((361, 366, 401), (0.283, 0.366, 0.351)),  # 14
    ((323, 447), (0.358, 0.642)),  # 15
    ((264, 356, 454), (0.141, 0.803, 0.056)),  # 16
    # 17-21: eyebrow on the image left, outer to inner
    ((46, 70, 156), (0.221, 0.349, 0.430)),  # 17
    ((53, 63), (0.126, 0.874)),  # 18
    ((66, 105), (0.269, 0.731)),  # 19
    ((66, 107), (0.635, 0.365)),  # 20
    ((9, 55, 107), (0.211, 0.385, 0.404)),  # 21
    # 22-26: eyebrow on the image right, inner to outer
    ((9, 285, 336), (0.132, 0.392, 0.476)),  # 22
    ((296, 336), (0.718, 0.282)),  # 23
    ((296, 334), (0.189, 0.811)),  # 24
    ((276, 293, 300), (0.063, 0.896, 0.041)),  # 25
    ((276, 300, 383), (0.021, 0.473, 0.506)),  # 26
    # 27-30: nose bridge, top down
    ((6, 168, 351), (0.054, 0.775, 0.171)),  # 27
    ((6, 197, 419), (0.185, 0.609, 0.206)),  # 28
    ((5, 195, 281), (0.297, 0.474, 0.229)),  # 29
    ((4, 274, 275), (0.765, 0.157, 0.078)),  # 30
    # 31-35: nostril base, image left to right
    ((97, 98, 99), (0.054, 0.504, 0.442)),  # 31
    ((2, 97, 167), (0.217, 0.634, 0.149)),  # 32
    ((2, 164, 393), (0.471, 0.424, 0.105)),  # 33
    ((326, 393), (0.864, 0.136)),  # 34
    ((326, 327, 328), (0.031, 0.688, 0.281)),  # 35
    # 36-41: eye on the image left, from the outer corner (36), clockwise
    ((7, 33), (0.891, 0.109)),  # 36
    ((159, 160), (0.570, 0.430)),  # 37
    ((28, 157, 158), (0.055, 0.461, 0.484)),  # 38
    ((112, 133, 155), (0.233, 0.683, 0.084)),  # 39
    ((22, 153, 154), (0.181, 0.716, 0.103)),  # 40
    ((23, 144, 145), (0.140, 0.739, 0.121)),  # 41
    # 42-47: eye on the image right, from the inner corner (42; 45 is the outer one)
    ((256, 381, 382), (0.071, 0.065, 0.864)),  # 42
    ((384, 385), (0.227, 0.773)),  # 43
    ((386, 387), (0.391, 0.609)),  # 44
    ((249, 255, 263), (0.626, 0.103, 0.271)),  # 45
    ((253, 254, 373), (0.050, 0.109, 0.841)),  # 46
    ((252, 374, 380), (0.172, 0.217, 0.611)),  # 47
    # 48-59: outer lip, from the image-left corner, clockwise
    ((43, 61, 146), (0.112, 0.804, 0.084)),  # 48
    ((40, 73, 74), (0.221, 0.584, 0.195)),  # 49
    ((11, 37, 72), (0.166, 0.483, 0.351)),  # 50
    ((11, 12, 302), (0.832, 0.072, 0.096)),  # 51
    ((267, 269, 302), (0.454, 0.031, 0.515)),  # 52
    ((270, 303, 304), (0.500, 0.401, 0.099)),  # 53
    ((273, 287, 291), (0.216, 0.117, 0.667)),  # 54
    ((321, 405, 406), (0.610, 0.171, 0.219)),  # 55
    ((313, 314, 405), (0.175, 0.688, 0.137)),  # 56
    ((16, 17, 315), (0.245, 0.667, 0.088)),  # 57
    ((17, 84, 85), (0.110, 0.569, 0.321)),  # 58
    ((91, 181, 182), (0.481, 0.401, 0.118)),  # 59
    # 60-67: inner lip, from the image-left corner, clockwise
    ((78, 95), (0.607, 0.393)),  # 60
    ((82,), (1.000,)),  # 61
    ((13, 312), (0.920, 0.080)),  # 62
    ((311, 312), (0.220, 0.780)),  # 63
    ((292, 308, 325), (0.318, 0.316, 0.366)),  # 64
    ((317, 402), (0.696, 0.304)),  # 65
    ((14, 317), (0.890, 0.110)),  # 66
    ((87, 178), (0.900, 0.100)),  # 67
)


def _weight_matrix() -> np.ndarray:
    matrix = np.zeros((68, 478), np.float64)
    for row, (indices, weights) in enumerate(IBUG68_FROM_MEDIAPIPE478):
        matrix[row, list(indices)] = weights
    return matrix / matrix.sum(axis=1, keepdims=True)


IBUG68_FROM_MEDIAPIPE478_MATRIX: np.ndarray = _weight_matrix()
"""(68, 478) float64, rows summing to 1: `ibug68 = IBUG68_FROM_MEDIAPIPE478_MATRIX @ mesh`."""


def ibug68_from_mediapipe478(points: np.ndarray) -> np.ndarray:
    """(..., 478, D) mesh points -> (..., 68, D) iBUG points (float32 unless given float64)."""
    points = np.asarray(points)
    if points.ndim < 2 or points.shape[-2] != 478:
        raise ValueError(f"expected (..., 478, D) mediapipe points, got {points.shape}")
    out = np.einsum("kn,...nd->...kd", IBUG68_FROM_MEDIAPIPE478_MATRIX, points)
    return out.astype(np.float64 if points.dtype == np.float64 else np.float32)
