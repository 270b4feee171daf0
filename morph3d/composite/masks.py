"""The face's alpha mask: landmark geometry, the face region with a Gaussian edge scaled
by the inter-ocular distance, and the features expected not to look like skin.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numba
import numpy as np
from scipy.special import ndtr

from fitting.landmark_maps import ibug68_from_mediapipe478
from morph3d.composite.colour import clip_unit
from morph3d.errors import InputError

Landmarks = Mapping[str, np.ndarray] | np.ndarray

# Ordered contours of the mediapipe 478-point mesh (checked against mediapipe's connection
# sets). "image-left" is the subject's right.
MP_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MP_EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387,
                      388, 466)
# Region masks (rendered from the model) that are expected not to look like skin.
NON_SKIN_REGIONS = ("eyes", "lips", "mouth_interior", "teeth", "tongue", "eyeballs")

_EDGE_EPS = 0.01  # Gaussian edges are rescaled so that they reach exactly 0 and 1
_ALPHA_FLOOR = 1.0 / 1024.0  # alphas below this are zero (no visible change in 8 or 10 bits)


# --------------------------------------------------------------------------------------------
# Landmark geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceGeometry:
    """One face's landmarks in pixels, with the derived measures the masks need.

    `ibug` is always there (derived from the mesh when only mediapipe478 was given); `mesh`
    (mediapipe478) is used, when present, for finer eye and inner-lip contours.
    """

    ibug: np.ndarray  # (68, 2) float64
    mesh: np.ndarray | None = None  # (478, 2) float64

    @classmethod
    def from_landmarks(cls, landmarks: Landmarks | FaceGeometry) -> FaceGeometry:
        if isinstance(landmarks, FaceGeometry):
            return landmarks
        if not isinstance(landmarks, Mapping):
            points = np.asarray(landmarks, np.float64)
            points = points.reshape(points.shape[-2:]) if points.ndim == 3 else points
            if points.shape == (68, 2):
                landmarks = {"ibug68": points}
            elif points.shape == (478, 2):
                landmarks = {"mediapipe478": points}
            else:
                raise InputError(f"expected (68, 2) or (478, 2) landmarks, got {points.shape}")
        mesh = landmarks.get("mediapipe478")
        if mesh is not None:
            mesh = np.asarray(mesh, np.float64).reshape(478, -1)[:, :2]
        ibug = landmarks.get("ibug68")
        if ibug is not None:
            ibug = np.asarray(ibug, np.float64).reshape(68, -1)[:, :2]
        elif mesh is not None:
            ibug = ibug68_from_mediapipe478(mesh)
        else:
            raise InputError("landmarks need an 'ibug68' or 'mediapipe478' entry")
        if not np.isfinite(ibug).all() or (mesh is not None and not np.isfinite(mesh).all()):
            raise InputError("landmarks contain NaN or infinite values")
        return cls(ibug=ibug, mesh=mesh)

    def shifted(self, offset: np.ndarray) -> FaceGeometry:
        """The same face with every point moved by `offset` (x, y) pixels."""
        offset = np.asarray(offset, np.float64)
        return FaceGeometry(self.ibug + offset, None if self.mesh is None else self.mesh + offset)

    def resampled(self, offset: np.ndarray, scale: tuple[float, float]) -> FaceGeometry:
        """The same face in a raster resampled by `scale` (x, y) after a shift by `offset`
        (x, y) pixels: pixel centres map to pixel centres, p -> (p + offset + 0.5) * scale
        - 0.5, as `cv2.resize` places them."""
        s = np.asarray(scale, np.float64)
        shift = (np.asarray(offset, np.float64) + 0.5) * s - 0.5
        return FaceGeometry(self.ibug * s + shift,
                            None if self.mesh is None else self.mesh * s + shift)

    @property
    def eye_contours(self) -> tuple[np.ndarray, np.ndarray]:
        """Closed contours of the image-left and image-right eye openings."""
        if self.mesh is not None:
            return self.mesh[list(MP_EYE_IMAGE_LEFT)], self.mesh[list(MP_EYE_IMAGE_RIGHT)]
        return self.ibug[36:42], self.ibug[42:48]

    # The measures below are read dozens of times per frame by the masks and occluder tests;
    # the points do not change after construction, so each is computed once per instance
    # (arrays read-only, so no caller can alter the cached value).
    @functools.cached_property
    def eye_centres(self) -> np.ndarray:
        """(2, 2): centres of the image-left and image-right eyes."""
        centres = np.stack([self.ibug[36:42].mean(0), self.ibug[42:48].mean(0)])
        centres.flags.writeable = False
        return centres

    @functools.cached_property
    def iod(self) -> float:
        """Inter-ocular distance (eye centre to eye centre) in pixels: the face's size unit."""
        left, right = self.eye_centres
        return max(float(np.linalg.norm(right - left)), 1.0)

    @functools.cached_property
    def x_axis(self) -> np.ndarray:
        """Unit vector from the image-left eye to the image-right eye."""
        left, right = self.eye_centres
        d = right - left
        d = d / max(float(np.linalg.norm(d)), 1e-9)
        d.flags.writeable = False
        return d

    @functools.cached_property
    def up(self) -> np.ndarray:
        """Unit vector towards the top of the head (perpendicular to the eye line)."""
        x = self.x_axis
        up = np.array([x[1], -x[0]])
        if np.dot(up, self.eye_centres.mean(0) - self.ibug[48:60].mean(0)) < 0:
            up = -up
        up.flags.writeable = False
        return up

    @property
    def jaw(self) -> np.ndarray:
        return self.ibug[0:17]

    @property
    def brows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ibug[17:22], self.ibug[22:27]

    @property
    def outer_lip(self) -> np.ndarray:
        return self.ibug[48:60]

    def face_polygon(self, forehead_margin: float) -> np.ndarray:
        """Convex outline of the face: the jaw, and the brows lifted by `forehead_margin` IOD.

        The jaw excludes the neck below it and the ears beside it; the lifted brows cut off
        the hair area while keeping a band of forehead above the brows.
        """
        lift = self.up * (forehead_margin * self.iod)
        points = np.concatenate([self.jaw, self.ibug[17:27] + lift])
        return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)

    def central_skin_polygon(self) -> np.ndarray:
        """Cheeks, nose, upper lip and chin: the part of the face least likely to be hair."""
        nose = self.ibug[30]
        cheeks = nose + 0.65 * (self.ibug[2:15] - nose)
        under_eyes = np.concatenate([self.ibug[[40, 41]], self.ibug[[46, 47]]])
        under_eyes = under_eyes - self.up * (0.12 * self.iod)
        return cv2.convexHull(np.concatenate([cheeks, under_eyes]).astype(np.float32))


def face_geometry(landmarks: Landmarks | FaceGeometry) -> FaceGeometry:
    """`FaceGeometry.from_landmarks`, for callers holding a dict or an array."""
    return FaceGeometry.from_landmarks(landmarks)


# --------------------------------------------------------------------------------------------
# Small mask helpers
# --------------------------------------------------------------------------------------------


def _fill_polygon(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Bool mask of a polygon with sub-pixel vertices (fixed-point, 4 fractional bits)."""
    out = np.zeros(shape, np.uint8)
    _draw_polygon(out, polygon)
    return out.view(bool)


def _draw_polygon(out: np.ndarray, polygon: np.ndarray) -> None:
    """`_fill_polygon`'s pixels set to 1 in `out` (uint8 H x W) in place: the union with
    what it holds, without a mask per polygon."""
    pts = np.round(np.asarray(polygon, np.float64).reshape(-1, 1, 2) * 16).astype(np.int32)
    cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=4)


def _disk(radius: float) -> np.ndarray:
    r = max(int(round(radius)), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Bool: the mask dilated by a disk, computed on the mask's bounding box grown by the
    disk's radius (nothing further out can be reached; a face's features are a small part of
    the frame)."""
    if radius < 0.5:
        return mask.astype(bool)
    disk = _disk(radius)
    mask8 = np.ascontiguousarray(mask).astype(np.uint8)
    out = np.zeros(mask8.shape, bool)
    x, y, w, h = cv2.boundingRect(mask8)
    if w == 0 or h == 0:
        return out
    r = disk.shape[0] // 2 + 1
    box = (slice(max(y - r, 0), y + h + r), slice(max(x - r, 0), x + w + r))
    out[box] = cv2.dilate(mask8[box], disk) > 0
    return out


def _signed_distance(hard: np.ndarray, outside: bool = True) -> np.ndarray:
    """Distance to the mask boundary in pixels: positive inside, negative outside (5 x 5
    chamfer approximation of L2, within 2 %). `outside` False: every outside pixel -0.5
    (its largest value) where the caller only needs the inside's distances."""
    hard = hard.astype(np.uint8)
    if not hard.any():
        return np.full(hard.shape, -1e6, np.float32)
    if hard.all():
        return np.full(hard.shape, 1e6, np.float32)
    inside = cv2.distanceTransform(hard, cv2.DIST_L2, cv2.DIST_MASK_5)
    if not outside:
        inside -= np.float32(0.5)
        inside[hard == 0] = -0.5
        return inside
    away = cv2.distanceTransform(1 - hard, cv2.DIST_L2, cv2.DIST_MASK_5)
    return np.where(hard > 0, inside - 0.5, 0.5 - away).astype(np.float32)


_EDGE_Z = 2.33  # ndtr(2.33) = 0.99: where the rescaled edge reaches exactly 0 and 1


def _gaussian_edge(distance: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """The profile a Gaussian blur of sigma gives a straight edge at `centre`, rescaled so it
    is exactly 0 below centre - 2.33 sigma and exactly 1 above centre + 2.33 sigma."""
    # z = (distance - centre) / sigma in one pass, each step in the dtype numpy gives it
    # (a python float centre or sigma takes the distance's dtype, a numpy float64 its own)
    distance = np.ascontiguousarray(distance)
    spread = max(sigma, 1e-3)
    diff = np.result_type(distance, centre)
    centred = np.array([centre], diff)
    scale = np.array([spread], np.result_type(np.empty(0, diff), spread))
    z = np.empty(distance.shape, scale.dtype)
    _edge_z(distance.reshape(-1), centred, scale, z.reshape(-1))
    # the thresholds and the rescaling in z's own dtype, as numpy's scalars would be
    consts = np.array([_EDGE_Z, _EDGE_EPS, 1.0 - 2.0 * _EDGE_EPS, 0.0, 1.0], z.dtype)
    out = np.empty(z.shape, np.float32)
    band = _edge_band(z.reshape(-1), consts, out.reshape(-1))
    _edge_fill(z.reshape(-1), ndtr(band), consts, out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _edge_z(distance: np.ndarray, centre: np.ndarray, sigma: np.ndarray,
            z: np.ndarray) -> None:  # pragma: no cover - compiled
    """z <- (distance - centre[0]) / sigma[0]: the difference in centre's dtype, the
    quotient in sigma's (and z's)."""
    step = np.empty(1, centre.dtype)
    for i in range(distance.size):
        step[0] = distance[i]
        z[i] = step[0] - centre[0]
        z[i] = z[i] / sigma[0]


@numba.njit(cache=True, nogil=True)
def _edge_band(z: np.ndarray, consts: np.ndarray,
               out: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """`_gaussian_edge`'s step (out: 1 where z >= consts[0], else 0) and its band's z
    values (|z| < consts[0]) in order, contiguous for one vectorised `ndtr`."""
    limit = consts[0]
    n = 0
    for i in range(z.size):
        v = z[i]
        out[i] = np.float32(1.0) if v >= limit else np.float32(0.0)
        if abs(v) < limit:
            n += 1
    band = np.empty(n, z.dtype)
    n = 0
    for i in range(z.size):
        if abs(z[i]) < limit:
            band[n] = z[i]
            n += 1
    return band


@numba.njit(cache=True, nogil=True)
def _edge_fill(z: np.ndarray, cdf: np.ndarray, consts: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The band's pixels of `out` <- (cdf - consts[1]) / consts[2] clipped to [0, 1], in
    the band's order (`_edge_band`); consts[3], consts[4]: 0 and 1 in z's dtype."""
    limit, eps, scale, zero, one = consts[0], consts[1], consts[2], consts[3], consts[4]
    n = 0
    for i in range(z.size):
        if abs(z[i]) < limit:
            e = (cdf[n] - eps) / scale
            out[i] = zero if e < zero else (one if e > one else e)
            n += 1


def _feather(hard: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """`_gaussian_edge` of a bool mask's signed distance, computed only in the mask's
    bounding box grown by the edge's reach (eyes and mouth are small next to a frame)."""
    hard = np.asarray(hard, bool)
    out = np.zeros(hard.shape, np.float32)
    mask8 = hard.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask8)
    if w == 0 or h == 0:
        return out
    pad = int(np.ceil(max(0.0, -centre) + _EDGE_Z * sigma + 2))
    y0, x0 = max(y - pad, 0), max(x - pad, 0)
    y1, x1 = min(y + h + pad, hard.shape[0]), min(x + w + pad, hard.shape[1])
    # an edge whose 0 lies inside the mask (less half a pixel, and a margin) reads no outside
    # distance (all of it is 0 there): one distance transform instead of two
    outside = centre - _EDGE_Z * max(sigma, 1e-3) < -0.4
    out[y0:y1, x0:x1] = _gaussian_edge(_signed_distance(mask8[y0:y1, x0:x1], outside),
                                       centre, sigma)
    return out


def _clean_alpha(alpha: np.ndarray) -> np.ndarray:
    """Alpha clipped to [0, 1] in its own precision, as float32, with what lies within
    `_ALPHA_FLOOR` of 0 or 1 set to it; float arrays in one compiled pass."""
    alpha = np.asarray(alpha)
    if alpha.dtype not in (np.float32, np.float64):
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        alpha[alpha < _ALPHA_FLOOR] = 0.0
        alpha[alpha > 1.0 - _ALPHA_FLOOR] = 1.0
        return alpha
    out = np.empty(alpha.shape, np.float32)
    _cleaned(np.ascontiguousarray(alpha).reshape(-1), np.float32(_ALPHA_FLOOR),
             np.float32(1.0 - _ALPHA_FLOOR), out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _cleaned(alpha: np.ndarray, low: np.float32, high: np.float32,
             out: np.ndarray) -> None:  # pragma: no cover - compiled
    """`_clean_alpha` element by element: the clip in alpha's dtype (NaN kept, as
    `np.clip`), then float32 and the floors (float32 limits, as numpy compares them)."""
    zero, one = alpha.dtype.type(0.0), alpha.dtype.type(1.0)
    for i in range(alpha.size):
        f = np.float32(clip_unit(alpha[i], zero, one))
        if f < low:
            f = np.float32(0.0)
        elif f > high:
            f = np.float32(1.0)
        out[i] = f


def _covered_alpha(alpha: np.ndarray, coverage: np.ndarray, rows: tuple[int, int],
                   cols: tuple[int, int]) -> np.ndarray:
    """`_clean_alpha` of float32 `alpha` where `coverage` is above 0 inside the rows and
    columns [start, stop), exactly 0 elsewhere: the alpha brought back from a reduced copy
    made exact again where the warp is absent and off the picture, in one pass."""
    out = np.empty(alpha.shape, np.float32)
    _covered(np.ascontiguousarray(alpha, np.float32), np.ascontiguousarray(coverage),
             int(rows[0]), int(rows[1]), int(cols[0]), int(cols[1]), np.float32(_ALPHA_FLOOR),
             np.float32(1.0 - _ALPHA_FLOOR), out)
    return out


@numba.njit(cache=True, nogil=True)
def _covered(alpha: np.ndarray, coverage: np.ndarray, r0: int, r1: int, c0: int, c1: int,
             low: np.float32, high: np.float32, out: np.ndarray) -> None:  # pragma: no cover
    """`_covered_alpha` pixel by pixel (the clean-up as `_cleaned` does it)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for i in range(alpha.shape[0]):
        for j in range(alpha.shape[1]):
            if not (r0 <= i < r1 and c0 <= j < c1 and coverage[i, j] > 0):
                out[i, j] = zero
                continue
            f = clip_unit(alpha[i, j], zero, one)
            if f < low:
                f = zero
            elif f > high:
                f = one
            out[i, j] = f


def _check_image(name: str, image: np.ndarray, shape: tuple[int, int] | None = None
                 ) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name} must be H x W x 3, got {image.shape}")
    if shape is not None and image.shape[:2] != shape:
        raise InputError(f"{name} is {image.shape[:2]}, expected {shape}")
    return image.astype(np.float32, copy=False)


def _check_mask(name: str, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise InputError(f"{name} is {mask.shape}, expected {shape}")
    return mask.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Face mask
# --------------------------------------------------------------------------------------------


def face_region(shape: tuple[int, int], landmarks: Landmarks | FaceGeometry,
                forehead_margin: float = 0.35) -> np.ndarray:
    """Bool H x W: inside the jaw line and below the brows lifted by `forehead_margin` IOD."""
    return _fill_polygon(shape, face_geometry(landmarks).face_polygon(forehead_margin))


def face_mask(coverage: np.ndarray, landmarks: Landmarks | FaceGeometry, region: np.ndarray,
              *, feather: float = 0.05, inset: float = 2.5) -> np.ndarray:
    """Blend alpha of the warped face inside `region` (bool H x W), with a Gaussian edge.

    coverage: H x W coverage of the warp; landmarks: the swapped face's projected landmarks
    (they give the face's size). The edge has sigma = `feather` IOD, so it looks the same at
    every face size; its 50 % line sits `inset` sigmas inside the region, so alpha reaches
    zero at the region's boundary and never shows the warp's rim. Alpha is also multiplied
    by the coverage, so it is exactly 0 wherever the warp is absent.
    """
    coverage = np.clip(np.asarray(coverage, np.float32), 0.0, 1.0)
    hard = np.asarray(region, bool) & (coverage >= 0.5)
    sigma = feather * face_geometry(landmarks).iod
    alpha = _feather(hard, inset * sigma, sigma)
    return _clean_alpha(alpha * coverage)


# --------------------------------------------------------------------------------------------
# Expected non-skin areas (eyes, brows, lips, mouth) from landmarks and region masks
# --------------------------------------------------------------------------------------------


def feature_mask(shape: tuple[int, int], landmarks: Landmarks | FaceGeometry, *,
                 margin: float = 0.06) -> np.ndarray:
    """Bool H x W: eyes, brows, lips and nostrils from the landmarks, dilated `margin` IOD.

    These are the parts of a face that are not skin-coloured by nature; the skin model and
    the occluder detector must not count them.
    """
    g = face_geometry(landmarks)
    iod = g.iod
    out = np.zeros(shape, np.uint8)
    for eye in g.eye_contours:
        centre = eye.mean(0)
        _draw_polygon(out, centre + 1.25 * (eye - centre))
    for brow in g.brows:
        pts = np.round(brow * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, 1, thickness=max(int(round(0.16 * iod)), 1),
                      lineType=cv2.LINE_8, shift=4)
    _draw_polygon(out, g.outer_lip)
    nostrils = np.concatenate([g.ibug[31:36], g.ibug[[30]]])
    _draw_polygon(out, cv2.convexHull(nostrils.astype(np.float32)))
    return _dilate(out, margin * iod)


def expected_non_skin(shape: tuple[int, int], *landmarks: Landmarks | FaceGeometry,
                      regions: Mapping[str, np.ndarray] | None = None,
                      margin: float = 0.06) -> np.ndarray:
    """Union of `feature_mask` for each face given and of the non-skin region masks."""
    out = np.zeros(shape, bool)
    for lm in landmarks:
        out |= feature_mask(shape, lm, margin=margin)
    for name in NON_SKIN_REGIONS:
        if regions is not None and name in regions and regions[name] is not None:
            region = np.asarray(regions[name])
            if region.dtype == bool and region.shape == shape:  # thresholded already
                out |= region
            else:
                out |= _check_mask(f"region '{name}'", region, shape) > 0.5
    return out
