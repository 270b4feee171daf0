"""A big face's mask computed on a reduced copy of the crop (`CompositorConfig.mask_iod`),
and the occluder search's colours read only where its steps need them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from morph3d.composite import masks, occluders
from morph3d.composite.compositor import CompositorConfig, FaceCompositor, FrameInputs
from tests.test_composite import scene

ZOOM = 2.5  # the synthetic scene's IOD is 60 px: 150 px here, above the default 100


def big_scene(shift: float = 0.0, occluder: bool = True):
    """(frame, render, coverage, actor landmarks, swapped landmarks) of the synthetic scene
    enlarged ZOOM times and moved `shift` pixels right, with a blue patch on the cheek and
    a one-pixel hole in the coverage on the other cheek."""
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.08)
    if occluder:
        frame[126:156, 84:110] = (0.15, 0.3, 0.85)
    size = int(256 * ZOOM)
    move = np.float32([[ZOOM, 0, shift + 0.5 * ZOOM - 0.5], [0, ZOOM, 0.5 * ZOOM - 0.5]])

    def grow(image: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, move, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    coverage = np.clip(grow(coverage), 0, 1)
    coverage[330, int(400 + shift)] = 0.0  # the warp missing one pixel
    return (grow(frame), grow(render), coverage,
            lm_a * ZOOM + [shift + 0.5 * ZOOM - 0.5, 0.5 * ZOOM - 0.5],
            lm_s * ZOOM + [shift + 0.5 * ZOOM - 0.5, 0.5 * ZOOM - 0.5])


def test_big_face_mask_at_reduced_scale_stays_near_full_resolution() -> None:
    """Over three moving frames (the temporal average between reduced copies included):
    the same occluders; the alpha within 0.12 of the full-resolution one away from the
    coverage's one-pixel hole and within 0.2 around it (the reduced copy's samples alone
    would miss the hole and its ~20 px soft disk), 0.002 on average; exactly 0 where the
    warp is absent and on the occluders; the composited bytes within 6 grey levels away
    from the hole and 10 around it. This scene's render and frame differ by about a
    quarter of the range at the mask's edge, where both alphas follow the staircase of the
    hard region their distance transform starts from, each at its own pixel size."""
    full = FaceCompositor(CompositorConfig(mask_iod=None))
    reduced = FaceCompositor(CompositorConfig())
    for shift in (0.0, 1.5, 3.0):
        frame, render, coverage, lm_a, lm_s = big_scene(shift)
        inputs = FrameInputs((frame * 255 + 0.5).astype(np.uint8), render, coverage, lm_a,
                             lm_s)
        want, want_report = full.process(inputs)
        got, got_report = reduced.process(inputs)
        assert reduced._previous_scale[0] < 0.7  # the reduced path ran
        assert want_report.occluder_px > 500
        assert np.array_equal(got_report.occluders, want_report.occluders)
        hole = np.zeros(coverage.shape, bool)
        hole[300:361, 370 + int(shift):431 + int(shift)] = True
        assert want_report.alpha[hole].min() == 0 and want_report.alpha[hole].max() > 0.9
        d = np.abs(got_report.alpha - want_report.alpha)
        assert d[~hole].max() < 0.12 and d[hole].max() < 0.2 and d.mean() < 0.002
        assert (got_report.alpha[coverage == 0] == 0).all()
        assert (got_report.alpha[got_report.occluders] == 0).all()
        b = np.abs(got.astype(int) - want).max(-1)
        assert b[~hole].max() <= 6 and b[hole].max() <= 10
    assert reduced.process(inputs)[1].mask_smoothed


def test_small_face_is_processed_at_full_resolution() -> None:
    """Below `mask_iod` the compositor's output is the full-resolution one, bit for bit."""
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.08)
    inputs = FrameInputs(frame, render, coverage, lm_a, lm_s)
    want = FaceCompositor(CompositorConfig(mask_iod=None)).process(inputs)[0]
    got = FaceCompositor(CompositorConfig()).process(inputs)[0]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_occluders_of_a_byte_frame_are_those_of_its_float_copy() -> None:
    """A uint8 frame is read as bytes / 255 (float32), the growth past the outline
    included."""
    frame, _, coverage, lm_a, _ = scene(swap_width=1.08)
    frame[140:165, 0:98] = (0.15, 0.3, 0.85)  # from the side, across the outline
    as_bytes = (frame * 255 + 0.5).astype(np.uint8)
    extend = coverage > 0.2
    got = occluders.detect_occluders(as_bytes, lm_a, extend_region=extend)
    want = occluders.detect_occluders(as_bytes.astype(np.float32) / 255.0, lm_a,
                                      extend_region=extend)
    assert want.any() and np.array_equal(got, want)


@pytest.mark.parametrize("side", [False, True])
def test_colours_are_converted_only_where_the_search_reads_them(monkeypatch, side: bool
                                                                ) -> None:
    """On a face in a larger frame the colours (and skin scores) are computed around the
    search region, and around the occluders for their growth past the outline, not over
    the whole box the steps can reach; the occluders are the same as on the whole image."""
    frame, _, coverage, lm_a, _ = scene(swap_width=1.08)
    if side:
        frame[140:165, 0:98] = (0.15, 0.3, 0.85)
    pad = 120
    frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    extend = cv2.copyMakeBorder(coverage, pad, pad, pad, pad, cv2.BORDER_CONSTANT) > 0.2
    lm_a = lm_a + pad
    seen: list[int] = []
    boxes: list[int] = []
    real, real_box = occluders.ycrcb, occluders._detect_in_box

    def counted(image: np.ndarray, *args, **kwargs) -> np.ndarray:
        seen.append(image.shape[0] * image.shape[1])
        return real(image, *args, **kwargs)

    def box(image: np.ndarray, *args) -> np.ndarray:
        boxes.append(image.shape[0] * image.shape[1])
        return real_box(image, *args)

    monkeypatch.setattr(occluders, "ycrcb", counted)
    monkeypatch.setattr(occluders, "_detect_in_box", box)
    occ = occluders.detect_occluders(frame, lm_a, extend_region=extend)
    assert occ.any() == side
    assert sum(seen) < 0.6 * boxes[0]  # the box the steps can reach
    monkeypatch.setattr(occluders, "ycrcb", real)
    monkeypatch.setattr(occluders, "_detect_in_box", real_box)
    g = masks.face_geometry(lm_a)
    search = cv2.erode(masks.face_region(frame.shape[:2], g).astype(np.uint8),
                       cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
    whole = occluders._detect_in_box(frame, g, search, masks.expected_non_skin(
        frame.shape[:2], g), extend, 0.004 * search.sum(), 12.0, 6.0, 0.15, 20.0, 0.5,
        0.025, 0.05, 0.02)
    assert np.array_equal(occ, whole)


def test_skin_model_on_a_box_and_on_a_grid() -> None:
    """`box` (the colours of a part of the frame) gives the model of the whole frame
    exactly; every other pixel of every other row a model close to it."""
    frame, _, _, lm_a, _ = scene()
    rng = np.random.default_rng(3)
    frame = np.clip(frame + rng.normal(0, 0.02, frame.shape).astype(np.float32), 0, 1)
    ycc = occluders.ycrcb(frame)
    want = occluders.fit_skin_model(frame, lm_a, ycc=ycc)
    box = (slice(60, 230), slice(40, 220))
    got = occluders.fit_skin_model(frame, lm_a, ycc=np.ascontiguousarray(ycc[box]), box=box)
    assert np.array_equal(got.mean, want.mean) and got.std_y == want.std_y
    assert np.array_equal(got.chroma_cov_inv, want.chroma_cov_inv)
    grid = occluders.fit_skin_model(frame, lm_a, ycc=ycc, step=2)
    assert abs(grid.pixels - want.pixels / 4) < 0.05 * want.pixels
    assert np.abs(grid.mean - want.mean).max() < 0.5
    assert abs(grid.std_y / want.std_y - 1) < 0.05
    assert (np.abs(grid.chroma_cov_inv - want.chroma_cov_inv).max()
            < 0.1 * np.abs(want.chroma_cov_inv).max())


def test_covered_alpha_is_the_clean_alpha_of_its_parts() -> None:
    """The one-pass finish of the reduced path: `_clean_alpha(alpha * (coverage > 0))`
    inside the picture's rectangle, 0 outside it, bit for bit."""
    rng = np.random.default_rng(5)
    alpha = rng.uniform(-0.1, 1.1, (40, 50)).astype(np.float32)
    coverage = rng.uniform(-0.2, 1.0, (40, 50)).astype(np.float32)
    alpha[5, :4] = [np.nan, 1e-4, 1 - 1e-4, -0.0]  # NaN kept where it is not zeroed
    coverage[5, :4] = 0.5
    rows, cols = (3, 37), (0, 45)
    inside = np.zeros((40, 50), bool)
    inside[3:37, 0:45] = True
    want = masks._clean_alpha(alpha * (coverage > 0)) * inside
    got = masks._covered_alpha(alpha, coverage, rows, cols)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32),
                                                      want.view(np.uint32))
