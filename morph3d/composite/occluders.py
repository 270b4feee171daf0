"""Occluders: a skin colour model of the actor's face, and the pixels in front of it (hands,
hair, microphones) cut out of the mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numba
import numpy as np

from morph3d.composite.colour import BYTE_TO_UNIT, robust_stats
from morph3d.composite.masks import (
    _EDGE_Z,
    FaceGeometry,
    Landmarks,
    _check_image,
    _clean_alpha,
    _dilate,
    _disk,
    _feather,
    _fill_polygon,
    expected_non_skin,
    face_geometry,
    face_region,
)
from morph3d.errors import InputError

# --------------------------------------------------------------------------------------------
# 4. Occluders
# --------------------------------------------------------------------------------------------


@dataclass
class SkinModel:
    """Gaussian of the actor's skin in YCrCb (0..255 units), fitted robustly on the central
    face. `chroma_cov_inv` is the inverse 2 x 2 (Cr, Cb) covariance, floored."""

    mean: np.ndarray  # (3,) Y, Cr, Cb
    std_y: float
    chroma_cov_inv: np.ndarray  # (2, 2)
    pixels: int


def ycrcb(image: np.ndarray, in_unit_range: bool = False) -> np.ndarray:
    """Float32 YCrCb in 0..255 of an RGB image in [0, 1] (clipped), without extra copies:
    a float32 image already inside [0, 1] (the frames' bytes over 255) is not clipped, the
    clip would give it back unchanged. `in_unit_range`: the caller knows it is (a float32
    image made from bytes), so it is not read to check."""
    image = np.asarray(image)
    if not (image.dtype == np.float32
            and (in_unit_range or (image.flags.c_contiguous
                                   and _in_unit_range(image.reshape(-1))))):
        image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    ycc *= 255.0
    return ycc


@numba.njit(cache=True, nogil=True)
def _in_unit_range(values: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Whether every value lies in [0, 1] (NaN does not), read until the first that does
    not."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for i in range(values.size):
        v = values[i]
        if not (v >= zero and v <= one):
            return False
    return True


def fit_skin_model(frame: np.ndarray, landmarks: Landmarks | FaceGeometry, *,
                   exclude: np.ndarray | None = None, min_chroma_std: float = 2.5,
                   min_luma_std: float = 12.0, ycc: np.ndarray | None = None,
                   step: int = 1, box: tuple[slice, slice] | None = None
                   ) -> SkinModel | None:
    """Fit the actor's skin colour on the cheeks, nose and chin (`central_skin_polygon`);
    see `skin_model_from_samples`. None when too few pixels. `ycc`: the frame's `ycrcb`
    when the caller has it already. `step`: the samples are every `step`-th pixel of every
    `step`-th row (the model is a statistic of the whole cheek: a big face holds many more
    samples than its medians and covariance need, and each costs). `box`: the part of the
    frame that `ycc` covers, which holds the polygon (default: all of it)."""
    g = face_geometry(landmarks)
    shape = frame.shape[:2]
    step = max(int(step), 1)
    box = (slice(None), slice(None)) if box is None else box
    central = _fill_polygon(shape, g.central_skin_polygon())[box][::step, ::step]
    if exclude is not None:
        central &= ~exclude[box][::step, ::step]
    ycc = ycrcb(frame[box]) if ycc is None else ycc
    return skin_model_from_samples(ycc[::step, ::step][central],
                                   min_chroma_std=min_chroma_std, min_luma_std=min_luma_std)


def skin_model_from_samples(samples: np.ndarray, *, min_chroma_std: float = 2.5,
                            min_luma_std: float = 12.0) -> SkinModel | None:
    """A skin colour model from N x 3 YCrCb samples (0..255) of skin.

    Trimmed Gaussian: started from the per-channel median and MAD, then four rounds of
    dropping samples beyond the 97.5 % chi^2 quantile and refitting, so freckles, stubble
    or a hand over part of the cheek do not widen it. Std floors keep a flat or grey face
    from making every pixel an outlier. None when fewer than 50 samples.
    """
    samples = np.asarray(samples, np.float64).reshape(-1, 3)
    if len(samples) < 50:
        return None
    floor = np.array([min_luma_std, min_chroma_std, min_chroma_std]) ** 2 * 0.25
    # start from the median and MAD (robust to a third of the samples being a hand or a
    # microphone), then refine with the full covariance of the inliers
    mean, std = robust_stats(samples, min_std=0.5 * min_chroma_std)
    cov = np.diag(std ** 2) + np.diag(floor)
    kept = len(samples)
    samples = np.ascontiguousarray(samples)
    for _ in range(4):
        count, inlier_mean, inlier_cov = _inliers(samples, mean, np.linalg.inv(cov), 9.35)
        if count < 30:  # 9.35: chi^2, 3 dof, 97.5 %
            break
        kept, mean = count, inlier_mean
        # x 1.1: the variance a 97.5 % truncation removes from a 3-D Gaussian
        cov = 1.1 * inlier_cov + np.diag(floor)
    chroma_cov = cov[1:, 1:] + np.eye(2) * min_chroma_std ** 2
    std_y = float(max(np.sqrt(cov[0, 0]), min_luma_std))
    return SkinModel(mean=mean, std_y=std_y, chroma_cov_inv=np.linalg.inv(chroma_cov),
                     pixels=int(kept))


@numba.njit(cache=True, nogil=True)
def _inliers(samples: np.ndarray, mean: np.ndarray, inv: np.ndarray,
             limit: float) -> tuple[int, np.ndarray, np.ndarray]:  # pragma: no cover
    """The N x 3 samples within squared Mahalanobis distance `limit` of `mean` (under the
    inverse covariance `inv`): their count, mean and covariance (N - 1 normalised), in two
    passes over the samples (the covariance about the inliers' mean)."""
    n = samples.shape[0]
    keep = np.zeros(n, np.bool_)
    total = np.zeros(3)
    count = 0
    for i in range(n):
        c0, c1, c2 = (samples[i, 0] - mean[0], samples[i, 1] - mean[1],
                      samples[i, 2] - mean[2])
        d2 = (c0 * (c0 * inv[0, 0] + c1 * inv[1, 0] + c2 * inv[2, 0])
              + c1 * (c0 * inv[0, 1] + c1 * inv[1, 1] + c2 * inv[2, 1])
              + c2 * (c0 * inv[0, 2] + c1 * inv[1, 2] + c2 * inv[2, 2]))
        if d2 < limit:
            keep[i] = True
            count += 1
            for k in range(3):
                total[k] += samples[i, k]
    inlier_mean = total / max(count, 1)
    cov = np.zeros((3, 3))
    for i in range(n):
        if keep[i]:
            for a in range(3):
                da = samples[i, a] - inlier_mean[a]
                for b in range(a, 3):
                    cov[a, b] += da * (samples[i, b] - inlier_mean[b])
    for a in range(3):
        for b in range(a, 3):
            cov[a, b] /= max(count - 1, 1)
            cov[b, a] = cov[a, b]
    return count, inlier_mean, cov


def non_skin_score(frame: np.ndarray, model: SkinModel, *, dark_sigmas: float = 5.0,
                   dark_fraction: float = 0.45, ycc: np.ndarray | None = None) -> np.ndarray:
    """Float H x W: how far each pixel's colour is from the skin model, in sigmas.

    The score is the chroma Mahalanobis distance (Cr, Cb): blue, green or grey objects
    against skin. Pixels much darker than skin (below both mean - `dark_sigmas` std and
    `dark_fraction` of the mean luma: dark objects, hair) score infinity. Brighter pixels
    whose chroma only moves from the skin's towards grey (specular highlights on the
    forehead or nose) score 0. `ycc`: the frame's `ycrcb` when the caller has it already.
    """
    ycc = np.ascontiguousarray(ycrcb(frame) if ycc is None else ycc, np.float32)
    inv = model.chroma_cov_inv.astype(np.float32)
    # A highlight keeps the hue: its chroma lies between the skin's and grey.
    skin_c = model.mean[1:] - 128.0
    norm = max(float(np.linalg.norm(skin_c)), 1e-6)
    direction = (skin_c / norm).astype(np.float32)
    y_mean = float(model.mean[0])
    score = np.empty(ycc.shape[:2], np.float32)
    _score_kernel(ycc, model.mean[1:].astype(np.float32), inv[0, 0], np.float32(2.0 * inv[0, 1]),
                  inv[1, 1], direction, y_mean + model.std_y, np.float32(norm + 4.0),
                  np.float32(4.0 + 0.3 * norm), y_mean - dark_sigmas * model.std_y,
                  dark_fraction * y_mean, score)
    return score


@numba.njit(cache=True, nogil=True)
def _score_kernel(ycc: np.ndarray, mean_c: np.ndarray, inv00: np.float32, inv01x2: np.float32,
                  inv11: np.float32, direction: np.ndarray, bright: float,
                  along_max: np.float32, across_max: np.float32, dark: float,
                  darker: float, score: np.ndarray) -> None:  # pragma: no cover - compiled
    """`non_skin_score` pixel by pixel, float32 as numpy would (the luma thresholds, in
    float64 there too): the chroma Mahalanobis distance, 0 on a highlight (brighter than
    `bright`, chroma between the skin's and grey), infinity below both `dark` and
    `darker`."""
    grey, low = np.float32(128.0), np.float32(-2.0)
    for i in range(ycc.shape[0]):
        for j in range(ycc.shape[1]):
            y, cr, cb = ycc[i, j, 0], ycc[i, j, 1], ycc[i, j, 2]
            if y < dark and y < darker:
                score[i, j] = np.inf
                continue
            c0, c1 = cr - grey, cb - grey
            along = c0 * direction[0] + c1 * direction[1]
            across = abs(c0 * -direction[1] + c1 * direction[0])
            if y > bright and along > low and along < along_max and across < across_max:
                score[i, j] = np.float32(0.0)
                continue
            d0, d1 = cr - mean_c[0], cb - mean_c[1]
            s = inv00 * (d0 * d0)
            s += inv01x2 * d0 * d1
            s += inv11 * (d1 * d1)
            score[i, j] = np.sqrt(s)


def non_skin_pixels(frame: np.ndarray, model: SkinModel, *, chroma_sigmas: float = 6.0,
                    **options: float) -> np.ndarray:
    """Bool H x W: `non_skin_score` above `chroma_sigmas`."""
    return non_skin_score(frame, model, **options) > chroma_sigmas


def detect_occluders(frame: np.ndarray, actor_landmarks: Landmarks | FaceGeometry, *,
                     search_region: np.ndarray | None = None,
                     expected: np.ndarray | None = None,
                     regions: Mapping[str, np.ndarray] | None = None,
                     seed_sigmas: float = 12.0, grow_sigmas: float = 6.0,
                     extend_region: np.ndarray | None = None, extend: float = 0.15,
                     min_edge_contrast: float = 20.0, min_sharp_fraction: float = 0.5,
                     min_area: float = 0.004, open_radius: float = 0.025,
                     close_radius: float = 0.05, grow: float = 0.02, skin_step: int = 1
                     ) -> np.ndarray:
    """Bool H x W: things in front of the face (hands, hair, microphones) to leave untouched.

    Blobs of pixels more than `grow_sigmas` off the actor's skin model (`fit_skin_model`,
    `non_skin_score`) that hold pixels more than `seed_sigmas` off (or much darker than
    skin) and have a sharp outline (`_keep_sharp`); both tests are needed because coloured
    light and shadows change skin colour too, but less and smoothly. Only pixels in
    `search_region` (default: the actor's face region, shrunk by 0.04 IOD so the background
    at its rim does not count) are searched, and never those expected to be non-skin
    (`expected`, default `expected_non_skin` of the actor's landmarks and `regions`). The
    result is cleaned with an opening (`open_radius` IOD) and a closing (`close_radius`
    IOD), blobs smaller than `min_area` of the search region are dropped; detected
    occluders then grow up to `extend` IOD further into `extend_region` (e.g. the blend
    mask beyond the actor's outline) through connected candidate pixels, and are grown by
    `grow` IOD to cover their anti-aliased rim. The thresholds were tuned on the clips and
    photos in the shared test media. `skin_step`: `fit_skin_model`'s `step`. A uint8 frame
    is read as bytes / 255 where its colours are needed (only around the face).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = _check_image("frame", frame)
    elif frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame must be H x W x 3, got {frame.shape}")
    shape = frame.shape[:2]
    g = face_geometry(actor_landmarks)
    iod = g.iod
    if search_region is None:
        disk = _disk(0.04 * iod)  # an erosion reads its radius beyond the region's box
        search_region = _on_support(face_region(shape, g), disk.shape[0] // 2 + 1,
                                    lambda m: cv2.erode(m, disk))
    search_region = np.asarray(search_region, bool)
    if expected is None:
        expected = expected_non_skin(shape, g, regions=regions)
    expected = np.asarray(expected, bool)
    if extend_region is not None:
        extend_region = np.asarray(extend_region, bool)
    # Every step below reaches a bounded distance from the search and extension regions
    # (openings, closings, the outline test's blur, the final growth): working on their
    # bounding box grown by that reach gives the same result as the whole image, for less.
    sigma = _sharp_sigma(iod)
    reach = int(np.ceil(2 * round(open_radius * iod) + 2 * round(close_radius * iod)
                        + 6.0 * sigma + grow * iod)) + 8
    cover = search_region if extend_region is None else search_region | extend_region
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(cover).view(np.uint8))
    cx, cy, cw, ch = cv2.boundingRect(g.central_skin_polygon())  # the skin model's samples
    if w == 0 or h == 0:
        x, y, w, h = cx, cy, cw, ch
    x0, y0 = max(min(x, cx) - reach, 0), max(min(y, cy) - reach, 0)
    x1 = min(max(x + w, cx + cw) + reach, shape[1])
    y1 = min(max(y + h, cy + ch) + reach, shape[0])
    out = np.zeros(shape, bool)
    if x1 <= x0 or y1 <= y0:
        return out
    box = (slice(y0, y1), slice(x0, x1))
    out[box] = _detect_in_box(
        frame[box], g.shifted(np.array([-x0, -y0], np.float64)), search_region[box],
        expected[box], None if extend_region is None else extend_region[box],
        min_area * max(int(search_region.sum()), 1), seed_sigmas, grow_sigmas, extend,
        min_edge_contrast, min_sharp_fraction, open_radius, close_radius, grow, skin_step)
    return out


def _ycrcb_of(frame: np.ndarray) -> np.ndarray:
    """`ycrcb` of a float32 frame, or of a uint8 frame's bytes / 255 (by `BYTE_TO_UNIT`,
    inside [0, 1] by construction, so not read to check)."""
    if frame.dtype == np.uint8:
        return ycrcb(cv2.LUT(frame, BYTE_TO_UNIT), in_unit_range=True)
    return ycrcb(frame)


def _sharp_sigma(iod: float) -> float:
    """The blur (pixels) of `_keep_sharp`'s inside / outside colour averages."""
    return 0.04 * iod + 0.7


def _detect_in_box(frame: np.ndarray, g: FaceGeometry, search_region: np.ndarray,
                   expected: np.ndarray, extend_region: np.ndarray | None, min_pixels: float,
                   seed_sigmas: float, grow_sigmas: float, extend: float,
                   min_edge_contrast: float, min_sharp_fraction: float, open_radius: float,
                   close_radius: float, grow: float, skin_step: int = 1) -> np.ndarray:
    """`detect_occluders` on a box that holds everything its result depends on."""
    shape = frame.shape[:2]
    iod = g.iod
    region_px = max(int(search_region.sum()), 1)

    opening, closing = _disk(open_radius * iod), _disk(close_radius * iod)
    # the closing reaches its radius beyond the opened pixels, and its erosion looks as far
    # again: twice both radii around the candidates hold everything the steps read
    margin = opening.shape[0] + closing.shape[0]

    def clean(candidates: np.ndarray) -> np.ndarray:
        def steps(occ: np.ndarray) -> np.ndarray:
            occ = cv2.morphologyEx(occ, cv2.MORPH_OPEN, opening)
            occ = cv2.morphologyEx(occ, cv2.MORPH_CLOSE, closing)
            return _drop_small(occ.astype(bool), min_pixels).view(np.uint8)

        return _on_support(candidates & ~expected & search_region, margin, steps)

    colour_candidates = np.zeros(shape, bool)
    occ = np.zeros(shape, bool)
    # The seeds and blobs lie in the search region (the closing adds at most its radius),
    # the skin model reads the central polygon, and the outline test weighs colours by
    # masks that are 0 elsewhere: the colours and scores are computed on their box only
    # (zeros beyond it are never read with a weight); the growth past the outline, the one
    # step that reads further, computes its own around the occluders.
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(search_region).view(np.uint8))
    cx, cy, cw, ch = cv2.boundingRect(g.central_skin_polygon())
    if w == 0 or h == 0:
        x, y, w, h = cx, cy, cw, ch
    reach = closing.shape[0] + 1
    cbox = (slice(max(min(y, cy) - reach, 0), min(max(y + h, cy + ch) + reach, shape[0])),
            slice(max(min(x, cx) - reach, 0), min(max(x + w, cx + cw) + reach, shape[1])))
    ycc = _ycrcb_of(frame[cbox])
    colours = (ycc, (cbox[0].start, cbox[1].start))
    model = fit_skin_model(frame, g, exclude=expected, ycc=ycc, step=skin_step, box=cbox)
    if model is not None:
        score = non_skin_score(frame[cbox], model, ycc=ycc)

        def above(limit: float) -> np.ndarray:
            out = np.zeros(shape, bool)
            out[cbox] = score > limit
            return out

        colour_candidates = above(grow_sigmas)
        # hysteresis: a blob needs a seed that is far off skin (a coloured light moves skin
        # colour by up to ~10 sigmas; paint, plastic and fabric usually go much further),
        # and the seed must be a sharp blob of its own
        very_off = above(2.0 * seed_sigmas)
        seeds = _keep_sharp(clean(above(seed_sigmas)), colours, very_off, search_region,
                            expected, iod, min_edge_contrast, min_sharp_fraction, region_px)
        if seeds.any():  # most frames have none: then there are no blobs to grow either
            blobs = clean(colour_candidates)
            count, labels = cv2.connectedComponents(blobs.astype(np.uint8), connectivity=8)
            seeded = np.bincount(labels[seeds], minlength=count) > 0
            seeded[0] = False
            occ = _keep_sharp(seeded[labels], colours, very_off, search_region, expected, iod,
                              min_edge_contrast, min_sharp_fraction, region_px)
    if extend_region is not None and occ.any() and model is not None:
        # follow an occluder a little beyond the face outline (a hand entering from the side):
        # geodesic growth through connected candidate pixels, never into expected features.
        # It reaches `steps` pixels from the occluders, and the opening of the candidates
        # reads its disk's diameter further: only that box is read.
        steps = int(round(extend * iod))
        disk = _disk(open_radius * iod)
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(occ).view(np.uint8))
        m = steps + disk.shape[0] + 2
        gbox = (slice(max(y - m, 0), min(y + h + m, shape[0])),
                slice(max(x - m, 0), min(x + w + m, shape[1])))
        part = frame[gbox]
        colour_candidates = non_skin_score(part, model, ycc=_ycrcb_of(part)) > grow_sigmas
        allowed = cv2.morphologyEx(colour_candidates.astype(np.uint8), cv2.MORPH_OPEN,
                                   disk).astype(bool)
        allowed = (allowed & np.asarray(extend_region, bool)[gbox]
                   & ~expected[gbox]).astype(np.uint8)
        grown = occ[gbox].astype(np.uint8)
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        for _ in range(steps):
            step = cv2.dilate(grown, cross) & (allowed | grown)
            if np.array_equal(step, grown):
                break
            grown = step
        occ = occ.copy()
        occ[gbox] = grown.astype(bool)
    return _dilate(occ, grow * iod + 1.0)




def _on_support(mask: np.ndarray, margin: int, step) -> np.ndarray:
    """Bool: `step` (uint8 H x W -> uint8 or bool H x W, 0 wherever its input is 0 beyond
    `margin` pixels) run on the mask's bounding box grown by `margin` (clipped to the
    image), zeros elsewhere: the same as on the whole image when nothing the step reads lies
    further out, for the box's cost."""
    mask8 = np.ascontiguousarray(mask, bool).view(np.uint8)
    out = np.zeros(mask8.shape, bool)
    x, y, w, h = cv2.boundingRect(mask8)
    if w == 0 or h == 0:
        return out
    box = (slice(max(y - margin, 0), y + h + margin), slice(max(x - margin, 0), x + w + margin))
    out[box] = step(np.ascontiguousarray(mask8[box])) > 0
    return out


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    if not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                               connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def _keep_sharp(occ: np.ndarray, colours: tuple[np.ndarray, tuple[int, int]],
                very_off: np.ndarray,
                search_region: np.ndarray, expected: np.ndarray, iod: float,
                min_contrast: float, min_fraction: float, region_px: int) -> np.ndarray:
    """Keep the blobs whose outline inside the face is a sharp colour edge.

    A coloured light (a blue rim light on one cheek) or a deep shadow changes skin colour as
    much as an object does, but smoothly; an object in front of the face has an edge. At
    each outline pixel the mean colour just inside the blob is compared with the mean just
    outside, expected non-skin left out (normalised Gaussian averages, sigma 0.04 IOD, so
    the test scales with the face); a blob stays when at least `min_fraction` of its
    outline (away from the face border) differs by more than `min_contrast` YCrCb units
    (luma at half weight). Blobs with too
    little outline to judge (wedged between the face border and the brows, say) are kept if
    they cover half the face or are mostly `very_off` (far off skin or dark, like hair).
    `region_px`: the search region's pixel count; `colours`: the YCrCb image (H' x W' x 3)
    and the (row, column) of its top-left pixel, covering every pixel of the search region
    and the blobs (zeros are read beyond it).
    """
    occ8 = occ.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(occ8)
    if w == 0 or h == 0:
        return occ
    sigma = _sharp_sigma(iod)
    pad = int(np.ceil(4.0 * sigma + 2.0))
    y0, x0 = max(y - pad, 0), max(x - pad, 0)
    box = (slice(y0, min(y + h + pad, occ.shape[0])), slice(x0, min(x + w + pad, occ.shape[1])))
    occ_b, region_b = occ[box], search_region[box]
    count, labels = cv2.connectedComponents(occ8[box], connectivity=8)
    weights = np.array([0.5, 1.0, 1.0], np.float32)
    # both sides' weights and weighted colours in one pass, then their blurs
    inside_f, outside, inner_c, outer_c = _sides(occ_b, region_b, expected[box],
                                                 _placed(*colours, box))
    inner_w = cv2.GaussianBlur(inside_f, (0, 0), sigma)
    outer_w = cv2.GaussianBlur(outside, (0, 0), sigma)
    inner_sum = cv2.GaussianBlur(inner_c, (0, 0), sigma)
    outer_sum = cv2.GaussianBlur(outer_c, (0, 0), sigma)
    disk = _disk(2.0 * sigma)
    r = disk.shape[0] // 2 + 1  # the erosion's reach: only the box grown by it is read
    grown = (slice(max(box[0].start - r, 0), box[0].stop + r),
             slice(max(box[1].start - r, 0), box[1].stop + r))
    interior = cv2.erode(search_region[grown].astype(np.uint8), disk)[
        box[0].start - grown[0].start:box[0].stop - grown[0].start,
        box[1].start - grown[1].start:box[1].stop - grown[1].start].astype(bool)
    outline = occ_b & ~cv2.erode(occ8[box], _disk(1)).astype(bool) & interior
    outline &= outer_w > 0.2  # skip outline along eyes, brows, mouth: nothing to compare
    ring_labels = labels[outline]
    ring_px = np.bincount(ring_labels, minlength=count)
    # the colours' contrast only where it is read: on the outline
    inner = inner_sum[outline] / np.maximum(inner_w[outline], 1e-6)[:, None]
    outer = outer_sum[outline] / np.maximum(outer_w[outline], 1e-6)[:, None]
    contrast = np.sqrt((((inner - outer) * weights) ** 2).sum(-1))
    sharp_px = np.bincount(ring_labels, weights=contrast > min_contrast, minlength=count)
    area = np.bincount(labels.ravel(), minlength=count)
    off_px = np.bincount(labels.ravel(), weights=very_off[box].ravel(), minlength=count)
    judged = ring_px >= 8
    keep = np.where(judged, sharp_px >= min_fraction * np.maximum(ring_px, 1),
                    (area > 0.5 * region_px) | (off_px >= 0.5 * area))
    keep[0] = False
    out = np.zeros_like(occ)
    out[box] = keep[labels]
    return out


def _placed(values: np.ndarray, origin: tuple[int, int], box: tuple[slice, slice]
            ) -> np.ndarray:
    """The part of `values` (whose top-left pixel is at (row, column) `origin`) under `box`
    (slices with explicit starts and stops), zeros where it does not reach; a view when it
    covers the box."""
    oy, ox = origin
    y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    h, w = values.shape[:2]
    if oy <= y0 and ox <= x0 and y1 <= oy + h and x1 <= ox + w:
        return values[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    out = np.zeros((y1 - y0, x1 - x0, *values.shape[2:]), values.dtype)
    ay0, ax0, ay1, ax1 = max(y0, oy), max(x0, ox), min(y1, oy + h), min(x1, ox + w)
    if ay1 > ay0 and ax1 > ax0:
        out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = values[ay0 - oy:ay1 - oy, ax0 - ox:ax1 - ox]
    return out


@numba.njit(cache=True, nogil=True)
def _sides(occ: np.ndarray, region: np.ndarray, expected: np.ndarray, ycc: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """`_keep_sharp`'s two sides of a blob's outline (H x W bools, ycc H x W x 3 float32):
    the blob as float32, the search region outside it and not expected non-skin as
    float32, and ycc times each (numpy's float32 products with a bool or 0/1 weight)."""
    h, w = occ.shape
    inside = np.empty((h, w), np.float32)
    outside = np.empty((h, w), np.float32)
    inner = np.empty((h, w, 3), np.float32)
    outer = np.empty((h, w, 3), np.float32)
    for y in range(h):
        for x in range(w):
            a = np.float32(1.0) if occ[y, x] else np.float32(0.0)
            b = (np.float32(1.0) if (not occ[y, x]) and region[y, x] and not expected[y, x]
                 else np.float32(0.0))
            inside[y, x], outside[y, x] = a, b
            for c in range(3):
                inner[y, x, c] = ycc[y, x, c] * a
                outer[y, x, c] = ycc[y, x, c] * b
    return inside, outside, inner, outer


def cut_occluders(mask: np.ndarray, occluders: np.ndarray, *, feather_px: float = 1.5
                  ) -> np.ndarray:
    """The mask with occluders removed: exactly 0 on every occluder pixel, with a short
    Gaussian ramp (`feather_px`) outside them so the cut has no hard step."""
    if not occluders.any():
        return mask
    keep_out = _feather(occluders, -_EDGE_Z * feather_px - 0.5, feather_px)
    keep_out[occluders] = 1.0
    return _clean_alpha(mask * (1.0 - keep_out))
