"""Colour: the sRGB transfer curve, luminance and robust statistics.
"""

from __future__ import annotations

import cv2
import numpy as np

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
    The power runs through OpenCV (vectorised, several times numpy's float power)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    flat = x.reshape(-1, 1)  # any shape as one OpenCV column
    y = cv2.pow((flat + np.float32(0.055)) / np.float32(1.055), 2.4)
    np.copyto(y, flat / np.float32(12.92), where=flat <= 0.04045)
    return y.reshape(x.shape)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values, float32 (the inverse curve)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    flat = x.reshape(-1, 1)
    y = cv2.pow(flat, 1 / 2.4)
    y *= np.float32(1.055)
    y -= np.float32(0.055)
    np.copyto(y, flat * np.float32(12.92), where=flat <= 0.0031308)
    return y.reshape(x.shape)
