"""The final blend of the render into the frame: alpha (default) or Poisson.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from morph3d.composite.masks import _check_image, _check_mask, _disk

# --------------------------------------------------------------------------------------------
# 7. The blend
# --------------------------------------------------------------------------------------------


def picture_area(frame: np.ndarray, roi: tuple[int, int, int, int], dark: float = 0.08
                 ) -> np.ndarray:
    """(ROI h x w) bool: the ROI's pixels inside the picture, i.e. not on a letterbox or
    pillarbox bar. A bar is a run of whole frame columns (rows) from the frame's border that
    are darker than `dark` (0..1) in every pixel. A face next to a pillarbox must stop at the
    picture's edge instead of spilling a swapped cheek into the bar (where the occluder
    detector would bite a black notch out of it). Dark hair or a dark scene is not dark over
    the whole frame height."""
    x0, y0, x1, y1 = roi
    limit = dark * (255.0 if frame.dtype == np.uint8 else 1.0)

    def span(profile: np.ndarray) -> tuple[int, int]:
        bright = np.flatnonzero(profile > limit)
        return (int(bright[0]), int(bright[-1]) + 1) if len(bright) else (0, len(profile))

    h, w = frame.shape[:2]
    rows = np.ascontiguousarray(frame).reshape(h, w * 3)  # fast contiguous reductions
    left, right = span(rows.max(axis=0).reshape(w, 3).max(axis=1))
    top, bottom = span(rows.max(axis=1))
    ys, xs = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)


def composite(frame: np.ndarray, render: np.ndarray, mask: np.ndarray, *,
              base: np.ndarray | None = None,
              method: Literal["alpha", "poisson"] = "alpha") -> np.ndarray:
    """Blend `render` over the frame with alpha `mask`: ``base (1 - a) + render a``.

    `base` is the frame to blend onto (default `frame`; `remove_double_brows` gives one with
    the actor's brows inpainted). Pixels with alpha 0 are copied from `base` untouched, so
    they are bit-identical to the input frame outside the inpainted area.

    "alpha" (default) is stable over time: with colour matching it has no frame-to-frame
    state to drift. "poisson" first runs cv2.seamlessClone (gradient-domain, 8-bit) of the
    render into the base over the mask's core, which hides colour seams on a single image
    but can flicker in video because every frame solves its own boundary problem.
    """
    frame = _check_image("frame", frame)
    shape = frame.shape[:2]
    render = _check_image("render", render, shape)
    mask = _check_mask("mask", mask, shape)
    base = frame if base is None else _check_image("base", base, shape)
    if method not in ("alpha", "poisson"):
        raise ValueError(f"method must be 'alpha' or 'poisson', got {method!r}")
    out = base.copy()
    sel = mask > 0
    if not sel.any():
        return out
    if method == "poisson":
        render = _poisson_source(base, render, mask)
    a = mask[sel][:, None]
    out[sel] = base[sel] * (1.0 - a) + render[sel] * a
    return out


def _poisson_source(base: np.ndarray, render: np.ndarray, mask: np.ndarray) -> np.ndarray:
    core = (mask > 0.5).astype(np.uint8)
    core[[0, -1], :] = 0
    core[:, [0, -1]] = 0
    core = cv2.erode(core, _disk(1))
    if core.sum() < 16:
        return render
    ys, xs = np.nonzero(core)
    y0, y1, x0, x1 = ys.min() - 1, ys.max() + 2, xs.min() - 1, xs.max() + 2
    src = np.clip(np.rint(render[y0:y1, x0:x1] * 255), 0, 255).astype(np.uint8)
    dst = np.clip(np.rint(base * 255), 0, 255).astype(np.uint8)
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    cloned = cv2.seamlessClone(src, dst, core[y0:y1, x0:x1] * 255, centre, cv2.NORMAL_CLONE)
    out = render.copy()
    out[core > 0] = cloned[core > 0].astype(np.float32) / 255.0
    return out
