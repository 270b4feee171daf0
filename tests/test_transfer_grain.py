"""`transfer.grain_limit`'s histogram in one compiled pass against the numpy formula it
replaces (strided slices, absdiff, a mask's gather and a bincount), count for count."""

from __future__ import annotations

import cv2
import numpy as np

from morph3d.swap.transfer import _grain_histogram, grain_limit


def _numpy_counts(image: np.ndarray, low: np.ndarray, strength: np.ndarray) -> np.ndarray:
    on = strength[::3, ::3] > 0
    diff = cv2.absdiff(image[::3, ::3], low[::3, ::3])[on]
    return np.bincount(diff.ravel(), minlength=256)


def _numpy_limit(image: np.ndarray, low: np.ndarray, strength: np.ndarray) -> int:
    on = strength[::3, ::3] > 0
    if not on.any():
        return 1
    counts = np.cumsum(_numpy_counts(image, low, strength))
    median = int(np.searchsorted(counts, (counts[-1] + 1) // 2))
    return max(1, round(2.5 * 1.4826 * median))


def test_grain_histogram_is_the_bincount_of_the_strided_differences() -> None:
    limits = set()
    for seed, (h, w) in enumerate([(61, 47), (90, 128), (5, 4), (100, 101)]):
        rng = np.random.default_rng(seed)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # noise of a seed-dependent amplitude, so the medians (and limits) differ
        noise = rng.normal(0, 2 + 6 * seed, (h, w, 3))
        low = np.clip(image + noise, 0, 255).astype(np.uint8)
        strength = (rng.random((h, w)) - 0.4).astype(np.float32)  # 0 and below: off
        strength[rng.random((h, w)) < 0.1] = 0.0
        counts = _grain_histogram(image, low, strength, 3)
        assert np.array_equal(counts, _numpy_counts(image, low, strength))
        assert grain_limit(image, low, strength) == _numpy_limit(image, low, strength)
        limits.add(grain_limit(image, low, strength))
    assert len(limits) > 2  # the cases reach different medians
    off = np.zeros((40, 40), np.float32)
    image = np.full((40, 40, 3), 9, np.uint8)
    assert grain_limit(image, image // 2, off) == 1
    assert not _grain_histogram(image, image // 2, off, 3).any()
