"""Step 9 of the photo fit: spherical-harmonics lighting and the UV albedo texture, with the
specular highlights compressed (numpy, float64).

Units: pixels (OpenCV convention), millimetres, radians. Poses: X_cam = R X_model + t.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from fitting.model_arrays import model_arrays, vertex_positions
from fitting.params import SH_COEFFS, CameraParams
from fitting.pose import FrameState, project, rotation_matrix
from morph3d.model.geometry import vertex_normals


def _lighting_normals(vertices: np.ndarray, triangles: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Vertex normals in the SH lighting frame (view space, x right, y up, z to camera)."""
    return (vertex_normals(vertices, triangles) @ R.T) * np.array([1.0, -1.0, -1.0])


def sh_basis_np(normals: np.ndarray) -> np.ndarray:
    from render.ops import sh_basis

    return sh_basis(torch.as_tensor(normals)).numpy()


def estimate_sh_vertices(image: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                         sample_ids: np.ndarray, state: FrameState, camera: CameraParams,
                         albedo: np.ndarray | float = 0.6, regularise: float = 1e-2
                         ) -> np.ndarray:
    """Linear SH lighting (9 x 3) from image colours at front-facing vertices: a cheap,
    render-free estimate (colour = albedo * SH(normal) . c), used to start step 9 and for
    every video frame."""
    R = rotation_matrix(state.rotation)
    normals = _lighting_normals(vertices, triangles, R)[sample_ids]
    facing = normals[:, 2] > 0.3
    uv = project(vertices[sample_ids], state.rotation, state.translation, camera)
    H, W = image.shape[:2]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1)
    keep = facing & inside
    sh = np.zeros((SH_COEFFS, 3))
    sh[0] = 1.0
    if keep.sum() < 30:
        return sh
    px = np.clip(np.round(uv[keep]).astype(int), 0, [W - 1, H - 1])
    colors = image[px[:, 1], px[:, 0]].astype(np.float64)
    if colors.max() > 1.5:
        colors = colors / 255.0
    basis = sh_basis_np(normals[keep])  # N x 9
    alb = albedo[sample_ids][keep] if isinstance(albedo, np.ndarray) else np.full((keep.sum(), 3),
                                                                                  albedo)
    prior = np.zeros(SH_COEFFS)
    prior[0] = 1.0
    for c in range(3):
        A = basis * alb[:, c:c + 1]
        A = np.concatenate([A, np.sqrt(regularise * len(A)) * np.eye(SH_COEFFS)])
        b = np.concatenate([colors[:, c], np.sqrt(regularise * len(colors)) * prior * 0])
        sh[:, c] = np.linalg.lstsq(A, b, rcond=None)[0]
    return sh


def _as_float_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, 2)
    img = img[..., :3]
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


def compress_highlights(albedo: np.ndarray, skin: np.ndarray, sigmas: float = 3.0
                        ) -> np.ndarray:
    """Tone down specular highlights in an albedo image (H x W x 3 float, photo / shading).

    A shiny nose tip or a flash reflection divides into a near-white albedo that the
    swap's render would then show under every lighting (khabenskii.jpg's flash-lit nose
    came out as a glowing spot). Within `skin` (bool H x W, the face's skin), pixels whose
    brightness (channel mean) is more than `sigmas` robust standard deviations above the
    skin's median are scaled down to that level and, over the next standard deviation,
    blended into the skin's median colour at that level. A gentle cap: hiding such texels
    for completion instead looked cleaner but moved the swap away from the source photo
    (identity distance 0.464 -> 0.500 on orig.webm), and a cap at 2 sigmas also cost
    identity (0.486)."""
    brightness = albedo.mean(-1)
    values = brightness[skin]
    if values.size < 16:
        return albedo
    median = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - median))), 1e-3)
    cap = median + sigmas * spread
    over = skin & (brightness > cap)
    if not over.any():
        return albedo
    skin_colour = np.median(albedo[skin], axis=0)
    flat = skin_colour / max(float(skin_colour.mean()), 1e-6) * cap  # skin colour at the cap
    scaled = albedo * (cap / np.maximum(brightness, 1e-6))[..., None]
    blend = np.clip((brightness - cap) / spread, 0.0, 1.0)[..., None]
    return np.where(over[..., None], (1.0 - blend) * scaled + blend * flat, albedo)


class Adam:
    """`torch.optim.Adam(params, lr)` with its defaults (betas 0.9, 0.999, eps 1e-8, no
    weight decay), on CPU tensors: the same operations in the same order as torch's
    single-tensor step, so the same numbers bit for bit. torch's optimizers import
    `torch._dynamo` on first use, about 2 CPU-seconds per process, more than this fit's steps
    cost."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (
            0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = list(params), float(lr), betas, float(eps)
        self.steps = [0] * len(self.params)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                           for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad, exp_avg, exp_avg_sq = p.grad, self.exp_avg[i], self.exp_avg_sq[i]
            self.steps[i] += 1
            # torch counts steps in a float32 tensor and reads them back as Python floats
            step = float(self.steps[i])
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def fit_lighting_and_texture(model, images: list[np.ndarray], identity: np.ndarray,
                             states: list[FrameState], cameras: list[CameraParams],
                             steps: int = 25, max_side: int = 256, texture_size: int | None = None,
                             offset: np.ndarray | None = None
                             ) -> tuple[list[FrameState], np.ndarray, np.ndarray]:
    """Step 9: per-image SH lighting by a photometric loss (rendered face-skin pixels vs the
    photo, at most `max_side` px, Adam on SH + a mean skin albedo), then the albedo texture:
    each photo divided by its shading, its highlights toned down (`compress_highlights`),
    unprojected to UV; photos merged by confidence.
    `offset`: the identity's corrective deformation (V x 3 mm), if any.
    Returns (states with sh, texture T x T x 3, confidence T x T)."""
    from render.helpers import extract_texture, render_mesh
    from render.ops import interpolate

    arrays = model_arrays(model)
    tris = torch.as_tensor(arrays.triangles)
    uv_coords = torch.as_tensor(model.data.uv_coords)
    uv_tris = torch.as_tensor(model.data.uv_triangles)
    size = texture_size or int(model.data.texture_size)
    skin = np.zeros(len(arrays.mean), np.float32)
    skin[arrays.face_vertices] = 1.0
    skin_t = torch.as_tensor(skin)[:, None].expand(-1, 3)
    verts_np = [vertex_positions(model, identity, s.expression, offset) for s in states]
    tex_sum = np.zeros((size, size, 3))
    conf_sum = np.zeros((size, size))
    conf_max = np.zeros((size, size))
    out_states = []
    for image, state, cam, verts in zip(images, states, cameras, verts_np, strict=True):
        img = _as_float_image(image)
        H, W = img.shape[:2]
        scale = min(1.0, max_side / max(H, W))
        small = cv2.resize(img, (max(1, round(W * scale)), max(1, round(H * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else img
        h, w = small.shape[:2]
        small_cam = CameraParams(cam.fx * w / W, cam.fy * h / H, (cam.cx + 0.5) * w / W - 0.5,
                                 (cam.cy + 0.5) * h / H - 0.5, w, h)
        sh0 = estimate_sh_vertices(small, verts, arrays.triangles, arrays.face_vertices, state,
                                   small_cam, albedo=1.0)
        # sh0 absorbs the albedo (albedo 1): split it into a grey-ish albedo and lighting.
        albedo0 = np.clip(sh0[0], 0.05, 1.0)
        sh_t = torch.tensor(sh0 / albedo0, dtype=torch.float32, requires_grad=True)
        albedo_t = torch.tensor(albedo0, dtype=torch.float32, requires_grad=True)
        camera = small_cam.to_camera(state.rotation, state.translation)
        v_t = torch.as_tensor(verts, dtype=torch.float32)[None]
        target = torch.as_tensor(small)[None]
        with torch.no_grad():
            skin_mask = render_mesh(v_t, tris, camera, vertex_colors=skin_t,
                                    antialias=False).image[..., :1] > 0.99
        if steps > 0 and int(skin_mask.sum()) > 50:
            opt = Adam([sh_t, albedo_t], lr=0.03)
            for _ in range(steps):
                opt.zero_grad()
                out = render_mesh(v_t, tris, camera, vertex_colors=albedo_t[None].expand(
                    len(verts), 3), sh_coeffs=sh_t[None], antialias=False)
                diff = (out.image - target) * skin_mask
                loss = torch.sqrt(diff.pow(2).sum(-1) + 1e-6).sum() / skin_mask.sum()
                loss = loss + 1e-3 * (sh_t[1:] ** 2).sum()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    albedo_t.clamp_(0.02, 1.0)
        sh = sh_t.detach().numpy().astype(np.float64)
        st = state.copy()
        st.sh = sh
        out_states.append(st)
        # Albedo image = photo / shading (full resolution), then unproject to UV.
        full_cam = cam.to_camera(state.rotation, state.translation)
        with torch.no_grad():
            lit = render_mesh(v_t, tris, full_cam, sh_coeffs=torch.as_tensor(
                sh, dtype=torch.float32)[None], antialias=False)
            # The face-skin pixels from the same raster: one rasterization.
            face_skin = interpolate(skin_t, lit.raster)[0, ..., 0].numpy() > 0.99
        shading = lit.image[0].numpy()
        albedo_img = np.where(shading > 0.05, img / np.maximum(shading, 0.05), img)
        albedo_img = compress_highlights(albedo_img, face_skin)
        texture, confidence = extract_texture(
            torch.as_tensor(np.clip(albedo_img, 0, 1))[None], v_t, tris, uv_coords, uv_tris,
            full_cam, size)
        t = texture[0].numpy().astype(np.float64)
        c = confidence[0, ..., 0].numpy().astype(np.float64)
        tex_sum += t * c[..., None]
        conf_sum += c
        conf_max = np.maximum(conf_max, c)
        if len(images) == 1:
            tex_sum = t * np.maximum(c, 1e-6)[..., None]
            conf_sum = np.maximum(c, 1e-6)
    texture = (tex_sum / np.maximum(conf_sum, 1e-6)[..., None]).astype(np.float32)
    return out_states, np.clip(texture, 0, 1), conf_max.astype(np.float32)
