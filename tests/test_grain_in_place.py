"""`transfer.apply_ratio(grain_from=)`: the frame's own grain added at its own pixels, not
the grain the warp moved and resampled along with the face."""

from __future__ import annotations

import cv2
import numpy as np

from morph3d.swap.transfer import apply_ratio


def _fine(image: np.ndarray) -> np.ndarray:
    """Grey levels' difference from a 1 px Gaussian low-pass (the grain's band)."""
    grey = image.astype(np.float32).mean(-1)
    return grey - cv2.GaussianBlur(grey, (0, 0), 1.0)


def _noisy_frame(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)


def test_the_image_as_its_own_grain_source_changes_nothing() -> None:
    rng = np.random.default_rng(1)
    image = _noisy_frame(1)
    ratio = (0.8 + 0.4 * rng.random((96, 96, 3))).astype(np.float32)
    strength = rng.random((96, 96)).astype(np.float32) - 0.2
    plain = apply_ratio(image, ratio, strength, grain_px=1.0)
    assert np.array_equal(plain, apply_ratio(image, ratio, strength, 1.0, grain_from=image))


def test_the_frames_grain_comes_back_in_place_of_the_warped_one() -> None:
    frame = _noisy_frame()
    # the warp: half a pixel across, cubic, as the transfer resamples the frame
    rows, cols = np.mgrid[0:96, 0:96].astype(np.float32)
    warped = cv2.remap(frame, cols + 0.5, rows + 0.5, cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT)
    ratio = np.full((96, 96, 3), 1.2, np.float32)  # a lighter face
    strength = np.ones((96, 96), np.float32)
    inner = (slice(8, -8), slice(8, -8))
    frame_fine = _fine(frame)[inner]
    for grain_from, expect_same in ((frame, True), (None, False)):
        out = apply_ratio(warped, ratio, strength, 1.0, grain_from=grain_from)
        fine = _fine(np.clip(out * 255, 0, 255))[inner]
        corr = np.corrcoef(fine.ravel(), frame_fine.ravel())[0, 1]
        if expect_same:  # the frame's grain at its own pixels, at its own strength
            assert corr > 0.8
            assert fine.std() > 0.8 * frame_fine.std()
        else:  # moved and smoothed by the warp
            assert corr < 0.6
            assert fine.std() < 0.8 * frame_fine.std()
