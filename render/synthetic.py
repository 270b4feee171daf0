"""A synthetic head-like mesh for tests and benchmarks (no model files needed).

An ellipsoid (150 x 200 x 180 mm) from a latitude/longitude grid with a nose bump, two
eyeballs that poke through the surface and a hidden "teeth" band inside: ~10.7k triangles,
overlapping parts, fan triangles at the poles, a UV seam at the back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SyntheticMesh:
    vertices: torch.Tensor  # V x 3 float32, mm, model space (x right, y up, z to viewer)
    triangles: torch.Tensor  # F x 3 int64, counter-clockwise from outside
    uv_coords: torch.Tensor  # T x 2 float32, v up
    uv_triangles: torch.Tensor  # F x 3 int64
    colors: torch.Tensor  # V x 3 float32 in [0, 1], smooth pattern


def _lat_long(n_lat: int, n_lon: int, uv_box: tuple[float, float, float, float]):
    """Unit sphere grid: positions (V x 3), triangles, uv (T x 2), uv triangles."""
    u0, v0, u1, v1 = uv_box
    positions = [(0.0, 1.0, 0.0)]
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon + math.pi  # seam at the back
            positions.append((math.sin(theta) * math.sin(phi), math.cos(theta),
                              math.sin(theta) * math.cos(phi)))
    positions.append((0.0, -1.0, 0.0))
    south = len(positions) - 1

    def pos_index(i: int, j: int) -> int:
        if i == 0:
            return 0
        if i == n_lat:
            return south
        return 1 + (i - 1) * n_lon + (j % n_lon)

    def uv_index(i: int, j: int) -> int:
        return i * (n_lon + 1) + j

    uv = [(u0 + (u1 - u0) * j / n_lon, v1 - (v1 - v0) * i / n_lat)
          for i in range(n_lat + 1) for j in range(n_lon + 1)]
    tris, uv_tris = [], []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b, c, d = (i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)
            for tri in ((a, b, c), (a, c, d)):
                ids = [pos_index(*k) for k in tri]
                if len(set(ids)) < 3:
                    continue
                tris.append(ids)
                uv_tris.append([uv_index(*k) for k in tri])
    positions = np.array(positions)
    tris = np.array(tris)
    # Make the winding counter-clockwise seen from outside.
    p = positions[tris]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    if (normal * p.mean(1)).sum() < 0:
        tris = tris[:, [0, 2, 1]]
        uv_tris = np.array(uv_tris)[:, [0, 2, 1]]
    return positions, tris, np.array(uv), np.array(uv_tris)


def head_like_mesh(n_lat: int = 64, n_lon: int = 80) -> SyntheticMesh:
    parts = []
    # Head: ellipsoid with a nose.
    pos, tri, uv, uvt = _lat_long(n_lat, n_lon, (0.0, 0.15, 1.0, 1.0))
    head = pos * np.array([75.0, 100.0, 90.0])
    nose = 25.0 * np.exp(-((head[:, 0] / 15.0) ** 2 + ((head[:, 1] + 5.0) / 25.0) ** 2))
    head[:, 2] += nose * (head[:, 2] > 0)
    parts.append((head, tri, uv, uvt))
    # Eyeballs poking through the surface.
    for k, side in enumerate((-1.0, 1.0)):
        pos, tri, uv, uvt = _lat_long(10, 12, (0.05 + 0.3 * k, 0.0, 0.3 + 0.3 * k, 0.12))
        parts.append((pos * 12.0 + np.array([32.0 * side, 25.0, 72.0]), tri, uv, uvt))
    # Hidden teeth band (an open cylinder arc inside the head).
    segments, angles = 40, np.linspace(-1.0, 1.0, 41)
    ring = [(40 * math.sin(a), y, 30 + 40 * math.cos(a)) for y in (-45.0, -30.0) for a in angles]
    band = np.array(ring)
    tri = []
    for j in range(segments):
        a, b, c, d = j, j + 1, segments + 2 + j, segments + 1 + j
        tri += [[a, b, c], [a, c, d]]
    uv_band = np.array([(0.7 + 0.25 * j / segments, 0.02 + 0.08 * r)
                        for r in range(2) for j in range(segments + 1)])
    parts.append((band, np.array(tri), uv_band, np.array(tri)))

    vertices, triangles, uvs, uv_triangles = [], [], [], []
    v_off = t_off = 0
    for pos, tri, uv, uvt in parts:
        vertices.append(pos)
        triangles.append(tri + v_off)
        uvs.append(uv)
        uv_triangles.append(uvt + t_off)
        v_off += len(pos)
        t_off += len(uv)
    vertices = np.concatenate(vertices)
    colors = 0.5 + 0.4 * np.stack([
        np.sin(vertices[:, 0] / 23.0), np.cos(vertices[:, 1] / 31.0),
        np.sin((vertices[:, 2] + vertices[:, 0]) / 41.0)], 1)
    return SyntheticMesh(
        vertices=torch.tensor(vertices, dtype=torch.float32),
        triangles=torch.tensor(np.concatenate(triangles), dtype=torch.int64),
        uv_coords=torch.tensor(np.concatenate(uvs), dtype=torch.float32),
        uv_triangles=torch.tensor(np.concatenate(uv_triangles), dtype=torch.int64),
        colors=torch.tensor(colors, dtype=torch.float32),
    )
