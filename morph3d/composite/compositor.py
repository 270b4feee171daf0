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

from morph3d.composite.blend import composite, picture_area
from morph3d.composite.colour import ColourState, match_colour
from morph3d.composite.features import (
    BrowReport,
    close_rendered_eyes,
    drop_rendered_mouth,
    eye_keep_mask,
    keep_actor_eyes,
    keep_actor_mouth,
    mouth_openness,
    remove_double_brows,
    rendered_mouth_opening,
)
from morph3d.composite.masks import (
    FaceGeometry,
    Landmarks,
    MaskReport,
    _check_image,
    _check_mask,
    _clean_alpha,
    adaptive_face_mask,
    expected_non_skin,
    face_geometry,
    face_mask,
    face_width_ratio,
)
from morph3d.composite.occluders import cut_occluders, detect_occluders
from morph3d.errors import InputError

# --------------------------------------------------------------------------------------------
# Per-clip driver
# --------------------------------------------------------------------------------------------


@dataclass
class FrameInputs:
    """Everything the compositor needs for one frame (pixels).

    frame: H x W x 3, float32 in [0, 1] or uint8 (the output has the frame's dtype; uint8
    frames are converted only around the face). regions: optional rendered region masks of
    the swapped face (`morph3d.model.model.REGIONS` names: face_skin, eyes, lips, mouth_interior,
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
    # (`morph3d.swap.transfer`: the warped frame, which meets the original at its edge).
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
