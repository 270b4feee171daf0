"""The face mask's Gaussian edge (`composite.masks._gaussian_edge`) in compiled passes
against its numpy formula, bit for bit, whatever the scalars' types."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from morph3d.composite import masks


def _edge_numpy(distance: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    z = (distance - centre) / max(sigma, 1e-3)
    out = (z >= masks._EDGE_Z).astype(np.float32)
    band = np.abs(z) < masks._EDGE_Z
    edge = (ndtr(z[band]) - masks._EDGE_EPS) / (1.0 - 2.0 * masks._EDGE_EPS)
    out[band] = np.clip(edge, 0.0, 1.0)
    return out


@pytest.mark.parametrize("centre,sigma", [(3.0, 2.5), (np.float64(4.1), np.float64(1.7)),
                                          (0.0, 1e-5), (np.float32(2.0), 3.0),
                                          (np.float32(2.5), np.float64(1.3)), (1, 2)])
def test_gaussian_edge_is_the_numpy_formula(centre: float, sigma: float) -> None:
    """float32 distances with python, float64 (z in float64) and float32 scalars; the
    band's limits, non-finite distances and a non-contiguous distance map included."""
    rng = np.random.default_rng(4)
    distance = rng.uniform(-30, 30, (120, 150)).astype(np.float32)
    distance[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, float(centre)]
    z_edge = np.float32(masks._EDGE_Z) * np.float32(max(sigma, 1e-3)) + np.float32(centre)
    distance[1, :3] = [z_edge, np.nextafter(z_edge, np.float32(0)), -z_edge]
    for d in (distance, distance[:, ::2]):
        got, want = masks._gaussian_edge(d, centre, sigma), _edge_numpy(d, centre, sigma)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    band = np.abs((distance - centre) / max(sigma, 1e-3)) < masks._EDGE_Z
    assert band.sum() > 100 or sigma < 1  # the ndtr band is exercised


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clean_alpha_is_the_numpy_formula(dtype: type) -> None:
    """The compiled clean-up against numpy's clip, cast and floors, at the floors' limits,
    NaN and -0 included; other dtypes take numpy's path."""
    floor = masks._ALPHA_FLOOR

    def numpy_clean(alpha: np.ndarray) -> np.ndarray:
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        alpha[alpha < floor] = 0.0
        alpha[alpha > 1.0 - floor] = 1.0
        return alpha

    rng = np.random.default_rng(9)
    alpha = rng.uniform(-0.2, 1.2, (60, 70)).astype(dtype)
    alpha[0, :10] = [np.nan, -0.0, 0.0, floor, np.nextafter(floor, 0), 1 - floor,
                     np.nextafter(1 - floor, 2), 1.0, 1e-300, np.float32(floor) * 0.99999]
    for a in (alpha, alpha[:, ::3]):
        got, want = masks._clean_alpha(a), numpy_clean(a)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32),
                                                          want.view(np.uint32))
    ones = masks._clean_alpha(np.ones((3, 2), bool))
    assert ones.dtype == np.float32 and (ones == 1).all()


def test_frame_bytes_to_unit_by_table_is_the_division() -> None:
    """The compositor's crop of a uint8 frame through its table: `astype / 255` exactly,
    on a non-contiguous crop too."""
    import cv2

    from morph3d.composite.colour import BYTE_TO_UNIT as _BYTE_TO_UNIT

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    frame[0, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :3]
    frame[1, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, 3:6]
    for part in (frame, frame[5:30, 7:41]):
        got = cv2.LUT(part, _BYTE_TO_UNIT)
        want = part.astype(np.float32) / 255.0
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32),
                                                          want.view(np.uint32))


def test_blend_from_the_render_window_is_the_blend_of_its_copy() -> None:
    """The render read in place from its window (partly beyond the crop on every side) and
    the frame read from out's own bytes: the bytes `blend_into` gives with the window's part
    copied under the crop and the frame's bytes / 255."""
    from morph3d.composite.blend import blend_into, blend_window_into
    from morph3d.composite.compositor import _in_roi

    rng = np.random.default_rng(8)
    frame = (rng.random((50, 60, 3)) * 255).astype(np.uint8)
    window = rng.random((30, 70, 3), np.float32)
    mask = rng.random((50, 60)).astype(np.float32)
    mask[mask < 0.3] = 0.0
    for origin in ((-5, 10), (3, -4), (20, 30), (-10, -10)):  # window's frame (x, y)
        roi = (0, 0, 60, 50)
        want = frame.copy()
        blend_into(want, frame.astype(np.float32) / 255.0, _in_roi(window, origin, roi), mask)
        got = frame.copy()
        blend_window_into(got, window, (-origin[1], -origin[0]), mask)
        assert np.array_equal(got, want), origin


def test_keep_sharp_sides_are_the_numpy_products() -> None:
    """The outline test's two weights and weighted colours from one pass: numpy's bool and
    float32 products, bit for bit (a strided colour box, NaN and negative colours
    included)."""
    from morph3d.composite.occluders import _sides

    rng = np.random.default_rng(10)
    occ = rng.random((40, 36)) < 0.4
    region = rng.random((40, 36)) < 0.8
    expected = rng.random((40, 36)) < 0.2
    ycc = rng.uniform(-5, 255, (44, 40, 3)).astype(np.float32)[2:-2, 2:-2]
    ycc[0, 0] = [np.nan, -1.0, np.inf]
    outside = (~occ & region & ~expected).astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf x 0: NaN on both sides
        want = (occ.astype(np.float32), outside, ycc * occ[..., None],
                ycc * outside[..., None])
    for got, w in zip(_sides(occ, region, expected, ycc), want, strict=True):
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32),
                                                          w.view(np.uint32))


def test_ycrcb_skips_only_a_clip_that_changes_nothing() -> None:
    """A float32 image inside [0, 1] goes unclipped, anything else through the clip: the
    same YCrCb as the clipped image's either way (-0, 0, 1, NaN and values outside)."""
    import cv2

    from morph3d.composite.occluders import _in_unit_range, ycrcb

    rng = np.random.default_rng(13)
    inside = rng.random((20, 30, 3), np.float32)
    inside[0, 0] = [-0.0, 0.0, 1.0]
    outside = inside.copy()
    outside[1, 1] = [1.5, -0.2, np.nan]
    assert _in_unit_range(inside.reshape(-1)) and not _in_unit_range(outside.reshape(-1))
    for image in (inside, outside, inside[:, ::2], inside.astype(np.float64)):
        want = cv2.cvtColor(np.clip(image, 0.0, 1.0).astype(np.float32, copy=False),
                            cv2.COLOR_RGB2YCrCb) * np.float32(255.0)
        got = ycrcb(image)
        assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True)
