"""Plain geometry functions on point sets (numpy arrays in, numpy arrays out, no state)."""

from __future__ import annotations

import numpy as np


def procrustes_align(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
                     scale: bool = False) -> np.ndarray:
    """`source` (N x 3) moved onto `target` (N x 3) by the rotation and translation (and, with
    `scale`, the uniform scale) that minimise the weighted squared distances (Kabsch /
    Umeyama; never a reflection). `weights` (N,) default to equal."""
    w = (np.ones(len(source)) if weights is None else np.asarray(weights, np.float64))
    w = w[:, None] / w.sum()
    mu_s, mu_t = (source * w).sum(0), (target * w).sum(0)
    cov = ((source - mu_s) * w).T @ (target - mu_t)
    u, singular, vt = np.linalg.svd(cov)
    d = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ np.diag(d) @ vt
    factor = (singular * d).sum() / (((source - mu_s) ** 2) * w).sum() if scale else 1.0
    return factor * (source - mu_s) @ rotation + mu_t


def median_aligned_distance(points: np.ndarray, reference: np.ndarray,
                            scale: bool = False) -> float:
    """Median distance of `points` to `reference` (N x 3, same units) after
    `procrustes_align` of the first onto the second."""
    aligned = procrustes_align(points, reference, scale=scale)
    return float(np.median(np.linalg.norm(aligned - reference, axis=1)))


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals V x 3 (outward for counter-clockwise triangles), in
    the dtype of `vertices`; a vertex on no (or only degenerate) triangles gets a zero normal.
    The numpy twin of `render.ops.vertex_normals` for the float64 fitting and export code."""
    v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
    face_normals = np.cross(v1 - v0, v2 - v0)  # |n| = 2 area
    if vertices.dtype == np.float64:
        # One bincount per axis over every triangle's first corner, then second, then
        # third: the sums np.add.at makes, in its order (bit for bit), several times faster.
        # bincount sums in float64, so other dtypes keep np.add.at.
        corners = triangles.T.reshape(-1)
        normals = np.stack([np.bincount(corners, np.tile(face_normals[:, k], 3),
                                        len(vertices)) for k in range(3)], 1)
    else:
        normals = np.zeros_like(vertices)
        for i in range(3):
            np.add.at(normals, triangles[:, i], face_normals)
    return normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)
