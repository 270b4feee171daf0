"""The face window of a frame: the crop box around the face, the crop's camera, pasting a
window back; and the region channels every face render carries.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from morph3d.model.model import REGION_CHANNELS as REGION_CHANNELS  # for the renderer


def face_crop_box(points: np.ndarray, frame_shape: tuple[int, int], scale: float = 1.7
                  ) -> tuple[float, float, float]:
    """A square (x0, y0, side) in continuous pixel coordinates around the face."""
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    side = float(max(hi - lo) * scale)
    return float(centre[0] - side / 2), float(centre[1] - side / 2), max(side, 8.0)


def crop_camera(camera, box: tuple[float, float, float], size: int):
    """The camera seeing only the crop `box`, at `size` x `size` pixels.

    A crop pixel j has its centre at frame position x0 + (j + 0.5) * side / size - 0.5
    (pixel centres at integers), hence fx' = fx * s and cx' = (cx - x0 + 0.5) * s - 0.5.
    """
    from dataclasses import replace

    x0, y0, side = box
    s = size / side
    return replace(camera, fx=camera.fx * s, fy=camera.fy * s,
                   cx=(camera.cx - x0 + 0.5) * s - 0.5, cy=(camera.cy - y0 + 0.5) * s - 0.5,
                   width=size, height=size)


def paste_window(crop: np.ndarray, box: tuple[float, float, float],
                 frame_shape: tuple[int, int], interpolation: int = cv2.INTER_CUBIC
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Resample a square crop (H x W x C) back to frame pixels: the frame window the box
    covers (clipped to the frame) and the window's top-left frame pixel (x, y)."""
    x0, y0, side = box
    size = crop.shape[0]
    s = size / side
    h, w = frame_shape
    channels = crop.shape[2] if crop.ndim == 3 else 1
    left, top = min(max(int(np.floor(x0)), 0), w), min(max(int(np.floor(y0)), 0), h)
    right, bottom = min(int(np.ceil(x0 + side)) + 1, w), min(int(np.ceil(y0 + side)) + 1, h)
    if right <= left or bottom <= top:
        return np.zeros((0, 0, channels), np.float32), (left, top)
    # ROI pixel (q + left) -> crop j = (q + left - x0 + 0.5) * s - 0.5
    m = np.array([[s, 0, (left - x0 + 0.5) * s - 0.5], [0, s, (top - y0 + 0.5) * s - 0.5]],
                 np.float64)
    roi = cv2.warpAffine(np.ascontiguousarray(crop, np.float32), m, (right - left, bottom - top),
                         flags=interpolation | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return roi.reshape(bottom - top, right - left, channels), (left, top)


def paste_mask(crop: np.ndarray, box: tuple[float, float, float],
               frame_shape: tuple[int, int], level: float = 0.5,
               rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Bool mask of the frame window `paste_window` gives (its shape; same origin): where
    the crop's channel (H x W), pasted bilinearly, is above `level` (>= 0). Only the
    window pixels whose samples fall beside a crop pixel above `level` are pasted: a
    bilinear sample exceeds `level` only next to one, and a feature's region (an eye, the
    teeth) covers a small part of the window. `rect`: the crop pixels' bounding rectangle
    (x, y, width, height; `channel_rects`) when the caller has it."""
    x0, y0, side = box
    size = crop.shape[0]
    s = size / side
    h, w = frame_shape
    left, top = min(max(int(np.floor(x0)), 0), w), min(max(int(np.floor(y0)), 0), h)
    right, bottom = min(int(np.ceil(x0 + side)) + 1, w), min(int(np.ceil(y0 + side)) + 1, h)
    if right <= left or bottom <= top:
        return np.zeros((0, 0), bool)
    out = np.zeros((bottom - top, right - left), bool)
    cx, cy, cw, ch = (cv2.boundingRect(np.greater(crop, level).view(np.uint8)) if rect is None
                      else rect)
    if not cw:
        return out
    # window pixel q samples crop position (q + start - origin + 0.5) s - 0.5: the window
    # span whose samples fall within a pixel of the crop's span, a pixel more each side
    qx0 = min(max(int(np.floor((cx - 0.5) / s + x0 - left)) - 2, 0), out.shape[1])
    qx1 = min(max(int(np.ceil((cx + cw + 0.5) / s + x0 - left)) + 2, 0), out.shape[1])
    qy0 = min(max(int(np.floor((cy - 0.5) / s + y0 - top)) - 2, 0), out.shape[0])
    qy1 = min(max(int(np.ceil((cy + ch + 0.5) / s + y0 - top)) + 2, 0), out.shape[0])
    if qy1 <= qy0 or qx1 <= qx0:
        return out
    m = np.array([[s, 0, (left + qx0 - x0 + 0.5) * s - 0.5],
                  [0, s, (top + qy0 - y0 + 0.5) * s - 0.5]], np.float64)
    roi = cv2.warpAffine(np.asarray(crop, np.float32), m, (qx1 - qx0, qy1 - qy0),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    np.greater(roi, level, out=out[qy0:qy1, qx0:qx1])
    return out


@numba.njit(cache=True, nogil=True)
def channel_rects(fields: np.ndarray, first: int, count: int,
                  level: float) -> np.ndarray:  # pragma: no cover - compiled
    """(count, 4) int: for channels first .. first + count - 1 of `fields` (H x W x C), the
    bounding rectangle (x, y, width, height; zeros where none) of the pixels above `level`,
    as `cv2.boundingRect` gives it, in one pass over the interleaved channels."""
    h, w = fields.shape[:2]
    lo_x = np.full(count, w, np.int64)
    lo_y = np.full(count, h, np.int64)
    hi_x = np.full(count, -1, np.int64)
    hi_y = np.full(count, -1, np.int64)
    for y in range(h):
        for x in range(w):
            for i in range(count):
                if fields[y, x, first + i] > level:
                    lo_x[i] = min(lo_x[i], x)
                    hi_x[i] = max(hi_x[i], x)
                    lo_y[i] = min(lo_y[i], y)
                    hi_y[i] = y
    out = np.zeros((count, 4), np.int64)
    for i in range(count):
        if hi_x[i] >= 0:
            out[i, 0], out[i, 1] = lo_x[i], lo_y[i]
            out[i, 2], out[i, 3] = hi_x[i] - lo_x[i] + 1, hi_y[i] - lo_y[i] + 1
    return out
