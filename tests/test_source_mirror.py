"""The source albedo's unseen half voted by its seen mirror (morph3d.swap.albedo.
mirror_seen_side): a photo that saw one half of a symmetric face gives the same albedo and
factor on both halves, the mirrored half with less confidence than the seen one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morph3d.neural.texture_completion import skin_rows
from morph3d.swap.albedo import mirror_seen_side, vertex_texels

T = 256  # texels


@pytest.fixture(scope="module")
def model():
    from morph3d.model.registry import load_model

    torch.set_grad_enabled(False)
    return load_model("default")


def symmetric_albedo() -> np.ndarray:
    """T x T x 3 sRGB-encoded skin albedo, symmetric around u = 0.5."""
    ys, xs = np.mgrid[:T, :T].astype(np.float32) / T
    pattern = 1 + 0.15 * np.cos(11 * np.abs(xs + 0.5 / T - 0.5)) * np.cos(7 * ys)
    return (np.float32([0.45, 0.30, 0.24]) * pattern[..., None]).astype(np.float32)


def test_a_half_seen_face_gets_the_same_albedo_on_both_halves(model) -> None:
    truth = symmetric_albedo()
    seen = np.zeros((T, T), np.float32)
    seen[:, : T // 2 - 8] = 1.0  # the photo saw the left half of the atlas only
    texture = truth.copy()
    texture[seen < 0.5] = 0.5  # what the photo did not see: some other fill
    count = len(model.data.mirror)
    factor = np.ones((count, 3), np.float32)
    out, confidence, _ = mirror_seen_side(model, texture, seen, factor)
    rows = skin_rows(T)
    right = np.zeros((T, T), bool)
    right[rows, T // 2 + 8:] = True
    assert np.abs(out[right] - truth[right]).max() < 0.01
    # the mirrored half votes, below the half that was seen
    assert 0.3 < float(np.median(confidence[right])) < 0.9
    assert float(np.median(confidence[rows, : T // 2 - 16])) == pytest.approx(1.0)
    assert np.abs(texture[right] - truth[right]).max() > 0.1  # the fill was not the truth
    # a share of 0: the unseen half gets no vote
    _, none, _ = mirror_seen_side(model, texture, seen, factor, share=0.0)
    assert float(none[right].max()) == 0.0


def test_the_factor_of_an_unseen_vertex_is_its_seen_mirror_s(model) -> None:
    mirror = np.asarray(model.data.mirror)
    count = len(mirror)
    seen = np.zeros((T, T), np.float32)
    seen[:, : T // 2 - 8] = 1.0
    rng = np.random.default_rng(0)
    factor = rng.uniform(0.5, 2.0, (count, 3)).astype(np.float32)
    _, _, out = mirror_seen_side(model, symmetric_albedo(), seen, factor)
    own = vertex_texels(model, seen[..., None], count)[:, 0]
    skin = model.region("face_skin")
    unseen = skin & (own < 0.01) & (own[mirror] > 0.99)
    kept = skin & (own > 0.99)
    assert unseen.sum() > 100
    np.testing.assert_allclose(out[unseen], factor[mirror][unseen], rtol=1e-5)
    np.testing.assert_allclose(out[kept], factor[kept], rtol=1e-5)
