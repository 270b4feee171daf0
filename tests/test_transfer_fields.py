"""`transfer._crop_fields`' face and flow supports and `_masked_flow` against the numpy
formulas they replace in `transfer_face` and `extend_flow`, bit for bit."""

from __future__ import annotations

import numpy as np

from morph3d.swap.transfer import INNER_REGIONS, MOUTH_REGIONS, _crop_fields, _masked_flow
from morph3d.swap.window import REGION_CHANNELS


def test_crop_fields_supports_are_the_numpy_masks() -> None:
    k = 2 + len(REGION_CHANNELS)
    skin_ch = np.array([2 + REGION_CHANNELS.index(n) for n in ("face_skin", "lips", "eyes")])
    inner_ch = np.array([2 + REGION_CHANNELS.index(n) for n in INNER_REGIONS])
    mouth_ch = np.array([2 + REGION_CHANNELS.index(n) for n in MOUTH_REGIONS])
    for seed in range(4):
        rng = np.random.default_rng(seed)
        h, w = 40 + seed, 50
        attrs = rng.random((h, w, k + 4), np.float32)
        # regions as the raster interpolates them: mostly 0 or 1, fractions at the edges,
        # values right at the 1/2 thresholds and negative zeros
        regions = rng.choice(np.float32([0, 1, 0.5, 0.25, -0.0, 0.75]), (h, w, k - 2),
                             p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
        attrs[..., 2:k] = regions
        attrs[..., k] = rng.uniform(-0.3, 1, (h, w)).astype(np.float32)
        raster_covered = rng.random((h, w)) < 0.8
        tex = rng.random((h, w, 8), np.float32)
        grid = rng.random((h, w, 2), np.float32)
        covered, _, inner, on_face, moving, *_ = _crop_fields(
            attrs, raster_covered, tex, grid, skin_ch, inner_ch, mouth_ch, k)
        named = {n: attrs[..., 2 + i] for i, n in enumerate(REGION_CHANNELS)}
        s = named["face_skin"] + named["lips"] + named["eyes"]
        face = np.clip(s + inner, 0, 1)
        mouth = sum(named[n] for n in MOUTH_REGIONS)
        want_face = covered & (face > 0.5)
        want_moving = covered & (face > 0.5) & (mouth < 0.5)
        assert np.array_equal(on_face, want_face)
        assert np.array_equal(moving, want_moving)
        assert (want_face != want_moving).any() and want_moving.any()


def test_masked_flow_is_the_broadcast_product() -> None:
    rng = np.random.default_rng(3)
    flow = rng.normal(0, 20, (33, 47, 2)).astype(np.float32)
    flow[0, 0] = [-0.0, 1e30]
    covered = rng.random((33, 47)) < 0.6
    covered[0, 0] = False
    values, weight = _masked_flow(flow, covered)
    want_weight = covered.astype(np.float32)
    want = flow * want_weight[..., None]
    assert np.array_equal(weight, want_weight)
    assert np.array_equal(values, want)
    assert np.array_equal(np.signbit(values), np.signbit(want))
