"""Tests of the differentiable rasterizer against a plain brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from morph3d.errors import Morph3dError
from render import (
    Camera,
    antialias,
    available_backends,
    axis_angle_to_matrix,
    clip_to_pixels,
    extract_texture,
    get_backend,
    interpolate,
    rasterize,
    render_mesh,
    sh_shading,
    texture,
    vertex_normals,
)
from render.camera import FRONT
from render.raster import kernels_available
from render.synthetic import head_like_mesh

ALL_BACKENDS = ("torch", "nvdiffrast", "pytorch3d")
HAVE_KERNELS = kernels_available()


def force_pure_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the torch backend skip render.kernels (numba): the CUDA / no-numba code path."""
    import render.raster

    monkeypatch.setattr(render.raster, "_KERNELS_AVAILABLE", False)


@pytest.fixture(params=["torch", "torch-pure", "nvdiffrast", "pytorch3d"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Backend names; "torch" uses the compiled CPU kernels when numba is importable,
    "torch-pure" is the same backend forced onto its pure-torch path."""
    name = request.param
    if name == "torch-pure":
        if not HAVE_KERNELS:
            pytest.skip("numba missing: 'torch' already is the pure-torch path")
        force_pure_torch(monkeypatch)
        return "torch"
    if name not in available_backends():
        pytest.skip(f"renderer backend '{name}' not importable here (or needs CUDA)")
    return name


@pytest.fixture(params=["kernel", "pure"])
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the compiled kernels (when numba is importable) and without."""
    if request.param == "kernel" and not HAVE_KERNELS:
        pytest.skip("numba not importable")
    if request.param == "pure":
        force_pure_torch(monkeypatch)
    return request.param


def device_for(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "nvdiffrast" else "cpu")


@pytest.fixture(scope="module")
def head():
    return head_like_mesh()


def posed_camera(width: int, height: int, axis_angle, t=(3.0, -5.0, 600.0), **kw) -> Camera:
    cam = Camera.looking_at_face(width, height, **kw)
    R = torch.tensor(FRONT) @ axis_angle_to_matrix(torch.tensor(axis_angle, dtype=torch.float32))
    return cam.with_pose(R, torch.tensor(t))


# -- the brute-force reference ----------------------------------------------------------------


def reference_raster(clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int):
    """Per pixel: test every triangle (float64), keep the nearest z/w; lower id wins ties.

    Returns triangle ids (H x W, -1 background), perspective-correct barycentrics, z/w.
    Triangles with a vertex at w <= 0 or zero area are skipped; only -1 <= z/w <= 1 drawn.
    """
    c = clip.reshape(-1, 4).double().cpu().numpy()[triangles.cpu().numpy()]  # F x 3 x 4
    w = c[..., 3]
    usable = (w > 1e-8).all(1)
    w_safe = np.where(w > 1e-8, w, 1.0)
    sx = (c[..., 0] / w_safe + 1) * W / 2 - 0.5
    sy = (c[..., 1] / w_safe + 1) * H / 2 - 0.5
    sz = c[..., 2] / w_safe
    area = (sx[:, 1] - sx[:, 0]) * (sy[:, 2] - sy[:, 0]) - (sx[:, 2] - sx[:, 0]) * (
        sy[:, 1] - sy[:, 0])
    usable &= np.abs(area) > 1e-12
    tri_id = np.full((H, W), -1)
    bary = np.zeros((H, W, 3))
    depth = np.ones((H, W))
    px = np.arange(W)[:, None]
    for y in range(H):  # rows only to keep it fast; every pixel tests every candidate
        ids = np.nonzero(usable & (sy.min(1) <= y) & (sy.max(1) >= y))[0]
        if len(ids) == 0:
            continue
        X, Y = sx[ids], sy[ids]
        e = np.stack([
            (X[:, 1] - px) * (Y[:, 2] - y) - (X[:, 2] - px) * (Y[:, 1] - y),
            (X[:, 2] - px) * (Y[:, 0] - y) - (X[:, 0] - px) * (Y[:, 2] - y),
            (X[:, 0] - px) * (Y[:, 1] - y) - (X[:, 1] - px) * (Y[:, 0] - y),
        ], -1) / area[ids][None, :, None]  # W x n x 3 screen barycentrics
        z = (e * sz[ids][None]).sum(-1)
        inside = (e >= 0).all(-1) & (z >= -1) & (z <= 1)
        z = np.where(inside, z, np.inf)
        k = np.argmin(z, 1)
        hit = np.isfinite(z[np.arange(W), k])
        persp = e[np.arange(W), k] / w[ids[k]]
        tri_id[y, hit] = ids[k[hit]]
        bary[y, hit] = (persp / persp.sum(1, keepdims=True))[hit]
        depth[y, hit] = z[np.arange(W), k][hit]
    return tri_id, bary, depth


def compare_to_reference(raster, clip, triangles, H, W, batch_index=0):
    ref_id, ref_bary, ref_depth = reference_raster(clip[batch_index], triangles, H, W)
    ours = raster.triangle_id[batch_index].cpu().numpy()
    covered = (ref_id >= 0) | (ours >= 0)
    agree = (ref_id == ours)[covered].mean()
    same = (ref_id == ours) & (ref_id >= 0)
    bary_err = np.abs(raster.barycentrics[batch_index].detach().cpu().double().numpy()
                      - ref_bary)[same].max()
    depth_err = np.abs(raster.depth[batch_index].detach().cpu().double().numpy()
                       - ref_depth)[same].max()
    return agree, bary_err, depth_err, covered.sum()


# -- correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (0.3, 0.5, 0.0), (-0.2, -1.2, 0.3),
                                  (0.1, 3.0, 0.0)])
def test_matches_reference_on_head_like_mesh(backend, head, pose):
    H, W = 96, 128
    cam = posed_camera(W, H, pose)
    dev = device_for(backend)
    clip = cam.to_clip(head.vertices).to(dev)
    raster = rasterize(clip, head.triangles.to(dev), (H, W), backend=backend)
    agree, bary_err, depth_err, covered = compare_to_reference(raster, clip, head.triangles, H, W)
    assert covered > 0.25 * H * W
    assert agree >= 0.999
    assert bary_err < 1e-4
    assert depth_err < 1e-5


def test_orthographic_matches_reference(backend, head):
    H, W = 64, 64
    cam = posed_camera(W, H, (0.2, -0.6, 0.0), orthographic=True)
    dev = device_for(backend)
    clip = cam.to_clip(head.vertices).to(dev)
    raster = rasterize(clip, head.triangles.to(dev), (H, W), backend=backend)
    agree, bary_err, _, _ = compare_to_reference(raster, clip, head.triangles, H, W)
    assert agree >= 0.999 and bary_err < 1e-4


def test_batch_equals_single_and_chunking_is_exact(head):
    H, W = 48, 64
    clips = torch.cat([posed_camera(W, H, p).to_clip(head.vertices)
                       for p in ((0.0, 0.0, 0.0), (0.0, 0.8, 0.1))])
    batched = rasterize(clips, head.triangles, (H, W))
    from render.raster import rasterize_torch

    chunked = rasterize_torch(clips, head.triangles, (H, W), chunk=1000)
    assert torch.equal(batched.triangle_id, chunked.triangle_id)
    for b in range(2):
        single = rasterize(clips[b:b + 1], head.triangles, (H, W))
        assert torch.equal(single.triangle_id[0], batched.triangle_id[b])
        assert torch.allclose(single.barycentrics[0], batched.barycentrics[b])


def clip_from_pixels(points_uvw, H, W):
    """Clip vertices from (pixel x, pixel y, z/w, w) rows."""
    p = torch.tensor(points_uvw, dtype=torch.float64)
    x = (2 * (p[:, 0] + 0.5) / W - 1) * p[:, 3]
    y = (2 * (p[:, 1] + 0.5) / H - 1) * p[:, 3]
    return torch.stack([x, y, p[:, 2] * p[:, 3], p[:, 3]], -1).unsqueeze(0)


def test_occlusion_order_and_ties(backend):
    H, W = 16, 16
    dev = device_for(backend)
    # Two overlapping triangles; the one listed second is nearer in the left half.
    clip = clip_from_pixels([
        (1, 1, 0.5, 1), (14, 1, 0.5, 1), (1, 14, 0.5, 1),  # far, flat
        (1, 1, 0.2, 1), (14, 1, 0.8, 1), (1, 14, 0.2, 1),  # tilted: nearer on the left
    ], H, W).float().to(dev)
    tris = torch.tensor([[0, 1, 2], [3, 4, 5]], device=dev)
    raster = rasterize(clip, tris, (H, W), backend=backend)
    ref_id, _, _ = reference_raster(clip[0], tris, H, W)
    assert (raster.triangle_id[0].cpu().numpy() == ref_id).all()
    ids = raster.triangle_id[0]
    assert ids[3, 2] == 1 and ids[3, 11] == 0  # left nearer: 1, right: 0
    # Reversing the order of the triangles changes nothing but the ids.
    swapped = rasterize(clip, tris.flip(0), (H, W), backend=backend).triangle_id[0]
    covered = ids >= 0
    assert torch.equal(1 - swapped[covered], ids[covered])


def test_exact_tie_lower_id_wins():
    H, W = 8, 8
    clip = clip_from_pixels([(0, 0, 0.3, 1), (7, 0, 0.3, 1), (0, 7, 0.3, 1)], H, W).float()
    tris = torch.tensor([[0, 1, 2], [0, 1, 2]])
    ids = rasterize(clip, tris, (H, W)).triangle_id[0]
    assert set(ids[ids >= 0].tolist()) == {0}


def test_triangles_behind_camera_are_culled_not_wrapped(backend):
    H, W = 16, 16
    dev = device_for(backend)
    # Triangle 0 has one vertex behind the eye (w < 0): its projection would wrap around.
    # Triangle 1 lies entirely behind the camera. Triangle 2 is normal.
    clip = torch.tensor([[
        [-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.2, 0.8, -1.0, -0.5],
        [-0.5, -0.5, -2.0, -1.0], [0.5, -0.5, -2.0, -1.0], [0.0, 0.5, -2.0, -1.0],
        [-0.9, 0.6, 0.5, 1.0], [-0.6, 0.6, 0.5, 1.0], [-0.9, 0.9, 0.5, 1.0],
    ]], device=dev)
    tris = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], device=dev)
    ids = rasterize(clip, tris, (H, W), backend=backend).triangle_id[0]
    assert not (ids == 1).any()
    if backend != "nvdiffrast":  # nvdiffrast clips at the near plane instead of culling
        assert not (ids == 0).any()
    assert (ids == 2).sum() > 0
    # Only the part of a triangle with -1 <= z/w <= 1 is drawn (near/far planes).
    clip2 = clip_from_pixels([(0, 0, -1.5, 1), (15, 0, 0.5, 1), (0, 15, 0.5, 1)], H, W)
    ids2 = rasterize(clip2.float().to(dev), tris[:1], (H, W), backend=backend).triangle_id[0]
    ref_id, _, _ = reference_raster(clip2[0], tris[:1], H, W)
    assert 0 < (ids2 >= 0).sum() < (torch.from_numpy(ref_id) >= -1).sum()
    assert (np.asarray((ids2 >= 0).cpu()) == (ref_id >= 0)).mean() > 0.97


def test_outside_degenerate_and_tiny_triangles(backend):
    H, W = 16, 16
    dev = device_for(backend)
    clip = clip_from_pixels([
        (-40, -40, 0, 1), (-20, -40, 0, 1), (-40, -20, 0, 1),  # 0: fully outside
        (-8, 4, 0, 1), (6, 4, 0, 1), (-8, 12, 0, 1),  # 1: partly outside (left)
        (8, 8, 0, 1), (12, 12, 0, 1), (14, 14, 0, 1),  # 2: zero area (collinear)
        (10.9, 1.9, 0, 1), (11.2, 1.9, 0, 1), (10.9, 2.2, 0, 1),  # 3: sub-pixel, covers (11, 2)
        (13.3, 1.3, 0, 1), (13.6, 1.3, 0, 1), (13.3, 1.6, 0, 1),  # 4: sub-pixel, covers none
    ], H, W).float().to(dev)
    tris = torch.arange(15, device=dev).reshape(5, 3)
    raster = rasterize(clip, tris, (H, W), backend=backend)
    ids = raster.triangle_id[0].cpu()
    ref_id, _, _ = reference_raster(clip[0], tris, H, W)
    assert (ids.numpy() == ref_id).all()
    assert not (ids == 0).any() and not (ids == 2).any() and not (ids == 4).any()
    assert (ids == 3).nonzero().tolist() == [[2, 11]]
    assert (ids == 1).sum() > 10
    assert torch.isfinite(raster.barycentrics).all() and torch.isfinite(raster.depth).all()


def test_huge_triangle_covers_everything():
    H, W = 32, 40
    clip = clip_from_pixels([(-1000, -1000, 0, 1), (5000, -1000, 0, 1), (-1000, 5000, 0, 1)],
                            H, W).float()
    raster = rasterize(clip, torch.tensor([[0, 1, 2]]), (H, W))
    assert (raster.triangle_id == 0).all()


# -- camera -----------------------------------------------------------------------------------


@pytest.mark.parametrize("orthographic", [False, True])
def test_camera_project_agrees_with_clip(orthographic):
    cam = posed_camera(80, 60, (0.1, 0.4, -0.05), orthographic=orthographic)
    cam.fx = 150.0 if not orthographic else 0.4
    cam.cx, cam.cy = 37.2, 31.7
    points = torch.tensor([[0.0, 0.0, 0.0], [30.0, 40.0, 50.0], [-60.0, -10.0, 20.0]])
    pix = cam.project(points)
    assert torch.allclose(clip_to_pixels(cam.to_clip(points), cam.size), pix, atol=1e-3)
    # Model y up maps to image rows up (smaller v) in a frontal view.
    front = Camera.looking_at_face(64, 64, orthographic=orthographic)
    p = front.project(torch.tensor([[0.0, 0.0, 0.0], [0.0, 10.0, 0.0], [10.0, 0.0, 0.0]]))[0]
    assert p[1, 1] < p[0, 1] and p[2, 0] > p[0, 0]
    assert torch.allclose(p[0], torch.tensor([31.5, 31.5]))
    # A pixel centre at integer coordinates: a tiny triangle around a projected point
    # lands in exactly that pixel.
    target = torch.tensor([[12.0, -7.0, 30.0]])
    centre = cam.project(target)[0, 0]
    u, v = centre.round().tolist()
    pts = centre.round() + torch.tensor([[-0.2, -0.2], [0.2, -0.2], [-0.2, 0.2]])
    clip = clip_from_pixels([(x, y, 0.0, 1.0) for x, y in pts.tolist()],
                            cam.height, cam.width).float()
    ids = rasterize(clip, torch.tensor([[0, 1, 2]]), cam.size).triangle_id[0]
    assert (ids == 0).nonzero().tolist() == [[int(v), int(u)]]


def test_camera_gradients_flow():
    cam = posed_camera(32, 32, (0.0, 0.0, 0.0))
    cam.fx = torch.tensor(70.0, requires_grad=True)
    cam.t = torch.tensor([0.0, 0.0, 600.0], requires_grad=True)
    pts = cam.project(torch.tensor([[10.0, 20.0, 30.0]]))
    pts.sum().backward()
    assert cam.fx.grad is not None and cam.t.grad.abs().sum() > 0


# -- interpolate / texture / shading ----------------------------------------------------------


def test_texture_convention_v_up():
    tex = torch.zeros(4, 8, 3)
    tex[0, :, 0] = 1.0  # row 0 red: v = 1 (top of the UV square)
    tex[-1, :, 2] = 1.0  # last row blue: v = 0
    uv = torch.tensor([[[[0.5, 1.0 - 0.5 / 4], [0.5, 0.5 / 4], [0.5 / 8, 1.0 - 0.5 / 4]]]])
    out = texture(tex, uv)[0, 0]
    assert torch.allclose(out[0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(out[1], torch.tensor([0, 0, 1.0]))
    assert torch.allclose(texture(tex, uv, filter="nearest")[0, 0, 2], torch.tensor([1.0, 0, 0]))


def test_interpolate_reproduces_linear_attribute(backend, head):
    # An attribute that is linear in model space, interpolated perspective-correctly, must
    # equal the same linear function of the 3D surface point: use the camera depth itself.
    H, W = 48, 48
    dev = device_for(backend)
    cam = posed_camera(W, H, (0.2, 0.3, 0.0))
    verts_cam = cam.to_camera(head.vertices).to(dev)
    clip = cam.to_clip(head.vertices).to(dev)
    raster = rasterize(clip, head.triangles.to(dev), (H, W), backend=backend)
    depth_mm = interpolate(verts_cam[..., 2:], raster)[..., 0]
    w_interp = interpolate(clip[..., 3:], raster)[..., 0]
    covered = raster.coverage
    assert torch.allclose(depth_mm[covered], w_interp[covered], rtol=1e-5)
    # z/w from the raster equals interpolated z divided by interpolated w.
    z = interpolate(clip[..., 2:3], raster)[..., 0]
    assert torch.allclose(raster.depth[covered], (z / w_interp)[covered], atol=1e-5)
    # Separate attribute triangles (uv): values stay inside the uv square.
    uv = interpolate(head.uv_coords.to(dev), raster, head.uv_triangles.to(dev))
    assert uv[covered].min() >= 0 and uv[covered].max() <= 1


def test_sh_shading_and_normals(head):
    normals = vertex_normals(head.vertices, head.triangles)
    radial = torch.nn.functional.normalize(head.vertices[:100] / torch.tensor([75., 100., 90.])**2,
                                           dim=-1)
    assert ((normals[:100] * radial).sum(-1) > 0.95).all()  # ellipsoid cap: outward normals
    n = torch.nn.functional.normalize(torch.randn(2, 50, 3), dim=-1)
    ambient = torch.zeros(2, 9, 3)
    ambient[:, 0] = torch.tensor([0.2, 0.5, 1.0])
    assert torch.allclose(sh_shading(n, ambient), torch.tensor([0.2, 0.5, 1.0]).expand(2, 50, 3))
    coeffs = torch.randn(2, 9, 3)
    assert torch.allclose(sh_shading(n, coeffs), sh_shading(n, coeffs.reshape(2, 27)))
    front = torch.zeros(1, 9, 3)
    front[:, 0], front[:, 2] = 0.5, 0.5  # light from the camera side (+z)
    lit = sh_shading(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]]), front)[0, :, 0]
    assert lit[0] > lit[1]


# -- gradients --------------------------------------------------------------------------------


def small_scene(dtype=torch.float64):
    """A 4-triangle fan at 12 x 12 with no pixel centre near an edge."""
    verts = torch.tensor([[-40.0, -35.0, 0.0], [40.0, -33.0, 5.0], [42.0, 38.0, -5.0],
                          [-38.0, 36.0, 3.0], [1.3, 0.7, 25.0]], dtype=dtype)
    tris = torch.tensor([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    cam = Camera(40.0, 40.0, 5.73, 5.61, 12, 12, R=torch.tensor(FRONT, dtype=dtype),
                 t=torch.tensor([0.0, 0.0, 300.0], dtype=dtype))
    return verts, tris, cam


def test_gradcheck_photometric_path():
    verts, tris, cam = small_scene()
    torch.manual_seed(0)
    colors = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    sh = (torch.randn(1, 9, 3, dtype=torch.float64) * 0.2)
    sh[:, 0] += 1.0
    sh.requires_grad_(True)
    positions = verts.clone().requires_grad_(True)

    def image(colors, sh, positions):
        return render_mesh(positions, tris, cam, vertex_colors=colors, sh_coeffs=sh,
                           antialias=False).image

    assert torch.autograd.gradcheck(image, (colors, sh, positions), eps=1e-6, atol=1e-6)
    # Positions move barycentrics: their gradient is not zero.
    image(colors, sh, positions).sum().backward()
    assert positions.grad.abs().sum() > 0


def test_gradcheck_texture_and_antialias(cpu_path):
    verts, tris, cam = small_scene()
    uv_coords = torch.tensor([[0.1, 0.1], [0.9, 0.12], [0.88, 0.9], [0.12, 0.85], [0.5, 0.52]],
                             dtype=torch.float64)
    tex = torch.rand(6, 6, 3, dtype=torch.float64, requires_grad=True)
    positions = (verts * 1.1).requires_grad_(True)  # silhouette inside the 12 x 12 frame

    def image(tex, positions):
        return render_mesh(positions, tris, cam, texture_image=tex, uv_coords=uv_coords,
                           uv_triangles=tris, background=0.3, antialias=True).image

    assert torch.autograd.gradcheck(image, (tex, positions), eps=1e-6, atol=1e-5)


def test_antialiased_coverage_tracks_area_and_its_gradient():
    """Soft coverage sums to the analytic area; its gradient w.r.t. a silhouette vertex
    matches the analytic derivative (this is what drives silhouette fitting)."""
    H, W = 40, 40
    corners = torch.tensor([[5.3, 6.1], [33.7, 9.4], [12.2, 31.8]], dtype=torch.float64,
                           requires_grad=True)

    def soft_area(c):
        x = (2 * (c[:, 0] + 0.5) / W - 1)
        y = (2 * (c[:, 1] + 0.5) / H - 1)
        clip = torch.stack([x, y, torch.zeros(3, dtype=c.dtype), torch.ones(3, dtype=c.dtype)],
                           -1)[None]
        raster = rasterize(clip, torch.tensor([[0, 1, 2]]), (H, W))
        return antialias(raster.mask(), raster).sum()

    def true_area(c):
        (x0, y0), (x1, y1), (x2, y2) = c
        return 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))

    area = soft_area(corners)
    assert abs(area.item() - true_area(corners.detach()).item()) < 0.02 * true_area(corners)
    area.backward()
    true_corners = corners.detach().clone().requires_grad_(True)
    true_area(true_corners).backward()
    cos = torch.nn.functional.cosine_similarity(corners.grad.flatten(),
                                                true_corners.grad.flatten(), dim=0)
    assert cos > 0.95


# -- recovery by gradient descent -------------------------------------------------------------


def test_pose_and_lighting_recovery():
    torch.manual_seed(0)
    mesh = head_like_mesh(n_lat=24, n_lon=32)
    size = 64
    base = Camera.looking_at_face(size, size)
    true_rot = torch.tensor([0.05, 0.25, -0.03])
    true_t = torch.tensor([4.0, -3.0, 600.0])
    true_sh = torch.zeros(1, 9, 3)
    true_sh[0, 0] = torch.tensor([0.9, 0.8, 0.7])
    true_sh[0, 1:4] = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.25, 0.2], [-0.15, -0.1, -0.1]])

    def render(rot, t, sh):
        cam = base.with_pose(torch.tensor(FRONT) @ axis_angle_to_matrix(rot), t)
        return render_mesh(mesh.vertices, mesh.triangles, cam, vertex_colors=mesh.colors,
                           sh_coeffs=sh, background=0.5).image

    target = render(true_rot, true_t, true_sh).detach()
    rot = (true_rot + torch.tensor([0.05, -0.06, 0.04])).requires_grad_(True)
    t_xy = (true_t[:2] + torch.tensor([6.0, -5.0])).requires_grad_(True)
    sh = (true_sh + 0.15 * torch.randn(1, 9, 3)).requires_grad_(True)
    opt = torch.optim.Adam([{"params": [rot], "lr": 0.01}, {"params": [t_xy], "lr": 0.5},
                            {"params": [sh], "lr": 0.02}])
    steps = 150
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        t = torch.cat([t_xy, true_t[2:]])
        loss = (render(rot, t, sh) - target).abs().mean()
        loss.backward()
        opt.step()
        schedule.step()
    rot_err_deg = math.degrees((rot.detach() - true_rot).norm().item())
    t_err_mm = (t_xy.detach() - true_t[:2]).norm().item()
    assert rot_err_deg < 0.1, rot_err_deg
    assert t_err_mm < 0.1, t_err_mm
    # Nine SH coefficients are not identifiable from the half of the sphere of normals one
    # view sees (e.g. 1 and 3z^2 - 1 nearly trade off), so lighting is judged by what it
    # does: the shading of the visible surface.
    cam = base.with_pose(torch.tensor(FRONT) @ axis_angle_to_matrix(true_rot), true_t)
    shade = [render_mesh(mesh.vertices, mesh.triangles, cam, sh_coeffs=s, antialias=False)
             for s in (sh.detach(), true_sh)]
    shading_err = (shade[0].image - shade[1].image).abs()[shade[1].coverage]
    assert shading_err.mean() < 0.01, shading_err.mean()
    assert shading_err.max() < 0.05, shading_err.max()


# -- unproject ---------------------------------------------------------------------------------


def test_unproject_then_rerender_returns_input_colours(head):
    H, W = 96, 96
    cam = posed_camera(W, H, (0.1, 0.35, 0.0))
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                            torch.arange(W, dtype=torch.float32), indexing="ij")
    frame = torch.stack([0.5 + 0.4 * torch.sin(xx / 9.0), 0.5 + 0.4 * torch.cos(yy / 11.0),
                         0.5 + 0.3 * torch.sin((xx + yy) / 13.0)], -1)[None]
    tex, conf = extract_texture(frame, head.vertices, head.triangles, head.uv_coords,
                                head.uv_triangles, cam, 512)
    assert tex.shape == (1, 512, 512, 3) and conf.shape == (1, 512, 512, 1)
    assert 0 < (conf > 0).float().mean() < 0.6  # the back of the head is not seen
    assert conf.max() <= 1.0 and conf.min() >= 0.0
    out = render_mesh(head.vertices, head.triangles, cam, texture_image=tex[0],
                      uv_coords=head.uv_coords, uv_triangles=head.uv_triangles, antialias=False)
    uv = interpolate(head.uv_coords, out.raster, head.uv_triangles)
    seen = texture((conf[0] > 0).float(), uv, filter="bilinear")[..., 0] > 0.999
    check = out.coverage & seen
    assert check.sum() > 0.3 * out.coverage.sum()
    err = (out.image - frame).abs().amax(-1)[check]
    assert err.max() < 2.0 / 255, err.max()
    # Confidence falls with grazing angle: texels facing the camera beat those at the rim.
    assert conf.max() > 0.95 and (conf[conf > 0] < 0.3).any()


# -- backends ----------------------------------------------------------------------------------


def test_backend_selection(monkeypatch):
    assert "torch" in available_backends()
    assert get_backend("torch").name == "torch"
    monkeypatch.setenv("MORPH3D_RENDERER", "torch")
    assert get_backend().name == "torch"
    monkeypatch.setenv("MORPH3D_RENDERER", "auto")
    assert get_backend(device="cpu").name == "torch"
    with pytest.raises(Morph3dError, match="unknown renderer"):
        get_backend("opengl")
    for name in ALL_BACKENDS:
        if name not in available_backends():
            with pytest.raises(Morph3dError):
                get_backend(name).rasterize(torch.zeros(1, 3, 4),
                                            torch.zeros(1, 3, dtype=torch.int64), (4, 4))


# -- the real head model -----------------------------------------------------------------------


def default_head() -> tuple[torch.Tensor, torch.Tensor]:
    """Centred vertices (mm) and triangles of the embedded default head model."""
    try:
        from morph3d.model.registry import load_model

        model = load_model("default")
    except Exception as exc:  # noqa: BLE001 - any failure means the model is not there yet
        pytest.skip(f"default head model not loadable: {exc}")
    verts = model.vertices().detach()[0]
    return verts - verts.mean(0), model.triangles


def test_real_head_model_matches_reference(cpu_path):
    verts, triangles = default_head()
    H, W = 96, 96
    for pose in ((0.0, 0.0, 0.0), (0.2, 0.7, 0.0), (-0.1, -1.3, 0.1)):
        clip = posed_camera(W, H, pose, t=(0.0, 0.0, 600.0)).to_clip(verts)
        raster = rasterize(clip, triangles, (H, W))
        agree, bary_err, _, covered = compare_to_reference(raster, clip, triangles, H, W)
        assert covered > 0.1 * H * W
        assert agree >= 0.999 and bary_err < 1e-4


def test_channel_major_interpolation_and_shading_match_the_plain_ops(head):
    """render_mesh's fast paths (channel-major C x M) equal interpolate_sparse and
    sh_shading of normalised normals, for a batch with per-image lighting."""
    from render.ops import interpolate_channels, interpolate_sparse, sh_shading_channels

    H, W = 40, 48
    clips = torch.cat([posed_camera(W, H, p).to_clip(head.vertices)
                       for p in ((0.0, 0.2, 0.0), (0.1, -0.7, 0.0))])
    raster = rasterize(clips, head.triangles, (H, W))
    torch.manual_seed(0)
    attrs = torch.randn(2, head.vertices.shape[0], 4)
    fast = interpolate_channels(attrs.reshape(-1, 4).t(), raster, batched=True)
    assert torch.allclose(fast.t(), interpolate_sparse(attrs, raster), atol=1e-6)
    normals = torch.randn(3, 500)
    coeffs = torch.randn(2, 9, 3)
    batch = torch.randint(0, 2, (500,))
    unit = torch.nn.functional.normalize(normals.t(), dim=-1)
    expected = torch.stack([sh_shading(unit[None], coeffs[b:b + 1])[0, i]
                            for i, b in enumerate(batch.tolist())])
    assert torch.allclose(sh_shading_channels(normals, coeffs, batch).t(), expected, atol=1e-5)


def test_shared_edges_are_watertight():
    """A fan of thin triangles around a centre: every pixel centre inside the convex hull is
    claimed (no cracks along shared edges), including centres exactly on edges."""
    H, W = 33, 33
    n = 37
    angles = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    ring = torch.stack([16 + 15.3 * torch.cos(angles), 16 + 15.3 * torch.sin(angles)], 1)
    pts = torch.cat([torch.tensor([[16.0, 16.0]], dtype=torch.float64), ring])
    clip = clip_from_pixels([(x, y, 0.2, 1) for x, y in pts.tolist()], H, W).float()
    tris = torch.tensor([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    ids = rasterize(clip, tris, (H, W)).triangle_id[0]
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    inside = ((xx - 16.0) ** 2 + (yy - 16.0) ** 2) < 14.5 ** 2  # well inside the polygon
    assert (ids[inside] >= 0).all()
    ref_id, _, _ = reference_raster(clip[0], tris, H, W)
    assert ((ids.numpy() >= 0) == (ref_id >= 0)).all()


@pytest.mark.skipif(not HAVE_KERNELS, reason="numba not importable")
def test_compiled_kernels_match_the_pure_torch_path(monkeypatch):
    """The numba z-buffer gives exactly the torch z-buffer's triangle ids on the head model
    (several poses, a batch, with and without back-face culling); barycentrics, depth,
    antialias and the gradients of a full render agree to rounding."""
    import render.raster
    from render.ops import antialias_torch
    from render.raster import rasterize_torch

    # The first use may happen under no_grad (the kernels' self-test must still pass there).
    monkeypatch.setattr(render.raster, "_KERNELS_AVAILABLE", None)
    with torch.no_grad():
        assert render.raster.kernels_available()
    verts, triangles = default_head()
    H, W = 120, 100
    poses = ((0.0, 0.0, 0.0), (0.3, -1.2, 0.2), (0.0, 3.0, 0.0), (-0.4, 0.9, 0.1))
    clips = torch.cat([posed_camera(W, H, p, t=(4.0, -3.0, 600.0)).to_clip(verts)
                       for p in poses])
    for cull in (False, True):
        fast = rasterize_torch(clips, triangles, (H, W), cull_backfaces=cull, use_kernel=True)
        slow = rasterize_torch(clips, triangles, (H, W), cull_backfaces=cull, use_kernel=False)
        assert torch.equal(fast.triangle_id, slow.triangle_id)
        assert (fast.coverage.flatten(1).float().mean(1) > 0.15).all()
    torch.manual_seed(0)
    color = torch.rand(len(poses), H, W, 4)
    with monkeypatch.context() as m:
        force_pure_torch(m)
        pure_raster = rasterize_torch(clips, triangles, (H, W))
        pure_aa = antialias_torch(color, pure_raster)
    fast_raster = rasterize_torch(clips, triangles, (H, W))
    assert torch.allclose(fast_raster.barycentrics, pure_raster.barycentrics, atol=2e-6)
    assert torch.allclose(fast_raster.depth, pure_raster.depth, atol=1e-6)
    assert torch.equal(antialias_torch(color, fast_raster, use_kernel=True),
                       antialias_torch(color, fast_raster, use_kernel=False))
    assert torch.allclose(antialias_torch(color, fast_raster), pure_aa, atol=1e-5)

    cam = posed_camera(W, H, (0.1, 0.5, 0.0), t=(0.0, 0.0, 600.0))
    sh = torch.zeros(1, 9, 3)
    sh[:, 0], sh[:, 2] = 0.7, 0.3

    def grads() -> list[torch.Tensor]:
        v = verts.clone().requires_grad_(True)
        c = torch.full_like(verts, 0.6).requires_grad_(True)
        s = sh.clone().requires_grad_(True)
        out = render_mesh(v, triangles, cam, vertex_colors=c, sh_coeffs=s)
        (out.image.square().mean() + out.mask.mean()).backward()
        return [v.grad, c.grad, s.grad]

    fast_grads = grads()
    with monkeypatch.context() as m:
        force_pure_torch(m)
        pure_grads = grads()
    for a, b in zip(fast_grads, pure_grads, strict=True):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * b.abs().max())


@pytest.mark.skipif(not HAVE_KERNELS, reason="numba missing: no compiled planes")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planes_without_autograd_are_the_differentiable_ones_bit_for_bit(head, monkeypatch,
                                                                         dtype):
    """With nothing to differentiate, `barycentric_fields` computes its planes in the
    compiled pass (`barycentrics_no_grad`), giving the torch planes' numbers exactly, in a
    batch too (culled vertices behind the eye included)."""
    import render.kernels

    H, W = 48, 64
    clips = torch.cat([posed_camera(W, H, p).to_clip(head.vertices)
                       for p in ((0.0, 0.0, 0.0), (0.0, 0.8, 0.1))]).to(dtype)
    clips[1, :5, 3] = -1.0  # behind the eye: culled
    calls = []
    compiled = render.kernels.barycentrics_no_grad
    monkeypatch.setattr(render.kernels, "barycentrics_no_grad",
                        lambda *a: calls.append(1) or compiled(*a))
    with torch.no_grad():
        fast = rasterize(clips, head.triangles, (H, W), backend="torch")
    slow = rasterize(clips.clone().requires_grad_(True), head.triangles, (H, W),
                     backend="torch")
    assert calls == [1]
    assert fast.pixel_index.numel() > 500
    assert torch.equal(fast.pixel_index, slow.pixel_index)
    assert fast.pixel_barycentrics.dtype == dtype
    assert torch.equal(fast.pixel_barycentrics, slow.pixel_barycentrics.detach())
    assert torch.equal(fast.pixel_depth, slow.pixel_depth.detach())
