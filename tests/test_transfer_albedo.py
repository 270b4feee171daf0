"""The actor's albedo made once per clip (morph3d.swap.albedo: frame_albedo_texture,
merge_albedos, actor_albedo) and the tone ratio built on it (transfer_face): synthetic frames
of the model rendered with a known albedo under known lights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from morph3d.composite.colour import srgb_to_linear
from morph3d.swap.albedo import (
    EXPOSURE_TOLERANCE,
    actor_albedo,
    albedo_frames,
    exposure_gain,
    frame_albedo_texture,
    merge_albedos,
    prepare_transfer,
    scene_levels,
)
from morph3d.swap.transfer import transfer_face

SIZE = 320  # frame side, pixels

# SH lights (9 x 3, `render.sh_shading` convention): ambient plus a key light from the
# camera's left or right and above; both light the whole front of the face
LIGHT_LEFT = np.zeros((9, 3), np.float32)
LIGHT_LEFT[0] = 0.9
LIGHT_LEFT[3] = 0.25  # x
LIGHT_LEFT[1] = 0.1  # y
LIGHT_RIGHT = LIGHT_LEFT.copy()
LIGHT_RIGHT[3] = -0.25
LIGHT_RIGHT[0] = [1.0, 0.95, 0.9]


@pytest.fixture(scope="module")
def model():
    from morph3d.model.registry import load_model

    torch.set_grad_enabled(False)
    return load_model("default")


@pytest.fixture(scope="module")
def channels(model):
    from morph3d.swap.window import REGION_CHANNELS

    return torch.from_numpy(np.stack([model.region(n) for n in REGION_CHANNELS], 1)
                            .astype(np.float32))


def skin_albedo(size: int, seed: int = 0) -> np.ndarray:
    """T x T x 3 sRGB-encoded skin albedo with a smooth pattern (a known truth)."""
    ys, xs = np.mgrid[:size, :size].astype(np.float32) / size
    pattern = 1 + 0.12 * np.sin(9 * xs + seed) * np.cos(7 * ys)
    return np.clip(np.float32([0.78, 0.58, 0.48]) * pattern[..., None], 0, 1).astype(np.float32)


def clip_fit_of(model, sh: list[np.ndarray]):
    """A frontal clip fit (mean identity, neutral expression, 700 mm away) of len(sh)
    frames, frame i lit by sh[i]; its 68 and 478 points projected from the model."""
    from fitting.params import CameraParams, FaceParams, Identity, VideoFit
    from fitting.photo import FRONT
    from fitting.pose import axis_angle

    n = len(sh)
    camera = CameraParams.default_for(SIZE, SIZE, 800.0)
    rotation = np.tile(axis_angle(FRONT), (n, 1))
    translation = np.tile([0.0, 10.0, 700.0], (n, 1))
    faces = FaceParams(rotation, translation, np.zeros((n, model.num_expression)),
                       np.stack(sh), np.ones(n, bool))
    identity = np.zeros(model.num_identity, np.float32)
    verts = model.vertices(torch.from_numpy(identity[None]),
                           torch.zeros(1, model.num_expression))
    cam = camera.to_camera(rotation[0], translation[0])
    landmarks = {s: np.repeat(cam.project(model.landmarks(verts, s)).numpy(), n, 0)
                 for s in ("ibug68", "mediapipe478")}
    return VideoFit(Identity(identity), faces, camera, fps=25.0, landmarks=landmarks)


def render_frame(model, fit, albedo: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """The fit's first pose rendered with `albedo` (UV) under `sh` over grey, uint8 RGB."""
    from render.helpers import render_mesh

    f = fit.faces
    verts = model.vertices(torch.from_numpy(fit.identity.coefficients[None]),
                           torch.from_numpy(f.expression[:1]))
    cam = fit.camera.to_camera(f.rotation[0], f.translation[0])
    out = render_mesh(verts, model.triangles, cam, texture_image=torch.from_numpy(albedo),
                      uv_coords=model.uv_coords, uv_triangles=model.uv_triangles,
                      sh_coeffs=torch.from_numpy(sh)[None], background=0.3)
    return np.round(np.clip(out.image[0].numpy(), 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------- merging


def test_merge_leaves_out_an_occluder_seen_in_one_view() -> None:
    truth = skin_albedo(32)
    views = np.stack([truth * (1 + 0.02 * i) for i in range(5)])
    views[2, 8:20, 8:20] = [0.2, 0.25, 0.3]  # a dark grey microphone in one frame
    confidences = np.ones((5, 32, 32), np.float32)
    merged, confidence = merge_albedos(views, confidences)
    assert np.allclose(merged, truth * 1.04, atol=0.01)  # the views average; the grey one is out
    assert np.allclose(confidence, 1.0)
    # a view the others do not see at all decides alone where only it saw
    confidences[:, :4] = 0.0
    confidences[4, :4] = 0.6
    merged, confidence = merge_albedos(views, confidences)
    assert np.allclose(merged[:4], views[4, :4], atol=1e-5)
    assert np.allclose(confidence[:4], 0.6)


def test_albedo_frames_spread_over_the_frames_with_a_face(model) -> None:
    fit = clip_fit_of(model, [LIGHT_LEFT] * 40)
    fit.faces.valid[:10] = False
    fit.faceless = np.array([20])
    picks = albedo_frames(fit, 6)
    assert len(picks) == 6 and picks[0] == 10 and picks[-1] == 39
    assert 20 not in picks and np.all(np.diff(picks) > 0)
    assert len(albedo_frames(fit, 100)) == 29


# ------------------------------------------------------------------------- the actor albedo


def test_the_albedo_of_one_face_under_two_lights_comes_back_the_same(model, channels) -> None:
    truth = skin_albedo(int(model.data.texture_size))
    fit = clip_fit_of(model, [LIGHT_LEFT, LIGHT_RIGHT])
    views = []
    for i, sh in enumerate((LIGHT_LEFT, LIGHT_RIGHT)):
        frame = render_frame(model, fit, truth, sh)
        views.append(frame_albedo_texture(model, fit, i, frame, np.ones(3, np.float32),
                                          channels))
    (a, ca), (b, cb) = views
    size = len(a)
    truth = cv2.resize(truth, (size, size), interpolation=cv2.INTER_AREA)
    seen = (ca > 0.5) & (cb > 0.5) & (model_face_texels(model, size) > 0)
    assert seen.sum() > 0.05 * size * size
    # each frame over its own light gives the albedo back; the two agree with each other
    assert np.median(np.abs(a[seen] - truth[seen])) < 0.02
    assert np.median(np.abs(a[seen] - b[seen])) < 0.015
    # the frames differ by their light by far more than that
    fa, fb = (render_frame(model, fit, truth, sh).astype(np.float32) / 255
              for sh in (LIGHT_LEFT, LIGHT_RIGHT))
    assert np.abs(fa - fb).max() > 0.1


def model_face_texels(model, size: int) -> np.ndarray:
    """size x size: 1 on the texels of the face-skin region."""
    uv = model.uv_coords.numpy()
    skin = model.region("face_skin")
    tris = model.triangles.numpy()
    uv_tris = model.uv_triangles.numpy()
    keep = skin[tris].all(1)
    canvas = np.zeros((size, size), np.uint8)
    for t in uv_tris[keep]:
        pts = np.round(np.stack([uv[t, 0] * size - 0.5, (1 - uv[t, 1]) * size - 0.5], -1)
                       * 16).astype(np.int32)
        cv2.fillConvexPoly(canvas, pts, 1, shift=4)
    return canvas


def test_actor_albedo_reads_the_target_file(model, channels, tmp_path: Path) -> None:
    from morph3d.io.images import write_image

    truth = skin_albedo(int(model.data.texture_size), seed=1)
    fit = clip_fit_of(model, [LIGHT_RIGHT])
    target = tmp_path / "still.png"
    write_image(target, render_frame(model, fit, truth, LIGHT_RIGHT))
    albedo, confidence, exposure = actor_albedo(model, fit, target, np.ones(3, np.float32),
                                                channels)
    assert exposure == scene_levels(render_frame(model, fit, truth, LIGHT_RIGHT))
    size = len(albedo)
    truth = cv2.resize(truth, (size, size), interpolation=cv2.INTER_AREA)
    seen = (confidence > 0.5) & (model_face_texels(model, size) > 0)
    assert seen.sum() > 0.05 * size * size
    assert np.median(np.abs(albedo[seen] - truth[seen])) < 0.02


def darker(rgb: np.ndarray, gain: float) -> np.ndarray:
    """uint8 RGB with its linear light times `gain`."""
    from morph3d.composite.colour import linear_to_srgb

    linear = srgb_to_linear(rgb.astype(np.float32) / 255.0) * gain
    return np.round(linear_to_srgb(linear) * 255.0).astype(np.uint8)


def test_scene_levels_follow_linear_light_skip_black_bars_and_see_grey() -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(30, 230, (120, 160, 3)).astype(np.uint8)
    level = scene_levels(picture)
    assert 0.05 < level.exposure < 0.6 and level.colour > 20
    assert scene_levels(darker(picture, 0.25)).exposure == pytest.approx(0.25 * level.exposure,
                                                                         rel=0.03)
    letterboxed = np.pad(picture, ((30, 30), (0, 0), (0, 0)))  # black bars above and below
    assert scene_levels(letterboxed) == pytest.approx(level, rel=1e-6)
    grey = np.repeat(picture[..., :1], 3, -1)
    assert scene_levels(grey).colour == 0.0 < scene_levels(grey).exposure
    assert scene_levels(np.zeros_like(picture)) == (0.0, 0.0)


def test_scene_levels_compiled_pass_is_its_numpy_formula() -> None:
    from morph3d.composite.colour import LUMA, srgb_to_linear

    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (90, 70, 3)).astype(np.uint8)
    picture[:, :10] = rng.integers(0, 5, (90, 10, 3))  # a dark border: not lit
    pixels = picture.reshape(-1, 3)
    lit = pixels[pixels.max(1) > 4]
    luma = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)[lit] @ LUMA
    spread = lit.max(1).astype(np.int16) - lit.min(1)
    level = scene_levels(picture)
    assert level.exposure == pytest.approx(float(luma.mean()), rel=1e-6)
    assert level.colour == pytest.approx(float(spread.mean()), rel=1e-12)


def test_exposure_gain_reads_no_difference_within_one_shots_spread() -> None:
    assert exposure_gain(0.2, 0.2 * EXPOSURE_TOLERANCE, 0.5) == pytest.approx(1.0)
    assert exposure_gain(0.2, 0.2 / EXPOSURE_TOLERANCE, 0.5) == pytest.approx(1.0)
    dim = exposure_gain(0.2, 0.02, 0.5)  # a clip ten times darker than the photo
    assert dim == pytest.approx((10 / EXPOSURE_TOLERANCE) ** -0.5)
    assert exposure_gain(0.02, 0.2, 0.5) == pytest.approx(1 / dim)
    assert exposure_gain(0.2, 0.02, 0.0) == 1.0


def test_a_darker_clip_takes_half_the_exposure_ratio_off_the_source(model, channels,
                                                                     tmp_path: Path) -> None:
    """The source's albedo factor follows the clip's exposure, beyond one shot's spread,
    to the power of `exposure_share`: a clip four times darker in linear light gives
    (4 / 1.25) ** -0.5 of the factor."""
    from fitting.params import Identity
    from morph3d.io.images import write_image

    size = int(model.data.texture_size)
    truth = skin_albedo(size, seed=2)
    fit = clip_fit_of(model, [LIGHT_LEFT])
    photo = render_frame(model, fit, truth, LIGHT_LEFT)
    source = clip_fit_of(model, [LIGHT_LEFT])
    source.identity = Identity(source.identity.coefficients, texture=truth,
                               confidence=np.ones((size, size, 1), np.float32))
    factors = {}
    for name, gain in (("same", 1.0), ("dim", 0.25)):
        target = tmp_path / f"{name}.png"
        write_image(target, darker(photo, gain))
        for share in (0.0, 0.5):
            setup = prepare_transfer(model, source, fit, photo, target, channels,
                                     albedo_frames=1, exposure_share=share)
            factors[name, share] = setup.source_factor.numpy()
    skin = model.region("face_skin")
    assert np.allclose(factors["same", 0.5], factors["same", 0.0], rtol=0.02)
    ratio = np.median(factors["dim", 0.5][skin] / factors["dim", 0.0][skin])
    assert ratio == pytest.approx((4 / EXPOSURE_TOLERANCE) ** -0.5, rel=0.05)


def test_a_black_and_white_clip_stays_black_and_white(model, channels, tmp_path: Path) -> None:
    """A colour photo into a grey clip: the source's albedo goes in grey and the swapped face
    has no colour; the same photo into the colour clip does change the face's colour."""
    from fitting.params import Identity
    from morph3d.io.images import write_image

    size = int(model.data.texture_size)
    truth = skin_albedo(size, seed=3)
    fit = clip_fit_of(model, [LIGHT_LEFT])
    colour = render_frame(model, fit, truth, LIGHT_LEFT)
    grey = np.repeat(np.round(colour.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
                     .clip(0, 255).astype(np.uint8)[..., None], 3, -1)
    source = clip_fit_of(model, [LIGHT_LEFT])
    pinker = np.clip(truth * np.float32([1.1, 0.9, 0.85]), 0, 1)  # another skin than the actor's
    source.identity = Identity(source.identity.coefficients, texture=pinker,
                               confidence=np.ones((size, size, 1), np.float32))
    spread = {}
    for name, frame in (("grey", grey), ("colour", colour)):
        target = tmp_path / f"{name}.png"
        write_image(target, frame)
        setup = prepare_transfer(model, source, fit, colour, target, channels, albedo_frames=1)
        f = fit.faces
        out = transfer_face(model, source.identity.coefficients, setup.actor_identity,
                            setup.textures, channels, fit.camera, f.rotation[0],
                            f.translation[0], f.expression[0], frame,
                            {s: fit.landmarks[s][0] for s in fit.landmarks},
                            source_factor=setup.source_factor, alignment=setup.alignment)
        image = out["image"]
        spread[name] = float((image.max(-1) - image.min(-1)).max())
        changed = np.abs(image - frame[out["window"][1]:out["window"][1] + len(image),
                                       out["window"][0]:out["window"][0] + image.shape[1]]
                         / 255.0).max()
        assert changed > 0.03  # the face was changed either way
    assert spread["grey"] <= 1.5 / 255
    assert spread["colour"] > 0.1


@pytest.mark.parametrize("lighter_by", [1.0, 1.25])
def test_a_black_and_white_photo_changes_the_face_lightness_not_its_colour(
        model, channels, tmp_path: Path, lighter_by: float) -> None:
    """A grey photo of the actor's skin, or of a lighter one, into a colour clip: the face
    keeps the actor's colours (a grey skin is not a colour the clip's light could be divided
    out of) and takes the photo's lightness."""
    from fitting.params import Identity
    from morph3d.io.images import write_image

    size = int(model.data.texture_size)
    truth = skin_albedo(size, seed=3)
    fit = clip_fit_of(model, [LIGHT_LEFT])
    colour = render_frame(model, fit, truth, LIGHT_LEFT)
    target = tmp_path / "colour.png"
    write_image(target, colour)
    luma = np.float32([0.299, 0.587, 0.114])
    photo = np.repeat((colour.astype(np.float32) @ luma).round().clip(0, 255)
                      .astype(np.uint8)[..., None], 3, -1)
    lighter = np.repeat((np.clip(truth * lighter_by, 0, 1) @ luma)[..., None], 3, -1)
    source = clip_fit_of(model, [LIGHT_LEFT])
    source.identity = Identity(source.identity.coefficients, texture=lighter,
                               confidence=np.ones((size, size, 1), np.float32))
    setup = prepare_transfer(model, source, fit, photo, target, channels, albedo_frames=1)
    f = fit.faces
    out = transfer_face(model, source.identity.coefficients, setup.actor_identity,
                        setup.textures, channels, fit.camera, f.rotation[0], f.translation[0],
                        f.expression[0], colour, {s: fit.landmarks[s][0] for s in fit.landmarks},
                        source_factor=setup.source_factor, alignment=setup.alignment)
    x, y = out["window"]
    image = out["image"]
    before = colour[y:y + len(image), x:x + image.shape[1]].astype(np.float32) / 255
    face = out["regions"]["face_skin"] & (out["coverage"] > 0) & (before.min(-1) > 0.1)
    assert face.sum() > 1000
    lightness = float(np.median(image[face] @ luma / (before[face] @ luma)))

    def chroma(rgb: np.ndarray) -> np.ndarray:  # linear light: a gain keeps it
        linear = srgb_to_linear(rgb)
        return linear / linear.sum(-1, keepdims=True)

    moved = float(np.median(np.abs(chroma(image[face]) - chroma(before[face])).max(-1)))
    if lighter_by == 1.0:
        assert abs(lightness - 1.0) < 0.03 and moved < 0.005
    else:  # lighter; a lighter skin is also a little less red (`tone.skin_lights`)
        assert lightness > 1.04 and moved < 0.025


# ------------------------------------------------------------------------------- the ratio


def transfer(model, channels, fit, frame, source, actor, index: int = 0, **keywords
             ) -> np.ndarray:
    """`transfer_face` with the actor's own shape as the source's (no warp) and the given
    UV albedos (T x T x 3; confidence 1 everywhere); the output image, float sRGB."""
    f = fit.faces
    ones = np.ones(source.shape[:2] + (1,), np.float32)
    textures = torch.from_numpy(np.concatenate([source, ones, actor, ones], -1))
    identity = fit.identity.coefficients
    out = transfer_face(model, identity, identity, textures, channels, fit.camera,
                        f.rotation[index], f.translation[index], f.expression[index], frame,
                        {s: fit.landmarks[s][index] for s in fit.landmarks},
                        source_factor=torch.ones(model.data.mean.shape[0], 3), **keywords)
    x, y = out["window"]
    h, w = out["image"].shape[:2]
    whole = frame.astype(np.float32) / 255
    whole[y:y + h, x:x + w] = out["image"]
    return whole


def face_interior(model, fit) -> np.ndarray:
    """Frame H x W bool: well inside the face's cheeks, nose and forehead."""
    from morph3d.composite.masks import face_geometry

    g = face_geometry({"ibug68": fit.landmarks["ibug68"][0]})
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(g.central_skin_polygon()).astype(np.int32)], 1)
    return mask.astype(bool)


def test_ratio_is_one_when_source_and_actor_are_the_same_picture(model, channels) -> None:
    # under an even light the frame is the albedo, its fine detail (the frame's own, which
    # the actor's side takes below `detail`) included
    size = int(model.data.texture_size)
    albedo = skin_albedo(size)
    even = np.zeros((9, 3), np.float32)
    even[0] = 0.9
    fit = clip_fit_of(model, [even])
    frame = render_frame(model, fit, albedo, even)
    out = transfer(model, channels, fit, frame, albedo, albedo)
    inside = face_interior(model, fit)
    # on the face nothing changes (the warp is the identity, the gain one); at the head's
    # silhouette the frame's pixels mix skin and background, which moves a few levels
    assert inside.sum() > 1000
    change = np.abs(out - frame / 255.0)
    assert np.median(change[inside]) < 0.3 / 255 and change[inside].max() < 2.0 / 255
    assert (change.max(-1) > 2.0 / 255).sum() < 300 and change.max() < 12.0 / 255  # a line


def test_ratio_is_the_same_in_every_frame_whatever_their_light(model, channels) -> None:
    """Two frames under different lights, the clip fit's SH wrong for the second (a fit
    error): the gain (output / frame, linear RGB) is the same in both at every face pixel
    with the clip's albedo alone (`detail` 0), and above `detail` with the frame's own fine
    structure; it darkens as the source's albedo is darker."""
    from morph3d.composite.masks import face_geometry
    from morph3d.swap.tone import normalized_blur

    size = int(model.data.texture_size)
    actor = skin_albedo(size)
    source = (actor * 0.7).astype(np.float32)
    fit = clip_fit_of(model, [LIGHT_LEFT, LIGHT_LEFT])
    inside = face_interior(model, fit)
    iod = face_geometry({"ibug68": fit.landmarks["ibug68"][0]}).iod
    assert inside.sum() > 1000
    # the frames' grey background holds nothing dark, so their black level (`black_level`)
    # would read the background; the gain above it is `test_the_gain_acts_above_the_black_level`'s
    for keywords in ({"detail": 0.0, "black": False}, {"black": False}):
        gains = []
        for sh in (LIGHT_LEFT, LIGHT_RIGHT):
            frame = render_frame(model, fit, actor, sh)
            out = transfer(model, channels, fit, frame, source, actor, **keywords)
            gain = srgb_to_linear(out) / np.maximum(
                srgb_to_linear(frame.astype(np.float32) / 255), 1e-3)
            if "detail" not in keywords:  # the frame's own detail below `detail` (0.1 IOD)
                gain, _ = normalized_blur(gain, inside.astype(np.float32), 0.3 * iod)
            gains.append(gain[inside])
        assert np.median(np.abs(gains[0] - gains[1])) < 0.01, keywords
        # 0.7 in sRGB is about 0.46 in linear light, of which the `light` share is applied
        median = np.median(gains[0], 0)
        assert np.all((median > 0.45) & (median < 0.75)), keywords
