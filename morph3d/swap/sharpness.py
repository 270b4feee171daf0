"""The frame's sharpness on the source's side of the tone ratio.

The tone ratio (`morph3d.swap.tone.tone_ratio`) multiplies the actor's pixels by source
albedo / actor albedo. The actor's side carries the frame's own blur (its fine scale is the
frame's pixels), the source's the photo's: a sharp photo on a soft clip puts crisp brows,
lids and lip lines on a blurred head. So the source's albedo is first blurred by what the
frame has more of (Gaussian blurs add in quadrature): the identity comes from the photo,
the blur from the frame. The gain stops at the kept eyeballs and mouth interior; that cut
is blurred by the frame's own blur too (`soft_cut`), or the brightened lids end in a line
sharper than anything in the frame.

Both blurs are estimated on the same raster (the transfer's face crop), each picture from
itself, by re-blurring: a step edge blurred by s (Gaussian sigma, pixels) has Laplacian
energy (sum of squared second derivatives across it) proportional to its contrast squared
over s^3, so the ratio of the energies at two known extra blurs a < b,
((s^2 + b^2) / (s^2 + a^2))^(3/2), gives s whatever the edges' contrast or number. Second
derivatives leave out smooth shading (a cheek's gradient does not fall with blur and would
read as blur and over-blur the source, which costs the identity). A blur measured from
detail energy alone would read a photo with strong features (dark brows, made-up lids) as
sharper than a frame with faint ones and blur it too much. Units: pixels of the raster the
images are on.
"""

from __future__ import annotations

import cv2
import numpy as np

from morph3d.composite.colour import LUMA

# The two probe blurs (pixels): `a` damps pixel noise and aliasing, `b` is about the
# largest blur a face crop shows (a soft 720p clip upsampled to the crop).
PROBE_A = 1.0
PROBE_B = 3.0
MAX_BLUR = 8.0


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img @ LUMA
    return np.ascontiguousarray(img)


def _energy(grey: np.ndarray, sigma: float, weight: np.ndarray) -> float:
    lap = cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), sigma), cv2.CV_32F)
    return float((lap * lap * weight).sum())


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
    ea, eb = _energy(grey, PROBE_A, weight), _energy(grey, PROBE_B, weight)
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


def extra_blur(source_blur: float, frame_blur: float) -> float:
    """The blur (sigma, pixels) that brings a picture at `source_blur` to `frame_blur`:
    sqrt(frame^2 - source^2), 0 where the source is no sharper or either is unknown."""
    if not (np.isfinite(source_blur) and np.isfinite(frame_blur)):
        return 0.0
    return float(np.sqrt(max(frame_blur ** 2 - source_blur ** 2, 0.0)))


def match_blur(source: np.ndarray, frame: np.ndarray, trust: np.ndarray,
               min_blur: float = 0.3) -> tuple[np.ndarray, float, float]:
    """`source` (H x W x 3, the source albedo on the crop) blurred to the frame's sharpness
    (`frame`: the frame's pixels on the same raster), both measured inside `trust` (H x W:
    skin both pictures saw). The blur is normalised by `trust` so what is not skin does not
    bleed into the skin. Returns the blurred source, the blur applied and the frame's own
    (sigma, pixels; under `min_blur` nothing is applied; the frame's 0 where unknown)."""
    weight = edge_weight(trust)
    grey, target = _grey(source), edge_blur(frame, weight)
    known = float(target) if np.isfinite(target) else 0.0
    sigma = extra_blur(edge_blur(grey, weight), target)
    if sigma < min_blur:
        return source, 0.0, known
    # One correction on the source blurred by the first guess: the estimate is exact for
    # step edges only, and lines (lids, lip lines) read a little blurrier than they are.
    reached = edge_blur(cv2.GaussianBlur(grey, (0, 0), sigma), weight)
    if reached < MAX_BLUR:
        sigma = float(np.sqrt(max(sigma ** 2 + target ** 2 - reached ** 2, 0.0)))
    if sigma < min_blur:
        return source, 0.0, known
    w = np.asarray(trust, np.float32)
    both = cv2.GaussianBlur(np.concatenate([source * w[..., None], w[..., None]], -1),
                            (0, 0), sigma)
    low = both[..., :3] / np.maximum(both[..., 3:], 1e-4)
    keep = np.clip(both[..., 3:] / 0.3, 0.0, 1.0)  # no support nearby: as it was
    return (keep * low + (1 - keep) * source).astype(np.float32), sigma, known


def soft_cut(mask: np.ndarray, blur: float, min_blur: float = 0.3) -> np.ndarray:
    """A region the gain leaves out (H x W in [0, 1]: the eyeballs, the mouth's inside)
    blurred by the frame's own blur (sigma, pixels) so the gain's step at its edge is no
    sharper than the frame: a hard step on a blurred face draws crisp lids around kept
    eyes."""
    mask = np.asarray(mask, np.float32)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur >= min_blur else mask
