"""Colour: the sRGB transfer curve, luminance and robust statistics.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

# byte -> float32 in [0, 1], as `bytes.astype(np.float32) / 255.0` gives it: one table lookup
BYTE_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)

# The luminance of linear sRGB / Rec. 709 RGB (Y of CIE XYZ): what `rgb @ LUMA` gives.
LUMA = np.float32([0.2126, 0.7152, 0.0722])


def robust_stats(samples: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and MAD-based standard deviation of N x C samples.

    Medians ignore the freckles, specular highlights, stubble and stray hair that pull a
    plain mean; the std is floored at `min_std` so a flat patch cannot give a zero spread.
    """
    columns = np.array(np.asarray(samples, np.float64).reshape(len(samples), -1).T,
                       order="C")  # one contiguous row per column: faster partitions
    median = np.median(columns, axis=1)
    columns -= median[:, None]
    np.abs(columns, out=columns)
    mad = np.median(columns, axis=1)
    return median, np.maximum(1.4826 * mad, min_std)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve), float32.
    The power runs through OpenCV (vectorised, several times numpy's float power); the
    clip, the power's base and the linear toe are compiled passes, float32 as numpy's
    `clip`, `(x + 0.055) / 1.055` and `x / 12.92` give them, without their temporaries."""
    x = np.asarray(image, np.float32)
    flat = np.ascontiguousarray(x).reshape(-1)
    clipped, base = np.empty_like(flat), np.empty_like(flat)
    _srgb_base(flat, clipped, base)
    y = cv2.pow(base.reshape(-1, 1), 2.4).reshape(-1)  # any shape as one OpenCV column
    _srgb_toe(clipped, y)
    return y.reshape(x.shape)


@numba.njit(cache=True, nogil=True, inline="always")
def clip_unit(v, zero, one):  # pragma: no cover - compiled
    """v clipped to [zero, one] in v's own type, NaN kept (as `np.clip`): for compiled
    passes that must give numpy's numbers."""
    if v < zero:
        return zero
    if v > one:
        return one
    return v


@numba.njit(cache=True, nogil=True)
def _srgb_base(x: np.ndarray, clipped: np.ndarray,
               base: np.ndarray) -> None:  # pragma: no cover - compiled
    """x clipped to [0, 1] (NaN kept, as `np.clip`), and (clipped + 0.055) / 1.055."""
    zero, one = np.float32(0.0), np.float32(1.0)
    offset, scale = np.float32(0.055), np.float32(1.055)
    for i in range(x.size):
        v = clip_unit(x[i], zero, one)
        clipped[i] = v
        base[i] = (v + offset) / scale


@numba.njit(cache=True, nogil=True)
def _srgb_toe(clipped: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - compiled
    """y (the power) <- clipped / 12.92 where clipped <= 0.04045: the curve's linear toe."""
    toe, slope = np.float32(0.04045), np.float32(12.92)
    for i in range(y.size):
        v = clipped[i]
        if v <= toe:
            y[i] = v / slope


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values, float32 (the inverse curve)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    flat = x.reshape(-1, 1)
    y = cv2.pow(flat, 1 / 2.4)
    y *= np.float32(1.055)
    y -= np.float32(0.055)
    np.copyto(y, flat * np.float32(12.92), where=flat <= 0.0031308)
    return y.reshape(x.shape)
