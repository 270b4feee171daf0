"""What on the source photo's albedo votes as skin (morph3d.swap.albedo.source_skin_vote):
a highlight left in the albedo and an occluder's colour do not, the skin, brows and lips do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morph3d.swap.albedo import source_skin_vote, uv_vertex_mask

T = 256  # texels


@pytest.fixture(scope="module")
def model():
    from morph3d.model.registry import load_model

    torch.set_grad_enabled(False)
    return load_model("default")


def skin_texture(seed: int = 3) -> np.ndarray:
    """T x T x 3 sRGB-encoded brown skin albedo with a little texel noise."""
    noise = 1 + 0.03 * np.random.default_rng(seed).standard_normal((T, T, 1))
    return np.clip(np.float32([0.42, 0.28, 0.21]) * noise, 0, 1).astype(np.float32)


def near(model, point: np.ndarray, radius_mm: float) -> np.ndarray:
    """T x T bool: texels of the triangles within `radius_mm` of the vertex nearest to a
    mean-face point, among the face's skin and eyes."""
    mean = np.asarray(model.data.mean)
    skin = model.region("face_skin") | model.region("eyes")
    ids = np.flatnonzero(skin)
    centre = mean[ids[np.argmin(np.linalg.norm(mean[ids] - point, axis=1))]]
    return uv_vertex_mask(model, np.linalg.norm(mean - centre, axis=1) < radius_mm, T)


def test_a_highlight_and_a_frame_do_not_vote_the_skin_brows_and_lips_do(model) -> None:
    data = model.data
    mean = np.asarray(data.mean)
    ibug = data.landmarks["ibug68"].positions(mean, np.asarray(data.triangles))
    texture = skin_texture()
    confidence = np.ones((T, T), np.float32)
    # a specular streak on the nose ridge: pale and grey, as a photo's flash leaves it
    nose = near(model, ibug[29], 6.0)
    texture[nose] = (0.62, 0.58, 0.60)
    # a blue-grey glasses rim below the left eye
    rim = near(model, ibug[41] + [0.0, -8.0, 0.0], 6.0) & ~nose
    texture[rim] = (0.18, 0.20, 0.26)
    # dark brows and red lips: features of the face, not occluders
    brows = near(model, ibug[19], 9.0) | near(model, ibug[24], 9.0)
    texture[brows] = (0.10, 0.07, 0.05)
    lips = uv_vertex_mask(model, model.region("lips"), T)
    texture[lips] = (0.55, 0.22, 0.22)
    assert nose.sum() > 50 and rim.sum() > 20 and brows.sum() > 20

    vote = source_skin_vote(model, texture, confidence)
    skin = uv_vertex_mask(model, model.region("face_skin"), T) & ~(nose | rim | brows | lips)
    assert np.median(vote[skin]) == 1.0 and (vote[skin] > 0.5).mean() > 0.98
    assert vote[nose].max() < 0.05, vote[nose].max()
    assert vote[rim].max() < 0.05, vote[rim].max()
    assert vote[brows].min() == 1.0 and vote[lips].min() == 1.0


def test_a_skin_lit_unevenly_but_of_one_colour_votes_everywhere(model) -> None:
    """The photo's shading is divided out of the albedo, not perfectly: a gentle gradient
    in lightness (a third over the face) is still skin."""
    texture = skin_texture()
    ramp = np.linspace(0.85, 1.15, T, dtype=np.float32)[None, :, None]
    texture = np.clip(texture * ramp, 0, 1)
    vote = source_skin_vote(model, texture, np.ones((T, T), np.float32))
    skin = uv_vertex_mask(model, model.region("face_skin"), T)
    assert (vote[skin] > 0.5).mean() > 0.97


def test_without_cheeks_seen_every_texel_votes(model) -> None:
    vote = source_skin_vote(model, skin_texture(), np.zeros((T, T), np.float32))
    assert np.all(vote == 1.0)


def forehead_rows(model, low_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(T x T bool: the face's skin more than `low_mm` above the brows' line on the mean
    face, T x T float: each texel's height in mm on the mean face, for stripes)."""
    from morph3d.swap.albedo import above_brows, uv_triangle_values

    data = model.data
    mean = np.asarray(data.mean)
    ibug = data.landmarks["ibug68"].positions(mean, np.asarray(data.triangles))
    region = above_brows(mean, ibug, low_mm) & model.region("face_skin")
    heights = uv_triangle_values(model, mean[:, 1:2].astype(np.float32), T)[..., 0]
    return uv_vertex_mask(model, region, T), heights


def test_a_fringe_of_hair_near_the_skins_colour_does_not_vote_bare_forehead_lines_do(
        model) -> None:
    """A blond fringe has the skin's hue and is darker only strand by strand: hair all the
    same. Forehead lines, a few thin darker lines on skin, are skin."""
    texture = skin_texture()
    fringe, heights = forehead_rows(model, 15.0)
    strands = np.where(np.floor(heights / 1.5) % 2 == 0, 0.62, 0.8).astype(np.float32)
    hair = texture * strands[..., None]
    texture_fringe = np.where(fringe[..., None], hair, texture).astype(np.float32)
    vote = source_skin_vote(model, texture_fringe, np.ones((T, T), np.float32))
    assert fringe.sum() > 200
    assert (vote[fringe] < 0.5).mean() > 0.9, (vote[fringe] < 0.5).mean()

    lines = texture.copy()
    wrinkle = fringe & (np.abs(heights % 8.0 - 4.0) < 0.5)  # 1 mm lines every 8 mm
    lines[wrinkle] *= 0.8
    vote = source_skin_vote(model, lines, np.ones((T, T), np.float32))
    assert wrinkle.sum() > 20
    assert (vote[fringe] > 0.5).mean() > 0.95, (vote[fringe] > 0.5).mean()
