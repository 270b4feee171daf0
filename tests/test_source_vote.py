"""The source's albedo as the transfer reads it (morph3d.swap.albedo): glasses on the photo
do not vote as skin, whatever their colour, and bare skin's lines keep their vote
(`source_skin_vote`); a light skin's albedo is kept under 1 on both sides, so the
transfer does not cut it (`headroom_gain`, through `prepare_transfer`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from morph3d.swap.albedo import (
    eye_rings,
    source_skin_vote,
    uv_positions,
    uv_vertex_mask,
    vertex_texels,
)

T = 256  # texels


@pytest.fixture(scope="module")
def places(model):
    """The mean-face position (mm) of each texel, the eyes' centres and their distance."""
    pos, covered = uv_positions(model, T)
    data = model.data
    ibug = data.landmarks["ibug68"].positions(np.asarray(data.mean), np.asarray(data.triangles))
    left, right = ibug[36:42].mean(0), ibug[42:48].mean(0)
    return pos, covered, left, right, float(np.linalg.norm(right - left))


def skin_texture(seed: int = 3) -> np.ndarray:
    """T x T x 3 sRGB-encoded light skin albedo with a little texel noise."""
    noise = 1 + 0.03 * np.random.default_rng(seed).standard_normal((T, T, 1))
    return np.clip(np.float32([0.62, 0.45, 0.36]) * noise, 0, 1).astype(np.float32)


def glasses(places, width_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """T x T bool (the frames: a ring `width_mm` wide around each eye and a bridge between
    them, on the mean face; the lenses inside the rings)."""
    pos, covered, left, right, iod = places
    x, y = pos[..., 0], pos[..., 1]
    cx, cy = 0.5 * abs(right[0] - left[0]), 0.5 * (left[1] + right[1])
    ax, ay = 0.38 * iod, 0.28 * iod  # a lens 0.76 IOD wide and 0.56 IOD high
    r = np.sqrt(((np.abs(x) - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    ring = np.abs(r - 1.0) * min(ax, ay) < 0.5 * width_mm
    bridge = (np.abs(x) < cx - ax + 1.0) & (np.abs(y - cy - 2.0) < 0.5 * width_mm)
    return (ring | bridge) & covered, (r < 1.0) & covered


def brow_strip(model, places, reach_mm: float = 9.0) -> np.ndarray:
    """T x T bool: texels within `reach_mm` of the brows' lines on the mean face."""
    pos, covered = places[:2]
    data = model.data
    ibug = data.landmarks["ibug68"].positions(np.asarray(data.mean), np.asarray(data.triangles))
    near = np.full(pos.shape[:2], np.inf, np.float32)
    for line in (ibug[17:22], ibug[22:27]):
        for a, b in zip(line[:-1], line[1:], strict=True):
            ab = b - a
            t = np.clip(((pos - a) @ ab) / float(ab @ ab), 0.0, 1.0)
            near = np.minimum(near, np.linalg.norm(pos - (a + t[..., None] * ab), axis=-1))
    return covered & (near < reach_mm)


@pytest.mark.parametrize("frame_colour", ["tortoise", "black", "blue"])
def test_glasses_of_any_colour_do_not_vote_frames_and_lenses(model, places,
                                                             frame_colour: str) -> None:
    """A frame of the skin's own hue, only darker (tortoise shell), is no colour outlier:
    it must be found by its shape. Behind the lenses the skin and lids are lighter and
    greyer (the glass's reflection): they do not vote either, nor the brows the frame runs
    along. The cheeks, mouth and forehead do."""
    texture = skin_texture()
    frames, lenses = glasses(places)
    colour = {"tortoise": np.float32([0.62, 0.45, 0.36]) * 0.62,
              "black": np.float32([0.06, 0.05, 0.05]),
              "blue": np.float32([0.20, 0.28, 0.45])}[frame_colour]
    texture[frames] = colour
    lens = lenses & ~frames
    texture[lens] = 0.8 * texture[lens] + 0.2 * np.float32([0.85, 0.85, 0.85])
    vote = source_skin_vote(model, texture, np.ones((T, T), np.float32))
    # along the brows a frame that is no colour outlier cannot be told from the brows
    # (which vote as skin there); a dark or coloured one can, and does not vote
    brows = brow_strip(model, places)
    assert frames.sum() > 300 and lens.sum() > 1000 and (frames & brows).sum() > 20
    held = frames & ~brows if frame_colour == "tortoise" else frames
    assert np.mean(vote[held] < 0.05) > 0.97, np.mean(vote[held] < 0.05)
    assert np.mean(vote[lenses & ~brows] < 0.05) > 0.97, np.mean(vote[lenses & ~brows] < 0.05)
    band = eye_rings(model, T).band
    rest = uv_vertex_mask(model, model.region("face_skin"), T) & ~band & ~frames & ~lenses
    assert (vote[rest] > 0.5).mean() > 0.97


def test_bare_skin_with_lines_around_the_eyes_keeps_its_vote(model, places) -> None:
    """Wrinkles under and beside the eyes (thin dark lines on part of the band) are the
    skin's own: the band is no pair of glasses."""
    pos, covered, left, right, iod = places
    texture = skin_texture(seed=5)
    x, y = pos[..., 0], pos[..., 1]
    cx, cy = 0.5 * abs(right[0] - left[0]), 0.5 * (left[1] + right[1])
    lines = np.zeros((T, T), bool)
    for drop in (7.0, 11.0):  # two folds under each eye
        lines |= (np.abs(np.abs(x) - cx) < 0.3 * iod) & (np.abs(y - (cy - drop)) < 0.7) & covered
    for angle in (-20.0, 0.0, 20.0):  # crow's feet beside each eye
        t = np.deg2rad(angle)
        along = (np.abs(x) - cx - 0.45 * iod) * np.cos(t) + (y - cy) * np.sin(t)
        across = -(np.abs(x) - cx - 0.45 * iod) * np.sin(t) + (y - cy) * np.cos(t)
        lines |= (np.abs(along) < 6.0) & (np.abs(across) < 0.6) & covered
    texture[lines] *= 0.8
    vote = source_skin_vote(model, texture, np.ones((T, T), np.float32))
    band = eye_rings(model, T).band & ~lines
    assert lines.sum() > 50
    assert (vote[band] > 0.5).mean() > 0.95, (vote[band] > 0.5).mean()


def source_fit_of(model, size: int):
    """A frontal fit (mean identity, neutral, 700 mm away, an ambient light) of a
    `size`-pixel square photo."""
    from fitting.params import CameraParams, FaceParams, Identity, VideoFit
    from fitting.photo import FRONT
    from fitting.pose import axis_angle

    sh = np.zeros((1, 9, 3), np.float32)
    sh[0, 0] = 0.9
    faces = FaceParams(axis_angle(FRONT)[None], np.float32([[0.0, 10.0, 700.0]]),
                       np.zeros((1, model.num_expression)), sh, np.ones(1, bool))
    camera = CameraParams.default_for(size, size, 800.0)
    identity = np.zeros(model.num_identity, np.float32)
    verts = model.vertices(torch.from_numpy(identity[None]), torch.zeros(1, model.num_expression))
    cam = camera.to_camera(faces.rotation[0], faces.translation[0])
    landmarks = {s: cam.project(model.landmarks(verts, s)).numpy()
                 for s in ("ibug68", "mediapipe478")}
    return VideoFit(Identity(identity), faces, camera, fps=25.0, landmarks=landmarks)


def test_a_light_skin_brightened_for_a_brighter_clip_is_not_cut_at_one(model, tmp_path: Path
                                                                       ) -> None:
    """A light skin photographed four times darker than the clip: the source's albedo is
    raised by the exposure gain above 1 in every channel over much of the face. Both sides
    come out under 1 (0.95 on 99 % of the skin) with their ratio kept."""
    from fitting.params import Identity
    from morph3d.composite.colour import linear_to_srgb, srgb_to_linear
    from morph3d.io.images import write_image
    from morph3d.swap.albedo import prepare_transfer
    from morph3d.swap.window import REGION_CHANNELS
    from tests.test_transfer_albedo import render_frame

    size = int(model.data.texture_size)
    channels = torch.from_numpy(np.stack([model.region(n) for n in REGION_CHANNELS], 1)
                                .astype(np.float32))
    truth = np.full((size, size, 3), np.float32([0.90, 0.72, 0.62]))
    fit = source_fit_of(model, 320)
    clip = render_frame(model, fit, truth, fit.faces.sh[0])
    photo = np.round(linear_to_srgb(srgb_to_linear(clip / 255.0) * 0.25) * 255
                     ).astype(np.uint8)
    target = tmp_path / "clip.png"
    write_image(target, clip)
    fit.identity = Identity(fit.identity.coefficients, texture=truth,
                            confidence=np.ones((size, size, 1), np.float32))
    setup = prepare_transfer(model, fit, fit, photo, target, channels, albedo_frames=1)
    textures = setup.textures.numpy()
    texels = vertex_texels(model, textures, model.num_vertices)
    skin = model.region("face_skin") & (texels[:, 3] > 0.5) & (texels[:, 7] > 0.5)
    source = texels[skin, :3] * setup.source_factor.numpy()[skin]
    actor = texels[skin, 4:7]
    assert skin.sum() > 500
    # 0.95 where the gain was read (texels at the vertices); a little over between them
    assert np.percentile(source.max(1), 99) <= 0.96
    assert np.percentile(actor.max(1), 99) <= 0.96
    # the source is the lighter: its ratio to the actor is above one, not cut to it
    ratio = np.median(srgb_to_linear(source) / np.maximum(srgb_to_linear(actor), 1e-4), 0)
    assert ratio.min() > 1.2, ratio


def test_a_light_coloured_patch_is_tempered_and_the_skins_own_colour_kept(model, places) -> None:
    """A red-orange patch (light through the skin in a shadowed fold) far off the skin's
    colour comes back nearer it at the same lightness; a mildly redder cheek is kept."""
    from morph3d.composite.colour import LUMA, srgb_to_linear
    from morph3d.swap.albedo import CHROMA_SLOPE, CHROMA_SPREAD, tempered_chroma

    pos, covered, left, right, iod = places
    skin = uv_vertex_mask(model, model.region("face_skin") & ~model.region("lips"), T) & covered
    texture = skin_texture()
    below_left_eye = np.linalg.norm(pos[..., :2] - (left[:2] + [0.0, -0.6 * iod]), axis=-1)
    below_right_eye = np.linalg.norm(pos[..., :2] - (right[:2] + [0.0, -0.6 * iod]), axis=-1)
    patch = skin & (below_left_eye < 0.2 * iod)
    cheek = skin & (below_right_eye < 0.2 * iod)
    texture[patch] *= np.float32([1.25, 0.8, 0.6])  # far redder: log R/G +0.8 in linear
    texture[cheek] *= np.float32([1.03, 0.99, 0.98])  # a little redder
    confidence = np.ones((T, T, 1), np.float32)
    factor = np.full((model.num_vertices, 3), 0.9, np.float32)  # the albedo: texture x 0.9
    out = tempered_chroma(model, texture, confidence, factor)

    def chroma(tex: np.ndarray) -> np.ndarray:
        linear = srgb_to_linear(np.clip(tex * 0.9, 0, 1))
        logs = np.log(linear)
        return np.stack([logs[..., 0] - logs[..., 1], logs[..., 2] - logs[..., 1]], -1)

    median = np.median(chroma(texture)[skin], 0)
    before = np.linalg.norm(chroma(texture)[patch] - median, axis=-1)
    after = np.linalg.norm(chroma(out)[patch] - median, axis=-1)
    assert np.median(before) > 0.6
    expected = CHROMA_SPREAD + (before - CHROMA_SPREAD) * CHROMA_SLOPE
    assert np.allclose(after, expected, atol=0.03)
    luma = (srgb_to_linear(np.clip(out * 0.9, 0, 1)) @ LUMA)[patch]
    assert np.allclose(luma, (srgb_to_linear(np.clip(texture * 0.9, 0, 1)) @ LUMA)[patch],
                       rtol=0.02)
    assert np.allclose(out[cheek], texture[cheek], atol=1e-4)  # within the skin's own spread
    assert np.array_equal(out[~skin], texture[~skin])
