"""One step of Loop subdivision for a whole morphable model.

Loop subdivision is linear in the vertex positions, so one sparse matrix S (V' x V) maps
the mean and every basis vector; UVs are subdivided with plain midpoints (a separate
matrix on the UV index space) and landmarks are re-expressed on the child triangles.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from morph3d.model.model import ModelData, SurfacePoints


def _edge_table(triangles: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E x 2) and, per triangle corner edge, its edge id (F x 3)."""
    corner_edges = np.stack([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]], 1)
    keys = np.sort(corner_edges, axis=2).reshape(-1, 2)
    edges, inverse = np.unique(keys[:, 0] * n + keys[:, 1], return_inverse=True)
    return np.stack([edges // n, edges % n], 1), inverse.reshape(-1, 3)


def loop_matrix(triangles: np.ndarray, n: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Loop subdivision matrix (V+E) x V and the child triangles (4F x 3)."""
    edges, tri_edges = _edge_table(triangles, n)
    e = len(edges)
    # Opposite vertices of each edge (1 on a boundary, 2 inside).
    opposite = [[] for _ in range(e)]
    for f, tri in enumerate(triangles):
        for k in range(3):
            opposite[tri_edges[f, k]].append(tri[(k + 2) % 3])
    rows, cols, vals = [], [], []
    neighbours = [set() for _ in range(n)]
    boundary_nb = [set() for _ in range(n)]
    for i, (a, b) in enumerate(edges):
        neighbours[a].add(b)
        neighbours[b].add(a)
        if len(opposite[i]) == 2:
            c, d = opposite[i]
            rows += [n + i] * 4
            cols += [a, b, c, d]
            vals += [3 / 8, 3 / 8, 1 / 8, 1 / 8]
        else:
            rows += [n + i] * 2
            cols += [a, b]
            vals += [0.5, 0.5]
            boundary_nb[a].add(b)
            boundary_nb[b].add(a)
    for v in range(n):
        if boundary_nb[v]:
            nb = sorted(boundary_nb[v])[:2]
            rows += [v] * (1 + len(nb))
            cols += [v, *nb]
            vals += [3 / 4] + [1 / 8] * len(nb) if len(nb) == 2 else [1.0]
        elif neighbours[v]:
            k = len(neighbours[v])
            beta = (5 / 8 - (3 / 8 + np.cos(2 * np.pi / k) / 4) ** 2) / k
            rows += [v] * (k + 1)
            cols += [v, *neighbours[v]]
            vals += [1 - k * beta] + [beta] * k
        else:
            rows.append(v)
            cols.append(v)
            vals.append(1.0)
    s = sparse.csr_matrix((vals, (rows, cols)), shape=(n + e, n))
    children = _children(triangles, tri_edges + n)
    return s, children


def _children(triangles: np.ndarray, mids: np.ndarray) -> np.ndarray:
    a, b, c = triangles.T
    ab, bc, ca = mids.T
    return np.concatenate([
        np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1),
        np.stack([ab, bc, ca], 1),
    ])


def _midpoint_matrix(triangles: np.ndarray, n: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    edges, tri_edges = _edge_table(triangles, n)
    e = len(edges)
    rows = np.concatenate([np.arange(n), np.repeat(np.arange(n, n + e), 2)])
    cols = np.concatenate([np.arange(n), edges.reshape(-1)])
    vals = np.concatenate([np.ones(n), np.full(2 * e, 0.5)])
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n + e, n)), _children(
        triangles, tri_edges + n)


def _child_landmarks(points: SurfacePoints, num_triangles: int) -> SurfacePoints:
    """Re-express barycentric points of parent triangle f on its four children."""
    tri, bary = [], []
    f_count = num_triangles
    for f, (l0, l1, l2) in zip(points.triangles, points.barycentrics, strict=True):
        # Midpoint-subdivision coordinates: corner children hold points with one coordinate
        # above 1/2; the centre child holds the rest.
        if l0 >= 0.5:
            tri.append(f)
            bary.append([2 * l0 - 1, 2 * l1, 2 * l2])  # child (a, ab, ca)
        elif l1 >= 0.5:
            tri.append(f + f_count)
            bary.append([2 * l0, 2 * l1 - 1, 2 * l2])  # child (ab, b, bc)
        elif l2 >= 0.5:
            tri.append(f + 2 * f_count)
            bary.append([2 * l0, 2 * l1, 2 * l2 - 1])  # child (ca, bc, c)
        else:
            tri.append(f + 3 * f_count)
            bary.append([1 - 2 * l2, 1 - 2 * l0, 1 - 2 * l1])  # child (ab, bc, ca)
    return SurfacePoints(np.asarray(tri, np.int64), np.asarray(bary, np.float32))


def subdivide_model(data: ModelData) -> ModelData:
    n = data.num_vertices
    s, children = loop_matrix(data.triangles, n)
    uv_s, uv_children = _midpoint_matrix(data.uv_triangles, len(data.uv_coords))

    def apply(x: np.ndarray) -> np.ndarray:  # (..., V, 3) -> (..., V', 3)
        flat = np.moveaxis(x, -2, 0).reshape(n, -1)
        out = (s @ flat).reshape((s.shape[0],) + np.moveaxis(x, -2, 0).shape[1:])
        return np.moveaxis(out, 0, -2).astype(np.float32)

    # Region masks and the mirror map follow the parent vertices (new edge vertices take
    # a region when both edge ends are in it).
    edges, _ = _edge_table(data.triangles, n)
    regions = {k: np.concatenate([m, m[edges[:, 0]] & m[edges[:, 1]]])
               for k, m in data.regions.items()}
    metadata = dict(data.metadata, subdivided="loop-1")
    return ModelData(
        name=f"{data.name}-subdivided",
        mean=apply(data.mean),
        identity_basis=apply(data.identity_basis),
        identity_std=data.identity_std.copy(),
        expression_basis=apply(data.expression_basis),
        expression_names=list(data.expression_names),
        triangles=children,
        uv_coords=(uv_s @ data.uv_coords.astype(np.float64)).astype(np.float32),
        uv_triangles=uv_children,
        regions=regions,
        landmarks={k: _child_landmarks(p, data.num_triangles) for k, p in data.landmarks.items()},
        mirror=None,
        texture_size=data.texture_size,
        metadata=metadata,
    )
