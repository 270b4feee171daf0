"""Compositing the transferred face (`morph3d.swap.transfer`: the actor's frame warped into the
source's shape) back into the actor's frame.

Everything here is image processing on one frame at a time (numpy + OpenCV). The inputs per
frame are the original frame, the warped face with its coverage, optional region masks
rendered from the model, and 2D landmarks of the actor (detected) and of the swapped face
(projected). The blend is shaped entirely through one alpha mask, built in steps that each
have one job:

1. `face_mask`: the warp's coverage with a Gaussian edge whose width scales with the
   inter-ocular distance (IOD). The warped face is the frame itself wherever it covers it,
   so the mask reaches as far as the coverage does; the actor's eyes, mouth and brows are
   already in it where the source's face has them, and its tone is the albedo ratio's.
2. the previous frame's mask, moved by the actor's motion, averaged in (no shimmering edge),
   and nothing on a letterbox or pillarbox bar (`picture_area`).
3. `detect_occluders` / `cut_occluders`: hands, hair, microphones in front of the face stay;
   a hand has the actor's skin colour, so hands are also found by shape (`HandOccluders`).
4. `composite`: alpha blend; pixels where the final alpha is zero are bit-identical to the
   input frame.

`FaceCompositor` runs these steps on a crop around the face and carries the per-clip state
(the previous mask); a big face's mask edge is computed on a reduced copy of the crop
(`CompositorConfig.mask_iod`). All images are float32 RGB in [0, 1], H x W x 3; masks are float32
H x W in [0, 1]; landmarks are pixels (OpenCV convention), given as
``{"ibug68": (68, 2), "mediapipe478": (478, 2)}`` (either or both) or one array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import cv2
import numpy as np

from morph3d.composite.blend import (
    blend_into,
    blend_window_into,
    picture_area,
    picture_bounds,
)
from morph3d.composite.learned_occluders import HandOccluders
from morph3d.composite.masks import (
    NON_SKIN_REGIONS,
    FaceGeometry,
    Landmarks,
    _check_image,
    _check_mask,
    _clean_alpha,
    _covered_alpha,
    expected_non_skin,
    face_geometry,
    face_mask,
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
    teeth, eyeballs, ...), which the occluder detector does not take for occluders. window:
    (x, y) frame position of the top-left pixel of render, coverage and regions when they
    cover only a window of the frame (the renderer's face crop; outside it they count as
    empty); None: full-frame arrays.
    """

    frame: np.ndarray
    render: np.ndarray
    coverage: np.ndarray
    actor_landmarks: Landmarks | FaceGeometry
    swapped_landmarks: Landmarks | FaceGeometry
    regions: Mapping[str, np.ndarray] | None = None
    window: tuple[int, int] | None = None


def _check_region(name: str, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A region mask checked like `_check_mask`; a bool mask (the renderer's) stays bool
    (what `expected_non_skin` thresholds it to anyway), other types become float32."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        return _check_mask(name, mask, shape)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise InputError(f"{name} is {mask.shape}, expected {shape}")
    return mask


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


def _expected(shape: tuple[int, int], actor: FaceGeometry, swapped: FaceGeometry,
              non_skin: np.ndarray | None) -> np.ndarray:
    """`expected_non_skin` of both faces with the non-skin regions given as their union
    (bool, ROI)."""
    expected = expected_non_skin(shape, actor, swapped)
    if non_skin is not None:
        expected |= non_skin
    return expected


def _resampling(factor: tuple[float, float]) -> np.ndarray:
    """3 x 3: ROI pixel -> pixel of the ROI resampled by `factor` (x, y), as `cv2.resize`
    places pixel centres."""
    sx, sy = factor
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


@dataclass
class CompositorConfig:
    """Knobs of `FaceCompositor`; lengths are in IOD (inter-ocular distances). Momenta are
    the weight of the previous frame's value in a moving average."""

    # How far above the brows the crop reaches (with `roi_pad`): the warped face's forehead.
    forehead_margin: float = 0.65
    # Gaussian edge of the face mask: little of the actor's face is blended in at the border.
    feather: float = 0.03
    mask_momentum: float = 0.3
    occluders: bool = True  # False only to see what the cut does (tests, the probes)
    # Hands found by mediapipe's hand landmarks are occluders too (the colour cues miss a
    # hand: it has the face's skin colour). Off by default for its CPU cost (the swap's
    # `hand_occluders` option).
    hands: bool = False
    roi_pad: float = 0.6
    # A bigger face (the larger IOD, pixels) has its mask's edge and temporal average
    # computed on a copy of the crop resampled to this IOD, and its skin colour model
    # sampled on a grid of about that density: both vary over a fraction of an IOD, so a
    # big face gains nothing from its pixels there, while their cost grows with the
    # crop's area. The occluder search, the coverage, the picture's edge and the blend stay
    # at full resolution. None: everything at full resolution.
    mask_iod: float | None = 100.0


@dataclass
class CompositeReport:
    """What happened on one frame. `alpha` (final blend mask) and `occluders` give
    full-frame arrays for debugging and tests (kept as ROI crops until asked for);
    `summary()` has the scalars only."""

    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 of the processed crop
    feather_px: float  # sigma of the mask's edge
    occluder_px: int
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
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


class FaceCompositor:
    """Composites one face track, frame after frame, carrying the per-clip state: the
    previous mask (warped by the actor's landmark motion and averaged in, so the mask edge
    does not shimmer) and the hand tracker (started on the first frame; `close` ends it)."""

    def __init__(self, config: CompositorConfig | None = None) -> None:
        self.config = config or CompositorConfig()
        self._hands: HandOccluders | None = None
        self.reset()

    def close(self) -> None:
        """End the hand tracker's graph (the compositor starts a new one if used again)."""
        if self._hands is not None:
            self._hands.close()
            self._hands = None

    def reset(self) -> None:
        """Forget the clip's state (call at a shot cut or a new track)."""
        if self._hands is not None:
            self._hands.reset()
        self._previous_mask: np.ndarray | None = None  # the last ROI's mask
        self._previous_origin: tuple[int, int] = (0, 0)  # its top-left frame pixel
        self._previous_scale: tuple[float, float] = (1.0, 1.0)  # its pixels per ROI pixel
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
                roi=roi, feather_px=0.0, occluder_px=0, mask_smoothed=False,
                frame_shape=shape, alpha_roi=np.zeros((y1 - y0, x1 - x0), np.float32),
                occluders_roi=np.zeros((y1 - y0, x1 - x0), bool))
        crop = (slice(y0, y1), slice(x0, x1))
        offset = np.array([-x0, -y0], np.float64)
        f = frame[crop]  # bytes stay bytes: each step reads them / 255 where it needs them
        cov = np.clip(_in_roi(coverage, origin, roi), 0.0, 1.0)
        a_geo, s_geo = actor.shifted(offset), swapped.shifted(offset)
        non_skin = None  # the union of the non-skin regions (all `expected_non_skin` reads)
        if inputs.regions is not None:  # every one checked; only the non-skin ones are used
            checked = {k: _check_region(f"region '{k}'", v, wshape)
                       for k, v in inputs.regions.items() if v is not None}
            parts = [v if v.dtype == bool else v > 0.5 for k, v in checked.items()
                     if k in NON_SKIN_REGIONS]
            if parts:
                union = parts[0].copy()
                for part in parts[1:]:
                    union |= part
                non_skin = _in_roi(union, origin, roi)

        scale = self._work_scale(actor, swapped)
        if scale < 1.0:
            mask, occ, smoothed = self._reduced_mask(frame, f, cov, actor, a_geo, s_geo,
                                                     non_skin, roi, scale)
        else:
            mask, occ, smoothed = self._full_mask(frame, f, cov, actor, a_geo, s_geo, non_skin,
                                                  roi)

        # 4. the blend, written only where the mask is above zero (uint8: rounded)
        out = frame.copy()
        if as_bytes:  # the render read in place from its window
            blend_window_into(out[crop], render, (y0 - origin[1], x0 - origin[0]), mask)
        else:
            blend_into(out[crop], f, _in_roi(render, origin, roi), mask)
        report = CompositeReport(
            roi=roi, feather_px=float(cfg.feather * s_geo.iod), occluder_px=int(occ.sum()),
            mask_smoothed=smoothed, frame_shape=shape, alpha_roi=mask, occluders_roi=occ)
        return out, report

    def _work_scale(self, actor: FaceGeometry, swapped: FaceGeometry) -> float:
        """Pixels of the mask's working copy per ROI pixel (1: the ROI itself)."""
        limit = self.config.mask_iod
        if limit is None:
            return 1.0
        return min(1.0, float(limit) / max(actor.iod, swapped.iod))

    def _full_mask(self, frame: np.ndarray, f: np.ndarray, cov: np.ndarray,
                   actor: FaceGeometry, a_geo: FaceGeometry, s_geo: FaceGeometry,
                   non_skin: np.ndarray | None, roi: tuple[int, int, int, int]
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Steps 1-3 on the ROI itself: (alpha, occluders, whether the mask was smoothed)."""
        cfg = self.config
        x0, y0 = roi[:2]
        # 1. the warp's coverage, feathered
        mask = face_mask(cov, s_geo, cov >= 0.5, feather=cfg.feather)

        # 2. temporal smoothing of the mask edge (before the cuts, which must stay exact)
        mask, smoothed = self._smooth_mask(mask, actor, (x0, y0), (1.0, 1.0), cov)
        mask = mask * picture_area(frame, roi)
        self._previous_mask, self._previous_origin = mask.copy(), (x0, y0)
        self._previous_scale = (1.0, 1.0)
        self._previous_landmarks = actor.ibug.copy()

        # 3. occluders
        mask, occ = self._cut_occluders(frame, f, actor, a_geo, s_geo, non_skin, roi, mask)
        return mask, occ, smoothed

    def _reduced_mask(self, frame: np.ndarray, f: np.ndarray, cov: np.ndarray,
                      actor: FaceGeometry, a_geo: FaceGeometry, s_geo: FaceGeometry,
                      non_skin: np.ndarray | None, roi: tuple[int, int, int, int],
                      scale: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """Steps 1-3 with the mask's edge and its temporal average on a copy of the ROI
        resampled by `scale` (a big face): the edge varies over several of that copy's
        pixels, so linear interpolation brings it back. The coverage and the picture's edge
        are applied at full resolution, so the alpha is still exactly 0 where the warp is
        absent and on a bar. The occluders are found and cut at full resolution (whether a
        blob of hair counts as one turns on details a reduced copy does not keep); only
        their skin colour model takes every n-th pixel of every n-th row (n = 1 / scale,
        rounded)."""
        cfg = self.config
        x0, y0, x1, y1 = roi
        h, w = y1 - y0, x1 - x0
        low = (max(int(round(w * scale)), 2), max(int(round(h * scale)), 2))
        factor = (low[0] / w, low[1] / h)
        cov_low = cv2.resize(cov, low, interpolation=cv2.INTER_LINEAR)

        # 1. the warp's coverage, feathered (the edge's width is in IOD, so in either raster).
        # A hole of a pixel or two in the coverage can fall between the copy's samples: the
        # coverage's 3 x 3 minimum, sampled alike, marks it wherever it lies a pixel inside
        # the region (the outline itself stays where the coverage's own samples put it).
        region = cov_low >= 0.5
        square = np.ones((3, 3), np.uint8)
        low_min = cv2.resize(cv2.erode(cov, square), low, interpolation=cv2.INTER_LINEAR)
        region &= ~((low_min < 0.5) & cv2.erode(region.view(np.uint8), square).view(bool))
        s_low = s_geo.resampled(np.zeros(2), factor)
        mask_low = face_mask(cov_low, s_low, region, feather=cfg.feather)

        # 2. temporal smoothing, on the working copy (the state is kept in that raster)
        mask_low, smoothed = self._smooth_mask(mask_low, actor, (x0, y0), factor, cov_low)
        self._previous_mask, self._previous_origin = mask_low, (x0, y0)
        self._previous_scale = factor
        self._previous_landmarks = actor.ibug.copy()
        left, top, right, bottom = picture_bounds(frame)
        mask = _covered_alpha(cv2.resize(mask_low, (w, h), interpolation=cv2.INTER_LINEAR),
                              cov, (top - y0, bottom - y0), (left - x0, right - x0))

        # 3. occluders
        mask, occ = self._cut_occluders(frame, f, actor, a_geo, s_geo, non_skin, roi, mask,
                                        skin_step=int(round(1.0 / scale)))
        return mask, occ, smoothed

    def _cut_occluders(self, frame: np.ndarray, f: np.ndarray, actor: FaceGeometry,
                       a_geo: FaceGeometry, s_geo: FaceGeometry, non_skin: np.ndarray | None,
                       roi: tuple[int, int, int, int], mask: np.ndarray, skin_step: int = 1
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Step 3 on the ROI's alpha `mask`: (the alpha with the occluders cut, the
        occluders); `skin_step`: the skin colour model's sampling step
        (`detect_occluders`)."""
        cfg = self.config
        occ = np.zeros(mask.shape, bool)
        if cfg.occluders:
            expected = _expected(mask.shape, a_geo, s_geo, non_skin)
            occ = detect_occluders(f, a_geo, expected=expected, extend_region=mask > 0,
                                   skin_step=skin_step)
            if cfg.hands:
                if self._hands is None:
                    self._hands = HandOccluders()
                occ |= self._hands.hulls(frame, actor, roi) & (mask > 0)
            mask = cut_occluders(mask, occ)
        return mask, occ

    def _roi(self, shape: tuple[int, int], actor: FaceGeometry, swapped: FaceGeometry
             ) -> tuple[int, int, int, int]:
        """Crop around both faces, padded for the feather and occluders reaching past the
        outline (well under `roi_pad` IOD)."""
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
                     factor: tuple[float, float], coverage: np.ndarray
                     ) -> tuple[np.ndarray, bool]:
        """Average in the previous mask, moved by the similarity transform that best maps the
        previous actor landmarks onto the current ones. Skipped after a jump (residual over
        0.05 IOD or scale change over 15 %) so a cut or a fast turn does not leave a ghost.
        `factor`: (x, y) pixels of `mask` per ROI pixel (the previous mask has its own)."""
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
        if factor != (1.0, 1.0) or self._previous_scale != (1.0, 1.0):
            # and from / to the resampled rasters (pixel centres on pixel centres)
            matrix = (_resampling(factor) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
                      @ np.linalg.inv(_resampling(self._previous_scale)))[:2]
        h, w = mask.shape
        warped = cv2.warpAffine(self._previous_mask, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        smoothed = (1.0 - k) * mask + k * warped
        return _clean_alpha(smoothed * (coverage > 0)), True
