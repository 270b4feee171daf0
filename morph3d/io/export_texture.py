"""The UV texture a mesh export embeds: the fit's own, or a neutral painted one.

Textures are H x W x 3 RGB with row 0 at v = 1; `texture_uint8` validates one and
`png_bytes` encodes it for the .glb and the .obj's texture file.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from morph3d.errors import InputError
from morph3d.model.model import ModelData

SKIN_RGB = (0.87, 0.68, 0.58)
REGION_RGB = {  # painted in this order over skin; later regions win where UVs overlap
    "lips": (0.74, 0.45, 0.43),
    "mouth_interior": (0.42, 0.17, 0.18),
    "tongue": (0.72, 0.36, 0.38),
    "teeth": (0.93, 0.91, 0.85),
}
SCLERA_RGB = (0.93, 0.91, 0.88)
IRIS_RGB = (0.33, 0.24, 0.17)
PUPIL_RGB = (0.03, 0.03, 0.03)
IRIS_HALF_ANGLE_RAD = 0.42  # angular radius of the iris seen from the eyeball centre
PUPIL_HALF_ANGLE_RAD = 0.15


def _uv_to_pixels(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """UV (v up) -> pixel coordinates (x right, y down, pixel centres at integers)."""
    return np.stack([uv[..., 0] * width - 0.5, (1.0 - uv[..., 1]) * height - 0.5], axis=-1)


def default_texture(data: ModelData, size: int | None = None) -> np.ndarray:
    """A neutral UV texture, size x size x 3 float32 RGB in [0, 1] (row 0 is v = 1).

    Skin everywhere, with lips, mouth, tongue and teeth tinted by region and eyeballs given
    a sclera, iris and pupil (placed by the angle from each eyeball's forward +z axis).
    """
    size = int(size or data.texture_size)
    image = np.empty((size, size, 3), np.float32)
    image[:] = SKIN_RGB
    shift = 4  # sub-pixel precision of the polygon fill
    corners_px = _uv_to_pixels(data.uv_coords[data.uv_triangles], size, size)
    fixed = np.round(corners_px * (1 << shift)).astype(np.int32)  # F x 3 x 2
    for region, rgb in REGION_RGB.items():
        if region not in data.regions:
            continue
        for t in np.flatnonzero(data.regions[region][data.triangles].all(axis=1)):
            cv2.fillConvexPoly(image, fixed[t], rgb, lineType=cv2.LINE_8, shift=shift)
    eyeballs = [data.regions[k] for k in ("left_eyeball", "right_eyeball") if k in data.regions]
    if not eyeballs and "eyeballs" in data.regions:
        eyeballs = [data.regions["eyeballs"]]
    for mask in eyeballs:
        _paint_eyeball(image, data, mask, corners_px, fixed, shift)
    return image


def _paint_eyeball(image: np.ndarray, data: ModelData, mask: np.ndarray,
                   corners_px: np.ndarray, fixed: np.ndarray, shift: int) -> None:
    """Colour an eyeball's texels by the angle of their surface point from the +z axis."""
    tris = np.flatnonzero(mask[data.triangles].all(axis=1))
    if tris.size == 0:
        return
    centre = data.mean[mask].mean(axis=0)
    # Back triangles first so the front of the eye wins where its UVs overlap the back.
    tris = tris[np.argsort(data.mean[data.triangles[tris]][:, :, 2].mean(axis=1))]
    owner = np.full(image.shape[:2], -1.0, np.float32)
    for t in tris:
        cv2.fillConvexPoly(owner, fixed[t], float(t), lineType=cv2.LINE_8, shift=shift)
    rows, cols = np.nonzero(owner >= 0)
    if rows.size == 0:
        return
    owned = owner[rows, cols].astype(np.int64)
    a, b, c = (corners_px[owned, i] for i in range(3))
    p = np.stack([cols, rows], axis=1).astype(np.float64)
    # Barycentric coordinates of each texel centre in its triangle (2D, clipped to it).
    v0, v1, v2 = b - a, c - a, p - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    w1 = np.clip((v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det, 0, 1)
    w2 = np.clip((v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det, 0, 1 - w1)
    weights = np.stack([1 - w1 - w2, w1, w2], axis=1)
    points = np.einsum("nc,ncd->nd", weights, data.mean[data.triangles[owned]])
    direction = points - centre
    cos_angle = direction[:, 2] / np.maximum(np.linalg.norm(direction, axis=1), 1e-9)
    angle = np.arccos(np.clip(cos_angle, -1, 1))
    colours = np.where((angle < PUPIL_HALF_ANGLE_RAD)[:, None], PUPIL_RGB,
                       np.where((angle < IRIS_HALF_ANGLE_RAD)[:, None], IRIS_RGB, SCLERA_RGB))
    image[rows, cols] = colours


def texture_uint8(texture: np.ndarray) -> np.ndarray:
    """Validate an H x W x 3 texture (float in [0, 1] or uint8) and return it as uint8 RGB."""
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] not in (3, 4) or min(texture.shape[:2]) < 1:
        raise InputError(f"texture must be an H x W x 3 RGB image, got shape {texture.shape}")
    texture = texture[:, :, :3]
    if texture.dtype == np.uint8:
        return np.ascontiguousarray(texture)
    if not np.isfinite(texture).all():
        raise InputError("texture has non-finite values")
    return np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """The PNG file of an H x W x 3 uint8 RGB image."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
