"""Eyes, brows and mouth: the actor's own eyes and open mouth kept, the rendered ones closed or
dropped, double brows covered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from morph3d.composite.masks import (
    FaceGeometry,
    Landmarks,
    _clean_alpha,
    _dilate,
    _disk,
    _feather,
    _fill_polygon,
    face_geometry,
)

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
