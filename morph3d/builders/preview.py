"""A small painter's-algorithm mesh renderer for build tools and pictures (no gradients).

Orthographic, flat-shaded, drawn with OpenCV far-to-near. It also returns a triangle-id
buffer so that pixels can be mapped back to the surface (used to pin detected landmarks
onto the model). The differentiable renderer the pipeline uses lives in `render/`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def rotation_yaw_pitch(yaw: float, pitch: float) -> np.ndarray:
    """3x3 rotation: yaw about +y then pitch about +x (radians)."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return r_pitch @ r_yaw


@dataclass
class PreviewRender:
    image: np.ndarray  # H x W x 3 uint8 RGB
    triangle_id: np.ndarray  # H x W int32, -1 = background
    pixels: np.ndarray  # V x 2 projected vertex positions (pixels)
    depth: np.ndarray  # V depth towards the viewer (larger = nearer)


def render_preview(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray,
                   size: int = 512, rotation: np.ndarray | None = None,
                   centre: np.ndarray | None = None, extent_mm: float | None = None,
                   background: tuple[int, int, int] = (255, 255, 255)) -> PreviewRender:
    """Render a mesh (mm) seen from +z, orthographic, flat Lambert shading.

    colors: V x 3 or F x 3 floats in [0, 1]. `centre`/`extent_mm` fix the framing (the
    square image spans `extent_mm` around `centre`) so that several renders line up.
    """
    rot = np.eye(3) if rotation is None else rotation
    v = vertices @ rot.T
    if centre is None:
        centre = 0.5 * (v.min(0) + v.max(0))
    if extent_mm is None:
        extent_mm = float((v.max(0) - v.min(0))[:2].max() * 1.1)
    scale = size / extent_mm
    px = np.empty((len(v), 2))
    px[:, 0] = (v[:, 0] - centre[0]) * scale + (size - 1) / 2
    px[:, 1] = -(v[:, 1] - centre[1]) * scale + (size - 1) / 2
    tri = v[triangles]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(normals @ light, 0, 1)
    face_colors = colors if len(colors) == len(triangles) else colors[triangles].mean(1)
    rgb = np.clip(face_colors * shade[:, None], 0, 1)
    front = normals[:, 2] > 0
    order = np.argsort(tri[:, :, 2].mean(1))  # far first
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    ids = np.full((size, size), -1, np.int32)
    shift = 4
    pts_all = np.round(px * (1 << shift)).astype(np.int32)
    for f in order:
        if not front[f]:
            continue
        pts = pts_all[triangles[f]]
        color = tuple(int(c * 255) for c in rgb[f])
        cv2.fillConvexPoly(image, pts, color, lineType=cv2.LINE_AA, shift=shift)
        cv2.fillConvexPoly(ids, pts, int(f), lineType=cv2.LINE_8, shift=shift)
    return PreviewRender(image, ids, px, v[:, 2])


def pixel_to_surface(render: PreviewRender, triangles: np.ndarray, point: np.ndarray
                     ) -> tuple[int, np.ndarray] | None:
    """Triangle id and barycentrics of the surface under an image point (x, y in pixels);
    the nearest covered pixel is used when the point falls just off the silhouette."""
    h, w = render.triangle_id.shape
    x, y = int(round(point[0])), int(round(point[1]))
    if not (0 <= x < w and 0 <= y < h) or render.triangle_id[y, x] < 0:
        covered = np.argwhere(render.triangle_id >= 0)
        if len(covered) == 0:
            return None
        d = ((covered - [point[1], point[0]]) ** 2).sum(1)
        y, x = covered[d.argmin()]
        point = np.array([x, y], dtype=float)
    f = int(render.triangle_id[y, x])
    a, b, c = render.pixels[triangles[f]]
    m = np.array([[a[0] - c[0], b[0] - c[0]], [a[1] - c[1], b[1] - c[1]]])
    try:
        l1, l2 = np.linalg.solve(m, point - c)
    except np.linalg.LinAlgError:
        return f, np.full(3, 1 / 3)
    bary = np.clip(np.array([l1, l2, 1 - l1 - l2]), 0, 1)
    return f, bary / bary.sum()
