"""The render stage's compiled passes against the numpy formulas they replace, bit for bit:
the sRGB curve (`composite.colour.srgb_to_linear`), the low-pass written into its box
(`tone.normalized_blur`), the skin medians from one gather (`tone._skin_samples`), and the
sharpness match's normalised blend (`sharpness._normalized_mix`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from morph3d.composite.colour import srgb_to_linear
from morph3d.swap import tone
from morph3d.swap.sharpness import _normalized_mix


def _srgb_numpy(image: np.ndarray) -> np.ndarray:
    """The curve as numpy temporaries (OpenCV's power, numpy's clip, base and toe)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    flat = x.reshape(-1, 1)
    y = cv2.pow((flat + np.float32(0.055)) / np.float32(1.055), 2.4)
    np.copyto(y, flat / np.float32(12.92), where=flat <= 0.04045)
    return y.reshape(x.shape)


def test_srgb_to_linear_is_the_numpy_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    toe = np.float32(0.04045)
    near = np.nextafter(toe, np.float32(1), dtype=np.float32)
    special = np.float32([np.nan, -0.0, 0.0, 1.0, -1e-30, 1.0000001, toe, near,
                          np.nextafter(toe, np.float32(0), dtype=np.float32), np.inf, -np.inf])
    for x in (rng.uniform(-0.2, 1.2, (37, 41, 3)).astype(np.float32), special,
              np.linspace(0.03, 0.05, 100001, dtype=np.float32),
              rng.uniform(0, 1, (5, 7)).astype(np.float64)[:, ::2]):  # strided, float64 in
        got, want = srgb_to_linear(x), _srgb_numpy(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def _normalized_blur_numpy(values: np.ndarray, weight: np.ndarray, sigma: float,
                           f: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster's low-pass as numpy arrays: products, blur, quotient."""
    h, w = weight.shape
    vw = np.concatenate([values * weight[..., None], weight[..., None]], -1)
    if f > 1:
        small = cv2.resize(vw, (w // f, h // f), interpolation=cv2.INTER_AREA)
        s = np.sqrt(max(sigma ** 2 - (f ** 2 - 1) / 12.0, 0.25 * f ** 2)) / f
        b = cv2.GaussianBlur(small, (0, 0), s, borderType=cv2.BORDER_REPLICATE)
    else:
        b = cv2.GaussianBlur(vw, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    d = b[..., -1:]
    q = np.where(d > 1e-6, b[..., :-1] / np.maximum(d, np.float32(1e-6)), np.float32(0))
    both = np.concatenate([q, d], -1).astype(np.float32)
    if f > 1:
        both = cv2.resize(both, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return both[..., :-1], both[..., -1]


@pytest.mark.parametrize("sigma,reduce", [(1.5, False), (4.5, True), (9.0, True)])
def test_low_pass_written_into_its_box_is_the_whole_rasters_formula(sigma: float,
                                                                    reduce: bool) -> None:
    """The box's low-pass written into zeros equals the numpy formula on the same box, and
    over a support filling the raster, the whole raster's formula, bit for bit; values in
    a non-contiguous view are read as they are."""
    rng = np.random.default_rng(7)
    values = rng.random((200, 160, 9), np.float32)[..., ::2][..., :3]  # strided channels
    f = int(min(max(sigma // 2.0, 1), 4)) if reduce else 1
    full = rng.random((200, 160)).astype(np.float32)
    low, den = tone.normalized_blur(values, full, sigma, reduce=reduce)
    want_low, want_den = _normalized_blur_numpy(np.ascontiguousarray(values), full, sigma, f)
    assert np.array_equal(low, want_low) and np.array_equal(den, want_den)
    part = np.zeros((200, 160), np.float32)
    part[90:102, 70:84] = full[90:102, 70:84]
    low, den = tone.normalized_blur(values, part, sigma, reduce=reduce)
    box = tone._support_box(part, int(np.ceil(4.0 * sigma)) + 4 * f, f)
    r0, r1, c0, c1 = box
    assert box[0] > 0 and box[2] > 0 and box[1] < 200 and box[3] < 160
    want_low, want_den = _normalized_blur_numpy(np.ascontiguousarray(values[r0:r1, c0:c1]),
                                                part[r0:r1, c0:c1], sigma, f)
    assert np.array_equal(low[r0:r1, c0:c1], want_low)
    assert np.array_equal(den[r0:r1, c0:c1], want_den)
    low[r0:r1, c0:c1] = 0
    den[r0:r1, c0:c1] = 0
    assert not low.any() and not den.any()
    flat, _ = tone.normalized_blur(values[..., 0], part, sigma, reduce=reduce)
    want_flat, _ = _normalized_blur_numpy(np.ascontiguousarray(values[r0:r1, c0:c1, :1]),
                                          part[r0:r1, c0:c1], sigma, f)
    assert flat.shape == (200, 160) and np.array_equal(flat[r0:r1, c0:c1], want_flat[..., 0])


def test_skin_lights_and_overall_from_one_gather_are_the_per_side_medians() -> None:
    """The medians from `_skin_samples` are `skin_chroma`'s and the tone's overall ratio
    numpy's column medians over the same pixels, even and odd counts."""
    rng = np.random.default_rng(11)
    for n_extra in (0, 1):
        source = rng.uniform(0.05, 0.9, (60, 50, 3)).astype(np.float32)
        actor = rng.uniform(0.05, 0.9, (60, 50, 3)).astype(np.float32)
        weight = np.zeros((60, 50), np.float32)
        weight[10:40, 8:30] = rng.uniform(0.0, 1.0, (30, 22))
        weight[0, :n_extra] = 1.0
        samples = tone._skin_samples(source, actor, weight)
        keep = weight > 0.5 * float(weight.max())
        assert samples.shape == (6, int(keep.sum()))
        lights = tone.skin_lights(source, actor, weight, samples)
        for got, want in zip(lights, tone.skin_lights(source, actor, weight), strict=True):
            assert np.array_equal(got, want)
        s_light, a_light = lights
        pair = tone._lit_pair(source, actor, s_light, a_light)
        want = tone.column_median((pair[..., :3][keep] + 1e-3) / (pair[..., 3:][keep] + 1e-3))
        got = np.median(tone._sample_ratios(samples, s_light, a_light), axis=1)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert tone._skin_samples(source, actor, np.zeros((60, 50), np.float32)).shape == (6, 0)
    few = np.zeros((60, 50), np.float32)
    few[0, :5] = 1.0
    ones = tone.skin_lights(source, actor, few, tone._skin_samples(source, actor, few))
    assert all(np.array_equal(x, np.ones(3, np.float32)) for x in ones)


def test_sharpness_mix_is_the_numpy_blend() -> None:
    rng = np.random.default_rng(2)
    both = rng.uniform(-1e-4, 0.6, (31, 27, 4)).astype(np.float32)
    both[0, :4, 3] = [0.0, 1e-4, -1e-5, 0.3]
    part = rng.random((31, 27, 3), np.float32)
    low = both[..., :3] / np.maximum(both[..., 3:], 1e-4)
    keep = np.clip(both[..., 3:] / 0.3, 0.0, 1.0)
    want = keep * low + (1 - keep) * part
    got = _normalized_mix(both, part)
    assert want.dtype == np.float32 and np.array_equal(got, want)


def test_frame_detail_channels_side_by_side_are_the_concatenation() -> None:
    from morph3d.swap.transfer import _side_by_side

    rng = np.random.default_rng(6)
    a = rng.random((23, 19, 3), np.float32)
    f = rng.random((23, 38, 3), np.float32)[:, ::2]  # a strided view
    got = _side_by_side(a, f)
    assert got.flags.c_contiguous and np.array_equal(got, np.concatenate([a, f], -1))
