"""Identity transfer onto the actor's own pixels (the swap's render path).

Instead of re-rendering the source face (UV resampling and SH shading cannot reproduce real
skin), the actor's frame itself is changed in two ways that carry the source's identity:

1. Geometry: a 3D-guided warp. The source mesh (source identity, put at the actor's size
   and place: `identity_alignment`) and the actor mesh (the clip fit's identity) are posed
   with the actor's expression, pose and camera of the frame; they share one topology, so
   every face pixel the source mesh covers has a surface point, whose position on the
   actor mesh gives the backward flow p_source -> p_actor. Warping the frame with it moves
   the actor's real pixels into the source's shape; beyond both faces' outlines the flow
   fades to zero, so the warp joins the untouched frame without a seam.
2. Appearance: an albedo ratio in linear RGB. The source's albedo (its UV texture, as the
   photo shows it less the shading: `source_albedo_factor`) and the actor's (one UV
   texture per clip, merged from frames spread over it, each divided by the clip fit's SH
   shading: `actor_albedo`) are looked up on the same raster; the warped frame is
   multiplied by the ratio of their low-pass versions (`morph3d.swap.tone.tone_ratio`). Both
   albedos are made once per job, so above a tenth of the eyes' distance the ratio at a
   surface point does not change from frame to frame and no frame's shading-model error
   enters it; below that the actor's side is the frame's own pixels (`with_frame_detail`:
   there shading is smooth and the frame's features sit exactly where the frame shows
   them). Above 0.6 of the eyes' distance the ratio's lightness is the face's overall
   tone (`tone.flat_lightness`): there both albedos hold mostly what their shading models
   missed. Skin tone, brows, lips and freckles come from the source while the frame's own
   light, cast shadows, blur and grain stay.
   What either side does not show as skin does not vote (the photo's unseen side, the
   actor's fringe or microphone, highlights; skin under a light of another colour, such as
   a rim light on the far cheek, is skin), and the actor's forehead above the brows fades
   back to itself (fringes, hats). Each picture's light colour is estimated from its
   skin's offset from a skin locus and divided out of its side (`tone.skin_lights`), so the
   source's skin appears under the clip's light, not the photo's.
3. Surround: the face's overall tone also goes onto the actor's skin around the face (ears,
   neck, forehead between strands of hair), fading with distance (`surround_strength`), so a
   skin tone unlike the actor's reads as the person's skin, not as a mask.

The actor's eyeballs and mouth interior are kept, warped, unchanged (ratio 1). Units:
pixels (frame pixels unless named crop), colours float32 RGB in [0, 1] (sRGB-encoded
unless named linear), model space in mm. `FaceRenderer` (morph3d.swap.renderer) holds the
per-job constants (`morph3d.swap.albedo.prepare_transfer`: both albedos, the alignment) and
calls `transfer_face` per frame.
"""

from __future__ import annotations

import functools
import math

import cv2
import numba
import numba.extending
import numpy as np

from morph3d.composite.blend import picture_bounds
from morph3d.composite.colour import LUMA, linear_to_srgb, srgb_to_linear
from morph3d.swap.tone import (
    column_median,
    flat_lightness,
    normalized_blur,
    tempered_colour,
    tone_ratio,
)


def extend_flow(flow: np.ndarray, covered: np.ndarray, edge_px: float = 6.0) -> np.ndarray:
    """The flow (H x W x 2 px) kept where `covered` (H x W bool) and filled smoothly
    elsewhere (pull-push: a weighted image pyramid down to one pixel, then each level's
    holes filled from the level above), continuous with the covered values at their edge,
    so a warp has no hole or step where the surface the flow came from ends."""
    flow = np.ascontiguousarray(flow, np.float32)
    values, weight = _masked_flow(flow, np.ascontiguousarray(covered, np.bool_))
    levels = [(values, weight)]
    while min(levels[-1][1].shape) > 1:
        v, w = levels[-1]
        levels.append((cv2.pyrDown(v), cv2.pyrDown(w)))
    v, w = levels[-1]
    estimate = v / np.maximum(w, 1e-6)[..., None]
    estimate = np.broadcast_to(estimate.reshape(-1, 2).mean(0) if w.sum() <= 1e-6
                               else estimate, v.shape).astype(np.float32)
    for v, w in reversed(levels[:-1]):
        up = cv2.resize(estimate, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        estimate = _pushed(v, w, up)
    # Pull-push alone continues the surface's mean, not its edge: near the edge the flow
    # takes its nearest edge value, fading into the pull-push over `edge_px`, so the warp
    # neither steps nor tears where the surface ends.
    if covered.any() and not covered.all():
        distance, labels = cv2.distanceTransformWithLabels(
            (~covered).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        near = np.exp(-distance / max(edge_px, 1e-6))
        return _edge_filled(flow, covered, flow[covered], labels, near, estimate)
    return np.where(covered[..., None], flow, estimate).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _masked_flow(flow: np.ndarray, covered: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The pull-push's first level in one pass: flow (H x W x 2) times `covered` as 0 or 1,
    and that weight (H x W float32); numpy's broadcast product over a last axis of two
    runs its slow strided loop."""
    h, w = covered.shape
    values = np.empty((h, w, 2), np.float32)
    weight = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            k = np.float32(1.0) if covered[y, x] else np.float32(0.0)
            weight[y, x] = k
            values[y, x, 0] = flow[y, x, 0] * k
            values[y, x, 1] = flow[y, x, 1] * k
    return values, weight


@numba.njit(cache=True, nogil=True)
def _pushed(v: np.ndarray, w: np.ndarray, up: np.ndarray) -> np.ndarray:  # pragma: no cover
    """One pull-push level, float32 as numpy would: the level's own average (v over w)
    where its weight w is 1/2 or more, blending into the coarser estimate `up` below."""
    out = np.empty(up.shape, np.float32)
    zero, one, two, tiny = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(1e-6)
    for y in range(w.shape[0]):
        for x in range(w.shape[1]):
            k = w[y, x]
            a = min(max(k * two, zero), one)
            for c in range(2):
                out[y, x, c] = a * (v[y, x, c] / max(k, tiny)) + (one - a) * up[y, x, c]
    return out


@numba.njit(cache=True, nogil=True)
def _edge_filled(flow: np.ndarray, covered: np.ndarray, points: np.ndarray,
                 labels: np.ndarray, near: np.ndarray,
                 estimate: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """The flow where covered; elsewhere its nearest covered value (`points`: the covered
    flows in raster order, `labels`: each pixel's nearest one, from 1) weighted by `near`,
    and the pull-push `estimate` by the rest."""
    out = np.empty(flow.shape, np.float32)
    one, last = np.float32(1.0), points.shape[0] - 1
    for y in range(flow.shape[0]):
        for x in range(flow.shape[1]):
            if covered[y, x]:
                out[y, x, 0], out[y, x, 1] = flow[y, x, 0], flow[y, x, 1]
                continue
            i = min(max(labels[y, x] - 1, 0), last)
            k = near[y, x]
            for c in range(2):
                out[y, x, c] = k * points[i, c] + (one - k) * estimate[y, x, c]
    return out


def warp_window(frame: np.ndarray, flow: np.ndarray, origin: tuple[int, int],
                interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """The frame window at `origin` (x, y of its top-left pixel) with every pixel q taken
    from the frame at q + flow(q) (backward warp; flow h x w x 2 in frame pixels). The
    result has the frame's dtype; a zero flow gives the window back exactly."""
    h, w = flow.shape[:2]
    x0, y0 = origin
    xs, ys = np.meshgrid(np.arange(x0, x0 + w, dtype=np.float32),
                         np.arange(y0, y0 + h, dtype=np.float32))
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    return cv2.remap(frame, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT)


_LINEAR_STEPS = 16384  # linear-light table steps: under 0.25 grey levels in 8 bits
_U8_TO_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)
_LINEAR_TO_SRGB = linear_to_srgb(np.arange(_LINEAR_STEPS, dtype=np.float32)
                                 / (_LINEAR_STEPS - 1))


def with_frame_detail(albedo: np.ndarray, seen: np.ndarray, weight: np.ndarray,
                      sigma: float, linear: bool = False) -> np.ndarray:
    """The actor's albedo on a frame's raster: the clip's albedo (`actor_albedo`, looked up:
    H x W x 3 sRGB-encoded) at scales above `sigma` px, the frame's own pixels (`seen`, the
    frame at the same surface points: uint8, or float sRGB in [0, 1]) below it, in linear
    RGB; sRGB-encoded out (`linear`: linear RGB out, for `tone_ratio(..., linear=True)`).

    The frame's fine structure (brows, lids, lip edges, pores: what the ratio replaces by
    the source's) sits exactly where the frame shows it, which a clip-wide albedo, merged
    from frames whose fits each miss by a pixel or two, cannot match; shading is smooth, so
    at these scales the frame's pixels are albedo. Above `sigma` the albedo is the clip's,
    the same in every frame. Low-passes weighted by `weight` (H x W: skin both saw), so
    hair or a microphone beside the skin does not leak into it; where the weight has no
    support the clip's albedo stays."""
    a = srgb_to_linear(albedo)
    if sigma <= 0:
        return a if linear else np.asarray(albedo, np.float32)
    f = (cv2.LUT(seen, _U8_TO_LINEAR) if seen.dtype == np.uint8
         else srgb_to_linear(seen))
    both, den = normalized_blur(_side_by_side(a, f), weight, sigma)  # one pass
    out = _detail_mixed(np.ascontiguousarray(a), np.ascontiguousarray(f), both, den)
    return out if linear else linear_to_srgb(out)


@numba.njit(cache=True, nogil=True)
def _side_by_side(a: np.ndarray, f: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """H x W x 6: a's three channels, then f's (`np.concatenate([a, f], -1)` of two
    float32 H x W x 3 arrays in one pass; numpy's copies along the last axis are slow)."""
    h, w = a.shape[:2]
    out = np.empty((h, w, 6), np.float32)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                out[y, x, c] = a[y, x, c]
                out[y, x, c + 3] = f[y, x, c]
    return out


@numba.njit(cache=True, nogil=True)
def _detail_mixed(a: np.ndarray, f: np.ndarray, both: np.ndarray,
                  den: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """`with_frame_detail`'s per-pixel mix in linear light, float32 as numpy would: the
    clip's low-pass times the frame's detail (f over its low-pass; `both`: a's and f's
    low-passes, H x W x 6), blended into the clip's albedo `a` by the support `den` over
    0.3, clipped to [0, 1]."""
    eps, zero, one = np.float32(1e-3), np.float32(0.0), np.float32(1.0)
    out = np.empty(a.shape, np.float32)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            t = min(max(den[y, x] / np.float32(0.3), zero), one)
            for c in range(3):
                mixed = both[y, x, c] * (f[y, x, c] + eps) / (both[y, x, c + 3] + eps)
                out[y, x, c] = min(max(t * mixed + (one - t) * a[y, x, c], zero), one)
    return out


# mediapipe's 478 points of each eye (the subject's right, then left): outer and inner
# corner, upper and lower lid at the middle
EYE_POINTS = ((33, 133, 159, 145), (263, 362, 386, 374))


def eye_openness(points: np.ndarray) -> np.ndarray:
    """(..., 2) each eye's opening in mediapipe's 478 points (..., 478, 2): the lids' distance
    at the middle over the corners' distance. mediapipe's own lid points follow a blink (the
    68 derived from them keep a blurred closed eye partly open)."""
    p = np.asarray(points, np.float64)
    out = [np.linalg.norm(p[..., up, :] - p[..., low, :], axis=-1)
           / np.maximum(np.linalg.norm(p[..., outer, :] - p[..., inner, :], axis=-1), 1e-9)
           for outer, inner, up, low in EYE_POINTS]
    return np.stack(out, -1)


# Eyes count as closing from this share of their usual opening down, closed at the second
CLOSING_FROM = (0.85, 0.65)
# An eye's lids: half an ellipse above the line through its corners and half below,
# semi-axes along the eye, up (the upper lid and its crease, below the brow) and down (IOD)
LID_AXES = (0.45, 0.45, 0.15)


def closed_lids(points: np.ndarray, usual: np.ndarray | None,
                box: tuple[float, float, float], size: int, crop_iod: float
                ) -> np.ndarray | None:
    """Crop (size x size) weight in [0, 1]: the lids of eyes closed further than the actor's
    `usual` opening (`albedo.usual_eye_openness`), or None when they are not.

    The actor's albedo is merged from frames spread over the clip, where the eyes are mostly
    open: at a lid it holds the open eye's lashes, crease and socket shadow. When the actor
    blinks or squints, the lid spreads over that dark albedo, and a ratio of the source's
    lid over it lights the closed lid up as a glowing patch. Both eyes close together and
    their detections disagree on blurred frames, so the more closed eye sets both. points:
    this frame's mediapipe 478 (frame pixels); box: the crop's (x, y, side) in frame pixels.
    Each eye's lids (`LID_AXES`, cosine edge from 0.7 of them; up: across the line through
    its corners, towards the crop's top, for a face rolled less than a quarter turn) are
    weighted by how far the eyes close (`CLOSING_FROM`)."""
    points = np.asarray(points, np.float64)
    if usual is None or points.shape != (478, 2) or not np.isfinite(points).all():
        return None
    x0, y0, side = box
    share = float((eye_openness(points) / np.maximum(np.asarray(usual, np.float64),
                                                      1e-9)).min())
    start, end = CLOSING_FROM
    closing = min(max((start - share) / (start - end), 0.0), 1.0)
    if closing <= 0.0:
        return None
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    out = np.zeros((size, size), np.float32)
    for outer, inner, _, _ in EYE_POINTS:
        corners = (points[[outer, inner]] - [x0, y0] + 0.5) * (size / side) - 0.5
        a, b = sorted(corners, key=lambda c: c[0])  # left, right in the crop
        axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-6)
        cx, cy = (a + b) / 2.0
        along = (cols - cx) * axis[0] + (rows - cy) * axis[1]
        up = (cols - cx) * axis[1] - (rows - cy) * axis[0]  # towards the brow
        reach = np.where(up > 0, LID_AXES[1], LID_AXES[2]) * crop_iod
        radius = np.sqrt((along / (LID_AXES[0] * crop_iod)) ** 2 + (up / reach) ** 2)
        edge = np.clip((radius - 0.7) / 0.3, 0.0, 1.0)
        out = np.maximum(out, (0.5 + 0.5 * np.cos(np.pi * edge)) * (radius < 1.0))
    return (np.float32(closing) * out).astype(np.float32)


def capped_lightness(ratio: np.ndarray, where: np.ndarray, level: float) -> np.ndarray:
    """The ratio (H x W x 3, linear) with its lightness held to at most `level` by the
    weight `where` (H x W in [0, 1]), colour kept."""
    luma = np.maximum(ratio @ LUMA, np.float32(1e-6))
    scale = np.minimum(np.float32(1.0), np.float32(level) / luma)
    keep = 1.0 - where + where * scale
    return (ratio * keep[..., None]).astype(np.float32)


# The share of the face crop's darkest pixels (per channel) whose level is the frame's black
BLACK_SHARE = 0.005


def black_level(pixels: np.ndarray, share: float = BLACK_SHARE) -> np.ndarray:
    """(3,) linear RGB: the frame's black level around the face, each channel's `share`
    quantile (the darkest byte with at least that share of the pixels at or below it) of
    `pixels` (uint8 H x W x 3: the frame on the face crop, face and surroundings).

    Flare, haze or a lifted grade add light evenly over a region of the frame: a black
    jacket beside the face reads dark grey, and the face's own dark features (brows, lash
    lines, nostrils) are lifted by as much. The gain acts above this level
    (`apply_ratio(black=)`), so the source's dark features on a hazy frame are lifted as
    the frame's own are, not drawn at the photo's contrast; a frame with something truly
    black near the face reads about 0 and keeps its gain as it was."""
    pixels = np.ascontiguousarray(pixels, np.uint8).reshape(-1, 3)
    if not len(pixels):
        return np.zeros(3, np.float32)
    need = max(1, int(np.ceil(share * len(pixels))))
    out = np.empty(3, np.float32)
    for c in range(3):
        counts = np.cumsum(np.bincount(pixels[:, c], minlength=256))
        out[c] = _U8_TO_LINEAR[int(np.searchsorted(counts, need))]
    return out


def apply_ratio(image: np.ndarray, ratio: np.ndarray, strength: np.ndarray,
                grain_px: float = 0.0, grain_from: np.ndarray | None = None,
                black: np.ndarray | None = None) -> np.ndarray:
    """image (sRGB-encoded, uint8 or float [0, 1]) times the gain 1 + strength x (ratio - 1)
    in linear RGB; float32 sRGB in [0, 1] out.

    strength H x W in [0, 1]: 0 leaves a pixel exactly as it is. `grain_px` > 0 (uint8
    images only): the image's grain, its difference from a Gaussian low-pass of that sigma
    (px) up to `GRAIN_SIGMAS` times its robust spread over the face, is kept as it is
    in sRGB-encoded values, and the gain goes onto the rest. A camera's grain is about as
    strong in encoded values on dark skin as on light, so a face made lighter or darker
    keeps the clip's grain instead of scaling it; an edge (lips, lids) is far above the
    grain's spread and is scaled whole, so its profile does not change. `grain_from` (uint8,
    the image's shape): the pixels whose grain is added back in place of the image's own:
    the swap passes the frame itself at the warped image's place, because a camera's grain
    belongs to the sensor's pixels, not to the face's surface; warped with the face it
    would be moved and resampled (smoothed) with it. `black` (3, linear RGB; None: 0): the
    frame's black level (`black_level`); the gain acts on the light above it, which it
    leaves as it is. uint8 images (the swap's) go through one compiled pass
    (`_toned_bytes`: the window is large, and a dozen numpy passes over it cost several
    times one loop); float images through numpy."""
    strength = np.asarray(strength, np.float32)
    floor = (np.zeros(3, np.float32) if black is None
             else np.ascontiguousarray(black, np.float32).reshape(3))
    if image.dtype == np.uint8:
        image = np.ascontiguousarray(image)
        low, limit = image, 0
        if grain_px > 0:
            low = cv2.GaussianBlur(image, (0, 0), grain_px)
            limit = grain_limit(image, low, strength)
        grainy, grainy_low = image, low
        if grain_px > 0 and grain_from is not None:
            grainy = np.ascontiguousarray(grain_from)
            grainy_low = cv2.GaussianBlur(grainy, (0, 0), grain_px)
        out = np.empty(image.shape, np.float32)
        _toned_bytes(image, np.ascontiguousarray(low), limit, np.asarray(ratio, np.float32),
                     strength, _U8_TO_LINEAR, _LINEAR_TO_SRGB, _U8_TO_UNIT, out,
                     grainy, np.ascontiguousarray(grainy_low), floor)
        return out
    out = image.astype(np.float32)
    on = strength > 0
    if not on.any():
        return out
    gain = np.asarray(ratio, np.float32) - np.float32(1.0)
    gain *= np.clip(strength, 0, 1)[..., None]
    gain += 1.0
    toned = linear_to_srgb((srgb_to_linear(out) - floor) * gain + floor)
    np.copyto(out, toned, where=on[..., None])
    return out


_U8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)
# How far (in robust standard deviations of the fine band over the face) a pixel's difference
# from its low-pass still counts as grain
GRAIN_SIGMAS = 2.5


def grain_limit(image: np.ndarray, low: np.ndarray, strength: np.ndarray,
                sigmas: float = GRAIN_SIGMAS) -> int:
    """The largest difference from the low-pass (whole grey levels) that counts as grain:
    `sigmas` x the fine band's robust spread (1.4826 x the median absolute difference) over
    the pixels the gain touches, read on every third row and column, rounded, at least 1."""
    counts = _grain_histogram(image, low, strength, 3)  # bytes: a histogram's median
    if not counts.any():
        return 1
    counts = np.cumsum(counts)
    median = int(np.searchsorted(counts, (counts[-1] + 1) // 2))
    return max(1, round(sigmas * 1.4826 * median))


@numba.njit(cache=True, nogil=True)
def _grain_histogram(image: np.ndarray, low: np.ndarray, strength: np.ndarray,
                     step: int) -> np.ndarray:  # pragma: no cover - compiled
    """(256,) counts of |image - low| (uint8 H x W x 3 each) over the channels of the
    pixels on every `step`-th row and column whose strength (H x W) is above 0, read in
    place (strided slices, a mask and its gather would copy each)."""
    counts = np.zeros(256, np.int64)
    zero = np.float32(0.0)
    for y in range(0, image.shape[0], step):
        for x in range(0, image.shape[1], step):
            if strength[y, x] > zero:
                for c in range(3):
                    counts[abs(np.int32(image[y, x, c]) - np.int32(low[y, x, c]))] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _toned_bytes(image: np.ndarray, low: np.ndarray, limit: int, ratio: np.ndarray,
                 strength: np.ndarray, to_linear: np.ndarray, to_srgb: np.ndarray,
                 to_unit: np.ndarray, out: np.ndarray, grainy: np.ndarray,
                 grainy_low: np.ndarray, black: np.ndarray) -> None:  # pragma: no cover
    """`apply_ratio` of a uint8 image (H x W x 3) into `out`, pixel by pixel in float32: the
    grain (the image less its low-pass `low`, uint8, clipped to +-`limit` whole levels; none
    for a limit of 0) taken off, the rest in linear light from the 256-entry table, its part
    above `black` (3, linear) times the gain, back through the fine table (index rounded,
    clamped to its ends), the grain of `grainy` (less `grainy_low`, clipped alike; the
    image and `low` themselves give the image's own) added, clipped to [0, 1]; untouched
    pixels are the byte over 255."""
    top = np.float32(to_srgb.shape[0] - 1)
    one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            s = strength[y, x]
            if s > zero:
                s = min(s, one)
                for c in range(3):
                    byte = np.int32(image[y, x, c])
                    grain = min(max(byte - np.int32(low[y, x, c]), -limit), limit)
                    floor = black[c]
                    v = (to_linear[byte - grain] - floor) * ((ratio[y, x, c] - one) * s + one)
                    v += floor
                    v = min(max(v * top + half, zero), top)
                    kept = np.int32(grainy[y, x, c])
                    fine = min(max(kept - np.int32(grainy_low[y, x, c]), -limit), limit)
                    t = to_srgb[int(v)] + (to_unit[kept] - to_unit[kept - fine])
                    out[y, x, c] = min(max(t, zero), one)
            else:
                for c in range(3):
                    out[y, x, c] = to_unit[image[y, x, c]]


@numba.njit(cache=True, nogil=True)
def _with_surround(flow: np.ndarray, strength: np.ndarray, around: np.ndarray,
                   ratio: np.ndarray, tone: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The face's gain and the surround's in one, per crop pixel, float32 as numpy would:
    the surround's strength where the face's leaves room (around x (1 - strength)), the
    total, and the ratio that gives 1 + total (ratio' - 1) = 1 + strength (ratio - 1) +
    around' (tone - 1) (1 where the total is 0). Returns H x W x 4 (flow x, y, strength,
    total) and the ratio (H x W x 3)."""
    h, w = strength.shape
    fields = np.empty((h, w, 4), np.float32)
    out = np.empty((h, w, 3), np.float32)
    one, tiny = np.float32(1.0), np.float32(1e-6)
    for y in range(h):
        for x in range(w):
            s = strength[y, x]
            a = around[y, x] * (one - s)
            t = s + a
            fields[y, x, 0], fields[y, x, 1] = flow[y, x, 0], flow[y, x, 1]
            fields[y, x, 2], fields[y, x, 3] = s, t
            for c in range(3):
                out[y, x, c] = ((s * ratio[y, x, c] + a * tone[c]) / max(t, tiny) if t > tiny
                                else one)
    return fields, out


@numba.njit(cache=True, nogil=True)
def _window_fields(outside: np.ndarray, reach: np.float32, fields: np.ndarray, ox: int,
                   oy: int, warp: bool):  # pragma: no cover - compiled
    """The window's per-pixel tail of `transfer_face`, in float32 as numpy would: the warp's
    fade (`fade` of the hull from its distance `outside`, px), the strength (`fields`: flow
    x, y, the face's strength, the total strength; the face's part ends with the fade, the
    surround's does not; under 0.004 it changes no grey level and is 0) and the coverage
    (fade or strength above 0). `warp`: also the remap's maps (frame pixels, H' x W' x 2)
    over the rectangle where the fade is above 0, with its top-left (row, column).
    Returns coverage, strength, maps, (row, column)."""
    h, w = outside.shape
    weight = np.empty((h, w), np.float32)
    strength = np.empty((h, w), np.float32)
    coverage = np.empty((h, w), np.float32)
    one, zero, cut = np.float32(1.0), np.float32(0.0), np.float32(0.004)
    r0, r1, c0, c1 = h, 0, w, 0
    for y in range(h):
        first, last = w, -1
        for x in range(w):
            d = outside[y, x]
            if d <= zero:
                f = one
            elif reach <= zero or d >= reach:
                f = zero
            else:
                f = np.float32(0.5) + np.float32(0.5) * np.float32(
                    math.cos(np.float32(np.pi) * (d / reach)))
            weight[y, x] = f
            s = fields[y, x, 3] - fields[y, x, 2] * (one - f)
            s = min(max(s, zero), one)
            if s < cut:
                s = zero
            strength[y, x] = s
            coverage[y, x] = one if (f > zero or s > zero) else zero
            if f > zero:
                last = x
                if first == w:
                    first = x
        if last >= 0:
            r0, r1, c0, c1 = min(r0, y), y + 1, min(c0, first), max(c1, last + 1)
    if not warp or r1 <= r0:
        return coverage, strength, np.zeros((0, 0, 2), np.float32), (0, 0)
    maps = np.empty((r1 - r0, c1 - c0, 2), np.float32)
    for y in range(r0, r1):
        for x in range(c0, c1):
            f = weight[y, x]
            maps[y - r0, x - c0, 0] = np.float32(ox + x) + fields[y, x, 0] * f
            maps[y - r0, x - c0, 1] = np.float32(oy + y) + fields[y, x, 1] * f
    return coverage, strength, maps, (r0, c0)


BAR_EDGE_PX = 3  # a bar's edge blurred by the codec: pixels between the bar and the picture


def inner_picture(frame: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) frame pixels of the picture inside any letterbox or
    pillarbox bars (`composite.blend.picture_bounds`), less `BAR_EDGE_PX` on each side that
    has a bar: the codec smears a bar's edge into the first columns of the picture."""
    h, w = frame.shape[:2]
    left, top, right, bottom = picture_bounds(frame)
    edge = BAR_EDGE_PX
    return (left + edge if left > 0 else 0, top + edge if top > 0 else 0,
            right - edge if right < w else w, bottom - edge if bottom < h else h)


def bar_edge_weights(xs: np.ndarray, ys: np.ndarray, picture: tuple[int, int, int, int],
                     shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """How far the warp may move the pixels of frame columns `xs` and rows `ys` (1-D)
    near a letterbox or pillarbox bar (`inner_picture`'s `picture`, frame `shape` h, w),
    per column and per row: 0 from the bar's own edge through the codec's smeared
    `BAR_EDGE_PX`, rising linearly to 1 over the next `BAR_EDGE_PX` pixels of the picture;
    1 on a side without a bar."""
    h, w = shape
    left, top, right, bottom = picture
    edge = float(BAR_EDGE_PX)
    out = []
    for v, low, high, size in ((xs, left, right, w), (ys, top, bottom, h)):
        v = np.asarray(v, np.float32)
        weight = np.ones(v.shape, np.float32)
        if low > 0:
            weight = np.minimum(weight, np.clip((v - low + 1.0) / edge, 0.0, 1.0))
        if high < size:
            weight = np.minimum(weight, np.clip((high - v) / edge, 0.0, 1.0))
        out.append(weight.astype(np.float32))
    return out[0], out[1]


def held_at_bars(maps: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                 picture: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """The warp's maps (H' x W' x 2 frame pixels; columns `xs`, rows `ys`) moved back towards
    each pixel's own place by `bar_edge_weights` (a corner by both), in place: only the
    columns and rows beside a bar are touched."""
    wx, wy = bar_edge_weights(xs, ys, picture, shape)
    for near in np.flatnonzero(wx < 1):
        maps[:, near, 0] = xs[near] + wx[near] * (maps[:, near, 0] - xs[near])
        maps[:, near, 1] = ys + wx[near] * (maps[:, near, 1] - ys)
    for near in np.flatnonzero(wy < 1):
        maps[near, :, 0] = xs + wy[near] * (maps[near, :, 0] - xs)
        maps[near, :, 1] = ys[near] + wy[near] * (maps[near, :, 1] - ys[near])
    return maps


def clamp_to_picture(x: np.ndarray, y: np.ndarray, picture: tuple[int, int, int, int],
                     own: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Sample positions (frame pixels, float32) moved into `picture` (`inner_picture`).
    `own`: each sample's own pixel (x, y); a pixel that itself lies outside the picture may
    sample as far out as itself, so a zero flow still gives every pixel back."""
    left, top, right, bottom = picture
    lo_x, hi_x, lo_y, hi_y = (np.float32(left), np.float32(right - 1), np.float32(top),
                              np.float32(bottom - 1))
    if own is not None:
        lo_x, hi_x = np.minimum(own[0], lo_x), np.maximum(own[0], hi_x)
        lo_y, hi_y = np.minimum(own[1], lo_y), np.maximum(own[1], hi_y)
    return (np.clip(x, lo_x, hi_x).astype(np.float32, copy=False),
            np.clip(y, lo_y, hi_y).astype(np.float32, copy=False))


def fade(hard: np.ndarray, reach: float) -> np.ndarray:
    """H x W float: 1 inside the bool `hard`, falling smoothly (cosine) to 0 at `reach` px
    outside it."""
    if reach <= 0:
        return hard.astype(np.float32)
    outside = cv2.distanceTransform((~hard).astype(np.uint8), cv2.DIST_L2, 5)
    t = np.clip(outside / reach, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# One frame
# --------------------------------------------------------------------------------------------

MOUTH_REGIONS = ("mouth_interior", "teeth", "tongue")
INNER_REGIONS = (*MOUTH_REGIONS, "eyeballs")  # the actor's own pixels


@numba.njit(cache=True, nogil=True)
def _crop_fields(attrs: np.ndarray, raster_covered: np.ndarray, tex: np.ndarray,
                 grid: np.ndarray, skin_channels: np.ndarray, inner_channels: np.ndarray,
                 mouth_channels: np.ndarray, k: int):  # pragma: no cover - compiled
    """`transfer_face`'s per-pixel fields of the crop from the interpolated attributes
    (`attrs`: surface x, y in frame pixels, the region channels, the normal's z at `k`, the
    source factor after it) and the texture lookups (`tex`: source albedo, its confidence,
    actor albedo, its confidence), in one pass, float32 as numpy computes them:
    covered (front surface), the flow to the surface (0 off it), inner (eyes and mouth
    kept: the sum of `inner_channels`), on_face (covered, where the face, `skin_channels`
    and inner, is above 1/2), moving (on_face but where the sum of `mouth_channels`, the
    mouth's inside, is 1/2 or more: the flow's support), skin (not inner), the source's
    albedo (texture times factor) and the trust before the picture test (normal, both
    confidences, skin)."""
    h, w = raster_covered.shape
    covered = np.empty((h, w), np.bool_)
    flow = np.empty((h, w, 2), np.float32)
    inner = np.empty((h, w), np.float32)
    on_face = np.empty((h, w), np.bool_)
    moving = np.empty((h, w), np.bool_)
    skin = np.empty((h, w), np.float32)
    albedo = np.empty((h, w, 3), np.float32)
    trust = np.empty((h, w), np.float32)
    zero, one, cut, third, half = (np.float32(0.0), np.float32(1.0), np.float32(-0.1),
                                   np.float32(0.3), np.float32(0.5))
    for y in range(h):
        for x in range(w):
            c = raster_covered[y, x] and attrs[y, x, k] > cut
            covered[y, x] = c
            flow[y, x, 0] = attrs[y, x, 0] - grid[y, x, 0] if c else zero
            flow[y, x, 1] = attrs[y, x, 1] - grid[y, x, 1] if c else zero
            t = zero
            for i in inner_channels:
                t += attrs[y, x, i]
            t = min(max(t, zero), one) if c else zero
            inner[y, x] = t
            s = attrs[y, x, skin_channels[0]] + attrs[y, x, skin_channels[1]]
            s += attrs[y, x, skin_channels[2]]
            f = c and min(max(s + t, zero), one) > half
            on_face[y, x] = f
            m = zero
            for i in mouth_channels:
                m += attrs[y, x, i]
            moving[y, x] = f and m < half
            s = min(max(s, zero), one) * (one - t) if c else zero
            skin[y, x] = s
            for ch in range(3):
                albedo[y, x, ch] = tex[y, x, ch] * attrs[y, x, k + 1 + ch]
            n = min(max(attrs[y, x, k] / third, zero), one)
            trust[y, x] = n * tex[y, x, 3] * tex[y, x, 7] * s
    return covered, flow, inner, on_face, moving, skin, albedo, trust


def surface_lookup(per_vertex, raster, uv_coords, uv_triangles, textures
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`render.ops`' interpolate of `per_vertex` (V x C float32 torch, CPU) and bilinear
    texture lookup of `textures` (T x T x K) at the interpolated `uv_coords` over one
    raster's covered pixels, dense H x W x C and H x W x K float32 numpy (0 off the
    surface): the same float32 arithmetic as torch's interpolate and `grid_sample`
    (border padding, align_corners False) in one compiled pass, fused multiply-adds where
    torch's vectorised CPU kernels use them (on a CPU without FMA torch rounds some sums
    differently, by an ulp)."""
    import torch

    h, w = raster.size
    bary = raster.pixel_barycentrics.detach()
    attrs = np.zeros((h, w, per_vertex.shape[1]), np.float32)
    tex = np.zeros((h, w, textures.shape[-1]), np.float32)
    _lookup(per_vertex.detach().to(torch.float32).contiguous().numpy(),
            raster.triangles.numpy(), uv_coords.detach().float().contiguous().numpy(),
            uv_triangles.numpy(), textures.detach().float().contiguous().numpy(),
            raster.pixel_index.numpy(), raster.pixel_triangle.numpy(),
            bary.float().numpy(), attrs.reshape(h * w, -1), tex.reshape(h * w, -1))
    return attrs, tex


@numba.extending.intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
    """a b + c (float32) rounded once, LLVM's fma: as torch's vectorised addcmul and
    grid_sample form it (one instruction where the CPU has FMA)."""
    from llvmlite import ir

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma", [f32],
                                               ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fma, [context.cast(builder, v, t, numba.float32)
                                  for v, t in zip(args, signature.args, strict=True)])

    return numba.float32(a, b, c), codegen


@numba.njit(cache=True, nogil=True)
def _lookup(attr: np.ndarray, tris: np.ndarray, uv: np.ndarray, uv_tris: np.ndarray,
            image: np.ndarray, pixel_index: np.ndarray, pixel_triangle: np.ndarray,
            bary: np.ndarray, out: np.ndarray, tex: np.ndarray) -> None:  # pragma: no cover
    """`surface_lookup`'s pass: per covered pixel m, out[pixel] = b0 a0 + b1 a1 + b2 a2
    (summed in that order with fused multiply-adds, as torch's interpolate) and tex[pixel]
    the bilinear texel mix at the pixel's uv, weights and sum as `grid_sample` forms them
    (a neighbour past the texture's last row or column weighs nothing; the texture must be
    finite)."""
    th, tw = image.shape[0], image.shape[1]
    one, two, half, zero = np.float32(1.0), np.float32(2.0), np.float32(0.5), np.float32(0.0)
    sx, sy = np.float32(tw / 2), np.float32(th / 2)
    mx, my = np.float32(tw - 1), np.float32(th - 1)
    for m in range(pixel_index.shape[0]):
        p, t = pixel_index[m], pixel_triangle[m]
        b0, b1, b2 = bary[m, 0], bary[m, 1], bary[m, 2]
        v0, v1, v2 = tris[t, 0], tris[t, 1], tris[t, 2]
        for c in range(attr.shape[1]):
            out[p, c] = _fma(b2, attr[v2, c], _fma(b1, attr[v1, c], b0 * attr[v0, c]))
        u0, u1, u2 = uv_tris[t, 0], uv_tris[t, 1], uv_tris[t, 2]
        u = _fma(b2, uv[u2, 0], _fma(b1, uv[u1, 0], b0 * uv[u0, 0]))
        v = _fma(b2, uv[u2, 1], _fma(b1, uv[u1, 1], b0 * uv[u0, 1]))
        x = _fma((u * two - one) + one, sx, -half)
        y = _fma((one - v * two) + one, sy, -half)
        x = min(mx, max(x, zero))
        y = min(my, max(y, zero))
        xw, yn = np.floor(x), np.floor(y)
        we = x - xw
        ea = one - we
        n = y - yn
        s = one - n
        nw, ne, sw, se = s * ea, s * we, n * ea, n * we
        # past the last row or column the position is on it and the neighbour's weight is
        # 0: the texel there (finite) times 0 adds the 0 grid_sample's mask gives
        i, j = int(yn), int(xw)
        i1, j1 = min(i + 1, th - 1), min(j + 1, tw - 1)
        for c in range(image.shape[2]):
            a = image[i, j, c] * nw
            a = _fma(image[i, j1, c], ne, a)
            a = _fma(image[i1, j, c], sw, a)
            tex[p, c] = _fma(image[i1, j1, c], se, a)


def _hull(actor, swapped, forehead_margin: float) -> np.ndarray:
    """The convex hull of both faces' outlines (jaw, brows lifted by `forehead_margin` IOD)
    in 1/16 pixels (OpenCV's `shift` 4), `composite.FaceGeometry`s in the same pixel frame."""
    points = np.concatenate([actor.face_polygon(forehead_margin),
                             swapped.face_polygon(forehead_margin)])
    return cv2.convexHull(np.round(points * 16).astype(np.int32))


def face_hull(actor, swapped, shape: tuple[int, int], forehead_margin: float) -> np.ndarray:
    """Bool H x W: `_hull` filled (the whole window's reference for `hull_distance`)."""
    hull = _hull(actor, swapped, forehead_margin)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def hull_distance(actor, swapped, shape: tuple[int, int], forehead_margin: float,
                  reach: float) -> np.ndarray:
    """H x W float32: each pixel's distance (px, OpenCV's 5 x 5 chamfer L2) outside
    `face_hull` (0 inside), exact up to `reach`; `reach` or more beyond it.

    Measured only over the hull's bounding box grown by `reach`: a chamfer distance's
    shortest path runs monotonically from the pixel to its nearest hull pixel, inside the
    box holding both, so the box gives the whole window's distances there."""
    hull = _hull(actor, swapped, forehead_margin)
    h, w = shape
    far = np.float32(max(reach, 0.0) + 1.0)
    out = np.full(shape, far, np.float32)
    x, y, bw, bh = cv2.boundingRect(hull)  # in 1/16 pixels
    grow = int(np.ceil(max(reach, 0.0))) + 2
    x0, y0 = max(x // 16 - grow, 0), max(y // 16 - grow, 0)
    x1, y1 = min((x + bw) // 16 + 1 + grow, w), min((y + bh) // 16 + 1 + grow, h)
    if x1 <= x0 or y1 <= y0:
        return out
    outside = np.ones((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(outside, hull - np.int32([x0 * 16, y0 * 16]), 0, lineType=cv2.LINE_8,
                       shift=4)
    if outside.all():  # the hull misses the window
        return out
    out[y0:y1, x0:x1] = np.minimum(cv2.distanceTransform(outside, cv2.DIST_L2, 5), far)
    return out


def actor_non_skin(seen: np.ndarray, covered: np.ndarray, model, regions: dict,
                   lm68: np.ndarray, box: tuple[float, float, float], size: int,
                   crop_iod: float, sigmas: float = 6.0, fringe_sigmas: float = 1.5,
                   fringe_blur: float = 0.05, scalp_reach: float = 0.3, lit_skin: bool = False,
                   height: np.ndarray | None = None, ycc: np.ndarray | None = None
                   ) -> np.ndarray:
    """Bool crop mask: the actor's pixels on the face that are not skin (a fringe, a hat, a
    microphone) and not where the face has features of its own (eyes, lips, a band around
    the brows). The ratio leaves them alone: hair times a skin-over-hair ratio is skin.

    seen: the frame's colours at the surface points (crop, float RGB); covered: where there
    are surface points (bool); model: the actor's skin colour (`composite.SkinModel`, None:
    none); lm68: the source mesh's 68 points in frame pixels. Non-skin is more than `sigmas`
    from the model, or more than half of it and joined to such a pixel; above the brows also
    where the score low-passed at `fringe_blur` IOD passes `fringe_sigmas` (a fringe's light
    hair between its strands) and is joined to kept hair or reaches the head's outline more
    than `scalp_reach` IOD above the brows (a fringe hanging from the scalp's hair).
    `lit_skin`: below the brows, what is off the skin's colour but at least as light as the
    skin is skin under a coloured light. `height`: `brow_height` of the same crop and `ycc`:
    `seen`'s `occluders.ycrcb`, when the caller has them."""
    from morph3d.composite.occluders import non_skin_score

    if model is None:
        return np.zeros(seen.shape[:2], bool)
    x0, y0, side = box
    brows = (lm68[17:27] - [x0, y0] + 0.5) * (size / side) - 0.5
    band = np.zeros(seen.shape[:2], np.uint8)
    for part in (brows[:5], brows[5:]):
        cv2.polylines(band, [np.round(part * 16).astype(np.int32)], False, 1,
                      thickness=max(1, round(0.25 * crop_iod)), lineType=cv2.LINE_8, shift=4)
    features = (band > 0) | (regions["eyes"] > 0.5) | (regions["lips"] > 0.5)
    score = np.where(covered, non_skin_score(seen, model, ycc=ycc), 0.0)
    # Hysteresis: what is off the skin by half as much and joined to a clear non-skin pixel
    # (a strand of hair over the forehead) is one piece with it.
    count, labels = cv2.connectedComponents((score > sigmas / 2).astype(np.uint8),
                                            connectivity=8)
    # In the brows' band a piece is hair when more of it lies well above the brows than in
    # the band (a fringe or hat reaching down into it); the actor's own brows are islands in
    # skin, or joined to the hair at the temples beside them.
    height = brow_height(lm68, box, size) if height is None else height
    above = forehead_fade(lm68, box, size, crop_iod, 0.2, height) < 0.5
    kept = _kept_pieces(labels, count, score, np.float32(sigmas), features, above)
    # Above the brows a fringe of light hair is only a few sigmas off the skin, strand by
    # strand, and a per-pixel test keeps the strands with holes between them (skin-toned
    # holes in the fringe). The score low-passed over a strand's spacing separates a fringe
    # from bare forehead skin; what passes and is joined to the kept hair is hair.
    above = (height > 0) & covered & ~features
    # a pixel far off the skin (the score is unbounded, infinite on black) counts as `sigmas`
    blurred = cv2.GaussianBlur(np.clip(np.nan_to_num(score, posinf=sigmas), 0, sigmas),
                               (0, 0), fringe_blur * crop_iod)
    fringe = above & (blurred > fringe_sigmas)
    count, labels = cv2.connectedComponents((fringe | kept).astype(np.uint8), connectivity=8)
    # A fringe whose hair is near the skin's colour throughout (blond, light brown) has no
    # clear pixel to join; it hangs from the hair over the scalp, so a fringe piece that
    # reaches the head's outline (or the crop's edge) well above the brows is hair too. A
    # forehead's own marks are islands in the skin and reach no outline.
    outline = covered & ~cv2.erode(covered.astype(np.uint8), np.ones((3, 3), np.uint8),
                                   borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    hanging = fringe & outline & (height > scalp_reach * crop_iod)
    kept = _with_joined(labels, count, kept | hanging, fringe)
    if lit_skin:
        # Below the brows, a piece off the skin's colour but as light as the skin or lighter
        # is the skin under a light of another colour (a blue rim light on the far cheek):
        # hair, a beard's shadow or a dark microphone are darker than the lit skin beside
        # them, and the grey of a highlight already scores as skin.
        luma = seen @ np.float32([0.299, 0.587, 0.114]) * 255.0
        kept &= ~(~above & ~features & np.isfinite(score) & (luma >= model.mean[0]))
    return kept


@numba.njit(cache=True, nogil=True)
def _kept_pieces(labels: np.ndarray, count: int, score: np.ndarray, clear_above: np.float32,
                 features: np.ndarray, above: np.ndarray) -> np.ndarray:  # pragma: no cover
    """`actor_non_skin`'s first pieces, counted in one pass: a piece (`labels`, 0: none) is
    clear with a pixel scoring above `clear_above`, hair when clear and more of it lies
    `above` than on the `features`; kept is hair on the features, clear elsewhere."""
    clear = np.zeros(count, np.bool_)
    up = np.zeros(count, np.int64)
    on_features = np.zeros(count, np.int64)
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            piece = labels[y, x]
            if score[y, x] > clear_above:
                clear[piece] = True
            if above[y, x]:
                up[piece] += 1
            if features[y, x]:
                on_features[piece] += 1
    hair = np.empty(count, np.bool_)
    for i in range(count):
        hair[i] = up[i] > on_features[i] and clear[i]
    clear[0] = hair[0] = False
    kept = np.empty((h, w), np.bool_)
    for y in range(h):
        for x in range(w):
            piece = labels[y, x]
            kept[y, x] = hair[piece] if features[y, x] else clear[piece]
    return kept


@numba.njit(cache=True, nogil=True)
def _with_joined(labels: np.ndarray, count: int, kept: np.ndarray,
                 fringe: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """kept, and the `fringe` pixels of every piece (`labels`, 0: none) holding a kept
    pixel."""
    joined = np.zeros(count, np.bool_)
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            if kept[y, x]:
                joined[labels[y, x]] = True
    joined[0] = False
    out = np.empty((h, w), np.bool_)
    for y in range(h):
        for x in range(w):
            out[y, x] = kept[y, x] or (fringe[y, x] and joined[labels[y, x]])
    return out


def surround_strength(plain: np.ndarray, model, face: np.ndarray, inner: np.ndarray,
                      reach: float, smooth: float, low: float = 3.0, high: float = 6.0,
                      head: np.ndarray | None = None) -> np.ndarray:
    """Crop H x W weight in [0, 1]: the actor's skin around the face (ears, neck, forehead
    between the strands of a fringe) that takes the face's overall tone, so a source of
    another skin tone reads as the person's skin, not as a mask on a face.

    plain: the frame on the crop's grid (float RGB); model: the actor's skin colour
    (`composite.SkinModel`); face: bool, the face surface the ratio covers; inner: where the
    actor's own eyes and mouth stay. Skin is a colour within `low` sigmas of the model, fading
    out by `high`, low-passed at `smooth` px (a per-pixel test on a noisy frame would speckle
    the tone); the weight falls (cosine) from 1 at the face to 0 `reach` px beyond it and to 0
    at the crop's border (the window ends there)."""
    from morph3d.composite.occluders import non_skin_score

    if model is None or reach <= 0:
        return np.zeros(plain.shape[:2], np.float32)
    score = non_skin_score(plain, model)
    skin = np.clip((high - score) / (high - low), 0.0, 1.0).astype(np.float32)
    if head is not None:  # the head's skin under a light of another colour (`actor_non_skin`)
        luma = plain @ np.float32([0.299, 0.587, 0.114]) * 255.0
        skin[head & np.isfinite(score) & (luma >= model.mean[0])] = 1.0
    skin = cv2.GaussianBlur(skin, (0, 0), max(smooth, 0.5))
    return (skin * fade(face, reach) * _border_ramp(plain.shape[0])
            * (1 - inner)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _border_ramp(size: int) -> np.ndarray:
    """size x size: 0 at the crop's border rising to 1 at 0.08 of its side inside (float64,
    read-only; the same for every frame)."""
    ramp = np.arange(size)
    ramp = np.minimum(ramp, ramp[::-1])
    edge = np.clip(np.minimum(ramp[:, None], ramp[None, :]) / (0.08 * size), 0.0, 1.0)
    edge.flags.writeable = False
    return edge


def cap_highlights(albedo: np.ndarray, weight: np.ndarray, sigma: float,
                   headroom: float = 1.2) -> np.ndarray:
    """The albedo (H x W x 3, sRGB-encoded) with its lightness capped at `headroom` times
    its weighted low-pass at `sigma` px (colour kept): a photo's specular highlights
    (nose ridge, forehead) survive the division by a diffuse shading and would be carried
    onto the actor as pale streaks."""
    low, _ = normalized_blur(albedo, weight, sigma, reduce=True)
    luma = albedo @ np.float32([0.299, 0.587, 0.114])
    limit = headroom * (low @ np.float32([0.299, 0.587, 0.114]))
    scale = np.where(luma > limit, limit / np.maximum(luma, 1e-6), 1.0)
    return (albedo * np.where(limit > 0, scale, 1.0)[..., None]).astype(np.float32)


def brow_height(lm68: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """Crop H x W float: each pixel's height in crop pixels over the brows' highest point,
    along the face's up direction (negative below it)."""
    from morph3d.composite.masks import face_geometry

    x0, y0, side = box
    points = (lm68 - [x0, y0] + 0.5) * (size / side) - 0.5
    g = face_geometry({"ibug68": points})
    centres = np.arange(size, dtype=np.float32)
    top = float((points[17:27] @ g.up).max())
    return (centres[None, :] * g.up[0] + centres[:, None] * g.up[1] - top).astype(np.float32)


def forehead_fade(lm68: np.ndarray, box: tuple[float, float, float], size: int,
                  crop_iod: float, reach: float, height: np.ndarray | None = None
                  ) -> np.ndarray:
    """Crop H x W weight: 1 up to a little above the brows (0.15 IOD), falling (cosine) to 0
    `reach` IOD higher, along the face's up direction. The forehead above is where an
    actor's fringe or hat sits: there the ratio would paint hair as skin. `reach` <= 0:
    ones."""
    if reach <= 0:
        return np.ones((size, size), np.float32)
    height = (brow_height(lm68, box, size) if height is None else height) / crop_iod - 0.15
    t = np.clip(height / reach, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def transfer_face(model, source_identity: np.ndarray, actor_identity: np.ndarray, textures,
                  region_channels, camera_params, rotation, translation, expression,
                  frame: np.ndarray, actor_landmarks, *, source_factor,
                  alignment: np.ndarray | None = None, size: int = 256, backend: str | None = None,
                  ratio_sigma: float = 0.015, reach: float = 0.35,
                  forehead_margin: float = 0.65, ratio_on: bool = True, warp_on: bool = True,
                  max_spread: float = 8.0, protect: bool = True, max_brighten: float = 5.0,
                  light: float = 0.7, forehead: float = 0.35,
                  highlight_cap: float = 0.15, surround: float = 0.8, detail: float = 0.1,
                  sharpness: bool = True, flatten: float = 0.6, grain_px: float = 1.0,
                  eye_openness: np.ndarray | None = None, black: bool = True) -> dict:
    """The swapped face window of one frame, made from the frame's own pixels.

    textures: T x T x 8 torch tensor (source albedo RGB, its confidence, the actor's albedo
    RGB, its confidence: `actor_albedo`); region_channels: V x len(REGION_CHANNELS) torch
    tensor (morph3d.swap); source_factor: V x 3 torch tensor
    (`source_albedo_factor`); alignment: `identity_alignment` (None: none); frame: H x W x 3
    uint8; actor_landmarks: the actor's detected points of this frame (composite
    `Landmarks`). Lengths: `ratio_sigma` (the tone ratio's low-pass) and `reach` (how far
    beyond both faces' outlines the warp fades to nothing) in IOD of the swapped face,
    `size` the crop's side in pixels; `light`: the share of the skins' overall lightness
    ratio applied (`tone_ratio`); `surround`: how far (IOD) beyond the face the actor's skin
    takes the face's overall tone (`surround_strength`; 0: nowhere); `detail`: the scale
    (IOD) below which the actor's albedo is this frame's own (`with_frame_detail`);
    `sharpness`: the source's albedo blurred to the frame's sharpness (`match_blur`), and
    the gain's cut around the kept eyeballs and mouth no sharper than the frame (`soft_cut`);
    `flatten`: the scale (IOD) above which the ratio's lightness is the face's overall tone
    (`tone.flat_lightness`: there both albedos hold their shading models' errors; 0: off);
    `grain_px`: the frame's grain (its small differences from a low-pass of this sigma,
    frame pixels) is kept as it is, not scaled by the gain, and taken from the frame at
    its own pixels, not from the warped image (`apply_ratio`; 0: scaled with the rest);
    `eye_openness`: the actor's usual opening of the eyes (`TransferSetup.eye_openness`):
    in a blink the closed lids do not vote and their ratio is held to the face's tone
    (`closed_lids`); None: not looked for. `black`: the gain acts on the light above the
    frame's black level around the face (`black_level`: a hazy frame's lifted blacks) and
    leaves that level as it is.

    Both albedos are UV textures made once per job (the actor's merged from frames spread
    over the clip, `actor_albedo`; the source's from the photo, `source_albedo_factor`), so
    above `detail` the ratio at a surface point is the same in every frame: the frame keeps
    its own shading, cast shadows and grain, and the clip's changes of light pass through.
    Returns what `FaceRenderer.render` returns: image (h x w x 3 float), coverage (h x w:
    where the image is the warped frame or the toned skin around it), regions, window (x, y
    of its top-left frame pixel), ibug68 and mediapipe478 of the source mesh.
    """
    import torch

    from morph3d.composite.masks import face_geometry
    from morph3d.composite.occluders import fit_skin_model, ycrcb
    from morph3d.swap.sharpness import match_blur, soft_cut
    from morph3d.swap.window import (
        REGION_CHANNELS,
        channel_rects,
        crop_camera,
        face_crop_box,
        paste_mask,
        paste_window,
    )
    from render.backends import rasterize
    from render.ops import (
        interpolate,
        interpolate_sparse,
        scatter_pixels,
        texture_sparse,
        vertex_normals,
    )

    # Every tensor on the model's device; the results come to the CPU once, as numpy, where
    # the OpenCV part starts.
    device = model.mean.device
    ident = torch.as_tensor(np.stack([source_identity, actor_identity, source_identity])
                            .astype(np.float32), device=device)
    expr = torch.as_tensor(np.asarray(expression, np.float32)[None].repeat(3, 0),
                           device=device)
    expr[2] = 0.0
    verts = model.vertices(ident, expr)  # source, actor, source neutral
    if alignment is not None:  # the source's shape at the actor's size and place
        m = torch.as_tensor(np.asarray(alignment, np.float32), device=device)
        verts = torch.stack([verts[0] - verts[2] + verts[2] @ m[:, :3].T + m[:, 3], verts[1]])
    else:
        verts = verts[:2]
    cam = camera_params.to_camera(rotation, translation)
    lm68 = cam.project(model.landmarks(verts[:1], "ibug68"))[0].cpu().numpy()
    lm478 = cam.project(model.landmarks(verts, "mediapipe478")).cpu().numpy()
    h, w = frame.shape[:2]
    box = face_crop_box(lm478.reshape(-1, 2), (h, w))
    crop_cam = crop_camera(cam, box, size)
    tris = model.triangles
    raster = rasterize(crop_cam.to_clip(verts[:1]), tris, (size, size), backend=backend)
    actor_px = cam.project(verts[1:])[0]  # V x 2 frame pixels
    normals = torch.einsum("ij,vj->vi", cam.R.to(actor_px), vertex_normals(
        verts[1:], tris.to(torch.int64))[0]) * torch.tensor([1.0, -1.0, -1.0]).to(actor_px)
    per_vertex = torch.cat([actor_px, region_channels.to(actor_px), normals[:, 2:],
                            source_factor.to(actor_px)], 1)
    if per_vertex.device.type == "cpu":  # one compiled pass, no M x C temporaries
        attrs, tex = surface_lookup(per_vertex, raster, model.uv_coords, model.uv_triangles,
                                    textures)
    else:
        attrs = interpolate(per_vertex, raster)[0].cpu().numpy()
        uv = interpolate_sparse(model.uv_coords.to(actor_px), raster, model.uv_triangles)
        looked = texture_sparse(textures.to(actor_px), uv, raster.pixel_batch())
        tex = scatter_pixels(looked, raster)[0].cpu().numpy()
    # Surface that faces away (the inside of the neck's far wall, seen through its open end)
    # has no place in the warp: its flow is filled in from the front surface around it.
    x0, y0, side = box
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (side / size) - 0.5
    grid = np.stack(np.meshgrid(centres + x0, centres + y0), -1)
    crop_iod = face_geometry({"ibug68": lm68}).iod * size / side
    regions = {n: attrs[..., 2 + i] for i, n in enumerate(REGION_CHANNELS)}
    k = 2 + len(REGION_CHANNELS)
    # the flow comes from the face's own surface (`moving`); the neck, ears and scalp of two
    # heads fitted to faces differ by more than the faces do and would drag the collar
    # along. The mouth's inside moves with the lips around it: behind closed lips its
    # surfaces fold away, and their flow points anywhere (a speck of cheek pasted at the
    # lips' corner)
    covered, flow, inner, on_face, moving, skin, source_albedo, trust = _crop_fields(
        attrs, raster.coverage[0].cpu().numpy(), np.ascontiguousarray(tex), grid,
        np.array([2 + REGION_CHANNELS.index(n) for n in ("face_skin", "lips", "eyes")]),
        np.array([2 + REGION_CHANNELS.index(n) for n in INNER_REGIONS]),
        np.array([2 + REGION_CHANNELS.index(n) for n in MOUTH_REGIONS]), k)
    # A letterbox or pillarbox bar that cuts the actor's head is not the head's surface: the
    # frame is sampled inside its picture only, so the warp does not pull the bar into the face
    picture = inner_picture(frame)
    surface_x, surface_y = clamp_to_picture(attrs[..., 0], attrs[..., 1], picture)
    # the frame at the surface points: the actor's skin colour and what is not skin here
    seen_bytes = cv2.remap(frame, surface_x, surface_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    seen = cv2.LUT(seen_bytes, _U8_TO_UNIT)  # bytes / 255 in float32, by a table
    trust *= (surface_x == attrs[..., 0]) & (surface_y == attrs[..., 1])  # in the picture
    # the actor's skin colour from the cheeks, nose and chin: a forehead under a fringe of
    # hair near the skin's colour would widen a model fitted on all the face to the hair
    seen_ycc = ycrcb(seen)  # one conversion for the skin model and the non-skin test
    skin_model = fit_skin_model(seen, {"ibug68": (lm68 - [x0, y0] + 0.5) * (size / side) - 0.5},
                                exclude=trust <= 0.5, ycc=seen_ycc)
    height = brow_height(lm68, box, size)  # crop pixels above the brows
    if protect:
        keep_actor = actor_non_skin(seen, covered, skin_model, regions, lm68, box, size,
                                    crop_iod, lit_skin=True, height=height, ycc=seen_ycc)
        trust = trust * ~keep_actor
        soft = cv2.GaussianBlur(keep_actor.astype(np.float32), (0, 0), 0.03 * crop_iod)
        skin = skin * (1 - np.clip(2 * soft, 0, 1))
    if highlight_cap > 0:
        source_albedo = cap_highlights(source_albedo, trust, highlight_cap * crop_iod)
    frame_blur = 0.0  # crop pixels
    if sharpness:  # the blur comes from the frame, the identity from the photo
        # measured over the whole face but its kept eyeballs and mouth (`skin`): the skin the
        # ratio trusts holds few edges, the features (brows, lids, lips) hold them
        source_albedo, _, frame_blur = match_blur(source_albedo, seen, trust,
                                                  measure=skin > 0.5)
    lids = None  # the closed lids' weight (`closed_lids`), in a blink
    if ratio_on:
        actor_albedo = with_frame_detail(tex[..., 4:7], seen_bytes, trust, detail * crop_iod,
                                         linear=True)
        lids = closed_lids(actor_landmarks.get("mediapipe478", np.zeros(0)), eye_openness,
                           box, size, crop_iod)
        vote = trust if lids is None else trust * (1.0 - lids)
        # no finer than one frame pixel: a small face (a wide shot) would get the photo's
        # detail at a scale the frame does not have, a speckle on a blurred face
        ratio = tone_ratio(srgb_to_linear(source_albedo), actor_albedo, vote,
                           max(ratio_sigma * crop_iod, size / side),
                           max_spread=max_spread, max_brighten=max_brighten, light=light,
                           linear=True)
    else:
        ratio = np.ones((size, size, 3), np.float32)
    flow = extend_flow(flow, moving)
    strength = cv2.GaussianBlur(skin.astype(np.float32), (0, 0), 0.02 * crop_iod)
    strength = strength * (1 - soft_cut(inner, frame_blur)) * forehead_fade(
        lm68, box, size, crop_iod, forehead, height)
    # The face's overall tone (its ratio's median) also goes onto the actor's skin around it
    plain = cv2.remap(frame, grid[..., 0].astype(np.float32), grid[..., 1].astype(np.float32),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    floor = black_level(plain) if black else None  # the face and what lies around it
    plain = cv2.LUT(plain, _U8_TO_UNIT)
    around = surround_strength(plain, skin_model, on_face, inner > 0.5,
                               surround * crop_iod, 0.03 * crop_iod, head=covered)
    tone = column_median(ratio[trust > 0.5]) if (trust > 0.5).sum() > 20 else np.ones(3)
    if ratio_on and flatten > 0:
        ratio = flat_lightness(ratio, np.clip(2 * trust, 0.05, 1) * on_face,
                               flatten * crop_iod, tone)
    if ratio_on and lids is not None:  # after the flattening, which would lift them again
        ratio = capped_lightness(ratio, lids, float(tone @ LUMA))
    if ratio_on:  # the ratio counts only where the face's strength is above 0
        ratio = tempered_colour(ratio, tone, where=strength > 0)
    # one gain 1 + s (r - 1) = 1 + strength (ratio - 1) + around' (tone - 1)
    crop_fields, ratio = _with_surround(flow, np.asarray(strength, np.float32),
                                        np.asarray(around, np.float32),
                                        np.asarray(ratio, np.float32), tone.astype(np.float32))
    # pasted in groups of at most four channels, each through OpenCV's vectorised path (one
    # array of all channels takes its generic path, several times slower)
    fields, origin = paste_window(crop_fields, box, (h, w), cv2.INTER_LINEAR)
    ratio_w = paste_window(ratio, box, (h, w), cv2.INTER_LINEAR)[0]
    wh, ww = fields.shape[:2]
    rects = channel_rects(attrs, 2, len(REGION_CHANNELS), 0.5)
    masks = [paste_mask(regions[n], box, (h, w), rect=tuple(int(v) for v in rects[i]))
             for i, n in enumerate(REGION_CHANNELS)]
    actor = face_geometry(actor_landmarks).shifted(-np.asarray(origin, np.float64))
    swapped = face_geometry({"ibug68": lm68}).shifted(-np.asarray(origin, np.float64))
    fade_px = reach * swapped.iod
    # the warp's fade, the final strength and the coverage in one compiled pass; the warp
    # maps only over the rectangle where the fade is above 0 (a zero flow gives the frame
    # back exactly)
    outside = hull_distance(actor, swapped, (wh, ww), forehead_margin, fade_px)
    ox, oy = origin
    coverage, strength, maps, (r0, c0) = _window_fields(
        outside, np.float32(fade_px), fields, ox, oy, warp_on)
    warped = frame[oy:oy + wh, ox:ox + ww].copy()  # never a view: the frame stays as it is
    if maps.size:
        mh, mw = maps.shape[:2]
        if picture != (0, 0, w, h):  # a pixel samples no further into a bar than itself
            rows, cols = np.mgrid[oy + r0:oy + r0 + mh, ox + c0:ox + c0 + mw].astype(np.float32)
            # the codec's smeared edge between bar and picture stays where it is: warped,
            # the face's inside would be pulled up to the bar as a step sharper than the frame
            maps = held_at_bars(maps, cols[0], rows[:, 0], picture, (h, w))
            maps = np.stack(clamp_to_picture(maps[..., 0], maps[..., 1], picture,
                                             (cols, rows)), -1)
        warped[r0:r0 + mh, c0:c0 + mw] = cv2.remap(
            frame, maps, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    # the grain added back is the frame's own at these very pixels: a camera's grain
    # belongs to the sensor, and warped with the face it would be moved and smoothed
    image = apply_ratio(warped, ratio_w, strength, grain_px,
                        grain_from=frame[oy:oy + wh, ox:ox + ww], black=floor)
    return {
        "image": image, "coverage": coverage,
        "regions": dict(zip(REGION_CHANNELS, masks, strict=True)),
        "window": origin, "ibug68": lm68, "mediapipe478": lm478[0],
    }



def compositor_config():
    """The compositor's settings for a transferred face: its defaults (the mask is the
    warp's own region, which meets the frame at its edge; occluders are cut)."""
    from morph3d.composite.compositor import CompositorConfig

    return CompositorConfig()
