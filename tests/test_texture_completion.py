"""Classical UV texture completion (morph3d.neural.texture_completion): the mirror, the
inpainting of what neither side saw, pull-push."""

import numpy as np

from morph3d.neural.texture_completion import atlas_mirror_index, complete_uv_texture, pull_push


def symmetric_texture(size: int = 128) -> np.ndarray:
    """A smooth texture symmetric about u = 0.5 in the skin rows, something else below."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / size
    d = np.abs(u - 0.5 + 0.5 / size)
    tex = np.stack([0.5 + 0.3 * np.cos(6 * d) * v, 0.4 + 0.2 * np.sin(9 * d + 3 * v),
                    0.3 + 0.4 * d * v], -1)
    tex[int(0.86 * size):] = (0.9, 0.9, 0.9)  # the part tiles
    return tex.astype(np.float32)


def test_texture_completion_mirrors_the_hidden_half() -> None:
    truth = symmetric_texture()
    size = truth.shape[0]
    confidence = np.ones((size, size), np.float32)
    confidence[:, size // 2 + 3:] = 0.0  # the right side of the face was never seen
    seen = truth * confidence[..., None]
    result = complete_uv_texture(seen, confidence)
    hidden = confidence == 0
    skin = np.zeros_like(hidden)
    skin[: int(0.86 * size) - 1] = True
    error = np.abs(result.texture - truth)[hidden & skin]
    assert error.max() < 0.02
    assert (result.source[hidden & skin] == 1).all()
    assert result.mirrored_fraction > 0.35
    deep = np.zeros_like(hidden)
    deep[:, : size // 2 - 10] = True
    assert np.array_equal(result.texture[deep], truth[deep])


def test_texture_completion_inpaints_what_neither_side_saw() -> None:
    truth = symmetric_texture()
    size = truth.shape[0]
    confidence = np.ones((size, size), np.float32)
    confidence[:, size // 2 + 3:] = 0.0
    confidence[20:40, 30:98] = 0.0  # a band hidden on both sides (under a fringe, say)
    confidence[size - 8:, 10:30] = 0.0  # and a hole in the part tiles
    for method in ("pull_push", "telea"):
        result = complete_uv_texture(truth * confidence[..., None], confidence, method=method)
        both = np.zeros_like(confidence, bool)
        both[20:40, 30:98] = True
        assert (result.source[both] == 2).all()
        assert np.abs(result.texture - truth)[both].mean() < 0.05
        # the part-tile hole is filled from the tiles only, not from the skin above
        assert np.abs(result.texture[size - 8:, 10:30] - 0.9).max() < 1e-3
        assert result.inpainted_fraction > 0.05
        assert np.isfinite(result.texture).all()


def test_texture_completion_with_a_callable_mirror_and_a_soft_seam() -> None:
    truth = symmetric_texture(64)[:, :, :3]
    truth[-10:] = truth[:10]  # no part strip here: the whole texture is one region
    truth = (truth + truth[:, ::-1]) / 2
    confidence = np.zeros((64, 64), np.float32)
    confidence[:, :33] = 1.0
    result = complete_uv_texture(truth * confidence[..., None], confidence, mirror=np.fliplr,
                                 regions={"all": np.ones((64, 64), bool)}, seam_px=2.0)
    assert np.abs(result.texture - truth).max() < 0.02
    assert (result.confidence > 0.99).mean() > 0.85
    index = atlas_mirror_index((8, 8))
    assert index[0, 0] == 7 and index[-1, 0] == -1


def test_atlas_layout_constant_matches_the_head_builder() -> None:
    from morph3d.builders import head as head_builder
    from morph3d.neural import texture_completion

    assert texture_completion.SKIN_V_RANGE == head_builder.SKIN_V_RANGE


def test_pull_push_fills_holes_smoothly() -> None:
    yy, xx = np.mgrid[0:50, 0:70].astype(np.float32)
    ramp = (xx / 70.0)[..., None].repeat(3, -1)
    weights = np.ones((50, 70), np.float32)
    weights[10:40, 20:50] = 0.0
    filled = pull_push(ramp * weights[..., None], weights)
    assert np.abs(filled - ramp)[weights == 1].max() < 1e-6
    assert np.abs(filled - ramp)[weights == 0].max() < 0.15
