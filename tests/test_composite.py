"""Compositing the transferred face (morph3d.composite).

The synthetic scenes are cartoon faces drawn from 68 iBUG landmarks: an ellipse of skin with
a forehead, eyes, brows, lips and an optional open mouth, anti-aliased by drawing at 4x.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from morph3d.composite.blend import blend_into, composite
from morph3d.composite.compositor import CompositorConfig, FaceCompositor, FrameInputs
from morph3d.composite.masks import face_geometry, face_mask, face_region
from morph3d.composite.occluders import detect_occluders
from morph3d.errors import InputError

SIZE = 256
ACTOR_SKIN = (0.85, 0.65, 0.55)
SWAP_SKIN = (0.62, 0.47, 0.50)


def synthetic_ibug68(cx: float = 128.0, eye_y: float = 110.0, iod: float = 60.0,
                     half_width: float = 0.95, chin: float = 1.55, mouth_open: float = 0.0,
                     brow_lift: float = 0.3) -> np.ndarray:
    """68 iBUG points (pixels) of a frontal cartoon face; half_width and chin in IOD."""
    p = np.zeros((68, 2))
    a, b = half_width * iod, chin * iod
    yc = eye_y + 0.1 * iod
    th = np.linspace(np.pi, 0.0, 17)
    p[0:17] = np.stack([cx + a * np.cos(th), yc + (b - 0.1 * iod) * np.sin(th)], 1)
    t = np.linspace(0, 1, 5)
    arch = 0.06 * iod * np.sin(np.pi * t)
    p[17:22] = np.stack([cx + (-0.85 + 0.7 * t) * iod, eye_y - brow_lift * iod - arch], 1)
    p[22:27] = np.stack([cx + (0.15 + 0.7 * t) * iod, eye_y - brow_lift * iod - arch[::-1]], 1)
    p[27:31] = np.stack([np.full(4, cx), eye_y + np.array([0.05, 0.2, 0.35, 0.5]) * iod], 1)
    p[31:36] = np.stack([cx + np.array([-0.18, -0.09, 0, 0.09, 0.18]) * iod,
                         eye_y + np.array([0.6, 0.62, 0.63, 0.62, 0.6]) * iod], 1)
    w, h = 0.45 * iod, 0.16 * iod
    eye = np.array([[-w / 2, 0], [-w / 6, -h / 2], [w / 6, -h / 2], [w / 2, 0], [w / 6, h / 2],
                    [-w / 6, h / 2]])
    p[36:42] = eye + [cx - iod / 2, eye_y]
    p[42:48] = eye + [cx + iod / 2, eye_y]
    mw = 0.85 * iod
    gap = mouth_open * mw
    up, lo = -gap / 2, gap / 2
    p[48:60] = np.array([
        [-mw / 2, 0], [-mw / 3, up - 0.12 * iod], [-mw / 6, up - 0.15 * iod],
        [0, up - 0.13 * iod], [mw / 6, up - 0.15 * iod], [mw / 3, up - 0.12 * iod],
        [mw / 2, 0], [mw / 3, lo + 0.14 * iod], [mw / 6, lo + 0.18 * iod], [0, lo + 0.19 * iod],
        [-mw / 6, lo + 0.18 * iod], [-mw / 3, lo + 0.14 * iod]]) + [cx, eye_y + iod]
    p[60:68] = np.array([
        [-0.4 * mw, 0], [-mw / 6, up], [0, up], [mw / 6, up], [0.4 * mw, 0], [mw / 6, lo],
        [0, lo], [-mw / 6, lo]]) + [cx, eye_y + iod]
    return p


def _pts(points: np.ndarray, scale: int) -> np.ndarray:
    return np.round(np.asarray(points) * scale).astype(np.int32)


def draw_face(lm: np.ndarray, skin: tuple[float, float, float], *,
              background: np.ndarray | None = None, iod: float = 60.0, forehead: float = 1.5,
              brow: tuple[float, float, float] = (0.25, 0.17, 0.1), seed: int = 0,
              scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(image, coverage) of a cartoon face at `lm`, over `background` (else black)."""
    h = w = SIZE
    s = scale
    big = np.zeros((h * s, w * s, 3), np.float32)
    cov = np.zeros((h * s, w * s), np.float32)
    jaw = lm[0:17]
    cx, yc = (jaw[0] + jaw[16]) / 2
    a = (jaw[16, 0] - jaw[0, 0]) / 2
    th = np.linspace(0, np.pi, 64)[1:-1]
    top = np.stack([cx + a * np.cos(th), yc - forehead * iod * np.sin(th)], 1)
    outline = _pts(np.concatenate([jaw, top]), s)
    cv2.fillPoly(big, [outline], tuple(float(c) for c in skin))
    cv2.fillPoly(cov, [outline], 1.0)
    xx = np.arange(w * s, dtype=np.float32)[None, :] / s
    big *= (1.0 - 0.15 * ((xx - cx) / a) ** 2)[..., None]
    for e0 in (36, 42):
        eye = lm[e0:e0 + 6]
        cv2.fillPoly(big, [_pts(eye, s)], (0.95, 0.95, 0.93))
        cv2.circle(big, tuple(_pts(eye.mean(0), s).tolist()), int(0.07 * iod * s),
                   (0.25, 0.3, 0.5), -1)
    for b0 in (17, 22):
        cv2.polylines(big, [_pts(lm[b0:b0 + 5], s)], False, brow, thickness=int(0.1 * iod * s))
    cv2.fillPoly(big, [_pts(lm[48:60], s)], (0.75, 0.35, 0.35))
    inner = lm[60:68]
    if np.linalg.norm(lm[66] - lm[62]) > 1:
        cv2.fillPoly(big, [_pts(inner, s)], (0.2, 0.05, 0.05))
        teeth = inner.copy()
        teeth[5:8, 1] = np.minimum(teeth[5:8, 1], lm[62, 1] + 0.35 * (lm[66, 1] - lm[62, 1]))
        teeth[[0, 4], 1] = np.minimum(teeth[[0, 4], 1], lm[62, 1] + 0.2 * (lm[66, 1] - lm[62, 1]))
        cv2.fillPoly(big, [_pts(teeth, s)], (0.92, 0.9, 0.85))
    image = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    coverage = cv2.resize(cov, (w, h), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32) * (coverage[..., None] > 0)
    image = np.clip(image, 0, 1)
    if background is not None:
        image = image + background * (1 - coverage[..., None])
    return image.astype(np.float32), coverage.astype(np.float32)


def background() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    return np.stack([0.3 + 0.2 * xx, 0.45 + 0.1 * yy, 0.35 + 0.0 * xx], -1).astype(np.float32)


def scene(actor_width: float = 0.95, swap_width: float = 0.95, mouth_open: float = 0.0,
          actor_brow_lift: float = 0.3, swap_brow_lift: float = 0.3):
    """(frame, render, coverage, actor landmarks, swapped landmarks)."""
    lm_a = synthetic_ibug68(half_width=actor_width, mouth_open=mouth_open,
                            brow_lift=actor_brow_lift)
    lm_s = synthetic_ibug68(half_width=swap_width, mouth_open=mouth_open,
                            brow_lift=swap_brow_lift)
    frame, _ = draw_face(lm_a, ACTOR_SKIN, background=background())
    render, coverage = draw_face(lm_s, SWAP_SKIN, seed=1)
    return frame, render, coverage, lm_a, lm_s


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


# ------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------


def test_face_mask_fills_its_region_and_is_zero_outside_it() -> None:
    _, _, coverage, _, lm_s = scene()
    region = face_region(coverage.shape, lm_s)
    mask = face_mask(coverage, lm_s, region)
    g = face_geometry(lm_s)
    assert mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    nose = np.round(g.ibug[30]).astype(int)
    cheek = np.round(0.5 * (g.ibug[3] + g.ibug[30])).astype(int)
    assert mask[nose[1], nose[0]] == 1.0 and mask[cheek[1], cheek[0]] == 1.0
    assert (mask[coverage == 0] == 0).all()
    assert (mask[~region] == 0).all()  # the edge lies inside the region


def test_face_mask_edge_width_scales_with_face_size() -> None:
    widths = []
    for iod in (40.0, 80.0):
        lm = synthetic_ibug68(iod=iod, eye_y=100)
        _, coverage = draw_face(lm, SWAP_SKIN, iod=iod)
        row = face_mask(coverage, lm, coverage >= 0.5)[int(lm[30, 1])]
        widths.append(int(((row > 0.05) & (row < 0.95)).sum()))
    assert widths[1] == pytest.approx(2 * widths[0], rel=0.35)


# ------------------------------------------------------------------------------------------
# the whole frame
# ------------------------------------------------------------------------------------------


def test_pixels_outside_the_mask_are_bit_identical() -> None:
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.02)
    out, report = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a, lm_s))
    assert out.shape == frame.shape and out.dtype == np.float32
    outside = ~dilate(report.alpha > 0, 1)
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(out[outside], frame[outside])
    x0, y0, x1, y1 = report.roi
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    assert np.abs(out - frame)[report.alpha > 0.99].mean() > 0.02  # the face did change


def test_composite_is_an_alpha_blend() -> None:
    frame, render, coverage, lm_a, lm_s = scene()
    mask = face_mask(coverage, lm_s, coverage >= 0.5)
    inside = mask == 1
    out = composite(frame, render, mask)
    assert np.array_equal(out[mask == 0], frame[mask == 0])
    assert np.allclose(out[inside], render[inside])
    half = (mask > 0.3) & (mask < 0.7)
    a = mask[half][:, None]
    assert np.allclose(out[half], frame[half] * (1 - a) + render[half] * a)
    with pytest.raises(InputError):
        composite(frame, render[:10], mask)


@pytest.mark.parametrize("colour", [(0.15, 0.3, 0.85), (0.08, 0.08, 0.09)],
                         ids=["blue-object", "dark-microphone"])
def test_occluder_is_detected_and_left_untouched(colour: tuple[float, float, float]) -> None:
    frame, render, coverage, lm_a, lm_s = scene()
    rect = np.zeros(frame.shape[:2], bool)
    rect[126:156, 84:110] = True  # over the image-left cheek
    frame[rect] = colour
    occ = detect_occluders(frame, lm_a)
    assert occ[rect].mean() > 0.98
    assert (occ & ~dilate(rect, 4)).sum() == 0
    out, report = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a, lm_s))
    assert np.array_equal(out[rect], frame[rect])
    assert report.occluder_px >= rect.sum()
    assert (report.alpha[rect] == 0).all()
    right_cheek = (slice(128, 150), slice(148, 164))
    assert (report.alpha[right_cheek] == 1).all()  # the mirror cheek is still swapped


def test_occluder_entering_from_the_side_is_followed_past_the_outline() -> None:
    # The swapped face is wider, so its mask reaches past the actor's jaw; an object lying
    # across the actor's outline must stay whole, also where it is over the background.
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.08)
    rect = np.zeros(frame.shape[:2], bool)
    rect[140:165, 55:98] = True
    frame[rect] = (0.15, 0.3, 0.85)
    inputs = FrameInputs(frame, render, coverage, lm_a, lm_s)
    _, unprotected = FaceCompositor(CompositorConfig(occluders=False)).process(inputs)
    outside_actor = rect & ~face_region(frame.shape[:2], lm_a)
    assert (unprotected.alpha[outside_actor] > 0).sum() > 50
    out, report = FaceCompositor().process(inputs)
    assert np.array_equal(out[rect], frame[rect])


def test_clean_synthetic_face_has_no_occluders() -> None:
    frame, _, _, lm_a, _ = scene(mouth_open=0.3)
    assert detect_occluders(frame, lm_a).sum() == 0


def test_compositor_carries_state_between_frames() -> None:
    compositor = FaceCompositor()
    frame, render, coverage, lm_a, lm_s = scene()
    _, first = compositor.process(FrameInputs(frame, render, coverage, lm_a, lm_s))
    assert not first.mask_smoothed
    shift = np.float32([[1, 0, 3], [0, 1, 2]])

    def move(image: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, shift, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    out, second = compositor.process(FrameInputs(move(frame), move(render), move(coverage),
                                                 lm_a + [3, 2], lm_s + [3, 2]))
    assert second.mask_smoothed
    # the warped previous mask agrees with the current one, so smoothing barely changes it
    fresh = FaceCompositor().process(FrameInputs(move(frame), move(render), move(coverage),
                                                 lm_a + [3, 2], lm_s + [3, 2]))[1].alpha
    assert np.abs(second.alpha - fresh).mean() < 0.01
    assert set(second.summary()) == {"roi", "feather_px", "occluder_px", "mask_smoothed"}
    compositor.reset()
    _, after_reset = compositor.process(FrameInputs(move(frame), move(render), move(coverage),
                                                    lm_a + [3, 2], lm_s + [3, 2]))
    assert not after_reset.mask_smoothed


def test_bad_inputs_raise_input_error() -> None:
    frame, render, coverage, lm_a, lm_s = scene()
    with pytest.raises(InputError):
        FaceCompositor().process(FrameInputs(frame, render, coverage[:-1], lm_a, lm_s))
    with pytest.raises(InputError):
        face_geometry(np.zeros((10, 2)))
    with pytest.raises(InputError):
        face_geometry({"ibug68": np.full((68, 2), np.nan)})


def test_face_outside_the_frame_is_left_alone() -> None:
    frame, render, coverage, lm_a, lm_s = scene()
    away = np.array([2000.0, 0.0])
    out, report = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a + away,
                                                       lm_s + away))
    assert np.array_equal(out, frame) and not report.alpha.any()
    # half out of the frame on the left: still runs, and the right border is untouched
    half = np.array([-120.0, 0.0])
    out, report = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a + half,
                                                       lm_s + half))
    assert report.roi[0] == 0 and np.array_equal(out[:, 200:], frame[:, 200:])


def test_mediapipe_landmarks_are_accepted() -> None:
    mesh = np.random.default_rng(0).uniform(50, 200, (478, 2))
    g = face_geometry({"mediapipe478": mesh})
    assert g.ibug.shape == (68, 2) and g.mesh is not None
    assert g.eye_contours[0].shape == (16, 2)
    assert face_geometry(mesh[None]).mesh is not None


# ------------------------------------------------------------------------------------------
# a real photo
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mark(media_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from fitting.detection import detect_faces
    from morph3d.io.images import read_image

    image = read_image(media_dir / "mark.jpg").astype(np.float32) / 255.0
    faces = detect_faces(image, "mediapipe")
    assert len(faces) == 1
    return image, {k: v[0] for k, v in faces.landmarks.items()}


@pytest.mark.media
def test_real_clean_face_has_no_big_occluders(mark) -> None:
    image, landmarks = mark
    region = face_region(image.shape[:2], landmarks)
    occ = detect_occluders(image, landmarks)
    assert occ.sum() < 0.02 * region.sum()
    # a blue object pasted over the cheek is found
    g = face_geometry(landmarks)
    centre = (0.5 * (g.ibug[3] + g.ibug[30])).astype(int)
    r = int(0.25 * g.iod)
    rect = np.zeros(image.shape[:2], bool)
    rect[centre[1] - r:centre[1] + r, centre[0] - r // 2:centre[0] + r // 2] = True
    occluded = image.copy()
    occluded[rect] = (0.15, 0.3, 0.8)
    found = detect_occluders(occluded, landmarks)
    assert found[rect].mean() > 0.98
    assert (found & ~dilate(rect, int(0.05 * g.iod) + 3)).sum() < 0.005 * region.sum()


@pytest.mark.media
def test_coloured_rim_light_is_not_an_occluder(media_dir: Path) -> None:
    """nggyup frame 204: a strong blue light on one cheek, with a sharp terminator."""
    from fitting.detection import detect_faces
    from morph3d.io.media import iter_frames

    frame = next(iter(iter_frames(media_dir / "nggyup.mp4", start=204, stop=205)))
    image = frame.rgb.astype(np.float32) / 255.0
    faces = detect_faces(image, "mediapipe").sorted_by_area()
    landmarks = {k: v[0] for k, v in faces.landmarks.items()}
    region = face_region(image.shape[:2], landmarks)
    assert detect_occluders(image, landmarks).sum() < 0.01 * region.sum()


def test_face_stops_at_a_pillarbox_bar() -> None:
    """The swapped face never spills into a black bar beside the picture; the bar stays
    black, bit for bit, and the face is cut along the picture's edge."""
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.02)
    edge = int(face_geometry(lm_a).ibug[3, 0]) + 6  # the bar reaches into the left cheek
    frame = frame.copy()
    frame[:, :edge] = 0.02
    out, report = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a, lm_s))
    assert not report.alpha[:, :edge].any()
    assert np.array_equal(out[:, :edge], frame[:, :edge])
    assert (report.alpha[:, edge:edge + 8] > 0.99).any()  # swapped right up to the edge


def test_uint8_frame_and_render_window_give_the_float_result() -> None:
    """The swap passes uint8 frames and renders that cover only the face's window: same
    composite (to 1/255) as full-frame float inputs."""
    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.02)
    full, _ = FaceCompositor().process(FrameInputs(frame, render, coverage, lm_a, lm_s))
    frame_u8 = (frame * 255 + 0.5).astype(np.uint8)
    ys, xs = np.nonzero(coverage)
    x0, y0, x1, y1 = xs.min() - 3, ys.min() - 3, xs.max() + 4, ys.max() + 4
    window = (slice(y0, y1), slice(x0, x1))
    out, report = FaceCompositor().process(FrameInputs(
        frame_u8, render[window], coverage[window], lm_a, lm_s, window=(int(x0), int(y0))))
    assert out.dtype == np.uint8 and out.shape == frame_u8.shape
    assert np.abs(out.astype(np.float32) / 255 - full).max() < 2.5 / 255


def test_blend_into_writes_only_where_alpha_is_above_zero() -> None:
    frame, render, coverage, _, lm_s = scene()
    mask = face_mask(coverage, lm_s, coverage >= 0.5)
    out = np.full(frame.shape, 7, np.uint8)  # not the frame: untouched pixels must stay 7
    blend_into(out, frame, render, mask)
    assert (out[mask == 0] == 7).all()
    expected = (np.clip(composite(frame, render, mask), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(out[mask > 0], expected[mask > 0])
    floats = frame.copy()
    blend_into(floats, frame, render, mask)
    assert np.array_equal(floats, composite(frame, render, mask))


@pytest.mark.parametrize("case", ["cheek", "from-the-side", "at-the-border", "no-extension"])
def test_occluders_on_their_box_equal_the_whole_image(case: str) -> None:
    """detect_occluders works on the regions' box grown by its steps' reach: the same mask
    as the steps run on the whole image."""
    from morph3d.composite.masks import FaceGeometry
    from morph3d.composite.occluders import _detect_in_box

    frame, render, coverage, lm_a, lm_s = scene(swap_width=1.08)
    # from the side: across the swapped face's outline, out to the frame's edge
    rect = (slice(126, 156), slice(84, 110)) if case == "cheek" else (slice(140, 165),
                                                                      slice(0, 98))
    frame[rect] = (0.15, 0.3, 0.85)
    frame[40:60, 20:236] = (0.9, 0.2, 0.2)  # off-skin colour far from the face
    if case == "at-the-border":  # the face's left side cut by the frame's edge
        frame, lm_a = frame[:, 60:].copy(), lm_a - [60, 0]
        coverage = coverage[:, 60:]
    extend = None if case == "no-extension" else coverage > 0.2
    occ = detect_occluders(frame, lm_a, extend_region=extend)
    assert occ.any()
    g = FaceGeometry.from_landmarks(lm_a)
    search = cv2.erode(face_region(frame.shape[:2], g).astype(np.uint8),
                       cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
    from morph3d.composite.masks import expected_non_skin

    expected = expected_non_skin(frame.shape[:2], g)
    whole = _detect_in_box(frame, g, search, expected, extend, 0.004 * search.sum(), 12.0,
                           6.0, 0.15, 20.0, 0.5, 0.025, 0.05, 0.02)
    assert np.array_equal(occ, whole)


def test_skin_score_and_model_match_their_numpy_definitions() -> None:
    """The compiled non-skin score equals its numpy formula bit for bit (highlights 0, dark
    pixels infinite); the skin model's trimmed refit equals numpy's mean and covariance."""
    from morph3d.composite.occluders import (
        SkinModel,
        _inliers,
        non_skin_score,
        skin_model_from_samples,
        ycrcb,
    )

    rng = np.random.default_rng(11)
    ycc = ycrcb(rng.random((60, 70, 3)).astype(np.float32))
    model = SkinModel(mean=np.array([120.0, 150.0, 112.0]), std_y=14.0,
                      chroma_cov_inv=np.array([[0.05, 0.01], [0.01, 0.04]]), pixels=100)
    y, cr, cb = (ycc[..., i] for i in range(3))
    mean_c, inv = model.mean[1:].astype(np.float32), model.chroma_cov_inv.astype(np.float32)
    dc0, dc1 = cr - mean_c[0], cb - mean_c[1]
    expected = np.sqrt(inv[0, 0] * dc0 ** 2 + 2.0 * inv[0, 1] * dc0 * dc1 + inv[1, 1] * dc1 ** 2)
    skin_c = model.mean[1:] - 128.0
    norm = float(np.linalg.norm(skin_c))
    direction = (skin_c / norm).astype(np.float32)
    c0, c1 = cr - 128.0, cb - 128.0
    along = c0 * direction[0] + c1 * direction[1]
    across = np.abs(c0 * -direction[1] + c1 * direction[0])
    expected[(y > model.mean[0] + model.std_y) & (along > -2.0) & (along < norm + 4.0)
             & (across < 4.0 + 0.3 * norm)] = 0.0
    expected[(y < model.mean[0] - 5.0 * model.std_y) & (y < 0.45 * model.mean[0])] = np.inf
    score = non_skin_score(None, model, ycc=ycc)
    assert np.isinf(score).any() and (score == 0).any()
    assert np.array_equal(score, expected)

    samples = np.concatenate([rng.normal([150, 150, 110], [15, 4, 3], (3000, 3)),
                              rng.uniform(0, 255, (800, 3))])
    mean, inv3 = samples.mean(0), np.linalg.inv(np.cov(samples.T))
    count, inlier_mean, cov = _inliers(samples, mean, inv3, 9.35)
    c = samples - mean
    keep = np.einsum("ni,ij,nj->n", c, inv3, c) < 9.35
    assert count == keep.sum()
    assert np.allclose(inlier_mean, samples[keep].mean(0), rtol=0, atol=1e-9)
    assert np.allclose(cov, np.cov(samples[keep].T), rtol=1e-9, atol=1e-9)
    fitted = skin_model_from_samples(samples)
    assert fitted is not None and 2900 < fitted.pixels < 3100


def test_morphology_on_the_support_box_equals_the_whole_image() -> None:
    """The occluder steps (erosion, opening then closing, dropping small blobs) run on the
    candidates' box grown by their reach: the same mask as on the whole image, blobs at
    the image's border included."""
    from morph3d.composite.masks import _disk
    from morph3d.composite.occluders import _drop_small, _on_support

    rng = np.random.default_rng(4)
    mask = np.zeros((120, 150), np.uint8)
    for x, y, r in [(30, 40, 9), (3, 100, 7), (140, 60, 12), (80, 115, 6), (95, 50, 3)]:
        cv2.circle(mask, (x, y), r, 1, -1)
    mask |= (rng.random(mask.shape) > 0.97).astype(np.uint8)
    opening, closing = _disk(4), _disk(8)

    def steps(m: np.ndarray) -> np.ndarray:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, closing)
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, opening), cv2.MORPH_CLOSE,
                             closing)
        return _drop_small(m.astype(bool), 40).view(np.uint8)

    for region in (mask, mask * (np.arange(150) > 70)):
        region = region.astype(bool)
        whole = steps(region.astype(np.uint8)) > 0
        assert whole.any()
        margin = 2 * closing.shape[0] + opening.shape[0]
        assert np.array_equal(_on_support(region, margin, steps), whole)
        eroded = cv2.erode(region.astype(np.uint8), closing) > 0
        assert np.array_equal(_on_support(region, closing.shape[0] // 2 + 1,
                                          lambda m: cv2.erode(m, closing)), eroded)


def test_an_inset_feather_reads_only_the_inside_distance_and_gives_the_same_edge() -> None:
    """An edge whose 0 lies inside the mask needs no outside distance: the feather equals the
    one from the full signed distance, and the outside is exactly 0."""
    from morph3d.composite.masks import _EDGE_Z, _feather, _gaussian_edge, _signed_distance

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.zeros((120, 150), np.uint8)
        cv2.ellipse(m, (int(rng.integers(0, 150)), int(rng.integers(0, 120))),
                    (int(rng.integers(4, 60)), int(rng.integers(4, 60))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
        for inset, sigma in ((2.5, 3.0), (2.5, 0.4), (2.4, 6.0)):
            assert inset * sigma - _EDGE_Z * sigma >= -0.4
            expected = _gaussian_edge(_signed_distance(m), inset * sigma, sigma)
            got = _feather(m > 0, inset * sigma, sigma)
            assert np.array_equal(got, expected) and not got[m == 0].any()


def test_face_measures_are_computed_once_and_cannot_be_altered() -> None:
    """The eye centres, IOD and axes are read dozens of times a frame: each is made once per
    geometry, read-only, and equal to its formula."""
    rng = np.random.default_rng(2)
    ibug = rng.uniform(100, 300, (68, 2))
    g = face_geometry({"ibug68": ibug})
    centres = np.stack([ibug[36:42].mean(0), ibug[42:48].mean(0)])
    assert g.eye_centres is g.eye_centres and np.array_equal(g.eye_centres, centres)
    assert g.iod == max(float(np.linalg.norm(centres[1] - centres[0])), 1.0)
    assert g.up is g.up and g.x_axis is g.x_axis
    assert abs(float(g.up @ g.x_axis)) < 1e-12
    for value in (g.eye_centres, g.up, g.x_axis):
        with pytest.raises(ValueError):
            value += 1.0
    shifted = g.shifted(np.array([5.0, -3.0]))
    assert np.allclose(shifted.eye_centres, centres + [5.0, -3.0])
