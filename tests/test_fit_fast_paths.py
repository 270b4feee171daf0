"""The clip fit's shortcuts give what the plain computations give: the bounded solve started
from the unknowns on their bounds, the jaw contour from the gathered candidates, the SH
sampler's normals and cached neutral shape, and the SH pixels read from the decoded YUV frame."""

from __future__ import annotations

import av
import numpy as np
import pytest
from scipy.optimize import lsq_linear

from fitting.correspondence import landmark_set, update_jaw_contour
from fitting.model_arrays import CHIN, CONTOUR_JAW, IBUG68, model_arrays
from fitting.pose import project
from fitting.solvers import _bounded_solve
from fitting.synthetic import synthetic_face
from fitting.video import ShSampler, Yuv420Pixels
from morph3d.io.media import frame_rgb, iter_frames
from morph3d.model.geometry import vertex_normals


def _bounded_problem(rng: np.random.Generator, n: int, at_bound: int):
    """A positive definite H, g and bounds like a Gauss-Newton step's: the last unknowns
    are expression weights, `at_bound` of them at 0 (step bound 0 below) or 1 (0 above)."""
    A = rng.normal(size=(3 * n, n))
    H = A.T @ A + 0.1 * np.eye(n)
    g = rng.normal(size=n) * 5.0
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    weights = rng.uniform(0.05, 0.95, n // 2)
    weights[:at_bound // 2] = 0.0
    weights[at_bound // 2:at_bound] = 1.0
    lo[n - n // 2:], hi[n - n // 2:] = -weights, 1.0 - weights
    return H, g, lo, hi


@pytest.mark.parametrize("seed", range(6))
def test_bounded_solve_is_the_box_constrained_minimum(seed):
    rng = np.random.default_rng(seed)
    H, g, lo, hi = _bounded_problem(rng, 40, at_bound=12)
    x = _bounded_solve(H, g, lo, hi)
    L = np.linalg.cholesky(H)
    ref = lsq_linear(L.T, np.linalg.solve(L, g), bounds=(lo, hi), method="bvls", tol=1e-12).x
    assert np.all(x >= lo) and np.all(x <= hi)
    assert np.abs(x - ref).max() < 1e-7


def test_arrow_solve_matches_the_dense_solve():
    """The joint refinement's system (shared unknowns + per-image blocks, expression weights
    bounded) solved through the Schur complement gives the dense solve's answer."""
    rng = np.random.default_rng(3)
    shared, block, images = 6, 8, 4
    n = shared + block * images
    H = np.zeros((n, n))
    A = rng.normal(size=(3 * shared, shared))
    H[:shared, :shared] = A.T @ A + np.eye(shared)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    for k in range(images):
        s = slice(shared + k * block, shared + (k + 1) * block)
        B = rng.normal(size=(3 * block, block))
        H[s, s] = B.T @ B + np.eye(block)
        C = rng.normal(size=(shared, block)) * 0.3
        H[:shared, s], H[s, :shared] = C, C.T
        weights = rng.uniform(0.1, 0.9, 4)
        weights[:2] = (0.0, 1.0)  # one weight on each bound
        lo[s.stop - 4:s.stop], hi[s.stop - 4:s.stop] = -weights, 1.0 - weights
    H += np.eye(n) * 0.5 * np.abs(H).sum(1).max()  # keep it positive definite
    g = rng.normal(size=n) * 10.0
    dense = _bounded_solve(H, g, lo, hi)
    arrow = _bounded_solve(H, g, lo, hi, arrow=(shared, block))
    assert np.abs(dense - arrow).max() < 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_jaw_contour_takes_the_farthest_candidate_of_each_row(model, seed):
    """Each side jaw point lands on the candidate of its row (`contour_edges`) that projects
    farthest outwards: the brute-force choice over the ungathered candidates."""
    identity, state, camera, lms = synthetic_face(model, np.random.default_rng(seed))
    ls = landmark_set(model, lms)
    update_jaw_contour(ls, identity, state, camera)
    arrays = model_arrays(model)
    verts = arrays.mean + arrays.identity @ identity + arrays.expression @ state.expression
    edges = arrays.contour_edges[ls.ibug_table]
    candidates = {j: (edges[j][1][:, :1] * verts[edges[j][0][:, 0]]
                      + edges[j][1][:, 1:] * verts[edges[j][0][:, 1]]) for j in CONTOUR_JAW}
    every = np.concatenate(list(candidates.values()))
    centre = every.mean(0)  # the outward direction is the model's x axis, projected
    ends = project(np.stack([centre, centre + [10.0, 0.0, 0.0]]), state.rotation,
                   state.translation, camera)
    right = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    base = ls.scheme_slices[IBUG68].start
    for j, points in candidates.items():
        side = 1.0 if j > CHIN else -1.0
        score = project(points, state.rotation, state.translation, camera) @ (side * right)
        best = int(np.argmax(score))
        assert ls.ids[base + j, :2].tolist() == edges[j][0][best].tolist()
        assert np.allclose(ls.bary[base + j, :2], edges[j][1][best])


def test_float64_normals_are_the_corner_sums_in_order(model):
    """The float64 path (one bincount per axis) sums the same corners in the same order as
    np.add.at, the path every other dtype takes: the same normals bit for bit."""
    sampler = ShSampler.for_model(model)
    rng = np.random.default_rng(0)
    verts = sampler.mean + rng.normal(scale=0.5, size=sampler.mean.shape)
    tris = sampler.triangles
    v0, v1, v2 = (verts[tris[:, i]] for i in range(3))
    face_normals = np.cross(v1 - v0, v2 - v0)
    summed = np.zeros_like(verts)
    for i in range(3):
        np.add.at(summed, tris[:, i], face_normals)
    expected = summed / (np.linalg.norm(summed, axis=1, keepdims=True) + 1e-12)
    assert np.array_equal(vertex_normals(verts, tris), expected)


def test_sampler_follows_a_new_identity(model):
    """The sampler keeps the last identity's neutral shape: a new identity must not reuse it."""
    rng = np.random.default_rng(1)
    image = rng.uniform(0.2, 0.8, (480, 640, 3))
    _, state, camera, _ = synthetic_face(model, rng)
    a, b = rng.normal(size=model.num_identity) * 2, rng.normal(size=model.num_identity) * 2
    shared = ShSampler.for_model(model)
    shared.estimate(image, model, a, state, camera)
    again = shared.estimate(image, model, b, state, camera)
    fresh = ShSampler.for_model(model).estimate(image, model, b, state, camera)
    assert not np.allclose(fresh, shared.estimate(image, model, a, state, camera))
    assert np.array_equal(again, fresh)


def _smooth_clip(path, frames: int = 3, size: tuple[int, int] = (96, 128)) -> None:
    """A small H.264 clip of smooth colour gradients (yuv420p, no colour tags)."""
    rng = np.random.default_rng(0)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for _ in range(frames):
            c = rng.uniform(0.2, 1.0, (3, 3))
            rgb = np.stack([c[k, 0] * xx + c[k, 1] * yy + 0.3 * c[k, 2] * np.sin(9 * xx * yy)
                            for k in range(3)], -1)
            img = np.clip(rgb / rgb.max() * 255, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _check_yuv_pixels(path, stop: int | None = None) -> None:
    plain = list(iter_frames(path, stop=stop))
    lazy = list(iter_frames(path, stop=stop, rgb=False))
    assert [f.index for f in lazy] == [f.index for f in plain] and lazy
    for a, b in zip(plain, lazy, strict=True):
        assert b.rgb is None and np.array_equal(frame_rgb(b.decoded), a.rgb)
        pixels = Yuv420Pixels(b.decoded)
        assert pixels.possible(b.decoded) and pixels.matches(a.rgb)
        rows, cols = np.mgrid[0:a.rgb.shape[0], 0:a.rgb.shape[1]]
        mine = pixels.at(rows.ravel(), cols.ravel()).astype(int)
        diff = np.abs(mine - a.rgb.reshape(-1, 3))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_yuv_pixels_are_the_full_conversion_of_a_written_clip(tmp_path):
    path = tmp_path / "smooth.mp4"
    _smooth_clip(path)
    _check_yuv_pixels(path)


@pytest.mark.media
def test_yuv_pixels_are_the_full_conversion_of_the_shared_clips(media_dir):
    for name in ("nggyup.mp4", "orig.webm"):
        _check_yuv_pixels(media_dir / name, stop=3)
