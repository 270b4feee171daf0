"""The tone ratio of the identity transfer (`morph3d.swap.transfer`): the source's skin albedo
over the actor's, low-passed with confidence weights (`normalized_blur`), each side with its
own picture's light colour divided out (`skin_lights`, from the skin's offset from a skin
locus), so the source's skin tone appears under the clip's light.

Colours are float32 RGB in [0, 1], sRGB-encoded unless named linear; sigmas in pixels of the
raster they are given.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from morph3d.composite.colour import LUMA, srgb_to_linear


def normalized_blur(values: np.ndarray, weight: np.ndarray, sigma: float,
                    reduce: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Gaussian low-pass: (blur(values * weight) / blur(weight), blur(weight)).

    values H x W x C (or H x W), weight H x W >= 0, sigma in pixels. Where the blurred weight
    is 0 the result is 0. Pixels outside the weight's support get the weighted average of
    their surroundings, so the low-pass does not darken at the support's border.

    `reduce`: from sigma = 2 x `_REDUCE_PER_SIGMA` px on, the blur runs on a raster reduced
    by up to `_MAX_REDUCE` (area-averaged; the averaging's variance taken off the blur) and
    the quotient comes back bilinearly, within about a hundredth of the full-size one: what
    a low-pass keeps, a reduced raster holds, at a fraction of the kernel's cost. Not for a
    quotient that divides fine detail (`with_frame_detail`), which amplifies the error."""
    w = np.asarray(weight, np.float32)
    v = np.asarray(values, np.float32)
    flat = v.ndim == 2
    h, width = w.shape
    v = v.reshape(h, width, -1)
    f = int(min(max(sigma // _REDUCE_PER_SIGMA, 1), _MAX_REDUCE)) if reduce else 1
    while h % f or width % f:  # OpenCV's area reduction of many channels: whole blocks only
        f -= 1
    # Beyond the weight's support grown by the blur's reach both blurs are exactly 0 (and
    # so the result): only that box is blurred, on whole blocks of the reduction, its
    # border (replicated) being zeros as the whole raster's are there.
    box = _support_box(w, int(np.ceil(4.0 * sigma)) + 4 * f, f)
    if box is None:
        return (np.zeros((h, width) if flat else v.shape, np.float32),
                np.zeros((h, width), np.float32))
    out, den = _blurred_into(v, w, sigma, f, box)
    return (out[..., 0] if flat else out), den


def _blurred_quotient(v: np.ndarray, w: np.ndarray, sigma: float, f: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """`normalized_blur` of v (H x W x C) on the raster reduced by `f` (1: full size), over
    the whole raster."""
    return _blurred_into(v, w, sigma, f, (0, w.shape[0], 0, w.shape[1]))


def _blurred_into(v: np.ndarray, w: np.ndarray, sigma: float, f: int,
                  box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`normalized_blur` of v (H x W x C) over `box` (top, bottom, left, right; whole
    blocks of `f`) into whole-raster arrays, zeros beyond the box: (H x W x C, H x W).
    The box is read and written in place by compiled passes (no copies of its slices)."""
    h, width = w.shape
    r0, r1, c0, c1 = box
    bh, bw = r1 - r0, c1 - c0
    # values x weight and the weight in one contiguous array: one blur for all
    vw = _weighted_box(v, w, r0, r1, c0, c1)
    if f > 1:
        small = cv2.resize(vw, (bw // f, bh // f), interpolation=cv2.INTER_AREA)
        s = np.sqrt(max(sigma ** 2 - (f ** 2 - 1) / 12.0, 0.25 * f ** 2)) / f
        both = _quotient_joined(cv2.GaussianBlur(small, (0, 0), s,
                                                 borderType=cv2.BORDER_REPLICATE)
                                .reshape(bh // f, bw // f, -1))
        # the quotient, not numerator and denominator, is interpolated: where the weight's
        # tail falls by orders of magnitude between two reduced pixels their quotient would not
        both = cv2.resize(both, (bw, bh), interpolation=cv2.INTER_LINEAR).reshape(bh, bw, -1)
        if (bh, bw) == (h, width):  # the whole raster: its two parts as they are
            return both[..., :-1], both[..., -1]
        out = np.zeros((h, width, v.shape[2]), np.float32)
        den = np.zeros((h, width), np.float32)
        _split_into(both, r0, c0, out, den)
    else:
        out = np.zeros((h, width, v.shape[2]), np.float32)
        den = np.zeros((h, width), np.float32)
        _quotient_into(cv2.GaussianBlur(vw, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
                       .reshape(bh, bw, -1), r0, c0, out, den)
    return out, den


def _support_box(weight: np.ndarray, reach: int, block: int
                 ) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of where `weight` is not 0, grown by `reach` pixels and
    out to whole `block`s, within the raster; None where the weight is 0 everywhere."""
    h, w = weight.shape
    x, y, bw, bh = cv2.boundingRect(np.not_equal(weight, 0).view(np.uint8))
    if not bw:
        return None
    return (max(y - reach, 0) // block * block, min(-(-(y + bh + reach) // block) * block, h),
            max(x - reach, 0) // block * block, min(-(-(x + bw + reach) // block) * block, w))


@numba.njit(cache=True, nogil=True)
def _weighted(values: np.ndarray, weight: np.ndarray) -> np.ndarray:  # pragma: no cover
    """H x W x (C + 1): values (H x W x C) times weight (H x W), then the weight."""
    h, w, c = values.shape
    out = np.empty((h, w, c + 1), np.float32)
    for y in range(h):
        for x in range(w):
            k = weight[y, x]
            for i in range(c):
                out[y, x, i] = values[y, x, i] * k
            out[y, x, c] = k
    return out


@numba.njit(cache=True, nogil=True)
def _weighted_box(values: np.ndarray, weight: np.ndarray, r0: int, r1: int, c0: int,
                  c1: int) -> np.ndarray:  # pragma: no cover - compiled
    """`_weighted` of rows r0 .. r1 - 1 and columns c0 .. c1 - 1 (any memory layout)."""
    c = values.shape[2]
    out = np.empty((r1 - r0, c1 - c0, c + 1), np.float32)
    for y in range(r0, r1):
        for x in range(c0, c1):
            k = weight[y, x]
            for i in range(c):
                out[y - r0, x - c0, i] = values[y, x, i] * k
            out[y - r0, x - c0, c] = k
    return out


@numba.njit(cache=True, nogil=True)
def _quotient_joined(both: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """H x W x (C + 1) blurred (values x weight, weight) -> (values, weight): values 0
    where the weight is <= 1e-6."""
    h, w, c1 = both.shape
    out = np.empty((h, w, c1), np.float32)
    tiny, zero = np.float32(1e-6), np.float32(0.0)
    for y in range(h):
        for x in range(w):
            d = both[y, x, c1 - 1]
            out[y, x, c1 - 1] = d
            for i in range(c1 - 1):
                out[y, x, i] = both[y, x, i] / max(d, tiny) if d > tiny else zero
    return out


@numba.njit(cache=True, nogil=True)
def _quotient_into(both: np.ndarray, r0: int, c0: int, out: np.ndarray,
                   den: np.ndarray) -> None:  # pragma: no cover - compiled
    """`_quotient_joined` of `both` (H' x W' x (C + 1)) written into out (H x W x C) and
    den (H x W) from row r0, column c0."""
    h, w, c1 = both.shape
    tiny, zero = np.float32(1e-6), np.float32(0.0)
    for y in range(h):
        for x in range(w):
            d = both[y, x, c1 - 1]
            den[y + r0, x + c0] = d
            for i in range(c1 - 1):
                out[y + r0, x + c0, i] = both[y, x, i] / max(d, tiny) if d > tiny else zero


@numba.njit(cache=True, nogil=True)
def _split_into(both: np.ndarray, r0: int, c0: int, out: np.ndarray,
                den: np.ndarray) -> None:  # pragma: no cover - compiled
    """(values, weight) (H' x W' x (C + 1)) written into out (H x W x C) and den (H x W)
    from row r0, column c0."""
    h, w, c1 = both.shape
    for y in range(h):
        for x in range(w):
            for i in range(c1 - 1):
                out[y + r0, x + c0, i] = both[y, x, i]
            den[y + r0, x + c0] = both[y, x, c1 - 1]


_REDUCE_PER_SIGMA = 2.0  # one step of raster reduction per this many pixels of sigma
_MAX_REDUCE = 4


# The skin locus in linear-RGB log-chromaticity (log R/G, log B/G): the segment from the
# ColorChecker's "light skin" to its "dark skin" patch (sRGB 194, 150, 130 and 115, 82, 68:
# measured skin reflectances under D65). Under one light, skins of all tones differ mostly in
# lightness, their chromaticities only along this short segment (melanin: darker skin is
# redder, less blue); a light's tint moves the whole picture's skin off it. What lies beyond
# the segment's ends is light too; a tint along the segment cannot be told from another skin.
_LOCUS_LIGHT = np.float32([0.5703, -0.3121])
_LOCUS_DARK = np.float32([0.7090, -0.3782])
# log of the linear luma ratio of the locus' two patches (0.349 / 0.101): how much darker
# the dark-skin end is than the light-skin end
_LOCUS_LIGHTNESS = 1.24
# a skin whose log chromaticity lies this close to (0, 0) is grey: a black-and-white picture
_GREY = 0.01


def skin_chroma(linear: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float] | None:
    """A picture's skin colour: ((log R/G, log B/G) of its median linear RGB, its linear
    luma) over where `weight` (H x W) is over half its maximum; None when that is fewer
    than 20 pixels."""
    weight = np.asarray(weight, np.float32)
    keep = weight > 0.5 * float(weight.max(initial=0.0))
    if float(weight.max(initial=0.0)) <= 0 or keep.sum() < 20:
        return None
    return _chroma_of(column_median(linear[keep]))


def _chroma_of(median: np.ndarray) -> tuple[np.ndarray, float]:
    """`skin_chroma` from the skin's median linear RGB (3,)."""
    rgb = np.maximum(median, 1e-4)
    return np.log(np.float32([rgb[0] / rgb[1], rgb[2] / rgb[1]])), float(rgb @ LUMA)


def _skin_samples(source: np.ndarray, actor: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """6 x N float32: both sides' linear RGB (H x W x 3 float32 each; source rows first)
    at the N pixels where `weight` (H x W float32) is over half its maximum (`skin_chroma`'s
    pixels), one contiguous row per channel for the medians; N = 0 where it is 0."""
    top = float(weight.max(initial=0.0))
    if top <= 0:
        return np.zeros((6, 0), np.float32)
    return _gathered(source, actor, weight, np.float32(0.5 * top))


@numba.njit(cache=True, nogil=True)
def _gathered(source: np.ndarray, actor: np.ndarray, weight: np.ndarray,
              level: np.float32) -> np.ndarray:  # pragma: no cover - compiled
    """`_skin_samples`' rows: the pixels where weight > level, in raster order."""
    h, w = weight.shape
    n = 0
    for y in range(h):
        for x in range(w):
            if weight[y, x] > level:
                n += 1
    out = np.empty((6, n), np.float32)
    i = 0
    for y in range(h):
        for x in range(w):
            if weight[y, x] > level:
                for c in range(3):
                    out[c, i] = source[y, x, c]
                    out[c + 3, i] = actor[y, x, c]
                i += 1
    return out


@numba.njit(cache=True, nogil=True)
def _sample_ratios(samples: np.ndarray, s_light: np.ndarray,
                   a_light: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """3 x N: (source / its light + 1e-3) / (actor / its light + 1e-3) of `_skin_samples`,
    float32 as `_lit_pair` and numpy give them."""
    n = samples.shape[1]
    out = np.empty((3, n), np.float32)
    eps = np.float32(1e-3)
    for c in range(3):
        for i in range(n):
            out[c, i] = ((samples[c, i] / s_light[c] + eps)
                         / (samples[c + 3, i] / a_light[c] + eps))
    return out


def locus_position(chroma: np.ndarray) -> float:
    """Where a skin chromaticity lies along the skin locus: 0 at the light-skin end, 1 at
    the dark-skin end (the nearest point, clamped to the segment)."""
    span = _LOCUS_DARK - _LOCUS_LIGHT
    return min(max(float((chroma - _LOCUS_LIGHT) @ span / (span @ span)), 0.0), 1.0)


def light_gains(chroma: np.ndarray, t: float) -> np.ndarray:
    """(3,) linear-RGB gains of unit luminance that move the locus point at `t` to
    `chroma`: the light a skin at `t` appears under."""
    off = chroma - (_LOCUS_LIGHT + t * (_LOCUS_DARK - _LOCUS_LIGHT))
    gains = np.exp(np.float32([off[0], 0.0, off[1]]))
    return (gains / float(gains @ LUMA)).astype(np.float32)


def skin_illuminant(linear: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(3,) the colour of the light on a picture's skin, as linear-RGB gains of unit luminance:
    the offset of the skin's median chromaticity (linear H x W x 3, weight H x W: where it is
    skin) from the nearest point of the skin locus. Ones when fewer than 20 skin pixels."""
    measured = skin_chroma(linear, weight)
    if measured is None:
        return np.ones(3, np.float32)
    return light_gains(measured[0], locus_position(measured[0]))


def skin_lights(source: np.ndarray, actor: np.ndarray, weight: np.ndarray,
                samples: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The light on each side's skin ((3,) gains each, as `skin_illuminant`), the source's
    place on the skin locus held in the order of the two skins' lightness.

    Melanin makes skin both darker and redder, less blue: under one light a darker skin
    lies further along the locus towards its dark end, never less far, by about its log
    lightness ratio over `_LOCUS_LIGHTNESS` (the locus' two patches). Each side alone is
    placed at its nearest locus point, and a picture whose skin lies beyond an end (a
    graded clip, a tinted photo) is taken as the end's skin under a tinted light; the
    output's place on the locus is then the source's, its offset the actor's light. A
    source placed less far from the actor along the locus than its lightness says (or on
    the wrong side: a darker source placed paler, whose output would be bluer than both
    pictures) is put where its lightness says instead. Two grey skins have no light colour
    (ones for both). `samples`: `_skin_samples` of the same pictures and weight when the
    caller has them (both medians from one gather)."""
    if samples is None:
        s, a = skin_chroma(source, weight), skin_chroma(actor, weight)
    elif samples.shape[1] < 20:
        s = a = None
    else:
        median = np.median(samples, axis=1)  # per row: `column_median`'s values
        s, a = _chroma_of(median[:3]), _chroma_of(median[3:])
    if s is None or a is None:
        return (np.ones(3, np.float32) if s is None else light_gains(s[0], locus_position(s[0])),
                np.ones(3, np.float32) if a is None else light_gains(a[0], locus_position(a[0])))
    if np.abs(s[0]).max() < _GREY and np.abs(a[0]).max() < _GREY:
        # both grey (a black-and-white clip, its source albedo made grey): no light colour
        # to divide out, and a shift along the locus would tint the clip's grey
        return np.ones(3, np.float32), np.ones(3, np.float32)
    t_s, t_a = locus_position(s[0]), locus_position(a[0])
    darker = np.log(max(a[1], 1e-6) / max(s[1], 1e-6))  # > 0: the source is the darker
    least = darker / _LOCUS_LIGHTNESS  # the least shift along the locus that darkness means
    t_s = t_a + (max(t_s - t_a, least) if darker > 0 else min(t_s - t_a, least))
    return light_gains(s[0], t_s), light_gains(a[0], t_a)


def tone_ratio(source: np.ndarray, actor: np.ndarray, weight: np.ndarray, sigma: float,
               min_support: float = 0.3, max_spread: float = 2.0,
               max_brighten: float | None = None, coarse: float = 6.0, light: float = 1.0,
               linear: bool = False) -> np.ndarray:
    """Low-pass albedo ratio source / actor, per linear-RGB channel (H x W x 3).

    source, actor: H x W x 3 sRGB-encoded albedo (`linear`: linear RGB in [0, 1]) looked up
    on the same raster; weight H x W:
    where both are trusted (skin the photo and the clip saw). Both are low-passed with the
    same weights at `sigma` px; where the weights' support is under `min_support` the ratio
    falls back to the face's overall ratio (the median: the skin tone), which the support
    then blends into smoothly. Pixels whose own ratio is more than `max_spread` times off
    the overall one (darker; `max_brighten` times brighter) are left out, and the local
    ratio stays within those factors of it. `light`: the share (exponent) of the overall
    lightness ratio applied (chroma is applied in full): how light a skin looks in a photo
    is its exposure as much as the skin, and one photo cannot tell the two apart.

    Each side is first divided by its light's colour (`skin_lights`), so the ratio is
    (source skin / source light) / (actor skin / actor light): the source's skin under the
    clip's light, not under the photo's."""
    if linear:
        s_lin, a_lin = np.asarray(source, np.float32), np.asarray(actor, np.float32)
    else:
        s_lin, a_lin = srgb_to_linear(source), srgb_to_linear(actor)
    w = np.ascontiguousarray(weight, np.float32)
    # the skin pixels both medians read, gathered once
    samples = _skin_samples(np.ascontiguousarray(s_lin), np.ascontiguousarray(a_lin), w)
    s_light, a_light = skin_lights(s_lin, a_lin, w, samples)
    # both sides under their lights in one H x W x 6 array, as the low-passes take them
    pair = _lit_pair(np.ascontiguousarray(s_lin), np.ascontiguousarray(a_lin),
                     s_light.astype(np.float32), a_light.astype(np.float32))
    s_lin, a_lin = pair[..., :3], pair[..., 3:]
    total = float(w.sum())
    if total < 1.0:
        return np.ones(source.shape, np.float32)
    max_brighten = max_spread if max_brighten is None else max_brighten
    # the median of the lit pair's ratio over the skin (`_lit_pair`'s divisions, per sample)
    overall = np.median(_sample_ratios(samples, s_light.astype(np.float32),
                                       a_light.astype(np.float32)), axis=1) \
        if samples.shape[1] > 20 \
        else ((s_lin * w[..., None]).sum((0, 1)) + 1e-4) / ((a_lin * w[..., None]).sum((0, 1))
                                                           + 1e-4)
    # what is not skin on either side (a fringe, a shadow the shading does not explain, a
    # highlight) has a ratio far from the face's: it does not vote
    luma_overall = float(overall @ LUMA)
    w = _voting(pair, w, LUMA, np.float32(luma_overall), float(np.log(max_brighten)),
                float(-np.log(max_spread)))
    base = overall
    if light != 1.0:
        overall = overall * np.float32(max(luma_overall, 1e-6) ** (light - 1.0))
    # Fine scale where both pictures saw the skin, a coarse one (`coarse` x sigma) over
    # the gaps (the skin only one of them saw), the face's overall ratio beyond that: a
    # gap does not show as a patch of the overall tone.
    ratio = np.broadcast_to(overall, source.shape).astype(np.float32)
    overall = np.asarray(overall, np.float32)
    for scale in (coarse, 1.0):
        both, den = normalized_blur(pair, w, sigma * scale, reduce=True)  # both sides at once
        # the local pattern around the applied overall, within its limits, blended in by
        # the weights' support
        _blend_local(np.ascontiguousarray(both), np.ascontiguousarray(den),
                     (overall / base).astype(np.float32), overall / np.float32(max_spread),
                     overall * np.float32(max_brighten), np.float32(min_support), ratio)
    return ratio


def column_median(samples: np.ndarray) -> np.ndarray:
    """np.median(samples, 0) of N x C samples, over contiguous columns (the same values,
    faster partitions)."""
    return np.median(np.ascontiguousarray(samples.T), axis=1)


@numba.njit(cache=True, nogil=True)
def _lit_pair(source: np.ndarray, actor: np.ndarray, s_light: np.ndarray,
              a_light: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """H x W x 6: source (H x W x 3) over its light's gains, then actor over its, float32
    as numpy divides."""
    h, w = source.shape[:2]
    out = np.empty((h, w, 6), np.float32)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                out[y, x, c] = source[y, x, c] / s_light[c]
                out[y, x, c + 3] = actor[y, x, c] / a_light[c]
    return out


@numba.njit(cache=True, nogil=True)
def _voting(pair: np.ndarray, weight: np.ndarray, luma: np.ndarray, overall: np.float32,
            high: float, low: float) -> np.ndarray:  # pragma: no cover - compiled
    """The weight (H x W) left where the log of the pixel's lightness ratio ((s + 1e-3) /
    (a + 1e-3) through `luma`; `pair`: H x W x 6 source, actor) over `overall` lies
    between `low` and `high`, 0 elsewhere; float32 as numpy (the limits float64, as numpy
    compares a float32 array with np.log's float64)."""
    h, w = weight.shape
    out = np.empty((h, w), np.float32)
    eps, tiny, zero = np.float32(1e-3), np.float32(1e-6), np.float32(0.0)
    for y in range(h):
        for x in range(w):
            r = zero
            for c in range(3):
                r += (pair[y, x, c] + eps) / (pair[y, x, c + 3] + eps) * luma[c]
            off = np.log(max(r, tiny) / overall)
            out[y, x] = weight[y, x] if (off < high and off > low) else zero
    return out


def flat_lightness(ratio: np.ndarray, weight: np.ndarray, sigma: float,
                   tone: np.ndarray) -> np.ndarray:
    """The tone ratio (H x W x 3, linear) with its lightness above `sigma` px set to the
    face's overall tone's (`tone`, 3: the ratio's median over the skin), its colour and
    everything finer kept.

    Over a face the skin's albedo changes lightness at large scales little; what each
    side's albedo has there is mostly the shading its model did not explain (a side-lit
    photo's dark half, an eye socket's occlusion, the clip's rim light), and the ratio would
    carry it onto the actor's own shading as broad light and dark blotches. Shading is
    colourless once the lights' colours are divided out, so the colour of that pattern
    (cheeks redder than the forehead) is albedo and stays; brows, lids, lips and moles are
    finer than `sigma` and stay. `weight` (H x W): where the ratio is measured (the skin
    both pictures saw), with a floor over the rest of the face so the low-pass is defined
    there too."""
    log_ratio = np.log(np.maximum(np.asarray(ratio, np.float32), 1e-3))
    lightness = np.ascontiguousarray(log_ratio @ LUMA)
    low, _ = normalized_blur(lightness, weight, sigma, reduce=True)
    level = float(np.log(np.maximum(np.asarray(tone, np.float32), 1e-3)) @ LUMA)
    return np.exp(log_ratio + (level - low)[..., None]).astype(np.float32)


# How far (log chroma) the ratio's colour may stray from the face's overall tone's before it is
# tempered, and the slope beyond: two people's skins differ in colour mostly as a whole
RATIO_CHROMA_SPREAD = 0.1
RATIO_CHROMA_SLOPE = 0.3


def tempered_colour(ratio: np.ndarray, tone: np.ndarray, spread: float = RATIO_CHROMA_SPREAD,
                    slope: float = RATIO_CHROMA_SLOPE, where: np.ndarray | None = None
                    ) -> np.ndarray:
    """The tone ratio (H x W x 3, linear) with its colour's distance from the overall tone's
    (`tone`, 3: the ratio's median over the skin), in log chromaticity, kept up to `spread`
    and grown at `slope` beyond it; its lightness kept.

    Where the ratio's colour moves far from the face's overall one locally, it is mostly
    the two albedos' errors: a light's colour one side's shading left in (the rim of a
    coloured light, a window's daylight on one cheek), glasses, a cast shadow, or a feature
    (grey brows over brown ones) whose colour the fill carries into a gap beside it. On a
    face they showed as cyan and green patches on pink skin. A skin's own colour pattern
    (redder cheeks) is a smaller move and stays. `where` (H x W bool): only there (the
    pixels the ratio is applied to); None: everywhere."""
    ratio = np.ascontiguousarray(np.maximum(np.asarray(ratio, np.float32), 1e-3))
    log_tone = np.log(np.maximum(np.asarray(tone, np.float32), 1e-3))
    base = (log_tone - np.float32(log_tone @ LUMA)).astype(np.float32)
    out = ratio.copy()
    where = (np.ones(ratio.shape[:2], bool) if where is None
             else np.ascontiguousarray(where, bool))
    _tempered(ratio, where, base, LUMA, np.float32(spread), np.float32(slope), out)
    return out


@numba.njit(cache=True, nogil=True)
def _tempered(ratio: np.ndarray, where: np.ndarray, base: np.ndarray, luma: np.ndarray,
              spread: np.float32, slope: np.float32,
              out: np.ndarray) -> None:  # pragma: no cover - compiled
    """`tempered_colour` pixel by pixel into `out`, a copy of the ratio: only the pixels
    of `where` whose colour strays beyond `spread` are rewritten."""
    logs = np.empty(3, np.float32)
    off = np.empty(3, np.float32)
    for y in range(ratio.shape[0]):
        for x in range(ratio.shape[1]):
            if not where[y, x]:
                continue
            light = np.float32(0.0)
            for c in range(3):
                logs[c] = np.log(ratio[y, x, c])
                light += logs[c] * luma[c]
            norm = np.float32(0.0)
            for c in range(3):
                off[c] = logs[c] - light - base[c]
                norm += off[c] * off[c]
            norm = np.sqrt(norm)
            if norm > spread:
                scale = (spread + slope * (norm - spread)) / norm
                for c in range(3):
                    out[y, x, c] = np.exp(light + base[c] + off[c] * scale)


@numba.njit(cache=True, nogil=True)
def _blend_local(both: np.ndarray, den: np.ndarray, scale: np.ndarray, low: np.ndarray,
                 high: np.ndarray, min_support: np.float32,
                 ratio: np.ndarray) -> None:  # pragma: no cover - compiled
    """ratio (H x W x 3, in place) <- trust x local + (1 - trust) x ratio, where local is
    the low-passed source over actor (`both`: H x W x 6) times `scale`, clipped to [low,
    high], and trust the support `den` over `min_support`, clipped to [0, 1]."""
    eps, zero, one = np.float32(1e-3), np.float32(0.0), np.float32(1.0)
    for y in range(both.shape[0]):
        for x in range(both.shape[1]):
            t = min(max(den[y, x] / min_support, zero), one)
            for c in range(3):
                local = (both[y, x, c] + eps) / (both[y, x, c + 3] + eps) * scale[c]
                local = min(max(local, low[c]), high[c])
                ratio[y, x, c] = t * local + (one - t) * ratio[y, x, c]
