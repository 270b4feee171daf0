"""`transfer.black_level` and `apply_ratio(black=)`: the gain acts on the light above a hazy
frame's black level and leaves that level as it is."""

from __future__ import annotations

import numpy as np
import pytest

from morph3d.composite.colour import linear_to_srgb, srgb_to_linear
from morph3d.swap.transfer import apply_ratio, black_level


def test_black_level_is_each_channels_darkest_half_percent() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(120, 256, (100, 100, 3), dtype=np.uint8)
    pixels.reshape(-1, 3)[:100] = (40, 50, 30)  # 1 % of the pixels: a dark grey jacket
    expected = srgb_to_linear(np.float32([40, 50, 30]) / 255.0)
    assert np.allclose(black_level(pixels), expected, atol=1e-6)
    # something truly black in more than half a percent of the pixels: no haze
    pixels.reshape(-1, 3)[100:160] = 0
    assert np.array_equal(black_level(pixels), np.zeros(3, np.float32))
    # fewer dark pixels than the share: the next level up is read
    pixels.reshape(-1, 3)[:160] = 200
    pixels.reshape(-1, 3)[:10] = 0
    assert black_level(pixels)[0] > srgb_to_linear(np.float32(100 / 255.0))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_the_gain_acts_above_the_black_level(dtype) -> None:
    floor = srgb_to_linear(np.float32([60, 60, 60]) / 255.0)
    levels = np.float32([60, 90, 160, 230])
    image = np.repeat(np.repeat(levels[None, :, None], 3, 2), 8, 0)
    image = image.astype(np.uint8) if dtype == np.uint8 else image / np.float32(255.0)
    ones = np.ones(image.shape[:2], np.float32)
    for gain in (0.3, 2.0):
        ratio = np.full(image.shape, gain, np.float32)
        out = apply_ratio(image, ratio, ones, black=floor)
        lin = srgb_to_linear(levels / 255.0)
        expected = linear_to_srgb(np.clip((lin - floor[0]) * gain + floor[0], 0, 1))
        assert np.abs(out[0, :, 0] - expected).max() < 0.5 / 255
        assert abs(out[0, 0, 0] - 60 / 255.0) < 0.5 / 255  # the level itself stays
        # no black level: the whole light is scaled, darker features come out darker
        plain = apply_ratio(image, ratio, ones)
        assert np.array_equal(plain, apply_ratio(image, ratio, ones, black=np.zeros(3)))
        if gain < 1:
            assert (plain[0, :, 0] < out[0, :, 0] - 1 / 255).all()
