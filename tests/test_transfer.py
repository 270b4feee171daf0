"""Identity transfer on the actor's pixels (morph3d.swap.transfer): the warp, the flow fill, the
tone ratio, the compositor's coverage-bounded mask, and the round trip on a real clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from morph3d.composite.colour import srgb_to_linear
from morph3d.composite.compositor import FaceCompositor, FrameInputs
from morph3d.composite.masks import face_geometry
from morph3d.swap.tone import tone_ratio
from morph3d.swap.transfer import (
    apply_ratio,
    compositor_config,
    extend_flow,
    warp_window,
)


def random_frame(h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2


# ------------------------------------------------------------------------------------ warp


def test_zero_flow_gives_the_window_back_exactly() -> None:
    frame = random_frame()
    window = warp_window(frame, np.zeros((20, 30, 2), np.float32), (7, 5))
    assert window.dtype == np.uint8
    assert np.array_equal(window, frame[5:25, 7:37])


def test_integer_flow_takes_each_pixel_from_its_offset() -> None:
    frame = random_frame(seed=1)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0  # q takes the frame at q + (2, -1)
    window = warp_window(frame, flow, (7, 5))
    assert np.array_equal(window, frame[4:24, 9:39])


def test_flow_fill_keeps_the_surface_and_fills_the_rest_without_steps() -> None:
    covered = disk((64, 64), (32, 32), 14)
    ys, xs = np.mgrid[:64, :64].astype(np.float32)
    flow = np.stack([0.2 * (xs - 32), np.full_like(xs, -3.0)], -1)
    filled = extend_flow(np.where(covered[..., None], flow, 0.0), covered)
    assert np.array_equal(filled[covered], flow[covered])
    assert np.isfinite(filled).all()
    # a constant component stays constant everywhere; the other stays within its range
    assert np.allclose(filled[..., 1], -3.0, atol=1e-4)
    assert filled[..., 0].min() >= flow[covered][:, 0].min() - 1e-4
    assert filled[..., 0].max() <= flow[covered][:, 0].max() + 1e-4
    # no step across the surface's edge: neighbours differ by about the slope at most
    assert np.abs(np.diff(filled[..., 0], axis=1)).max() < 0.6
    assert np.abs(np.diff(filled[..., 0], axis=0)).max() < 0.6


# ----------------------------------------------------------------------------- tone ratio


def test_tone_ratio_of_equal_albedos_is_one_and_of_a_scaled_one_is_the_scale() -> None:
    """A copy at half the light is half as light and, being the darker skin, a step
    redder along the skin locus (`skin_lights`)."""
    from morph3d.swap.tone import _LOCUS_DARK, _LOCUS_LIGHT, _LOCUS_LIGHTNESS

    rng = np.random.default_rng(2)
    actor = np.clip(0.4 + 0.1 * rng.standard_normal((48, 48, 3)), 0.05, 0.95).astype(np.float32)
    weight = disk((48, 48), (24, 24), 18).astype(np.float32)
    same = tone_ratio(actor, actor, weight, sigma=2.0)
    assert np.allclose(same, 1.0, atol=1e-3)
    darker = np.clip(actor, 0, 1) ** 1.0
    from morph3d.composite.colour import linear_to_srgb

    half = linear_to_srgb(0.5 * srgb_to_linear(darker))
    ratio = tone_ratio(half, actor, weight, sigma=2.0)[weight > 0]
    assert np.allclose(ratio @ np.float32([0.2126, 0.7152, 0.0722]), 0.5, atol=0.02)
    shift = np.log(2.0) / _LOCUS_LIGHTNESS * (_LOCUS_DARK - _LOCUS_LIGHT)
    chroma = np.log(np.stack([ratio[:, 0] / ratio[:, 1], ratio[:, 2] / ratio[:, 1]], 1))
    assert np.allclose(chroma, shift, atol=0.01), (np.median(chroma, 0), shift)


def test_tone_ratio_of_two_grey_pictures_is_grey() -> None:
    """Black-and-white pictures have no light colour and no place on the skin locus: a
    copy at half the light gives half, in every channel alike (no step redder)."""
    from morph3d.composite.colour import linear_to_srgb

    rng = np.random.default_rng(4)
    grey = np.clip(0.45 + 0.1 * rng.standard_normal((48, 48, 1)), 0.05, 0.95)
    actor = np.repeat(grey, 3, -1).astype(np.float32)
    weight = disk((48, 48), (24, 24), 18).astype(np.float32)
    half = linear_to_srgb(0.5 * srgb_to_linear(actor))
    ratio = tone_ratio(half, actor, weight, sigma=2.0)[weight > 0]
    assert np.allclose(ratio, 0.5, atol=0.02)
    assert np.abs(ratio - ratio.mean(-1, keepdims=True)).max() < 1e-4


def test_flat_lightness_drops_broad_light_and_keeps_colour_and_features() -> None:
    """A ratio carrying a side-lit photo's dark half (lightness falling across the face),
    a redder left cheek and a dark mole: the broad fall goes to the face's overall tone,
    the redness and the mole stay."""
    from morph3d.composite.colour import LUMA
    from morph3d.swap.tone import flat_lightness

    size = 128
    xs = np.mgrid[:size, :size][1] / (size - 1)
    tone = np.array([0.8, 0.75, 0.7], np.float32)
    side_lit = np.exp(-1.2 * xs)[..., None]  # 3.3x darker on the right
    redder = np.stack([1.0 + 0.2 * (1 - xs), np.ones_like(xs), np.ones_like(xs)], -1)
    mole = np.where(disk((size, size), (40, 64), 3)[..., None], 0.5, 1.0)
    ratio = (tone * side_lit * redder * mole).astype(np.float32)
    weight = disk((size, size), (64, 64), 60).astype(np.float32)
    out = flat_lightness(ratio, weight, sigma=14.0, tone=tone)
    light = np.log(out) @ LUMA
    rows = slice(50, 78)
    left, right = light[rows, 15:30].mean(), light[rows, 98:113].mean()
    given = np.log(ratio) @ LUMA
    before = given[rows, 15:30].mean() - given[rows, 98:113].mean()
    assert before > 0.7 and abs(left - right) < 0.15 * before
    assert abs(light[rows, 50:78].mean() - float(np.log(tone) @ LUMA)) < 0.08
    red_over_green = out[..., 0] / out[..., 1]
    assert red_over_green[64, 10] / red_over_green[64, 118] == pytest.approx(
        (ratio[64, 10, 0] / ratio[64, 10, 1]) / (ratio[64, 118, 0] / ratio[64, 118, 1]), rel=1e-3)
    depth = out[64, 40] / out[64, 52]  # the mole against the skin beside it
    assert depth == pytest.approx(ratio[64, 40] / ratio[64, 52], rel=0.15)


def test_ratio_of_one_or_strength_zero_leaves_the_pixels() -> None:
    image = random_frame(16, 16, seed=3)
    ratio = np.full((16, 16, 3), 0.3, np.float32)
    out = apply_ratio(image, ratio, np.zeros((16, 16), np.float32))
    assert np.array_equal(out * 255.0, image.astype(np.float32))
    out = apply_ratio(image, np.ones_like(ratio), np.ones((16, 16), np.float32))
    assert np.abs(out * 255.0 - image).max() < 0.1  # the linear-light table's steps
    every_level = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    out = apply_ratio(every_level, np.ones_like(ratio), np.ones((16, 16), np.float32))
    assert np.abs(out * 255.0 - every_level).max() < 0.1


# ----------------------------------------------------------------------------- compositor


def test_transfer_mask_follows_the_warp_region_not_the_swapped_outline() -> None:
    """The warped frame meets the original at its edge, so the mask reaches as far as the
    render's coverage says, past the swapped face's jaw."""
    from test_composite import SIZE, background, draw_face, synthetic_ibug68

    actor = synthetic_ibug68(half_width=1.05)
    swapped = synthetic_ibug68(half_width=0.85)  # a narrower source face
    frame, _ = draw_face(actor, (0.8, 0.6, 0.5), background=background())
    coverage = disk((SIZE, SIZE), (128, 140), 110).astype(np.float32)
    beside_jaw = (int(swapped[2, 1]), int(swapped[2, 0] - 0.12 * face_geometry(swapped).iod))
    inputs = FrameInputs(frame, frame.copy(), coverage, actor, swapped)
    _, report = FaceCompositor(compositor_config()).process(inputs)
    assert report.alpha[beside_jaw] > 0.99
    assert report.alpha[coverage == 0].max() == 0.0


# ------------------------------------------------------------------------------ real clip


@pytest.mark.media
@pytest.mark.slow
def test_round_trip_of_a_clip_frame_gives_the_frame_back(media_dir: Path,
                                                         tmp_path: Path) -> None:
    """Frame k of a clip as the source photo, swapped into the same clip: frame k comes
    back (grey SSIM inside the jaw+brow hull; the re-rendered face scored about 0.75)."""
    from fitting.detection import detect_faces
    from fitting.faces import IBUG68
    from morph3d.evaluate.measures import face_appearance
    from morph3d.io.images import write_image
    from morph3d.io.media import iter_frames
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    clip, k = media_dir / "orig.webm", 10
    original = next(iter(iter_frames(clip, k, k + 1))).rgb
    source = tmp_path / "frame.png"
    write_image(source, original)
    output = tmp_path / "out.mp4"
    swap([source], clip, output, SwapOptions(max_frames=k + 2, quiet=True,
                                             work_dir=tmp_path / "work"))
    swapped = next(iter(iter_frames(output, k, k + 1))).rgb
    faces = detect_faces(original, "dlib")
    points = faces.landmarks[IBUG68][int(np.argmax(faces.areas()))]
    scores = face_appearance(original, swapped, points)
    assert scores["face_ssim"] > 0.9, scores
    assert scores["face_lab_delta"] < 2.0, scores
    assert cv2.PSNR(original, swapped) > 30.0


# --------------------------------------------------------------------- light and skin colour


def skin_patch(t: float, lightness: float = 0.3, seed: int = 4) -> np.ndarray:
    """48 x 48 x 3 linear RGB skin at fraction `t` along the skin locus (0: the light-skin
    end, 1: the dark-skin end), with a little per-pixel texture."""
    from morph3d.swap.tone import _LOCUS_DARK, _LOCUS_LIGHT

    chroma = _LOCUS_LIGHT + t * (_LOCUS_DARK - _LOCUS_LIGHT)
    rgb = np.exp(np.float32([chroma[0], 0.0, chroma[1]]))
    rgb = rgb * lightness / float(rgb @ np.float32([0.2126, 0.7152, 0.0722]))
    texture = 1 + 0.05 * np.random.default_rng(seed).standard_normal((48, 48, 1))
    return (rgb * texture).astype(np.float32)


def unit_luminance(gains: np.ndarray) -> np.ndarray:
    gains = np.asarray(gains, np.float32)
    return gains / float(gains @ np.float32([0.2126, 0.7152, 0.0722]))


@pytest.mark.parametrize("t, tint", [
    (0.5, (1.1, 0.92, 1.35)),  # pink stage light on mid skin: off the locus
    (0.5, (0.9, 1.05, 0.8)),  # a green-yellow cast
    (1.0, (1.5, 0.9, 0.8)),  # a red light on the darkest skin: beyond the locus' end
])
def test_skin_illuminant_recovers_a_light_tint_on_a_skin_patch(t: float, tint) -> None:
    from morph3d.swap.tone import skin_illuminant

    skin = skin_patch(t)
    weight = np.ones(skin.shape[:2], np.float32)
    assert np.allclose(skin_illuminant(skin, weight), 1.0, atol=0.01)
    recovered = skin_illuminant(skin * np.float32(tint), weight)
    assert np.allclose(recovered, unit_luminance(tint), atol=0.03), recovered


def test_skin_along_the_locus_is_skin_not_light() -> None:
    """Between the light-skin and dark-skin ends a change of chromaticity is another skin:
    no light is read into it (the ratio keeps a darker skin's warmth)."""
    from morph3d.swap.tone import skin_illuminant

    weight = np.ones((48, 48), np.float32)
    for t in (0.0, 0.3, 1.0):
        assert np.allclose(skin_illuminant(skin_patch(t, 0.1), weight), 1.0, atol=0.01)


def test_tone_ratio_of_a_picture_against_itself_under_another_light_is_one() -> None:
    from morph3d.composite.colour import linear_to_srgb

    skin = skin_patch(0.4)
    weight = disk((48, 48), (24, 24), 18).astype(np.float32)
    actor = linear_to_srgb(skin * np.float32([1.12, 0.93, 1.3]))  # under a pink light
    source = linear_to_srgb(skin)
    ratio = tone_ratio(source, actor, weight, sigma=2.0)
    assert np.allclose(ratio[weight > 0], 1.0, atol=0.02), ratio[weight > 0].mean(0)
    # a darker skin along the locus under the same light keeps its own colour
    darker = linear_to_srgb(skin_patch(0.9, 0.15))
    ratio = tone_ratio(darker, actor, weight, sigma=2.0)
    expected = np.median(skin_patch(0.9, 0.15) / skin, (0, 1))
    assert np.allclose(np.median(ratio[weight > 0], 0), expected, rtol=0.05)


def crop_face(size: int = 256):
    """A synthetic face crop: skin, dark brows, the crop's landmarks and region channels."""
    from test_composite import synthetic_ibug68

    points = synthetic_ibug68()
    seen = np.empty((size, size, 3), np.float32)
    seen[:] = (0.85, 0.62, 0.52)
    seen += 0.01 * np.random.default_rng(5).standard_normal(seen.shape).astype(np.float32)
    regions = {"eyes": np.zeros((size, size), np.float32),
               "lips": np.zeros((size, size), np.float32)}
    return points, np.clip(seen, 0, 1), regions


def test_a_fringe_over_the_brows_is_kept_and_the_actors_own_brows_are_not() -> None:
    """The ratio leaves a fringe reaching down into the brows' band alone (it would paint
    the source's brows onto hair), but an actor's brow, an island in skin, takes it."""
    from morph3d.composite.occluders import fit_skin_model
    from morph3d.swap.transfer import actor_non_skin

    size = 256
    points, seen, regions = crop_face(size)
    left, right = points[17:22], points[22:27]
    cv2.polylines(seen, [np.round(right).astype(np.int32)], False, (0.2, 0.15, 0.12), 6)
    hair = np.zeros((size, size), np.uint8)  # a grey fringe from the top over the left brow
    x0, x1 = int(left[:, 0].min()) - 5, int(left[:, 0].max()) + 5
    hair[: int(left[:, 1].max()) + 4, x0:x1] = 1
    seen[hair > 0] = (0.45, 0.45, 0.47)
    covered = np.ones((size, size), bool)
    model = fit_skin_model(seen, {"ibug68": points})
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    keep = actor_non_skin(seen, covered, model, regions, points, (0.0, 0.0, float(size)),
                          size, iod)
    brow_pixels = np.zeros((size, size), np.uint8)
    cv2.polylines(brow_pixels, [np.round(right).astype(np.int32)], False, 1, 3)
    assert not keep[brow_pixels > 0].any()
    left_band = np.zeros((size, size), np.uint8)
    cv2.polylines(left_band, [np.round(left).astype(np.int32)], False, 1, 3)
    assert keep[(left_band > 0) & (hair > 0)].mean() > 0.95
    assert keep[hair > 0].mean() > 0.95


def test_skin_under_a_coloured_light_is_swapped_and_a_darker_object_is_kept() -> None:
    """A blue rim light on one cheek is off the skin's colour but lighter than the skin: with
    `lit_skin` the ratio takes it (no cut between the swapped face and the lit cheek); a
    darker blue thing on the other cheek stays the actor's either way."""
    from morph3d.composite.occluders import fit_skin_model
    from morph3d.swap.transfer import actor_non_skin, surround_strength

    size = 256
    points, seen, regions = crop_face(size)
    lit = np.zeros((size, size), bool)
    lit[120:160, 160:182] = True
    thing = np.zeros((size, size), bool)
    thing[120:160, 74:96] = True
    seen[lit] = (0.80, 0.75, 0.95)
    seen[thing] = (0.30, 0.35, 0.60)
    covered = np.ones((size, size), bool)
    model = fit_skin_model(seen, {"ibug68": points})
    iod = float(np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0)))
    box = (0.0, 0.0, float(size))
    plain_keep = actor_non_skin(seen, covered, model, regions, points, box, size, iod)
    lit_keep = actor_non_skin(seen, covered, model, regions, points, box, size, iod,
                              lit_skin=True)
    assert plain_keep[lit].mean() > 0.95 and plain_keep[thing].mean() > 0.95
    assert lit_keep[lit].mean() < 0.05
    assert lit_keep[thing].mean() > 0.95
    # around the face the lit skin of the head takes the face's tone too
    face = disk((size, size), (128, 130), 25)
    inner = np.zeros((size, size), bool)
    plain = surround_strength(seen, model, face, inner, reach=80.0, smooth=2.0)
    head = surround_strength(seen, model, face, inner, reach=80.0, smooth=2.0, head=covered)
    assert plain[135:145, 165:177].max() < 0.05
    assert head[135:145, 165:177].min() > 0.3
    assert head[135:145, 79:91].max() < 0.05


def test_surround_takes_the_skin_around_the_face_not_hair_or_background() -> None:
    from morph3d.composite.occluders import fit_skin_model
    from morph3d.swap.transfer import surround_strength

    size = 256
    points, plain, _ = crop_face(size)
    face = disk((size, size), (128, 140), 50)
    plain[:, :30] = (0.2, 0.4, 0.6)  # background at the left
    plain[:40] = (0.15, 0.1, 0.08)  # hair at the top
    model = fit_skin_model(plain, {"ibug68": points})
    inner = np.zeros((size, size), bool)
    weight = surround_strength(plain, model, face, inner, reach=40.0, smooth=2.0)
    assert weight[face].min() > 0.95  # skin at the face
    assert 0.2 < weight[140, 128 + 50 + 20] < 0.8  # skin beside it, fading with distance
    assert weight[140, 128 + 50 + 42] == 0.0  # beyond the reach
    assert weight[:34].max() < 0.05 and weight[:, :24].max() < 0.05  # hair, background
    assert weight[-1].max() == 0.0 and weight[:, -1].max() == 0.0  # the crop's border


# --------------------------------------------------------------------------------- devices


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """`device_inputs` turns autograd off as the swap driver does; the next test file
    (the renderer's gradient checks) must find it as it was."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


def device_inputs(device: torch.device) -> tuple:
    """`transfer_face`'s arguments for a synthetic frame, every tensor on `device`: the
    default model at its mean identity, frontal, 700 mm away in a 320 px frame, rendered
    with a skin albedo; the source another identity with a darker albedo."""
    from fitting.params import CameraParams
    from fitting.photo import FRONT
    from fitting.pose import axis_angle
    from morph3d.model.registry import load_model
    from morph3d.swap.window import REGION_CHANNELS
    from render.helpers import render_mesh

    torch.set_grad_enabled(False)
    model = load_model("default").to(device)
    size = int(model.data.texture_size)
    ys, xs = np.mgrid[:size, :size].astype(np.float32) / size
    pattern = 1 + 0.12 * np.sin(9 * xs) * np.cos(7 * ys)
    actor = np.clip(np.float32([0.78, 0.58, 0.48]) * pattern[..., None], 0, 1).astype(np.float32)
    source = (actor * 0.8).astype(np.float32)
    camera = CameraParams.default_for(320, 320, 800.0)
    rotation, translation = axis_angle(FRONT), np.float32([0.0, 10.0, 700.0])
    expression = np.zeros(model.num_expression, np.float32)
    actor_identity = np.zeros(model.num_identity, np.float32)
    source_identity = np.random.default_rng(5).standard_normal(model.num_identity) * 0.8
    cam = camera.to_camera(rotation, translation)
    verts = model.vertices(torch.zeros(1, model.num_identity, device=device),
                           torch.zeros(1, model.num_expression, device=device))
    sh = torch.zeros(1, 9, 3, device=device)
    sh[0, 0] = 0.9
    out = render_mesh(verts, model.triangles, cam,
                      texture_image=torch.from_numpy(actor).to(device),
                      uv_coords=model.uv_coords, uv_triangles=model.uv_triangles,
                      sh_coeffs=sh, background=0.3)
    frame = np.round(np.clip(out.image[0].cpu().numpy(), 0, 1) * 255).astype(np.uint8)
    landmarks = {s: cam.project(model.landmarks(verts, s))[0].cpu().numpy()
                 for s in ("ibug68", "mediapipe478")}
    ones = np.ones((size, size, 1), np.float32)
    textures = torch.from_numpy(np.concatenate([source, ones, actor, ones], -1)).to(device)
    channels = torch.from_numpy(np.stack([model.region(n) for n in REGION_CHANNELS], 1)
                                .astype(np.float32)).to(device)
    factor = torch.ones(model.data.mean.shape[0], 3, device=device)
    return ((model, source_identity.astype(np.float32), actor_identity, textures, channels,
             camera, rotation, translation, expression, frame, landmarks),
            {"source_factor": factor})


def face_in_window(out: dict) -> np.ndarray:
    return out["regions"]["face_skin"] & (out["coverage"] > 0)


def test_transfer_runs_with_the_model_and_its_tensors_on_an_explicit_cpu_device() -> None:
    from morph3d.swap.transfer import transfer_face

    args, keywords = device_inputs(torch.device("cpu"))
    frame = args[9]
    frame.flags.writeable = False  # as a decoded image target comes; it must stay untouched
    before_call = frame.copy()
    out = transfer_face(*args, **keywords)
    assert np.array_equal(frame, before_call)
    x, y = out["window"]
    image = out["image"]
    h, w = image.shape[:2]
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert 0 <= x and x + w <= frame.shape[1] and 0 <= y and y + h <= frame.shape[0]
    face = face_in_window(out)
    assert face.sum() > 1000
    # the source's albedo is the actor's times 0.8 (sRGB): the face comes out darker
    before = frame[y:y + h, x:x + w].astype(np.float32) / 255
    assert np.median(image[face].mean(-1) / np.maximum(before[face].mean(-1), 1e-3)) < 0.92


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_a_pillarbox_bar_across_the_cheek_is_not_pulled_into_the_face(share: float) -> None:
    from morph3d.swap.transfer import transfer_face

    args, keywords = device_inputs(torch.device("cpu"))
    jaw = args[10]["ibug68"][:17, 0]
    cut = int(jaw.min() + share * (jaw.max() - jaw.min()))  # the bar ends on the cheek
    frame = args[9].copy()
    frame[:, :cut] = 0
    out = transfer_face(*args[:9], frame, *args[10:], **keywords)
    x, y = out["window"]
    image = out["image"]
    columns = np.arange(x, x + image.shape[1])[None, :].repeat(image.shape[0], 0)
    in_picture = (columns >= cut) & (out["coverage"] > 0)
    assert in_picture.sum() > 1000
    assert (frame[y:y + image.shape[0], x:x + image.shape[1]].max(-1)[in_picture] > 40).all()
    # the source's narrower or wider cheek samples the picture's edge, never the bar
    assert (image.max(-1)[in_picture] > 40 / 255).all()


def test_a_sample_moves_into_the_picture_unless_its_own_pixel_lies_outside_it() -> None:
    from morph3d.swap.transfer import clamp_to_picture, inner_picture

    frame = np.full((40, 60, 3), 120, np.uint8)
    frame[:, :10] = 0  # a pillarbox bar 10 px wide
    picture = inner_picture(frame)
    assert picture == (13, 0, 60, 40)  # less the codec's smeared edge on the bar's side
    ys, xs = np.mgrid[:40, :60].astype(np.float32)
    # every pixel sampling 5 px to its left: inside the picture it stops at the edge
    x, y = clamp_to_picture(xs - 5, ys, picture, (xs, ys))
    assert np.array_equal(y, ys)
    assert (x[:, 18:] == xs[:, 18:] - 5).all() and (x[:, 13:18] == 13).all()
    # a pixel on the bar's edge samples itself at most: a zero flow gives every pixel back
    assert np.array_equal(x[:, :13], xs[:, :13])
    x, y = clamp_to_picture(xs, ys, picture, (xs, ys))
    assert np.array_equal(x, xs) and np.array_equal(y, ys)


def test_the_warp_leaves_the_bars_smeared_edge_and_resumes_inside_the_picture() -> None:
    from morph3d.swap.transfer import BAR_EDGE_PX, held_at_bars, inner_picture

    frame = np.full((40, 60, 3), 120, np.uint8)
    frame[:, :10] = 0  # a pillarbox bar 10 px wide on the left, none on the other sides
    picture = inner_picture(frame)
    left = picture[0]
    ys, xs = np.mgrid[:40, :60].astype(np.float32)
    maps = np.stack([xs + 4.0, ys - 2.0], -1)  # every pixel sampling 4 px right, 2 up
    held = held_at_bars(maps.copy(), xs[0], ys[:, 0], picture, frame.shape[:2])
    share = (held[..., 0] - xs) / 4.0  # how much of the move is left
    assert np.allclose((held[..., 1] - ys) / -2.0, share)
    assert (share[:, :left] == 0).all()  # the bar and the codec's smeared edge stay
    assert (np.diff(share[0, left - 1:left + BAR_EDGE_PX]) > 0).all()  # then rising
    assert (share[:, left + BAR_EDGE_PX - 1:] == 1).all()  # top, right and bottom: no bar
    # no bar at all: the maps as they were; a bar at the bottom holds its rows alike
    assert np.array_equal(held_at_bars(maps.copy(), xs[0], ys[:, 0], (0, 0, 60, 40),
                                       (40, 60)), maps)
    held = held_at_bars(maps.copy(), xs[0], ys[:, 0], (0, 0, 60, 30), (40, 60))
    assert (held[30:] == np.stack([xs, ys], -1)[30:]).all() and (held[:27] == maps[:27]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_transfer_on_cuda_matches_the_cpu() -> None:
    from morph3d.swap.transfer import transfer_face

    cpu = transfer_face(*device_inputs(torch.device("cpu"))[0],
                        **device_inputs(torch.device("cpu"))[1])
    args, keywords = device_inputs(torch.device("cuda"))
    assert args[3].device.type == "cuda" and args[0].mean.device.type == "cuda"
    gpu = transfer_face(*args, **keywords)
    assert gpu["window"] == cpu["window"]
    assert np.abs(gpu["image"] - cpu["image"]).max() < 3.0 / 255
    assert np.abs(gpu["image"] - cpu["image"]).mean() < 0.2 / 255
    for name, mask in cpu["regions"].items():
        assert np.mean(gpu["regions"][name] != mask) < 0.005, name


@pytest.mark.parametrize("shape", [(256, 256), (250, 243), (96, 120)])
def test_reduced_low_pass_stays_within_a_hundredth_of_the_full_size_one(shape) -> None:
    from morph3d.swap.tone import normalized_blur

    rng = np.random.default_rng(7)
    h, w = shape
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    values = np.stack([0.5 + 0.3 * np.sin(xs / 9 + k) * np.cos(ys / 11) for k in range(6)], -1)
    values += 0.05 * rng.standard_normal(values.shape).astype(np.float32)
    weight = disk((h, w), (w / 2, h / 2), min(h, w) / 3).astype(np.float32)
    for sigma in (4.5, 7.7, 12.0):
        full, full_den = normalized_blur(values, weight, sigma)
        low, low_den = normalized_blur(values, weight, sigma, reduce=True)
        support = full_den > 0.3  # where the quotient is used at full weight
        assert np.abs(low - full)[support].max() < 0.01, sigma
        assert np.abs(low_den - full_den).max() < 0.02, sigma
        two_d, _ = normalized_blur(values[..., 0], weight, sigma, reduce=True)
        assert two_d.shape == (h, w) and np.allclose(two_d, low[..., 0], atol=1e-5)


def ratio_chroma(source_linear: np.ndarray, actor_linear: np.ndarray) -> np.ndarray:
    """(log R/G, log B/G) of the median tone ratio of two linear skin patches over a disk."""
    from morph3d.composite.colour import linear_to_srgb

    weight = disk((48, 48), (24, 24), 18).astype(np.float32)
    ratio = tone_ratio(linear_to_srgb(source_linear), linear_to_srgb(actor_linear), weight,
                       sigma=2.0)
    r = np.median(ratio[weight > 0], 0)
    return np.log([r[0] / r[1], r[2] / r[1]])

def test_a_darker_source_is_never_bluer_than_the_actor_whose_skin_lies_past_the_locus() -> None:
    """An actor's graded skin beyond the locus' dark end and a darker source measured near
    its light end: placed independently, the source's place on the locus would make the
    output bluer than both pictures. The lightness order holds it at least as far along
    the locus as the actor (redder, no bluer), and by about as much as it is darker."""
    from morph3d.swap.tone import _LOCUS_DARK, _LOCUS_LIGHT, _LOCUS_LIGHTNESS

    actor = skin_patch(1.0, 0.2) * np.float32([1.6, 1.0, 1.25])  # past the dark end
    source = skin_patch(0.1, 0.07, seed=5)  # darker, but measured near the light end
    chroma = ratio_chroma(source, actor)
    assert chroma[1] <= 0.0 and chroma[0] >= 0.0, chroma  # no bluer, no less red
    span = _LOCUS_DARK - _LOCUS_LIGHT
    darker = np.log(0.2 / 0.07) / _LOCUS_LIGHTNESS  # locus steps its lightness says
    assert np.allclose(chroma, darker * span, atol=0.02), (chroma, darker * span)


def test_a_lighter_source_is_never_redder_than_the_actor() -> None:
    actor = skin_patch(0.0, 0.1) * np.float32([0.8, 1.0, 1.3])  # past the light end
    source = skin_patch(0.9, 0.3, seed=5)  # lighter, but measured near the dark end
    chroma = ratio_chroma(source, actor)
    assert chroma[1] >= 0.0 and chroma[0] <= 0.0, chroma


def test_full_size_low_pass_is_the_weighted_blur_quotient() -> None:
    """The compiled weighting and division give numpy's blur(v w) / blur(w) bit for bit."""
    from morph3d.swap.tone import normalized_blur

    rng = np.random.default_rng(3)
    values = rng.random((40, 50, 6), np.float32)
    weight = (rng.random((40, 50)) > 0.6).astype(np.float32)
    weight[:, 3:12] = 0.0  # a band without support: 0 there
    low, den = normalized_blur(values, weight, 1.5)
    both = cv2.GaussianBlur(np.concatenate([values * weight[..., None], weight[..., None]], -1),
                            (0, 0), 1.5, borderType=cv2.BORDER_REPLICATE)
    expected = both[..., :6] / np.maximum(both[..., 6:], 1e-6)
    expected[np.broadcast_to(both[..., 6:] <= 1e-6, expected.shape)] = 0.0
    assert np.array_equal(den, both[..., 6]) and np.array_equal(low, expected)


@pytest.mark.parametrize("reduce", [False, True])
def test_low_pass_of_a_small_support_is_the_whole_rasters(reduce: bool) -> None:
    """Only the support's box grown by the blur's reach is blurred; the result is the whole
    raster's (to float32 rounding) and exactly 0 beyond the box, reduced raster included."""
    from morph3d.swap.tone import _blurred_quotient, normalized_blur

    rng = np.random.default_rng(5)
    values = rng.random((120, 96, 6), np.float32)
    weight = np.zeros((120, 96), np.float32)
    weight[30:57, 41:70] = rng.random((27, 29)) > 0.3
    for sigma in (1.5, 4.5, 7.7):
        f = int(min(max(sigma // 2.0, 1), 4)) if reduce else 1
        whole, whole_den = _blurred_quotient(values, weight, sigma, f)
        low, den = normalized_blur(values, weight, sigma, reduce=reduce)
        assert np.allclose(low, whole, rtol=1e-5, atol=1e-6), sigma
        assert np.allclose(den, whole_den, rtol=1e-5, atol=1e-9), sigma
        assert np.array_equal(low == 0, whole == 0) and np.array_equal(den == 0, whole_den == 0)
        assert (whole_den[:, :2] == 0).all() and (den[:, :2] == 0).all()


def test_srgb_curve_matches_its_formula() -> None:
    from morph3d.composite.colour import linear_to_srgb

    x = np.linspace(-0.1, 1.1, 20001, dtype=np.float32)
    c = np.clip(x, 0, 1).astype(np.float64)
    to_linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_srgb = np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
    assert np.abs(srgb_to_linear(x) - to_linear).max() < 1e-6
    assert np.abs(linear_to_srgb(x) - to_srgb).max() < 1e-6
    assert srgb_to_linear(np.zeros((2, 3, 5))).shape == (2, 3, 5)


def test_ratio_on_bytes_is_the_gain_in_linear_light() -> None:
    """apply_ratio's compiled uint8 path: the gain 1 + s (r - 1) in linear light, to the
    lookup table's steps; pixels with strength 0 are the bytes over 255 exactly."""
    from morph3d.composite.colour import linear_to_srgb

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (30, 40, 3), np.uint8)
    ratio = rng.uniform(0.2, 3.0, (30, 40, 3)).astype(np.float32)
    strength = np.clip(rng.uniform(-0.5, 1.5, (30, 40)), 0, None).astype(np.float32)
    out = apply_ratio(image, ratio, strength)
    gain = 1 + np.clip(strength, 0, 1)[..., None] * (ratio - 1)
    expected = linear_to_srgb(srgb_to_linear(image / 255.0) * gain)
    on = strength > 0
    assert np.abs(out - expected)[on].max() < 0.3 / 255
    assert np.array_equal(out[~on], image[~on].astype(np.float32) / 255)


def test_the_gain_keeps_the_frames_grain() -> None:
    """With `grain_px` the gain moves the image's low-pass and leaves the finer rest as it
    is (in encoded values): a skin made darker or lighter keeps the clip's grain. Without
    it the grain scales with the gain."""
    rng = np.random.default_rng(8)
    flat = np.full((64, 64, 3), 150.0)
    image = np.clip(flat + rng.normal(0, 6, flat.shape), 0, 255).astype(np.uint8)
    ones = np.ones((64, 64), np.float32)

    def grain(picture: np.ndarray) -> float:
        grey = picture.mean(-1)
        return float((grey - cv2.GaussianBlur(grey, (0, 0), 3))[8:-8, 8:-8].std())

    before = grain(image / 255.0)
    for gain in (0.35, 2.0):
        ratio = np.full((64, 64, 3), gain, np.float32)
        kept = apply_ratio(image, ratio, ones, grain_px=1.0)
        scaled = apply_ratio(image, ratio, ones)
        level = float(np.median(scaled)) / (150 / 255)  # the encoded gain on the level
        assert float(np.median(kept)) == pytest.approx(float(np.median(scaled)), abs=1 / 255)
        assert abs(grain(kept) / before - 1) < 0.2 * abs(level - 1)
        assert grain(scaled) / before == pytest.approx(level, rel=0.1)
    out = apply_ratio(image, np.ones((64, 64, 3), np.float32), ones, grain_px=1.0)
    assert np.abs(out * 255.0 - image).max() < 0.6  # the tables' steps on the low-pass
    # an edge is far above the grain: it is scaled whole, its profile as without grain kept
    step = np.full((64, 64, 3), 60.0)
    step[:, 32:] = 160.0
    step = np.clip(step + rng.normal(0, 2, step.shape), 0, 255).astype(np.uint8)
    ratio = np.full((64, 64, 3), 1.8, np.float32)
    kept = apply_ratio(step, ratio, ones, grain_px=1.0)
    scaled = apply_ratio(step, ratio, ones)
    edge = np.abs(kept - scaled)[:, 29:35] * 255
    assert edge.max() < 6 and edge.mean() < 2


def test_a_pasted_mask_is_the_pasted_channel_over_its_level() -> None:
    """`paste_mask` pastes only around the crop pixels above the level and gives what the
    whole window's bilinear paste gives, crops beyond the frame's edges included."""
    from morph3d.swap.window import paste_mask, paste_window

    rng = np.random.default_rng(11)
    for _ in range(60):
        crop = np.zeros((64, 64), np.float32)
        centre = tuple(int(v) for v in rng.integers(-5, 69, 2))
        cv2.circle(crop, centre, int(rng.integers(2, 20)), 1.0, -1)
        crop = cv2.GaussianBlur(crop, (0, 0), float(rng.uniform(0.3, 2.0)))
        box = (float(rng.uniform(-150, 300)), float(rng.uniform(-150, 200)),
               float(rng.uniform(30, 400)))
        whole = paste_window(crop, box, (240, 320), cv2.INTER_LINEAR)[0][..., 0] > 0.5
        assert np.array_equal(paste_mask(crop, box, (240, 320)), whole)


def test_the_compiled_vote_and_lit_pair_are_their_numpy_formulas() -> None:
    """`tone_ratio`'s compiled steps: each side over its light, and the weight left where
    the pixel's lightness ratio lies within the limits, as numpy computes them."""
    from morph3d.composite.colour import LUMA
    from morph3d.swap.tone import _lit_pair, _voting

    rng = np.random.default_rng(4)
    s, a = rng.random((30, 40, 3), np.float32), rng.random((30, 40, 3), np.float32)
    s_light, a_light = np.float32([0.9, 1.0, 1.2]), np.float32([1.1, 1.0, 0.8])
    pair = _lit_pair(s, a, s_light, a_light)
    assert np.array_equal(pair, np.concatenate([s / s_light, a / a_light], -1))
    weight = rng.random((30, 40), np.float32)
    luma = ((pair[..., :3] + 1e-3) / (pair[..., 3:] + 1e-3)) @ LUMA
    off = np.log(np.maximum(luma, 1e-6) / np.float32(0.8))
    expected = weight * (off < np.log(2.0)) * (off > -np.log(2.0))
    got = _voting(pair, weight, LUMA, np.float32(0.8), float(np.log(2.0)),
                  float(-np.log(2.0)))
    assert 0 < (got > 0).sum() < got.size
    assert np.array_equal(got, expected)


def test_the_hulls_distance_over_its_box_is_the_whole_windows() -> None:
    """`hull_distance` measures only around the hull, and gives the distance transform of
    the whole window up to the fade's reach (beyond it, at least the reach), hulls cut by
    the window's edge included."""
    from morph3d.composite.masks import face_geometry
    from morph3d.swap.transfer import face_hull, hull_distance

    rng = np.random.default_rng(8)
    for _ in range(12):
        centre, size = rng.uniform(-40, 260, 2), rng.uniform(30, 140)
        faces = [face_geometry({"ibug68": centre + rng.uniform(-1, 1, (68, 2)) * size})
                 for _ in range(2)]
        reach = float(rng.uniform(5, 60))
        whole = cv2.distanceTransform((~face_hull(*faces, (220, 260), 0.65)).astype(np.uint8),
                                      cv2.DIST_L2, 5)
        got = hull_distance(*faces, (220, 260), 0.65, reach)
        near = whole < reach
        # the same chamfer sums, added in another order on some paths: float32 rounding
        assert np.allclose(got[near], whole[near], rtol=1e-6, atol=0)
        assert (got[~near] >= reach).all()


def test_channel_rects_are_opencvs_bounding_rectangles() -> None:
    from morph3d.swap.window import channel_rects

    rng = np.random.default_rng(9)
    fields = np.zeros((50, 60, 9), np.float32)
    for c in range(1, 8):  # channel 4 stays empty
        if c != 4:
            y, x = rng.integers(0, 45), rng.integers(0, 55)
            fields[y:y + rng.integers(1, 6), x:x + rng.integers(1, 6), c] = rng.uniform(0.4, 1)
    rects = channel_rects(fields, 1, 7, 0.5)
    for i in range(7):
        above = np.ascontiguousarray(fields[..., 1 + i] > 0.5).view(np.uint8)
        assert tuple(rects[i]) == cv2.boundingRect(above), i


def test_the_compiled_crop_fields_are_their_numpy_formulas() -> None:
    """`_crop_fields` gives transfer_face's per-pixel fields bit for bit as numpy did."""
    from morph3d.swap.transfer import INNER_REGIONS, MOUTH_REGIONS, _crop_fields
    from morph3d.swap.window import REGION_CHANNELS

    rng = np.random.default_rng(12)
    h, w, k = 30, 40, 2 + len(REGION_CHANNELS)
    attrs = rng.uniform(-0.3, 1.2, (h, w, k + 4)).astype(np.float32)
    attrs[..., :2] *= 500.0
    raster = rng.random((h, w)) > 0.2
    tex = rng.random((h, w, 8), np.float32)
    grid = rng.uniform(0, 500, (h, w, 2)).astype(np.float32)
    regions = {n: attrs[..., 2 + i] for i, n in enumerate(REGION_CHANNELS)}
    covered = raster & (attrs[..., k] > -0.1)
    flow = np.where(covered[..., None], attrs[..., :2] - grid, 0.0).astype(np.float32)
    inner = np.clip(sum(regions[n] for n in INNER_REGIONS), 0, 1) * covered
    face = np.clip(regions["face_skin"] + regions["lips"] + regions["eyes"] + inner, 0, 1)
    on_face = covered & (face > 0.5)
    moving = on_face & (sum(regions[n] for n in MOUTH_REGIONS) < 0.5)
    skin = np.clip(regions["face_skin"] + regions["lips"] + regions["eyes"], 0, 1)
    skin = skin * (1 - inner) * covered
    albedo = tex[..., :3] * attrs[..., k + 1:k + 4]
    trust = np.clip(attrs[..., k] / 0.3, 0, 1) * tex[..., 3] * tex[..., 7] * skin
    got = _crop_fields(attrs, raster, tex, grid,
                       np.array([2 + REGION_CHANNELS.index(n)
                                 for n in ("face_skin", "lips", "eyes")]),
                       np.array([2 + REGION_CHANNELS.index(n) for n in INNER_REGIONS]),
                       np.array([2 + REGION_CHANNELS.index(n) for n in MOUTH_REGIONS]), k)
    for name, a, b in zip(("covered", "flow", "inner", "on_face", "moving", "skin", "albedo",
                           "trust"), got,
                          (covered, flow, inner, on_face, moving, skin, albedo, trust),
                          strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_the_compiled_surface_lookup_is_torchs_interpolate_and_texture() -> None:
    """`surface_lookup` gives render.ops' interpolate and bilinear texture lookup bit for bit
    on the model's own raster, uv seams and the texture's border included."""
    from fitting.params import CameraParams
    from fitting.photo import FRONT
    from fitting.pose import axis_angle
    from morph3d.model.registry import load_model
    from morph3d.swap.transfer import surface_lookup
    from render.backends import rasterize
    from render.ops import interpolate, interpolate_sparse, scatter_pixels, texture_sparse

    torch.set_grad_enabled(False)
    model = load_model("default")
    verts = model.vertices(torch.zeros(1, model.num_identity),
                           torch.zeros(1, model.num_expression))
    cam = CameraParams.default_for(120, 96, 300.0).to_camera(
        axis_angle(FRONT), np.float32([0.0, 10.0, 700.0]))
    raster = rasterize(cam.to_clip(verts), model.triangles, (96, 120), backend="torch")
    rng = np.random.default_rng(3)
    per_vertex = torch.from_numpy(rng.uniform(-500, 900, (verts.shape[1], 7))
                                  .astype(np.float32))
    texture = torch.from_numpy(rng.random((64, 48, 5), np.float32))
    uv = model.uv_coords.clone()
    uv[:50] = torch.from_numpy(rng.uniform(-0.2, 1.2, (50, 2)).astype(np.float32))  # borders
    attrs, tex = surface_lookup(per_vertex, raster, uv, model.uv_triangles, texture)
    want_attrs = interpolate(per_vertex, raster)[0].numpy()
    looked = texture_sparse(texture, interpolate_sparse(uv, raster, model.uv_triangles),
                            raster.pixel_batch())
    want_tex = scatter_pixels(looked, raster)[0].numpy()
    assert raster.pixel_index.numel() > 2000
    assert attrs.dtype == tex.dtype == np.float32
    assert np.array_equal(attrs, want_attrs) and np.array_equal(tex, want_tex)


def test_the_warp_takes_its_flow_from_the_face_not_the_mouths_inside(monkeypatch) -> None:
    """Behind closed lips the mouth's inner surfaces fold away and their flow points
    anywhere: the flow is the lips' around them, so the seam takes the lips' pixels."""
    import morph3d.swap.transfer as transfer

    args, keywords = device_inputs(torch.device("cpu"))
    model = args[0]
    expression = np.zeros(model.num_expression, np.float32)
    expression[22] = 0.4  # lips apart: the mouth's inside shows on the source's surface
    supports = []
    original = transfer.extend_flow

    def spy(flow, covered, *a, **k):
        supports.append(covered.copy())
        return original(flow, covered, *a, **k)

    monkeypatch.setattr(transfer, "extend_flow", spy)
    mouth_seen = []
    regions_of = transfer.surface_lookup

    def lookup(per_vertex, *a, **k):
        attrs, tex = regions_of(per_vertex, *a, **k)
        from morph3d.swap.window import REGION_CHANNELS
        mouth_seen.append(sum(attrs[..., 2 + REGION_CHANNELS.index(n)]
                              for n in ("mouth_interior", "teeth", "tongue")))
        return attrs, tex

    monkeypatch.setattr(transfer, "surface_lookup", lookup)
    transfer.transfer_face(*args[:8], expression, *args[9:], **keywords)
    mouth = mouth_seen[0] > 0.5
    assert mouth.sum() > 20, mouth.sum()
    assert not (supports[0] & mouth).any()
    assert supports[0].sum() > 1000


def test_the_ratios_colour_far_from_the_faces_is_tempered_its_lightness_kept() -> None:
    from morph3d.composite.colour import LUMA
    from morph3d.swap.tone import RATIO_CHROMA_SLOPE, RATIO_CHROMA_SPREAD, tempered_colour

    tone = np.float32([0.9, 0.8, 0.75])
    ratio = np.broadcast_to(tone, (4, 4, 3)).copy()
    # a cyan patch (a grey brow over a brown one, filled into a gap) and a faint redness
    cyan = np.log(tone) + np.float32([-0.4, 0.15, 0.2])
    ratio[0, 0] = np.exp(cyan)
    ratio[1, 1] = tone * np.exp(np.float32([0.04, -0.01, -0.01]))
    out = tempered_colour(ratio, tone)

    assert np.allclose(out[2:, 2:], ratio[2:, 2:])  # the overall tone stays
    assert np.allclose(out[1, 1], ratio[1, 1], rtol=1e-5)  # a small move stays

    def parts(rgb: np.ndarray) -> tuple[float, np.ndarray]:
        log = np.log(rgb)
        light = float(log @ LUMA)
        base = np.log(tone) - float(np.log(tone) @ LUMA)
        return light, log - light - base

    light_in, off_in = parts(ratio[0, 0])
    light_out, off_out = parts(out[0, 0])
    assert abs(light_out - light_in) < 1e-5
    far = float(np.linalg.norm(off_in))
    assert far > 0.3
    expected = RATIO_CHROMA_SPREAD + RATIO_CHROMA_SLOPE * (far - RATIO_CHROMA_SPREAD)
    assert abs(float(np.linalg.norm(off_out)) - expected) < 1e-4
    assert np.allclose(off_out / np.linalg.norm(off_out), off_in / far, atol=1e-4)
