"""The frame's sharpness on the source's side of the tone ratio.

The tone ratio (`morph3d.swap.tone.tone_ratio`) multiplies the actor's pixels by source
albedo / actor albedo. The actor's side carries the frame's own blur (its fine scale is the
frame's pixels), the source's the photo's: a sharp photo on a soft clip puts crisp brows,
lids and lip lines on a blurred head. So the source's albedo is first blurred by what the
frame has more of (Gaussian blurs add in quadrature): the identity comes from the photo,
the blur from the frame. The gain stops at the kept eyeballs and mouth interior; that cut
is blurred by the frame's own blur too (`soft_cut`), or the brightened lids end in a line
sharper than anything in the frame.

The blur to add is matched on the same raster (the transfer's face crop), each picture
measured on itself, by re-blurring (`blur_to_match`): a blurred edge's Laplacian energy
falls with the probe blur p as (s^2 + p^2)^-3/2, so the ratio of a picture's energies at two
probes a < b says how blurred it is whatever the edges' contrast or number, and the source
is blurred until its ratio is the frame's. Second derivatives leave out smooth shading (a
cheek's gradient does not fall with blur and would read as blur and over-blur the source,
which costs the identity). The match runs along four directions, since a head moving during
the exposure is smeared along its motion only (`gaussian_kernel` then applies an
anisotropic blur). The frame's own blur (`edge_blur`, the step-edge model) softens the cut
around the kept eyes and mouth. Units: pixels of the raster the images are on.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from morph3d.composite.colour import LUMA
from morph3d.swap.tone import _weighted

# The two probe blurs (pixels). `a` must damp the frame's grain and compression noise, whose
# Laplacian energy falls as a^-6 while an edge's falls as (s^2 + a^2)^-3/2: with a = 1 the
# noise of an H.264 frame outweighs the edges of a face blurred by 3 px or more, and a
# motion-blurred frame reads as sharp. `b` is about the largest blur a face crop shows.
PROBE_A = 2.0
PROBE_B = 5.0
MAX_BLUR = 8.0
MIN_KERNEL = 0.5


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img @ LUMA
    return np.ascontiguousarray(img)


def edge_blur(image: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The Gaussian blur (sigma, pixels) of `image` (H x W or H x W x 3) estimated from its
    own edges inside `weight` (H x W in [0, 1]; None: everywhere but a border). 0 for a
    picture sharper than the probe resolves, `MAX_BLUR` for one with no edges left; nan
    where the weight is empty or the picture flat."""
    grey = _grey(image)
    if weight is None:
        weight = np.zeros(grey.shape, np.float32)
        m = int(np.ceil(3 * PROBE_B)) + 1
        weight[m:-m, m:-m] = 1.0
    weight = np.asarray(weight, np.float32)
    if weight.sum() < 1.0:
        return float("nan")
    return _blur_from_energies(_energies(grey, PROBE_A, weight)[4],
                               _energies(grey, PROBE_B, weight)[4])


def _blur_from_energies(ea: float, eb: float) -> float:
    """`edge_blur` from the picture's Laplacian energies at the two probes."""
    if ea <= 1e-12:
        return float("nan")
    r2 = (ea / max(eb, 1e-30)) ** (2.0 / 3.0)  # (s^2 + b^2) / (s^2 + a^2)
    if r2 <= 1.0 + 1e-6:
        return MAX_BLUR
    s2 = (PROBE_B ** 2 - r2 * PROBE_A ** 2) / (r2 - 1.0)
    return float(np.clip(np.sqrt(max(s2, 0.0)), 0.0, MAX_BLUR))


def edge_weight(trust: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """Where a blur may be measured: `trust` (H x W in [0, 1]) above one half, shrunk by
    `margin` + the largest probe's reach in pixels, so the edge of the trusted region
    (hair, a microphone, the crop's background beside it) does not count as the face's."""
    reach = int(np.ceil(margin + 2 * PROBE_B))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    return cv2.erode((np.asarray(trust) > 0.5).astype(np.uint8), kernel).astype(np.float32)


def _energies(grey: np.ndarray, sigma: float, weight: np.ndarray) -> np.ndarray:
    """(5,) energies of `grey` blurred by `sigma` (px) inside `weight`: the sums of the
    squared second derivative along 0, 45, 90 and 135 degrees, then the squared Laplacian
    (`edge_blur`'s), all from one blur."""
    blurred = cv2.GaussianBlur(grey, (0, 0), sigma)
    return _derivative_energies(blurred, np.ascontiguousarray(weight, np.float32))


@numba.njit(cache=True, nogil=True)
def _derivative_energies(b: np.ndarray, weight: np.ndarray) -> np.ndarray:  # pragma: no cover
    """The five weighted energies of `_energies` from the blurred picture `b` (H x W), its
    second derivatives as OpenCV's Sobel gives them (dxx, dyy: [1, -2, 1]; dxy: the 3 x 3
    cross difference over 4; borders reflected without the edge pixel), only where the
    weight is not 0: one pass instead of three derivative images and five products.
    Sums in float64."""
    h, w = b.shape
    e = np.zeros(5)
    quarter, half, two = np.float32(0.25), np.float32(0.5), np.float32(2.0)
    for y in range(h):
        ym = y - 1 if y > 0 else min(1, h - 1)
        yp = y + 1 if y < h - 1 else max(h - 2, 0)
        for x in range(w):
            k = weight[y, x]
            if k == 0:
                continue
            xm = x - 1 if x > 0 else min(1, w - 1)
            xp = x + 1 if x < w - 1 else max(w - 2, 0)
            c = b[y, x]
            dxx = b[y, xm] + b[y, xp] - two * c
            dyy = b[ym, x] + b[yp, x] - two * c
            dxy = ((b[yp, xp] - b[yp, xm]) - (b[ym, xp] - b[ym, xm])) * quarter
            mean = half * (dxx + dyy)
            a, d = mean + dxy, mean - dxy
            lap = dxx + dyy
            e[0] += np.float64(dxx * dxx * k)
            e[1] += np.float64(a * a * k)
            e[2] += np.float64(dyy * dyy * k)
            e[3] += np.float64(d * d * k)
            e[4] += np.float64(lap * lap * k)
    return e


def blur_to_match(source: np.ndarray, frame: np.ndarray, weight: np.ndarray,
                  scales: int = 8,
                  frame_energies: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """2 x 2 covariance (pixels^2) of the Gaussian blur that gives `source` the frame's
    sharpness inside `weight` (`edge_weight`), direction by direction: a head that moves
    during the exposure is blurred along its motion and stays sharp across it, and an
    isotropic blur matched to both would leave a brow or a lid line crisp on a face
    smeared across it.

    Matched directly rather than through `edge_blur`'s step-edge model, which reads lines,
    dots and crowded edges (lids, freckles, a brow's hairs) as blurrier or sharper than they
    are by up to a pixel. Gaussian blurs add in quadrature, so the source blurred by s has
    at probe p the energy the unblurred source has at sqrt(p^2 + s^2): one energy curve of
    the source over the probe scales gives its probe ratio E(a) / E(b) at every candidate s,
    and the blur along each of four directions (the second derivative along it) is where
    that ratio falls to the frame's. A direction's second derivative also sees edges
    oblique to it, so a blur along one direction reads about three quarters as long along
    it and about a third as long across it. Zero where the source is no sharper or either
    picture has no edges; at most `MAX_BLUR` along any direction. `frame_energies`: the
    frame's `_energies` at the two probes inside `weight` when the caller has them."""
    weight = np.asarray(weight, np.float32)
    none = np.zeros((2, 2))
    if weight.sum() < 1.0:
        return none
    box = _probe_box(weight)
    grey, weight = _grey(source)[box], weight[box]
    if frame_energies is None:
        target = _grey(frame)[box]
        fa, fb = _energies(target, PROBE_A, weight), _energies(target, PROBE_B, weight)
    else:
        fa, fb = frame_energies
    fa, fb = fa[:4], fb[:4]
    if min(fa.min(), fb.min()) <= 1e-30:
        return none
    more = _directional_match(grey, fa, fb, weight, scales)
    if more is None:
        return none
    values, vectors = np.linalg.eigh(more)
    return (vectors * np.clip(values, 0.0, MAX_BLUR ** 2)) @ vectors.T


def _probe_box(weight: np.ndarray) -> tuple[slice, slice]:
    """The weight's bounding box grown by the largest probe's reach: all a measure inside
    the weight reads (the blurs beyond it see the same pixels as on the whole picture)."""
    rows, cols = np.flatnonzero(weight.any(1)), np.flatnonzero(weight.any(0))
    m = int(np.ceil(3.0 * np.hypot(PROBE_B, MAX_BLUR)))
    return (slice(max(rows[0] - m, 0), rows[-1] + m + 1),
            slice(max(cols[0] - m, 0), cols[-1] + m + 1))


def _directional_match(grey: np.ndarray, fa: np.ndarray, fb: np.ndarray, weight: np.ndarray,
                       scales: int) -> np.ndarray | None:
    """The covariance from the blur along each direction that brings `grey`'s probe ratios
    to the frame's (`fa`, `fb`: its energies at the probes); None where `grey` has no
    edges."""
    probes = np.geomspace(PROBE_A, np.hypot(PROBE_B, MAX_BLUR), scales)
    energy = np.stack([_energies(grey, q, weight)[:4] for q in probes], 1)
    if energy.min() <= 1e-30:
        return None
    blur = np.linspace(0.0, MAX_BLUR, 161)
    log_q, at_a, at_b = (np.log(probes), np.log(np.hypot(PROBE_A, blur)),
                         np.log(np.hypot(PROBE_B, blur)))
    along = np.zeros(4)
    for k in range(4):
        log_e = np.log(energy[k])
        ratio = np.interp(at_a, log_q, log_e) - np.interp(at_b, log_q, log_e)
        want = np.log(fa[k] / fb[k])
        below = np.flatnonzero(ratio <= want)
        if not len(below):
            along[k] = MAX_BLUR
        elif below[0] > 0:
            i = int(below[0])
            t = (ratio[i - 1] - want) / max(ratio[i - 1] - ratio[i], 1e-12)
            along[k] = blur[i - 1] + t * (blur[i] - blur[i - 1])
    # u' C u = the blur along u squared, for u at 0, 90 and the two diagonals
    var = along ** 2
    return np.array([[var[0], 0.5 * (var[1] - var[3])], [0.5 * (var[1] - var[3]), var[2]]])


def gaussian_kernel(cov: np.ndarray) -> np.ndarray:
    """The normalised 2D Gaussian kernel of covariance `cov` (2 x 2, pixels^2; x, y), no
    narrower than `MIN_KERNEL` px along any direction: a thinner one, sampled on the pixel
    grid, would lose most of its length as soon as it tilts off an axis."""
    values, vectors = np.linalg.eigh(np.asarray(cov, np.float64))
    values = np.maximum(values, MIN_KERNEL ** 2)
    reach = int(np.ceil(3.0 * np.sqrt(values.max())))
    ys, xs = np.mgrid[-reach:reach + 1, -reach:reach + 1].astype(np.float64)
    points = np.stack([xs, ys], -1)
    inverse = (vectors / values) @ vectors.T
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", points, inverse, points))
    return (kernel / kernel.sum()).astype(np.float32)


def match_blur(source: np.ndarray, frame: np.ndarray, trust: np.ndarray,
               min_blur: float = 0.3, measure: np.ndarray | None = None
               ) -> tuple[np.ndarray, float, float]:
    """`source` (H x W x 3, the source albedo on the crop) blurred to the frame's sharpness
    (`frame`: the frame's pixels on the same raster; `blur_to_match`), both measured inside
    `measure` (H x W; None: `trust`, the skin both pictures saw). The blur is normalised by
    `trust` so what is not skin does not bleed into the skin. Returns the blurred source,
    the blur applied along its widest direction and the frame's own (`edge_blur`; sigma,
    pixels; a blur under `min_blur` along every direction is not applied; the frame's 0
    where unknown)."""
    weight = edge_weight(trust if measure is None else measure)
    if weight.sum() < 1.0:
        return source, 0.0, 0.0
    # the frame's energies once, for its own blur and for the match
    box = _probe_box(weight)
    target = _grey(frame)[box]
    energies = (_energies(target, PROBE_A, weight[box]), _energies(target, PROBE_B, weight[box]))
    own = _blur_from_energies(energies[0][4], energies[1][4])
    known = float(own) if np.isfinite(own) else 0.0
    cov = blur_to_match(source, frame, weight, frame_energies=energies)
    sigma = float(np.sqrt(max(np.linalg.eigvalsh(cov).max(), 0.0)))
    if sigma < min_blur:
        return source, 0.0, known
    w = np.asarray(trust, np.float32)
    kernel = gaussian_kernel(cov)
    # Only the trust's bounding box grown by the kernel's reach is blurred: beyond it the
    # blurred weight is 0 and the source stays as it is; the reflected border of the grown
    # box reads the zeros the whole picture has there.
    out = np.array(source, np.float32)
    rows, cols = np.flatnonzero(w.any(1)), np.flatnonzero(w.any(0))
    if not len(rows):
        return out, sigma, known
    r = kernel.shape[0] // 2
    box = (slice(max(rows[0] - r, 0), rows[-1] + r + 1),
           slice(max(cols[0] - r, 0), cols[-1] + r + 1))
    part = np.ascontiguousarray(out[box])
    both = cv2.filter2D(_weighted(part, np.ascontiguousarray(w[box])), -1, kernel,
                        borderType=cv2.BORDER_REFLECT)
    out[box] = _normalized_mix(both, part)  # no support nearby: as it was
    return out, sigma, known


@numba.njit(cache=True, nogil=True)
def _normalized_mix(both: np.ndarray, part: np.ndarray) -> np.ndarray:  # pragma: no cover
    """H x W x 3: the blurred values over the blurred weight (`both`: H x W x 4, weight
    floored at 1e-4) blended into `part` by that weight over 0.3 (clipped to [0, 1]),
    float32 in numpy's order of operations."""
    h, w = part.shape[:2]
    out = np.empty((h, w, 3), np.float32)
    floor, support = np.float32(1e-4), np.float32(0.3)
    zero, one = np.float32(0.0), np.float32(1.0)
    for y in range(h):
        for x in range(w):
            d = both[y, x, 3]
            den = d if d > floor else floor
            keep = d / support
            keep = zero if keep < zero else (one if keep > one else keep)
            for c in range(3):
                out[y, x, c] = keep * (both[y, x, c] / den) + (one - keep) * part[y, x, c]
    return out


def soft_cut(mask: np.ndarray, blur: float, min_blur: float = 0.3) -> np.ndarray:
    """A region the gain leaves out (H x W in [0, 1]: the eyeballs, the mouth's inside)
    blurred by the frame's own blur (sigma, pixels) so the gain's step at its edge is no
    sharper than the frame: a hard step on a blurred face draws crisp lids around kept
    eyes."""
    mask = np.asarray(mask, np.float32)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur >= min_blur else mask
