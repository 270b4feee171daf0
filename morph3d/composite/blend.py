"""The final blend of the warped face into the frame (alpha), kept inside the picture.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from morph3d.composite.colour import BYTE_TO_UNIT
from morph3d.composite.masks import _check_image, _check_mask

# --------------------------------------------------------------------------------------------
# The blend
# --------------------------------------------------------------------------------------------


def picture_bounds(frame: np.ndarray, dark: float = 0.08) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) frame pixels of the picture inside any letterbox or
    pillarbox bars (right and bottom exclusive). A bar is a run of whole frame columns
    (rows) from the frame's border that are darker than `dark` (0..1) in every pixel; dark
    hair or a dark scene is not dark over the whole frame height. A frame with no bright
    pixel at all is all picture."""
    limit = dark * (255.0 if frame.dtype == np.uint8 else 1.0)

    def span(profile: np.ndarray) -> tuple[int, int]:
        bright = np.flatnonzero(profile > limit)
        return (int(bright[0]), int(bright[-1]) + 1) if len(bright) else (0, len(profile))

    h, w = frame.shape[:2]
    rows = np.ascontiguousarray(frame).reshape(h, w * 3)  # fast contiguous reductions
    left, right = span(rows.max(axis=0).reshape(w, 3).max(axis=1))
    top, bottom = span(rows.max(axis=1))
    return left, top, right, bottom


def picture_area(frame: np.ndarray, roi: tuple[int, int, int, int], dark: float = 0.08
                 ) -> np.ndarray:
    """(ROI h x w) bool: the ROI's pixels inside the picture (`picture_bounds`), i.e. not
    on a letterbox or pillarbox bar. A face next to a pillarbox must stop at the picture's
    edge instead of spilling a swapped cheek into the bar (where the occluder detector
    would bite a black notch out of it)."""
    x0, y0, x1, y1 = roi
    left, top, right, bottom = picture_bounds(frame, dark)
    ys, xs = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)


def composite(frame: np.ndarray, render: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend `render` over the frame with alpha `mask`: ``frame (1 - a) + render a``.

    Pixels with alpha 0 are copied untouched, so they are bit-identical to the input frame.
    An alpha blend has no per-frame boundary problem to solve, so it does not flicker in
    video; the warped face meets the frame at its edge, so it needs no gradient-domain
    blend."""
    frame = _check_image("frame", frame)
    shape = frame.shape[:2]
    render = _check_image("render", render, shape)
    mask = _check_mask("mask", mask, shape)
    out = frame.copy()
    blend_into(out, frame, render, mask)
    return out


def blend_into(out: np.ndarray, frame: np.ndarray, render: np.ndarray, mask: np.ndarray
               ) -> None:
    """`composite` written into `out` (H x W x 3, float32, or uint8 rounded from [0, 1]),
    only where the mask is above zero; every other pixel of `out` is left as it is.
    frame, render: float32 H x W x 3 in [0, 1]; mask: float32 H x W. The arithmetic runs on
    the mask's bounding box only (the face is a small part of a frame)."""
    if out.dtype == np.uint8:  # the swap's frames: one compiled pass, the same bytes
        _blend_bytes(out, np.asarray(frame, np.float32), BYTE_TO_UNIT,
                     np.asarray(render, np.float32), np.asarray(mask, np.float32), 0, 0)
        return
    where = (mask > 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(where)
    if w == 0 or h == 0:
        return
    box = (slice(y, y + h), slice(x, x + w))
    a = mask[box][..., None]
    blended = frame[box] * (1.0 - a)
    blended += render[box] * a
    target = out[box]
    # OpenCV writes into the view itself (same size and type); where alpha is 0 it is left.
    if cv2.copyTo(blended, where[box], target) is not target:
        raise AssertionError("cv2.copyTo did not write in place")


def blend_window_into(out: np.ndarray, window: np.ndarray, offset: tuple[int, int],
                      mask: np.ndarray) -> None:
    """`blend_into` a uint8 `out` that holds the frame's bytes, with the render given as a
    window (H' x W' x 3 float32) whose pixel (i, j) lies under out's (i - row offset,
    j - column offset): the render read in place, zeros beyond it, as a copy of its part
    under `out` would be; each frame byte read as `BYTE_TO_UNIT` gives it, so the frame is
    never converted to float as a whole."""
    _blend_bytes(out, np.zeros((0, 0, 3), np.float32), BYTE_TO_UNIT,
                 np.asarray(window, np.float32), np.asarray(mask, np.float32), int(offset[0]),
                 int(offset[1]))


@numba.njit(cache=True, nogil=True)
def _blend_bytes(out: np.ndarray, frame: np.ndarray, table: np.ndarray, render: np.ndarray,
                 mask: np.ndarray, dy: int, dx: int) -> None:  # pragma: no cover - compiled
    """`blend_into` a uint8 `out`, pixel by pixel in float32: frame (1 - a) + render a,
    clipped to [0, 1], rounded to a byte; pixels with alpha 0 are not written. The render's
    pixel for out's (y, x) is (y + dy, x + dx), 0 beyond it. The frame's value is `frame`'s
    (float32 H x W x 3), or with an empty `frame` `table` of out's own byte, read before it
    is written."""
    zero, one, scale, half = (np.float32(0.0), np.float32(1.0), np.float32(255.0),
                              np.float32(0.5))
    rh, rw = render.shape[0], render.shape[1]
    own = frame.size == 0
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            a = mask[y, x]
            if a > zero:
                b = one - a
                ry, rx = y + dy, x + dx
                inside = 0 <= ry < rh and 0 <= rx < rw
                for c in range(3):
                    r = render[ry, rx, c] if inside else zero
                    f = table[out[y, x, c]] if own else frame[y, x, c]
                    v = f * b + r * a
                    out[y, x, c] = np.uint8(min(max(v, zero), one) * scale + half)
