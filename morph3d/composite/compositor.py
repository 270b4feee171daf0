"""Compositing a rendered swapped face back into the actor's frame.

Everything here is image processing on one frame at a time (numpy + OpenCV); it does not
care how the face was rendered. The inputs per frame are the original frame, the rendered
swapped face with its coverage, optional region masks rendered from the model, and 2D
landmarks of the actor (detected) and of the swapped face (projected). The blend is shaped
entirely through one alpha mask, built in steps that each have one job:

1. `face_mask`: the render's coverage limited to the face (jaw to a little above the brows),
   with a Gaussian edge whose width scales with the inter-ocular distance (IOD).
2. `adaptive_face_mask`: grows or shrinks that edge by how much wider or narrower the
   swapped face is than the actor's, so neither face shows a second outline.
3. `remove_double_brows`: the actor's brows above the mask's top edge are covered by
   extending the mask, or inpainted away where the render does not reach.
4. `detect_occluders` / `cut_occluders`: hands, hair, microphones in front of the face stay.
5. `keep_actor_eyes` / `keep_actor_mouth`: the actor's own eyes (blinks, gaze) and open
   mouth interior (teeth, tongue) stay, the mouth only inside the swapped face's own
   opening (`rendered_mouth_opening`).
6. `match_colour`: the render's skin colour is matched to the actor's by a gain per
   linear-RGB channel (skin medians, a moving-average state carried between frames).
7. `composite`: alpha blend (default) or Poisson; pixels where the final alpha is zero are
   bit-identical to the input frame.

`FaceCompositor` runs these steps on a crop around the face and carries the per-clip state
(colour averages, the width ratio, the previous mask). All images are float32 RGB in [0, 1],
H x W x 3; masks are float32 H x W in [0, 1]; landmarks are pixels (OpenCV convention),
given as ``{"ibug68": (68, 2), "mediapipe478": (478, 2)}`` (either or both) or one array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.special import ndtr

from fitting.landmark_maps import ibug68_from_mediapipe478
from morph3d.errors import InputError

Landmarks = Mapping[str, np.ndarray] | np.ndarray

# Ordered contours of the mediapipe 478-point mesh (checked against mediapipe's connection
# sets). "image-left" is the subject's right.
MP_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MP_EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387,
                      388, 466)
MP_INNER_LIPS = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82,
                 81, 80, 191)

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

    @property
    def eye_contours(self) -> tuple[np.ndarray, np.ndarray]:
        """Closed contours of the image-left and image-right eye openings."""
        if self.mesh is not None:
            return self.mesh[list(MP_EYE_IMAGE_LEFT)], self.mesh[list(MP_EYE_IMAGE_RIGHT)]
        return self.ibug[36:42], self.ibug[42:48]

    @property
    def eye_centres(self) -> np.ndarray:
        """(2, 2): centres of the image-left and image-right eyes."""
        return np.stack([self.ibug[36:42].mean(0), self.ibug[42:48].mean(0)])

    @property
    def iod(self) -> float:
        """Inter-ocular distance (eye centre to eye centre) in pixels: the face's size unit."""
        left, right = self.eye_centres
        return max(float(np.linalg.norm(right - left)), 1.0)

    @property
    def x_axis(self) -> np.ndarray:
        """Unit vector from the image-left eye to the image-right eye."""
        left, right = self.eye_centres
        d = right - left
        return d / max(float(np.linalg.norm(d)), 1e-9)

    @property
    def up(self) -> np.ndarray:
        """Unit vector towards the top of the head (perpendicular to the eye line)."""
        x = self.x_axis
        up = np.array([x[1], -x[0]])
        if np.dot(up, self.eye_centres.mean(0) - self.ibug[48:60].mean(0)) < 0:
            up = -up
        return up

    @property
    def jaw(self) -> np.ndarray:
        return self.ibug[0:17]

    @property
    def brows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ibug[17:22], self.ibug[22:27]

    @property
    def inner_lip(self) -> np.ndarray:
        return self.mesh[list(MP_INNER_LIPS)] if self.mesh is not None else self.ibug[60:68]

    @property
    def outer_lip(self) -> np.ndarray:
        return self.ibug[48:60]

    @property
    def mouth_width(self) -> float:
        return max(float(np.linalg.norm(self.ibug[54] - self.ibug[48])), 1.0)

    @property
    def mouth_opening(self) -> float:
        """Gap between the inner lips at the middle, in pixels."""
        if self.mesh is not None:
            return float(np.linalg.norm(self.mesh[14] - self.mesh[13]))
        return float(np.linalg.norm(self.ibug[66] - self.ibug[62]))

    def width_along(self, axis: np.ndarray) -> float:
        """Extent of the jaw outline along `axis` (a unit vector), in pixels."""
        proj = self.jaw @ axis
        return float(proj.max() - proj.min())

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
    pts = np.round(np.asarray(polygon, np.float64).reshape(-1, 1, 2) * 16).astype(np.int32)
    cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def _disk(radius: float) -> np.ndarray:
    r = max(int(round(radius)), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius < 0.5:
        return mask.astype(bool)
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _signed_distance(hard: np.ndarray) -> np.ndarray:
    """Distance to the mask boundary in pixels: positive inside, negative outside (5 x 5
    chamfer approximation of L2, within 2 %)."""
    hard = hard.astype(np.uint8)
    if not hard.any():
        return np.full(hard.shape, -1e6, np.float32)
    if hard.all():
        return np.full(hard.shape, 1e6, np.float32)
    inside = cv2.distanceTransform(hard, cv2.DIST_L2, cv2.DIST_MASK_5)
    outside = cv2.distanceTransform(1 - hard, cv2.DIST_L2, cv2.DIST_MASK_5)
    return np.where(hard > 0, inside - 0.5, 0.5 - outside).astype(np.float32)


_EDGE_Z = 2.33  # ndtr(2.33) = 0.99: where the rescaled edge reaches exactly 0 and 1


def _gaussian_edge(distance: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """The profile a Gaussian blur of sigma gives a straight edge at `centre`, rescaled so it
    is exactly 0 below centre - 2.33 sigma and exactly 1 above centre + 2.33 sigma."""
    z = (distance - centre) / max(sigma, 1e-3)
    out = (z >= _EDGE_Z).astype(np.float32)
    band = np.abs(z) < _EDGE_Z
    edge = (ndtr(z[band]) - _EDGE_EPS) / (1.0 - 2.0 * _EDGE_EPS)
    out[band] = np.clip(edge, 0.0, 1.0)
    return out


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
    out[y0:y1, x0:x1] = _gaussian_edge(_signed_distance(mask8[y0:y1, x0:x1]), centre, sigma)
    return out


def _clean_alpha(alpha: np.ndarray) -> np.ndarray:
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    alpha[alpha < _ALPHA_FLOOR] = 0.0
    alpha[alpha > 1.0 - _ALPHA_FLOOR] = 1.0
    return alpha


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
# 1-2. Face mask, landmark-adaptive
# --------------------------------------------------------------------------------------------


def face_region(shape: tuple[int, int], landmarks: Landmarks | FaceGeometry,
                forehead_margin: float = 0.35) -> np.ndarray:
    """Bool H x W: inside the jaw line and below the brows lifted by `forehead_margin` IOD."""
    return _fill_polygon(shape, face_geometry(landmarks).face_polygon(forehead_margin))


def face_mask(coverage: np.ndarray, landmarks: Landmarks | FaceGeometry, *,
              forehead_margin: float = 0.35, feather: float = 0.05, inset: float = 2.5,
              grow_px: float = 0.0, extra_sigma_px: float = 0.0,
              region: np.ndarray | None = None) -> np.ndarray:
    """Blend alpha of the rendered face, limited to the face region, with a Gaussian edge.

    coverage: H x W render coverage; landmarks: the swapped face's projected landmarks.
    The edge has sigma = `feather` IOD (+ `extra_sigma_px`), so it looks the same at every
    face size; its 50 % line sits `inset` sigmas inside the region (minus `grow_px`), so
    alpha reaches zero at the region's boundary and never shows the render's rim. Alpha is
    also multiplied by the coverage, so it is exactly 0 wherever the render is absent.
    """
    coverage = np.clip(np.asarray(coverage, np.float32), 0.0, 1.0)
    geometry = face_geometry(landmarks)
    if region is None:
        region = face_region(coverage.shape, geometry, forehead_margin)
    hard = region & (coverage >= 0.5)
    sigma = feather * geometry.iod + extra_sigma_px
    alpha = _feather(hard, inset * sigma - grow_px, sigma)
    return _clean_alpha(alpha * coverage)


@dataclass
class MaskReport:
    """How `adaptive_face_mask` changed the mask: width_ratio = swapped / actor face width
    (along the eye line); grow_px / shrink_px move the mask edge; feather_px is its sigma."""

    width_ratio: float
    grow_px: float
    shrink_px: float
    feather_px: float


def face_width_ratio(swapped: Landmarks | FaceGeometry, actor: Landmarks | FaceGeometry
                     ) -> float:
    """Width of the swapped face's jaw outline over the actor's, measured along the actor's
    eye line (so head roll does not count)."""
    swapped, actor = face_geometry(swapped), face_geometry(actor)
    axis = actor.x_axis
    return swapped.width_along(axis) / max(actor.width_along(axis), 1.0)


def adaptive_face_mask(coverage: np.ndarray, swapped_landmarks: Landmarks | FaceGeometry,
                       actor_landmarks: Landmarks | FaceGeometry, *,
                       forehead_margin: float = 0.35, feather: float = 0.05,
                       inset: float = 2.5, tolerance: float = 0.01, shrink_gain: float = 1.0,
                       blur_gain: float = 0.5, max_shrink: float = 0.25,
                       width_ratio: float | None = None) -> tuple[np.ndarray, MaskReport]:
    """`face_mask` adapted to the difference in face width between the two faces.

    Wider swapped face: the mask's edge moves out by the width difference per side, up to
    the inset (`grow_px`), so the mask is fully on over the actor's outline and the new,
    wider outline (the render's own anti-aliased silhouette, via the coverage) replaces the
    actor's instead of fading into it. Narrower swapped face: the edge moves in by the width
    difference per side (`shrink_px`, at most `max_shrink` IOD) and is blurred more, so the
    swapped face's own outline dissolves inside the actor's wider cheeks instead of drawing a
    second jaw line. `width_ratio` overrides the measured ratio (the compositor passes a
    time-smoothed one).
    """
    swapped, actor = face_geometry(swapped_landmarks), face_geometry(actor_landmarks)
    coverage = np.asarray(coverage, np.float32)
    if width_ratio is None:
        width_ratio = face_width_ratio(swapped, actor)
    actor_width = actor.width_along(actor.x_axis)
    per_side_px = 0.5 * (width_ratio - 1.0) * actor_width
    sigma = feather * swapped.iod
    grow = shrink = extra_sigma = 0.0
    if width_ratio > 1.0 + tolerance:
        grow = min(per_side_px, inset * sigma)
    elif width_ratio < 1.0 - tolerance:
        shrink = min(-per_side_px * shrink_gain, max_shrink * actor.iod)
        extra_sigma = blur_gain * shrink
    mask = face_mask(coverage, swapped, forehead_margin=forehead_margin, feather=feather,
                     inset=inset, grow_px=grow - shrink, extra_sigma_px=extra_sigma)
    report = MaskReport(width_ratio=float(width_ratio), grow_px=float(grow),
                        shrink_px=float(shrink), feather_px=float(sigma + extra_sigma))
    return mask, report


# --------------------------------------------------------------------------------------------
# 3. Colour matching
# --------------------------------------------------------------------------------------------


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """float32 RGB [0, 1] -> Lab (L in [0, 100], a and b about [-127, 127])."""
    return cv2.cvtColor(np.clip(image, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2Lab)


def robust_stats(samples: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and MAD-based standard deviation of N x C samples.

    Medians ignore the freckles, specular highlights, stubble and stray hair that pull a
    plain mean; the std is floored at `min_std` so a flat render cannot blow up the gain.
    """
    samples = np.asarray(samples, np.float64).reshape(len(samples), -1)
    median = np.median(samples, axis=0)
    mad = np.median(np.abs(samples - median), axis=0)
    return median, np.maximum(1.4826 * mad, min_std)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights of linear RGB


@dataclass
class ColourState:
    """Per-channel medians (linear RGB) of the actor's skin and of the render's skin,
    averaged over frames. Carried between frames so the colour transfer does not flicker."""

    actor_median: np.ndarray
    render_median: np.ndarray
    frames: int = 1

    def blended(self, other: ColourState, momentum: float) -> ColourState:
        """Exponential moving average: `momentum` of self plus the rest of `other`."""
        m = float(np.clip(momentum, 0.0, 1.0))
        return ColourState(m * self.actor_median + (1.0 - m) * other.actor_median,
                           m * self.render_median + (1.0 - m) * other.render_median,
                           self.frames + 1)

    def gains(self, keep_chroma: float = 0.0, max_light: float = 16.0, max_tint: float = 3.0
              ) -> np.ndarray:
        """Per-channel gains on linear RGB that take the render's skin median to the actor's.

        A gain per channel is a change of light, so a dark brow stays a dark brow of the same
        hue, where an additive Lab shift turned khabenskii.jpg's brows teal. The gains split
        into one luminance gain (exposure: a dark render may need a large one, up to
        `max_light`) and a tint per channel relative to it (white balance, bounded by
        `max_tint`). `keep_chroma` (0..1) keeps that share of the source's own skin tone:
        the tint is raised to the power 1 - keep_chroma; the skin's luminance still becomes
        the actor's."""
        render = np.maximum(self.render_median, 1e-4)
        luminance = float((LUMINANCE @ self.actor_median) / (LUMINANCE @ render))
        light = float(np.clip(luminance, 1.0 / max_light, max_light))
        tint = np.clip(self.actor_median / render / max(luminance, 1e-6), 1.0 / max_tint,
                       max_tint) ** (1.0 - float(np.clip(keep_chroma, 0.0, 1.0)))
        return light * tint * (LUMINANCE @ render) / float(LUMINANCE @ (tint * render))


def match_colour(render: np.ndarray, frame: np.ndarray, skin: np.ndarray, *,
                 state: ColourState | None = None, momentum: float = 0.8,
                 keep_chroma: float = 0.0, min_pixels: int = 64, max_samples: int = 20000
                 ) -> tuple[np.ndarray, ColourState | None]:
    """Match the render's skin colour to the actor's by a gain per linear-RGB channel.

    The medians come from the same `skin` pixels (bool H x W: face skin under the mask,
    eyes, brows, mouth and occluders left out) in the frame and in the render; both faces
    are in the same pose, so the same pixels are the same part of the face. With `state`
    from the previous frame the medians are averaged (`momentum` of the old); the new state
    is returned. Too few skin pixels (the face is covered): the old state's gains are
    applied and the state kept, or the render is returned unchanged when there is no state
    yet. `keep_chroma`: see `ColourState.gains`.
    """
    skin = np.asarray(skin, bool)
    if int(skin.sum()) < min_pixels:
        if state is None:
            return render, None
        return apply_gains(render, state.gains(keep_chroma)), state
    index = np.flatnonzero(skin)
    index = index[:: len(index) // max_samples + 1]  # a regular subsample bounds the cost
    current = ColourState(np.median(srgb_to_linear(frame.reshape(-1, 3)[index]), axis=0),
                          np.median(srgb_to_linear(render.reshape(-1, 3)[index]), axis=0))
    state = current if state is None else state.blended(current, momentum)
    return apply_gains(render, state.gains(keep_chroma)), state


def apply_gains(render: np.ndarray, gains: np.ndarray, knee: float = 0.7) -> np.ndarray:
    """`render` (sRGB, [0, 1]) with each linear channel multiplied by its gain; values
    above `knee` roll off smoothly towards 1 instead of clipping (a dark render brought up
    to a bright actor would otherwise burn its highlights into flat white patches)."""
    linear = srgb_to_linear(render) * gains.astype(np.float32)
    span = 1.0 - knee
    if span > 0:
        over = linear > knee
        linear[over] = knee + span * np.tanh((linear[over] - knee) / span)
    return linear_to_srgb(linear)


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
        out |= _fill_polygon(shape, centre + 1.25 * (eye - centre)).astype(np.uint8)
    for brow in g.brows:
        pts = np.round(brow * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, 1, thickness=max(int(round(0.16 * iod)), 1),
                      lineType=cv2.LINE_8, shift=4)
    out |= _fill_polygon(shape, g.outer_lip).astype(np.uint8)
    nostrils = np.concatenate([g.ibug[31:36], g.ibug[[30]]])
    out |= _fill_polygon(shape, cv2.convexHull(nostrils.astype(np.float32))).astype(np.uint8)
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
            out |= _check_mask(f"region '{name}'", regions[name], shape) > 0.5
    return out


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


def _ycrcb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(image, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2YCrCb) * 255.0


def fit_skin_model(frame: np.ndarray, landmarks: Landmarks | FaceGeometry, *,
                   exclude: np.ndarray | None = None, min_chroma_std: float = 2.5,
                   min_luma_std: float = 12.0) -> SkinModel | None:
    """Fit the actor's skin colour on the cheeks, nose and chin (`central_skin_polygon`);
    see `skin_model_from_samples`. None when too few pixels."""
    g = face_geometry(landmarks)
    shape = frame.shape[:2]
    central = _fill_polygon(shape, g.central_skin_polygon())
    if exclude is not None:
        central &= ~exclude
    return skin_model_from_samples(_ycrcb(frame)[central], min_chroma_std=min_chroma_std,
                                   min_luma_std=min_luma_std)


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
    keep = np.ones(len(samples), bool)
    for _ in range(4):
        centred = samples - mean
        d2 = ((centred @ np.linalg.inv(cov)) * centred).sum(1)
        new_keep = d2 < 9.35  # chi^2, 3 dof, 97.5 %
        if new_keep.sum() < 30:
            break
        keep = new_keep
        mean = samples[keep].mean(0)
        # x 1.1: the variance a 97.5 % truncation removes from a 3-D Gaussian
        cov = 1.1 * np.cov(samples[keep].T) + np.diag(floor)
    chroma_cov = cov[1:, 1:] + np.eye(2) * min_chroma_std ** 2
    std_y = float(max(np.sqrt(cov[0, 0]), min_luma_std))
    return SkinModel(mean=mean, std_y=std_y, chroma_cov_inv=np.linalg.inv(chroma_cov),
                     pixels=int(keep.sum()))


def non_skin_score(frame: np.ndarray, model: SkinModel, *, dark_sigmas: float = 5.0,
                   dark_fraction: float = 0.45) -> np.ndarray:
    """Float H x W: how far each pixel's colour is from the skin model, in sigmas.

    The score is the chroma Mahalanobis distance (Cr, Cb): blue, green or grey objects
    against skin. Pixels much darker than skin (below both mean - `dark_sigmas` std and
    `dark_fraction` of the mean luma: dark objects, hair) score infinity. Brighter pixels
    whose chroma only moves from the skin's towards grey (specular highlights on the
    forehead or nose) score 0.
    """
    ycc = _ycrcb(frame)
    dc = ycc[..., 1:] - model.mean[1:].astype(np.float32)
    inv = model.chroma_cov_inv.astype(np.float32)
    score = np.sqrt(inv[0, 0] * dc[..., 0] ** 2 + 2.0 * inv[0, 1] * dc[..., 0] * dc[..., 1]
                    + inv[1, 1] * dc[..., 1] ** 2)
    # A highlight keeps the hue: its chroma lies between the skin's and grey.
    skin_c = model.mean[1:] - 128.0
    norm = max(float(np.linalg.norm(skin_c)), 1e-6)
    direction = (skin_c / norm).astype(np.float32)
    c = ycc[..., 1:] - 128.0
    along = c @ direction
    across = np.abs(c @ np.array([-direction[1], direction[0]], np.float32))
    highlight = ((ycc[..., 0] > model.mean[0] + 1.0 * model.std_y) & (along > -2.0)
                 & (along < norm + 4.0) & (across < 4.0 + 0.3 * norm))
    dark = ((ycc[..., 0] < model.mean[0] - dark_sigmas * model.std_y)
            & (ycc[..., 0] < dark_fraction * model.mean[0]))
    score[highlight] = 0.0
    score[dark] = np.inf
    return score


def non_skin_pixels(frame: np.ndarray, model: SkinModel, *, chroma_sigmas: float = 6.0,
                    **options: float) -> np.ndarray:
    """Bool H x W: `non_skin_score` above `chroma_sigmas`."""
    return non_skin_score(frame, model, **options) > chroma_sigmas


def render_disagreement(frame: np.ndarray, actor_render: np.ndarray, valid: np.ndarray,
                        reference: np.ndarray, *, threshold: float = 22.0,
                        blur_px: float = 1.5) -> np.ndarray:
    """Bool H x W: where the actor's own fitted render does not explain the frame.

    The render is first shifted by the Lab median difference on `reference` (skin pixels),
    so a global lighting/albedo error of the fit does not count; then pixels with
    sqrt((dL / 2)^2 + da^2 + db^2) > `threshold` inside `valid` are flagged. L counts half
    because shading detail is what the fit gets wrong most.
    """
    if blur_px > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), blur_px)
        actor_render = cv2.GaussianBlur(actor_render, (0, 0), blur_px)
    lab_f, lab_r = rgb_to_lab(frame), rgb_to_lab(actor_render)
    ref = reference & valid
    if ref.sum() >= 50:
        lab_r = lab_r + (np.median(lab_f[ref], 0) - np.median(lab_r[ref], 0)).astype(np.float32)
    diff = (lab_f - lab_r) * np.array([0.5, 1.0, 1.0], np.float32)
    return (np.sqrt((diff ** 2).sum(-1)) > threshold) & valid


def detect_occluders(frame: np.ndarray, actor_landmarks: Landmarks | FaceGeometry, *,
                     search_region: np.ndarray | None = None,
                     expected: np.ndarray | None = None,
                     regions: Mapping[str, np.ndarray] | None = None,
                     actor_render: np.ndarray | None = None,
                     actor_coverage: np.ndarray | None = None,
                     seed_sigmas: float = 12.0, grow_sigmas: float = 6.0,
                     disagreement_threshold: float = 22.0,
                     extend_region: np.ndarray | None = None, extend: float = 0.15,
                     min_edge_contrast: float = 20.0, min_sharp_fraction: float = 0.5,
                     min_area: float = 0.004, open_radius: float = 0.025,
                     close_radius: float = 0.05, grow: float = 0.02) -> np.ndarray:
    """Bool H x W: things in front of the face (hands, hair, microphones) to leave untouched.

    Two cues, OR-ed. (a) Colour: blobs of pixels more than `grow_sigmas` off the actor's
    skin model (`fit_skin_model`, `non_skin_score`) that hold pixels more than
    `seed_sigmas` off (or much darker than skin) and have a sharp outline (`_keep_sharp`);
    both tests are needed because coloured light and shadows change skin colour too, but
    less and smoothly. Grey or skin-toned occluders are left to cue (b): when the caller
    gives the render of the actor's OWN fit (`actor_render`, `actor_coverage`), pixels
    where it disagrees with the frame (`render_disagreement`), which also catches
    skin-coloured hands. Only pixels in `search_region` (default: the actor's face region,
    shrunk by 0.04 IOD so the background at its rim does not count) are searched, and never
    those expected to be non-skin (`expected`, default `expected_non_skin` of the actor's
    landmarks and `regions`). The result is cleaned with an opening (`open_radius` IOD) and
    a closing (`close_radius` IOD), blobs smaller than `min_area` of the search region are
    dropped; detected occluders then grow up to `extend` IOD further into `extend_region`
    (e.g. the blend mask beyond the actor's outline) through connected candidate pixels,
    and are
    grown by `grow` IOD to cover their anti-aliased rim. Thresholds of (a) were tuned on
    the clips and photos in the shared test media; those of (b) only on synthetic scenes.
    """
    frame = _check_image("frame", frame)
    shape = frame.shape[:2]
    g = face_geometry(actor_landmarks)
    iod = g.iod
    if search_region is None:
        search_region = cv2.erode(face_region(shape, g).astype(np.uint8),
                                  _disk(0.04 * iod)).astype(bool)
    search_region = np.asarray(search_region, bool)
    if expected is None:
        expected = expected_non_skin(shape, g, regions=regions)
    min_pixels = min_area * max(int(search_region.sum()), 1)

    def clean(candidates: np.ndarray) -> np.ndarray:
        occ = (candidates & ~expected & search_region).astype(np.uint8)
        occ = cv2.morphologyEx(occ, cv2.MORPH_OPEN, _disk(open_radius * iod))
        occ = cv2.morphologyEx(occ, cv2.MORPH_CLOSE, _disk(close_radius * iod))
        return _drop_small(occ.astype(bool), min_pixels)

    colour_candidates = np.zeros(shape, bool)
    occ = np.zeros(shape, bool)
    model = fit_skin_model(frame, g, exclude=expected)
    if model is not None:
        score = non_skin_score(frame, model)
        colour_candidates = score > grow_sigmas
        blobs = clean(colour_candidates)
        # hysteresis: a blob needs a seed that is far off skin (a coloured light moves skin
        # colour by up to ~10 sigmas; paint, plastic and fabric usually go much further),
        # and the seed must be a sharp blob of its own
        ycc = _ycrcb(frame)
        very_off = score > 2.0 * seed_sigmas
        seeds = _keep_sharp(clean(score > seed_sigmas), ycc, very_off, search_region,
                            expected, iod, min_edge_contrast, min_sharp_fraction)
        count, labels = cv2.connectedComponents(blobs.astype(np.uint8), connectivity=8)
        seeded = np.bincount(labels[seeds], minlength=count) > 0
        seeded[0] = False
        occ = _keep_sharp(seeded[labels], ycc, very_off, search_region, expected, iod,
                          min_edge_contrast, min_sharp_fraction)
    if actor_render is not None:
        actor_render = _check_image("actor_render", actor_render, shape)
        valid = (np.ones(shape, bool) if actor_coverage is None
                 else _check_mask("actor_coverage", actor_coverage, shape) > 0.5)
        valid = cv2.erode(valid.astype(np.uint8), _disk(0.02 * iod + 1)).astype(bool)
        reference = _fill_polygon(shape, g.central_skin_polygon()) & ~expected
        occ |= clean(render_disagreement(frame, actor_render, valid, reference,
                                         threshold=disagreement_threshold))
    if extend_region is not None and occ.any():
        # follow an occluder a little beyond the face outline (a hand entering from the side):
        # geodesic growth through connected candidate pixels, never into expected features
        allowed = cv2.morphologyEx(colour_candidates.astype(np.uint8), cv2.MORPH_OPEN,
                                   _disk(open_radius * iod)).astype(bool)
        allowed = (allowed & np.asarray(extend_region, bool) & ~expected).astype(np.uint8)
        grown = occ.astype(np.uint8)
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        for _ in range(int(round(extend * iod))):
            step = cv2.dilate(grown, cross) & (allowed | grown)
            if np.array_equal(step, grown):
                break
            grown = step
        occ = grown.astype(bool)
    return _dilate(occ, grow * iod + 1.0)


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                               connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def _keep_sharp(occ: np.ndarray, ycc: np.ndarray, very_off: np.ndarray,
                search_region: np.ndarray, expected: np.ndarray, iod: float,
                min_contrast: float, min_fraction: float) -> np.ndarray:
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
    """
    occ8 = occ.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(occ8)
    if w == 0 or h == 0:
        return occ
    sigma = 0.04 * iod + 0.7
    pad = int(np.ceil(4.0 * sigma + 2.0))
    y0, x0 = max(y - pad, 0), max(x - pad, 0)
    box = (slice(y0, min(y + h + pad, occ.shape[0])), slice(x0, min(x + w + pad, occ.shape[1])))
    occ_b, region_b = occ[box], search_region[box]
    count, labels = cv2.connectedComponents(occ8[box], connectivity=8)
    weights = np.array([0.5, 1.0, 1.0], np.float32)
    inner_w = cv2.GaussianBlur(occ_b.astype(np.float32), (0, 0), sigma)
    outside = (~occ_b & region_b & ~expected[box]).astype(np.float32)
    outer_w = cv2.GaussianBlur(outside, (0, 0), sigma)
    ycc_b = ycc[box]
    inner = cv2.GaussianBlur(ycc_b * occ_b[..., None], (0, 0), sigma) / np.maximum(
        inner_w, 1e-6)[..., None]
    outer = cv2.GaussianBlur(ycc_b * outside[..., None], (0, 0), sigma) / np.maximum(
        outer_w, 1e-6)[..., None]
    contrast = np.sqrt((((inner - outer) * weights) ** 2).sum(-1))
    interior = cv2.erode(search_region.astype(np.uint8), _disk(2.0 * sigma))[box].astype(bool)
    outline = occ_b & ~cv2.erode(occ8[box], _disk(1)).astype(bool) & interior
    outline &= outer_w > 0.2  # skip outline along eyes, brows, mouth: nothing to compare
    ring_labels = labels[outline]
    ring_px = np.bincount(ring_labels, minlength=count)
    sharp_px = np.bincount(ring_labels, weights=contrast[outline] > min_contrast,
                           minlength=count)
    area = np.bincount(labels.ravel(), minlength=count)
    off_px = np.bincount(labels.ravel(), weights=very_off[box].ravel(), minlength=count)
    region_px = max(int(search_region.sum()), 1)
    judged = ring_px >= 8
    keep = np.where(judged, sharp_px >= min_fraction * np.maximum(ring_px, 1),
                    (area > 0.5 * region_px) | (off_px >= 0.5 * area))
    keep[0] = False
    out = np.zeros_like(occ)
    out[box] = keep[labels]
    return out


def cut_occluders(mask: np.ndarray, occluders: np.ndarray, *, feather_px: float = 1.5
                  ) -> np.ndarray:
    """The mask with occluders removed: exactly 0 on every occluder pixel, with a short
    Gaussian ramp (`feather_px`) outside them so the cut has no hard step."""
    if not occluders.any():
        return mask
    keep_out = _feather(occluders, -_EDGE_Z * feather_px - 0.5, feather_px)
    keep_out[occluders] = 1.0
    return _clean_alpha(mask * (1.0 - keep_out))


# --------------------------------------------------------------------------------------------
# 5. Eyes and brows
# --------------------------------------------------------------------------------------------


def eye_keep_mask(shape: tuple[int, int], actor_landmarks: Landmarks | FaceGeometry, *,
                  width_margin: float = 0.0, lid_margin: float = 0.0, feather: float = 0.03
                  ) -> np.ndarray:
    """Float H x W: feathered ellipses over the actor's eye openings.

    Each ellipse is aligned with the eye's corners; it is (1 + `width_margin`) eye widths
    wide and reaches `lid_margin` eye widths above and below the opening. It is exactly 1
    inside the ellipse; the Gaussian edge (sigma = `feather` eye widths) lies outside it.
    The defaults keep just the opening, corner to corner (iris, gaze, the lid margins in a
    blink). The old ellipses (0.1 / 0.12 / 0.06) also took the actor's lids and drew
    "goggles", and kept the actor's identity around the eyes: on orig.webm with mark.jpg
    (30 frames) id_dist_source 0.505 -> 0.479 with these, gaze error 0.043 -> 0.048 eye
    widths; no actor eyes at all gives 0.444 but a frozen stare (gaze error 0.109).
    """
    g = face_geometry(actor_landmarks)
    out = np.zeros(shape, np.float32)
    for eye in g.eye_contours:
        x_proj = eye @ g.x_axis
        y_proj = eye @ g.up
        width = max(float(x_proj.max() - x_proj.min()), 1.0)
        opening = float(y_proj.max() - y_proj.min())
        centre = eye.mean(0)
        half_w = 0.5 * width * (1.0 + width_margin)
        half_h = 0.5 * opening + lid_margin * width
        angle = float(np.degrees(np.arctan2(g.x_axis[1], g.x_axis[0])))
        hard = _draw_ellipse(np.zeros(shape, np.uint8), centre, (half_w, half_h), angle)
        sigma = feather * width
        out = np.maximum(out, _feather(hard > 0, -2.5 * sigma, sigma))
    return out


def _draw_ellipse(canvas: np.ndarray, centre: np.ndarray, axes: tuple[float, float],
                  angle_deg: float) -> np.ndarray:
    cx, cy = (int(round(v * 16)) for v in centre)
    ax, ay = (max(int(round(v * 16)), 1) for v in axes)
    cv2.ellipse(canvas, (cx, cy), (ax, ay), angle_deg, 0, 360, 1, -1, cv2.LINE_8, 4)
    return canvas


def keep_actor_eyes(mask: np.ndarray, actor_landmarks: Landmarks | FaceGeometry, *,
                    strength: float = 1.0, **options: float) -> np.ndarray:
    """The blend mask with the actor's eyes cut out (`eye_keep_mask`), so blinks and gaze
    come from the actor's frame rather than from the fitted model. Double brows are handled
    separately by `remove_double_brows`."""
    keep = eye_keep_mask(mask.shape, actor_landmarks, **options)
    return _clean_alpha(mask * (1.0 - strength * keep))


def close_rendered_eyes(render: np.ndarray, eyeballs: np.ndarray, keep: np.ndarray,
                        radius_px: float = 3.0) -> np.ndarray:
    """The render with its eyeballs painted over with the surrounding skin wherever the
    actor's eye opening is not kept (`keep` < 0.5).

    The actor's opening is shown from the actor's frame (`keep_actor_eyes`); when the
    source's eyes are open wider than the actor's (a wide-eyed photo on a narrow-eyed
    actor), the rendered eyeballs showed above and below it as dark spots. Closing them to
    the actor's opening leaves only skin around it. `render` H x W x 3 float, `eyeballs` the
    render's eyeball region (float or bool), `keep` the eye keep mask."""
    exposed = (np.asarray(eyeballs, np.float32) > 0.25) & (np.asarray(keep) < 0.5)
    if not exposed.any():
        return render
    exposed = _dilate(exposed, 1.0)
    image = (np.clip(render, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    filled = cv2.inpaint(image, exposed.astype(np.uint8), radius_px, cv2.INPAINT_TELEA)
    out = np.asarray(render, np.float32).copy()
    out[exposed] = filled[exposed].astype(np.float32) / 255.0
    return out


@dataclass
class BrowReport:
    """What `remove_double_brows` did: brow pixels left visible by the mask before, brow
    pixels the mask now covers, and pixels inpainted (where the render does not reach)."""

    exposed_px: int = 0
    covered_px: int = 0
    inpainted_px: int = 0


def brow_band(shape: tuple[int, int], landmarks: Landmarks | FaceGeometry, *,
              thickness: float = 0.16, margin: float = 0.04) -> np.ndarray:
    """Bool H x W: the brows as thick polylines (`thickness` IOD) dilated by `margin` IOD."""
    g = face_geometry(landmarks)
    out = np.zeros(shape, np.uint8)
    for brow in g.brows:
        pts = np.round(brow * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, 1, thickness=max(int(round(thickness * g.iod)), 1),
                      lineType=cv2.LINE_8, shift=4)
    return _dilate(out, margin * g.iod)


def remove_double_brows(frame: np.ndarray, mask: np.ndarray, coverage: np.ndarray,
                        actor_landmarks: Landmarks | FaceGeometry,
                        swapped_landmarks: Landmarks | FaceGeometry | None = None, *,
                        feather: float = 0.05, visible_below: float = 0.95,
                        min_exposed: float = 0.05
                        ) -> tuple[np.ndarray, np.ndarray, BrowReport]:
    """Make sure the actor's brows do not show as a second pair above (or beside) the
    swapped face's brows.

    Actor brow pixels (`brow_band` of the actor's landmarks, minus those on the swapped
    face's own brows when `swapped_landmarks` is given: a brow under a brow is no second
    pair) that the mask leaves visible are "exposed". When they are more than `min_exposed`
    of the band, the mask is extended over the band where the render covers it (the swapped
    face's forehead then hides them); brow pixels the render does not reach are inpainted
    from the surrounding forehead skin (cv2.inpaint, Telea). Returns (base frame to blend
    onto, new mask, report); the base equals `frame` except on inpainted pixels.
    """
    g = face_geometry(actor_landmarks)
    shape = mask.shape
    band = brow_band(shape, g)
    band_px = max(int(band.sum()), 1)
    if swapped_landmarks is not None:
        band &= ~brow_band(shape, swapped_landmarks, margin=0.08)
    exposed = band & (mask < visible_below)
    report = BrowReport(exposed_px=int(exposed.sum()))
    if report.exposed_px < min_exposed * band_px:
        return frame, mask, report
    sigma = feather * g.iod
    covered = np.asarray(coverage) >= 0.5
    # the band grown by the edge width, joined to the mask's core so no dip is left between
    extension = _dilate(exposed, 5.0 * sigma) | (mask >= 0.5)
    extension = cv2.morphologyEx(extension.astype(np.uint8), cv2.MORPH_CLOSE,
                                 _disk(3.0 * sigma)).astype(bool) & covered
    extra = _feather(extension, 2.5 * sigma, sigma) * coverage
    new_mask = _clean_alpha(np.maximum(mask, extra))
    report.covered_px = int((exposed & (new_mask >= visible_below)).sum())
    still = exposed & (new_mask < visible_below)
    if still.sum() < min_exposed * band_px:
        return frame, new_mask, report
    hole = _dilate(still, 0.03 * g.iod + 1.0)
    frame8 = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    filled = cv2.inpaint(frame8, hole.astype(np.uint8), max(3.0, 0.1 * g.iod), cv2.INPAINT_TELEA)
    base = frame.copy()
    base[hole] = filled[hole].astype(np.float32) / 255.0
    report.inpainted_px = int(hole.sum())
    return base, new_mask, report


# --------------------------------------------------------------------------------------------
# 6. Mouth interior
# --------------------------------------------------------------------------------------------


def mouth_openness(landmarks: Landmarks | FaceGeometry) -> float:
    """Inner-lip gap over mouth width (0 closed, ~0.1 teeth showing, ~0.5 wide open)."""
    g = face_geometry(landmarks)
    return g.mouth_opening / g.mouth_width


def mouth_keep_mask(shape: tuple[int, int], actor_landmarks: Landmarks | FaceGeometry, *,
                    feather: float = 0.03) -> np.ndarray:
    """Float H x W: inside the actor's inner lip contour, feathered inwards.

    The Gaussian edge (sigma = `feather` mouth widths) is centred 1.2 sigma inside the
    contour, so the swapped lips keep their edge and alpha is exactly 1 deeper inside.
    """
    g = face_geometry(actor_landmarks)
    hard = _fill_polygon(shape, g.inner_lip)
    sigma = max(feather * g.mouth_width, 0.5)
    return _feather(hard, 1.2 * sigma, sigma)


def keep_actor_mouth(mask: np.ndarray, actor_landmarks: Landmarks | FaceGeometry, *,
                     threshold: float = 0.08, ramp: float = 0.04,
                     teeth_region: np.ndarray | None = None,
                     within: np.ndarray | None = None
                     ) -> tuple[np.ndarray, float]:
    """The blend mask with the actor's open mouth interior cut out, and the keep weight.

    Blend choice: the actor's own mouth interior (teeth, tongue, darkness) is the default
    source because it is a real photo and in sync with the speech; a model's rendered teeth
    are rigid and rarely lit right. The weight ramps from 0 at `threshold` openness to 1 at
    `threshold + ramp`, so a mouth that opens slowly does not pop. When `teeth_region`
    (the render's teeth mask) is given, the render's teeth are kept there instead. `within`
    (float H x W in [0, 1], e.g. `rendered_mouth_opening`) limits the cut to where the
    swapped face's own mouth is open.
    """
    openness = mouth_openness(actor_landmarks)
    weight = float(np.clip((openness - threshold) / max(ramp, 1e-6), 0.0, 1.0))
    if weight == 0.0:
        return mask, 0.0
    keep = weight * mouth_keep_mask(mask.shape, actor_landmarks)
    if teeth_region is not None:
        keep = keep * (1.0 - np.clip(np.asarray(teeth_region, np.float32), 0.0, 1.0))
    if within is not None:
        keep = keep * np.clip(np.asarray(within, np.float32), 0.0, 1.0)
    return _clean_alpha(mask * (1.0 - keep)), weight


def rendered_mouth_parts(regions: Mapping[str, np.ndarray], shape: tuple[int, int]
                         ) -> np.ndarray:
    """Bool H x W: the render's mouth lining, teeth and tongue pixels."""
    inside = np.zeros(shape, bool)
    for name in ("mouth_interior", "teeth", "tongue"):
        if name in regions:
            inside |= np.asarray(regions[name]) > 0.5
    return inside


def rendered_mouth_opening(regions: Mapping[str, np.ndarray], mouth_width_px: float,
                           margin: float = 0.02, sigma_px: float = 1.0) -> np.ndarray:
    """Float H x W: where the render shows its mouth lining, teeth or tongue, grown by
    `margin` mouth widths and softened: the swapped face's own mouth opening.

    Why: the source's face shape moves the swapped mouth (nggyup.mp4 with mark.jpg: 0.19
    mouth widths lower than the actor's, with khabenskii.jpg 0.10), so the actor's interior
    kept where it is showed over the swapped upper lip: a second, dark mouth. Kept only
    inside the swapped opening it frames nothing but the real teeth and darkness.
    """
    inside = rendered_mouth_parts(regions, next(iter(regions.values())).shape[:2])
    if not inside.any():
        return inside.astype(np.float32)
    grown = _dilate(inside, margin * mouth_width_px).astype(np.float32)
    return np.clip(cv2.GaussianBlur(grown, (0, 0), sigma_px), 0.0, 1.0)


def drop_rendered_mouth(mask: np.ndarray, regions: Mapping[str, np.ndarray],
                        sigma_px: float = 1.0, strength: float = 1.0) -> np.ndarray:
    """The blend mask without the render's mouth interior, teeth and tongue (those pixels
    show the actor's frame). The actor's inner-lip outline and the render's never agree exactly: a
    band of the render's mouth lining (grey) or teeth (white) showed between the actor's
    mouth and the swapped lips. Applied with the open mouth's keep weight (`strength`): on a
    closed mouth it cut the swapped lips apart and the output's mouth read as open
    (orig.webm, mark.jpg: mar_corr 0.77 with it always on, 0.82 open-only)."""
    inside = rendered_mouth_parts(regions, mask.shape)
    if not inside.any():
        return mask
    soft = cv2.GaussianBlur(_dilate(inside, 2).astype(np.float32), (0, 0), sigma_px)
    return _clean_alpha(mask * (1.0 - strength * np.clip(soft, 0.0, 1.0)))


# --------------------------------------------------------------------------------------------
# 7. The blend
# --------------------------------------------------------------------------------------------


def picture_area(frame: np.ndarray, roi: tuple[int, int, int, int], dark: float = 0.08
                 ) -> np.ndarray:
    """(ROI h x w) bool: the ROI's pixels inside the picture, i.e. not on a letterbox or
    pillarbox bar. A bar is a run of whole frame columns (rows) from the frame's border that
    are darker than `dark` (0..1) in every pixel. A face next to a pillarbox must stop at the
    picture's edge instead of spilling a swapped cheek into the bar (where the occluder
    detector would bite a black notch out of it). Dark hair or a dark scene is not dark over
    the whole frame height."""
    x0, y0, x1, y1 = roi
    limit = dark * (255.0 if frame.dtype == np.uint8 else 1.0)

    def span(profile: np.ndarray) -> tuple[int, int]:
        bright = np.flatnonzero(profile > limit)
        return (int(bright[0]), int(bright[-1]) + 1) if len(bright) else (0, len(profile))

    h, w = frame.shape[:2]
    rows = np.ascontiguousarray(frame).reshape(h, w * 3)  # fast contiguous reductions
    left, right = span(rows.max(axis=0).reshape(w, 3).max(axis=1))
    top, bottom = span(rows.max(axis=1))
    ys, xs = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)


def composite(frame: np.ndarray, render: np.ndarray, mask: np.ndarray, *,
              base: np.ndarray | None = None,
              method: Literal["alpha", "poisson"] = "alpha") -> np.ndarray:
    """Blend `render` over the frame with alpha `mask`: ``base (1 - a) + render a``.

    `base` is the frame to blend onto (default `frame`; `remove_double_brows` gives one with
    the actor's brows inpainted). Pixels with alpha 0 are copied from `base` untouched, so
    they are bit-identical to the input frame outside the inpainted area.

    "alpha" (default) is stable over time: with colour matching it has no frame-to-frame
    state to drift. "poisson" first runs cv2.seamlessClone (gradient-domain, 8-bit) of the
    render into the base over the mask's core, which hides colour seams on a single image
    but can flicker in video because every frame solves its own boundary problem.
    """
    frame = _check_image("frame", frame)
    shape = frame.shape[:2]
    render = _check_image("render", render, shape)
    mask = _check_mask("mask", mask, shape)
    base = frame if base is None else _check_image("base", base, shape)
    if method not in ("alpha", "poisson"):
        raise ValueError(f"method must be 'alpha' or 'poisson', got {method!r}")
    out = base.copy()
    sel = mask > 0
    if not sel.any():
        return out
    if method == "poisson":
        render = _poisson_source(base, render, mask)
    a = mask[sel][:, None]
    out[sel] = base[sel] * (1.0 - a) + render[sel] * a
    return out


def _poisson_source(base: np.ndarray, render: np.ndarray, mask: np.ndarray) -> np.ndarray:
    core = (mask > 0.5).astype(np.uint8)
    core[[0, -1], :] = 0
    core[:, [0, -1]] = 0
    core = cv2.erode(core, _disk(1))
    if core.sum() < 16:
        return render
    ys, xs = np.nonzero(core)
    y0, y1, x0, x1 = ys.min() - 1, ys.max() + 2, xs.min() - 1, xs.max() + 2
    src = np.clip(np.rint(render[y0:y1, x0:x1] * 255), 0, 255).astype(np.uint8)
    dst = np.clip(np.rint(base * 255), 0, 255).astype(np.uint8)
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    cloned = cv2.seamlessClone(src, dst, core[y0:y1, x0:x1] * 255, centre, cv2.NORMAL_CLONE)
    out = render.copy()
    out[core > 0] = cloned[core > 0].astype(np.float32) / 255.0
    return out


# --------------------------------------------------------------------------------------------
# Per-clip driver
# --------------------------------------------------------------------------------------------


@dataclass
class FrameInputs:
    """Everything the compositor needs for one frame (pixels).

    frame: H x W x 3, float32 in [0, 1] or uint8 (the output has the frame's dtype; uint8
    frames are converted only around the face). regions: optional rendered region masks of
    the swapped face (`morph3d.model.REGIONS` names: face_skin, eyes, lips, mouth_interior,
    teeth, eyeballs, ...). actor_render and actor_coverage: optional render of the actor's
    OWN fit, for the occluder detector. window: (x, y) frame position of the top-left pixel
    of render, coverage, regions and actor_* when they cover only a window of the frame
    (the renderer's face crop; outside it they count as empty); None: full-frame arrays.
    """

    frame: np.ndarray
    render: np.ndarray
    coverage: np.ndarray
    actor_landmarks: Landmarks | FaceGeometry
    swapped_landmarks: Landmarks | FaceGeometry
    regions: Mapping[str, np.ndarray] | None = None
    actor_render: np.ndarray | None = None
    actor_coverage: np.ndarray | None = None
    window: tuple[int, int] | None = None


def _in_roi(array: np.ndarray, origin: tuple[int, int], roi: tuple[int, int, int, int]
            ) -> np.ndarray:
    """The part of `array` (whose top-left pixel sits at frame position `origin`) under the
    frame rectangle `roi` = (x0, y0, x1, y1), zero where the array does not reach."""
    ox, oy = origin
    x0, y0, x1, y1 = roi
    h, w = array.shape[:2]
    if ox <= x0 and oy <= y0 and x1 <= ox + w and y1 <= oy + h:
        return array[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    out = np.zeros((y1 - y0, x1 - x0, *array.shape[2:]), array.dtype)
    ax0, ay0 = max(x0, ox), max(y0, oy)
    ax1, ay1 = min(x1, ox + w), min(y1, oy + h)
    if ax1 > ax0 and ay1 > ay0:
        out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = array[ay0 - oy:ay1 - oy, ax0 - ox:ax1 - ox]
    return out


@dataclass
class CompositorConfig:
    """Knobs of `FaceCompositor`; lengths are in IOD (inter-ocular distances) unless named
    _px. Momenta are the weight of the previous frame's value in a moving average."""

    # Band of forehead above the brows taken from the render, in IOD. 0.65 rather than 0.35:
    # the source's forehead carries identity that the actor's (skin or fringe) does not
    # (`morph3d.evaluate`, orig.webm, 66 frames, id_dist_source with mark.jpg / khabenskii.jpg:
    # 0.35 0.433 / 0.498, 0.55 0.396 / 0.484, 0.65 0.379 / 0.482 (0.383 / 0.484 in a second
    # run); gaze, jitter, mar_corr and id_dist_target within run-to-run spread; nggyup.mp4 +
    # mark.jpg 0.476 -> 0.461, swap rate 0.99 -> 1.00). Beyond 0.65 the gain flattens (proxy
    # on every 3rd frame: 0.8 about as 0.65) while more hair is painted over.
    forehead_margin: float = 0.65
    # Gaussian edge of the face mask, in IOD. 0.03 rather than 0.05: less of the actor's face
    # is blended in at the border (id_dist_source on orig.webm 0.467 -> 0.434 with mark.jpg,
    # 0.504 -> 0.498 with khabenskii.jpg, nggyup 0.479 -> 0.476; mar_corr 0.84 -> 0.82 and
    # added jitter +0.0007 on orig/mark).
    feather: float = 0.03
    adapt_width: bool = True
    # What bounds the face mask: "swapped", the swapped face's outline (jaw, brows lifted by
    # `forehead_margin`), adapted to the width difference; "coverage", the render's coverage
    # alone, for renders that are the frame itself wherever they cover it
    # (`morph3d.transfer`: the warped frame, which meets the original at its edge).
    region: Literal["swapped", "coverage"] = "swapped"
    width_momentum: float = 0.8
    mask_momentum: float = 0.3
    colour_match: bool = True
    colour_momentum: float = 0.8
    # Share of the source's own skin tone kept by the colour matching
    # (`ColourState.gains`); lightness always follows the actor. (With the earlier Lab
    # transfer, keeping half moved identity towards the source on orig.webm but tinted the
    # face against the actor's neck and cost nggyup's mar_corr 0.893 -> 0.868.)
    colour_keep_chroma: float = 0.0
    occluders: bool = True
    keep_eyes: bool = True
    # Paint the render's eyeballs outside the actor's kept opening over with skin
    # (`close_rendered_eyes`). It removes the dark spots a wide-eyed source leaves above a
    # narrow-eyed actor's eyes (orig.webm + mark.jpg: id_dist_source 0.434 -> 0.431), but on
    # nggyup.mp4 + mark.jpg it cost identity (0.476 -> 0.489), blinks (ear_corr 0.58 -> 0.33)
    # and gaze (0.048 -> 0.058 eye widths); leaving 0.15 eye widths above and below the
    # opening as rendered was no better (0.484, 0.60, 0.053). Off by default.
    close_rendered_eyes: bool = False
    remove_brows: bool = True
    keep_mouth: bool = True
    mouth_threshold: float = 0.08
    mouth_source: Literal["actor", "render_teeth"] = "actor"
    # Keep the actor's mouth interior only where the swapped face's own mouth is open
    # (`rendered_mouth_opening`): no second mouth over the swapped lips. nggyup.mp4:
    # mar_corr 0.893 -> 0.929 (mark.jpg), 0.875 -> 0.902 (khabenskii.jpg), identity 0.461 ->
    # 0.461 / 0.454 -> 0.445; but orig.webm, whose small openings the swapped mouth follows
    # less, 0.839 -> 0.798 / 0.802 -> 0.683 (identity 0.383 -> 0.380 / 0.484 -> 0.483).
    mouth_within_render: bool = True
    # Show the actor's frame where the render shows its mouth lining, teeth or tongue
    # (`drop_rendered_mouth`). Off: it hid a grey band of rendered tongue in open mouths but
    # cost the mouth's motion and identity in `morph3d eval` (nggyup.mp4 with mark.jpg:
    # mar_corr 0.88 off vs 0.78 on, id_dist_source 0.479 vs 0.487, swap rate 0.99 vs 0.97).
    drop_rendered_mouth: bool = False
    method: Literal["alpha", "poisson"] = "alpha"
    roi_pad: float = 0.6


@dataclass
class CompositeReport:
    """What happened on one frame. `alpha` (final blend mask) and `occluders` give
    full-frame arrays for debugging and tests (kept as ROI crops until asked for);
    `summary()` has the scalars only."""

    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 of the processed crop
    mask: MaskReport
    brows: BrowReport
    occluder_px: int
    mouth_openness: float
    mouth_weight: float
    colour_gain: list[float] | None  # per linear-RGB channel
    mask_smoothed: bool
    frame_shape: tuple[int, int] = (0, 0)
    alpha_roi: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32),
                                  repr=False)
    occluders_roi: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool),
                                      repr=False)

    def _full(self, roi_array: np.ndarray) -> np.ndarray:
        out = np.zeros(self.frame_shape, roi_array.dtype)
        x0, y0, x1, y1 = self.roi
        out[y0:y1, x0:x1] = roi_array.reshape(y1 - y0, x1 - x0)
        return out

    @property
    def alpha(self) -> np.ndarray:
        return self._full(self.alpha_roi)

    @property
    def occluders(self) -> np.ndarray:
        return self._full(self.occluders_roi)

    def summary(self) -> dict:
        skip = ("alpha_roi", "occluders_roi", "frame_shape")
        return {f.name: (asdict(v) if is_dataclass(v) else v)
                for f in fields(self) if f.name not in skip
                for v in [getattr(self, f.name)]}


class FaceCompositor:
    """Composites one face track, frame after frame, carrying the per-clip state: the colour
    statistics' moving average, the smoothed width ratio, and the previous mask (warped by the
    actor's landmark motion and averaged in, so the mask edge does not shimmer)."""

    def __init__(self, config: CompositorConfig | None = None) -> None:
        self.config = config or CompositorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the clip's state (call at a shot cut or a new track)."""
        self.colour_state: ColourState | None = None
        self.width_ratio: float | None = None
        self._previous_mask: np.ndarray | None = None  # the last ROI's mask
        self._previous_origin: tuple[int, int] = (0, 0)  # its top-left frame pixel
        self._previous_landmarks: np.ndarray | None = None  # actor ibug68, full frame

    def process(self, inputs: FrameInputs) -> tuple[np.ndarray, CompositeReport]:
        cfg = self.config
        frame = np.asarray(inputs.frame)
        as_bytes = frame.dtype == np.uint8
        if not as_bytes:
            frame = _check_image("frame", frame)
        elif frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"frame must be H x W x 3, got {frame.shape}")
        shape = frame.shape[:2]
        origin = inputs.window if inputs.window is not None else (0, 0)
        wshape = shape if inputs.window is None else np.shape(inputs.render)[:2]
        render = _check_image("render", inputs.render, wshape)
        coverage = _check_mask("coverage", inputs.coverage, wshape)
        actor = face_geometry(inputs.actor_landmarks)
        swapped = face_geometry(inputs.swapped_landmarks)

        x0, y0, x1, y1 = roi = self._roi(shape, actor, swapped)
        if x1 - x0 < 2 or y1 - y0 < 2:  # the face is outside the frame: nothing to do
            return frame.copy(), CompositeReport(
                roi=roi, mask=MaskReport(1.0, 0.0, 0.0, 0.0), brows=BrowReport(),
                occluder_px=0, mouth_openness=0.0, mouth_weight=0.0, colour_gain=None,
                mask_smoothed=False, frame_shape=shape,
                alpha_roi=np.zeros((y1 - y0, x1 - x0), np.float32),
                occluders_roi=np.zeros((y1 - y0, x1 - x0), bool))
        crop = (slice(y0, y1), slice(x0, x1))
        offset = np.array([-x0, -y0], np.float64)
        f = frame[crop].astype(np.float32) / 255.0 if as_bytes else frame[crop]
        r = _in_roi(render, origin, roi)
        cov = np.clip(_in_roi(coverage, origin, roi), 0.0, 1.0)
        a_geo, s_geo = actor.shifted(offset), swapped.shifted(offset)
        cshape = f.shape[:2]
        regions = None
        if inputs.regions is not None:
            regions = {k: _in_roi(_check_mask(f"region '{k}'", v, wshape), origin, roi)
                       for k, v in inputs.regions.items() if v is not None}

        # 1-2. face mask, adapted to the width difference (ratio smoothed over time)
        ratio = face_width_ratio(s_geo, a_geo) if cfg.adapt_width else 1.0
        if cfg.adapt_width and self.width_ratio is not None:
            ratio = cfg.width_momentum * self.width_ratio + (1 - cfg.width_momentum) * ratio
        self.width_ratio = ratio
        if cfg.region == "coverage":
            mask = face_mask(cov, s_geo, feather=cfg.feather, region=cov >= 0.5)
            mask_report = MaskReport(float(ratio), 0.0, 0.0, cfg.feather * s_geo.iod)
        else:
            mask, mask_report = adaptive_face_mask(
                cov, s_geo, a_geo, forehead_margin=cfg.forehead_margin, feather=cfg.feather,
                width_ratio=ratio)

        # brows: cover or inpaint the actor's brows that stick out above the mask
        base, brow_report = f, BrowReport()
        if cfg.remove_brows:
            base, mask, brow_report = remove_double_brows(f, mask, cov, a_geo, s_geo,
                                                          feather=cfg.feather)

        # temporal smoothing of the mask edge (before the cuts, which must stay exact)
        mask, smoothed = self._smooth_mask(mask, actor, (x0, y0), cov)
        mask = mask * picture_area(frame, roi)
        self._previous_mask, self._previous_origin = mask.copy(), (x0, y0)
        self._previous_landmarks = actor.ibug.copy()

        # occluders, eyes, mouth
        expected = expected_non_skin(cshape, a_geo, s_geo, regions=regions)
        occ = np.zeros(cshape, bool)
        if cfg.occluders:
            actor_render = actor_cov = None
            if inputs.actor_render is not None:
                actor_render = _in_roi(_check_image("actor_render", inputs.actor_render,
                                                    wshape), origin, roi)
                if inputs.actor_coverage is not None:
                    actor_cov = _in_roi(_check_mask("actor_coverage", inputs.actor_coverage,
                                                    wshape), origin, roi)
            occ = detect_occluders(f, a_geo, expected=expected, actor_render=actor_render,
                                   actor_coverage=actor_cov, extend_region=mask > 0)
            mask = cut_occluders(mask, occ)
        if cfg.keep_eyes:
            mask = keep_actor_eyes(mask, a_geo)
            if cfg.close_rendered_eyes and regions is not None and "eyeballs" in regions:
                r = close_rendered_eyes(r, regions["eyeballs"], eye_keep_mask(cshape, a_geo))
        openness, mouth_weight = mouth_openness(a_geo), 0.0
        if cfg.keep_mouth:
            teeth = None
            if cfg.mouth_source == "render_teeth" and regions is not None:
                teeth = regions.get("teeth")
            within = None
            if cfg.mouth_within_render and regions is not None:
                within = rendered_mouth_opening(regions, s_geo.mouth_width)
            mask, mouth_weight = keep_actor_mouth(mask, a_geo, threshold=cfg.mouth_threshold,
                                                  teeth_region=teeth, within=within)
            if (cfg.drop_rendered_mouth and cfg.mouth_source == "actor"
                    and regions is not None and mouth_weight > 0):
                mask = drop_rendered_mouth(mask, regions, strength=mouth_weight)

        # colour
        gain = None
        if cfg.colour_match:
            skin = (mask > 0.5) & ~expected & ~occ
            if regions is not None and "face_skin" in regions:
                skin &= regions["face_skin"] > 0.5
            r, self.colour_state = match_colour(r, f, skin, state=self.colour_state,
                                                momentum=cfg.colour_momentum,
                                                keep_chroma=cfg.colour_keep_chroma)
            if self.colour_state is not None:
                gain = self.colour_state.gains(cfg.colour_keep_chroma).tolist()

        out_crop = composite(f, r, mask, base=base, method=cfg.method)
        out = frame.copy()
        if as_bytes:
            out[crop] = (np.clip(out_crop, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            out[crop] = out_crop
        report = CompositeReport(
            roi=roi, mask=mask_report, brows=brow_report,
            occluder_px=int(occ.sum()), mouth_openness=float(openness),
            mouth_weight=float(mouth_weight), colour_gain=gain,
            mask_smoothed=smoothed, frame_shape=shape, alpha_roi=mask, occluders_roi=occ)
        return out, report

    def _roi(self, shape: tuple[int, int], actor: FaceGeometry, swapped: FaceGeometry
             ) -> tuple[int, int, int, int]:
        """Crop around both faces, padded for the feathers, the mask's growth, the brow
        extension and occluders reaching past the outline (all well under `roi_pad` IOD)."""
        pad = self.config.roi_pad * max(actor.iod, swapped.iod) + 8
        points = np.concatenate([actor.face_polygon(self.config.forehead_margin + 0.2),
                                 swapped.face_polygon(self.config.forehead_margin + 0.2)])
        lo, hi = points.min(0) - pad, points.max(0) + pad
        x0 = int(np.clip(np.floor(lo[0]), 0, shape[1]))
        y0 = int(np.clip(np.floor(lo[1]), 0, shape[0]))
        x1 = int(np.clip(np.ceil(hi[0]) + 1, x0, shape[1]))
        y1 = int(np.clip(np.ceil(hi[1]) + 1, y0, shape[0]))
        return x0, y0, x1, y1

    def _smooth_mask(self, mask: np.ndarray, actor: FaceGeometry, origin: tuple[int, int],
                     coverage: np.ndarray) -> tuple[np.ndarray, bool]:
        """Average in the previous mask, moved by the similarity transform that best maps the
        previous actor landmarks onto the current ones. Skipped after a jump (residual over
        0.05 IOD or scale change over 15 %) so a cut or a fast turn does not leave a ghost."""
        k = self.config.mask_momentum
        if k <= 0 or self._previous_mask is None or self._previous_landmarks is None:
            return mask, False
        prev_pts = self._previous_landmarks.astype(np.float32)
        cur_pts = actor.ibug.astype(np.float32)
        matrix, _ = cv2.estimateAffinePartial2D(prev_pts, cur_pts, method=cv2.LMEDS)
        if matrix is None:
            return mask, False
        moved = prev_pts @ matrix[:, :2].T + matrix[:, 2]
        residual = float(np.median(np.linalg.norm(moved - cur_pts, axis=1)))
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        if residual > 0.05 * actor.iod or abs(scale - 1.0) > 0.15:
            return mask, False
        matrix = matrix.astype(np.float64)
        # previous ROI pixel -> frame -> moved -> current ROI pixel
        matrix[:, 2] += matrix[:, :2] @ np.asarray(self._previous_origin, np.float64)
        matrix[:, 2] -= origin
        h, w = mask.shape
        warped = cv2.warpAffine(self._previous_mask, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        smoothed = (1.0 - k) * mask + k * warped
        return _clean_alpha(smoothed * (coverage > 0)), True
