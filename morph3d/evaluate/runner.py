"""Score any face-swap output (ours or another tool's) against its source photo and original.

`evaluate(source, target, output)` pairs the frames of the original (`target`) and the swap
(`output`) by frame index, finds the chosen face in each original frame (mediapipe, static
per-frame detection), matches the output face to it by box overlap, and measures:

identity   dlib 128-D embedding distances: output vs source photo (`id_dist_source`, lower is
           better; under 0.6 is dlib's "same person", `id_swap_rate` is the share of matched
           frames under it), output vs original face (`id_dist_target`, higher means the
           identity really changed) and the baseline source vs original
           (`id_dist_source_vs_original`).
pose       yaw/pitch/roll (degrees) from 13 rigid iBUG points with `cv2.solvePnP` and a generic
           3D template; output vs original: per-angle mean absolute error and signed mean
           (`bias`: a constant offset from a different face shape is not motion error), and
           `pose_mae_deg_offset_removed`, the mean absolute error after removing each angle's
           bias. Signs: yaw > 0 turns the nose toward the image's right, pitch > 0 tilts the
           face up, roll > 0 turns it counter-clockwise in the image.
expression mouth (MAR) and eye (EAR, mean of both eyes) opening ratios from the 478-point mesh:
           Pearson correlation over time (`mar_corr`, `ear_corr`: blinks show up in the
           latter) and mean absolute difference (`mar_mad`, `ear_mad`).
gaze       iris centre (mesh points 468, 473) relative to the midpoint of its eye's corners, in
           eye widths, along and across the corner-to-corner axis, averaged over both eyes;
           `gaze_err` is the mean L2 difference output vs original (eye widths).
stability  `jitter_added`: the mean over consecutive frame pairs (t, t+1) with the face in both
           of the mean over the 68 iBUG points of
           ``|(out[t+1] - out[t]) - (orig[t+1] - orig[t])|``, divided by the original's
           inter-ocular distance (eye centres) averaged over t, t+1. It is the frame-to-frame
           motion the swap adds on top of the original's own motion: exactly 0 for the original
           against itself, and a constant or slowly drifting landmark offset adds almost
           nothing. `jitter_noise_floor` is the same number for the original re-encoded with
           H.264 at CRF 23 (what detector noise alone gives on an honest copy), and
           `jitter_original` the original's own motion ``|orig[t+1] - orig[t]|`` for scale.
           `jitter_added_regions` / `jitter_noise_floor_regions` split both by face region
           (jaw outline, brows, nose, eyes, mouth: the iBUG points of each alone).
appearance pixel agreement inside the original's face: the convex hull of its 68 iBUG points
           of the jaw and brows (0-26; the evaluator's points, derived from the mediapipe mesh),
           the output resampled to the original's size when they differ. `face_ssim`: grey
           SSIM (scikit-image, 7 x 7 window, full map) averaged over the hull; `face_psnr`: PSNR
           of the RGB pixels inside the hull (dB, 8-bit peak; identical pixels give
           `PSNR_CAP_DB`); `detail_ratio`: the standard deviation of the grey 3 x 3 Laplacian
           inside the hull, output over original (1: as sharp, < 1: smoother, waxy);
           `face_lab_delta`: the Euclidean distance of the mean CIELAB colour inside the hull
           (D65; about 1 is a just-noticeable difference, 0 the same mean colour). Only
           meaningful where the output should equal the original pixel for pixel (a round
           trip: the clip's own frame as the source) or as a measure of how much a swap
           changes. Computed on every frame with a face in the original, matched or not.
           Clip values are means over those frames.
coverage   frames analysed, frames with a face in the original, frames with a matched face in
           the output (`coverage` = matched / original faces), seconds taken.

Every per-frame number is a pure function of that frame's pixels (no tracking state), so the
frames can be analysed in chunks by several worker processes with bit-identical results. Only
the noise floor can move slightly from run to run: the libx264 in PyAV's wheel does not give
bit-identical streams from one process to the next.
Frames are streamed; only small per-frame measurements are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.atomic import atomic_write, atomic_write_text
from morph3d.errors import InputError, Morph3dError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

SAME_PERSON_THRESHOLD = 0.6  # dlib's figure for its 128-D descriptor
MATCH_IOU = 0.3  # least box overlap for an output face to count as the original's face
IBUG68_REGIONS = {"jaw": slice(0, 17), "brows": slice(17, 27), "nose": slice(27, 36),
                  "eyes": slice(36, 48), "mouth": slice(48, 68)}
NOISE_FLOOR_CRF = 23  # "typical quality" H.264 re-encode for the jitter noise floor
LANDMARK_BACKEND = "mediapipe"
FACE_HULL_POINTS = slice(0, 27)  # iBUG jaw (0-16) and brows (17-26): the face's outline
PSNR_CAP_DB = 100.0  # identical pixels (MSE 0): a finite number, so clip means stay finite
SSIM_WINDOW = 7  # scikit-image's default Gaussian-free window
APPEARANCE_KEYS = ("face_ssim", "face_psnr", "detail_ratio", "face_lab_delta")

# Generic 3D face: iBUG points of the project's default head model (MakeHuman-based, mean
# identity, neutral expression; `load_model("default")`, ``model.landmarks(model.vertices(),
# "ibug68")``), symmetrised and rounded to 0.1 mm. Model space: mm, x right, y up, z towards
# the viewer. Only points that stay put under expressions: nose bridge and base, eye corners,
# mouth corners (brows, jaw and lips move).
POSE_POINTS = (27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54)
POSE_TEMPLATE_MM = np.array([
    [0.0, 2.2, 23.8],  # 27 nose bridge top
    [0.0, -10.5, 26.6],  # 28
    [0.0, -23.4, 34.3],  # 29
    [0.0, -36.6, 42.7],  # 30 nose tip
    [-11.7, -43.0, 26.5],  # 31 nostril, image left
    [0.0, -47.4, 31.6],  # 33 nose base
    [11.7, -43.0, 26.5],  # 35 nostril, image right
    [-40.3, -0.4, 9.35],  # 36 outer eye corner, image left
    [-19.7, -1.7, 12.6],  # 39 inner eye corner
    [19.7, -1.7, 12.6],  # 42 inner eye corner
    [40.3, -0.4, 9.35],  # 45 outer eye corner, image right
    [-21.2, -69.1, 20.5],  # 48 mouth corner
    [21.2, -69.1, 20.5],  # 54 mouth corner
], np.float64)

# mediapipe 478-mesh indices. Eye "A" is the one on the image's left in a frontal view
# (the subject's right eye), "B" the other; corners ordered image-left to image-right.
_EYE_CORNERS = ((33, 133), (362, 263))
_EYE_LIDS = (((160, 144), (158, 153)), ((385, 380), (387, 373)))  # (upper, lower) pairs
_IRIS_CENTRES = (468, 473)
_MOUTH_CORNERS = (78, 308)  # inner lip corners
_MOUTH_LIPS = ((82, 87), (13, 14), (312, 317))  # (upper, lower) inner lip pairs
_NOSE_TIP_IBUG = 30

ANGLE_NAMES = ("yaw", "pitch", "roll")


# --------------------------------------------------------------------------------------------
# Per-face and per-frame measurements
# --------------------------------------------------------------------------------------------


@dataclass
class FaceMeasures:
    """What is measured on one face, in the ORIGINAL frame's pixel coordinates.

    box: (4,) tight box of the 478-point mesh; ibug68: (68, 2) points; pose_deg: (3,) yaw,
    pitch, roll; mar / ear: opening ratios; gaze: (2,) iris offset in eye widths (along,
    across the eye axis; across is positive downwards in the image); iod: eye-centre distance
    in pixels.
    """

    box: np.ndarray
    ibug68: np.ndarray
    pose_deg: np.ndarray
    mar: float
    ear: float
    gaze: np.ndarray
    iod: float


@dataclass
class FrameRecord:
    """One paired frame: the original's chosen face and its matches in the output (and in the
    re-encoded original, for the noise floor), with the identity distances."""

    index: int
    original_faces: int
    output_faces: int
    original: FaceMeasures | None = None
    output: FaceMeasures | None = None
    output_iou: float = math.nan
    reencoded: FaceMeasures | None = None
    id_dist_source: float = math.nan
    id_dist_target: float = math.nan
    id_dist_source_vs_original: float = math.nan
    output_embedding: np.ndarray | None = None  # the output face's 128-D dlib embedding
    appearance: dict[str, float] | None = None  # APPEARANCE_KEYS, output vs original
    reencoded_appearance: dict[str, float] | None = None  # the same for the re-encode


@dataclass
class ChunkJob:
    """Everything a worker needs to analyse frames [start, stop) (picklable)."""

    target: str
    output: str
    reencoded: str | None
    start: int
    stop: int | None
    source_embedding: np.ndarray
    target_face: str
    target_size: tuple[int, int]  # (H, W)


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def head_pose_deg(ibug68: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(3,) yaw, pitch, roll in degrees of a face from its 68 iBUG points (pixels).

    A pinhole camera with focal length max(H, W) pixels and the principal point at the image
    centre; `cv2.solvePnP` (SQPnP) fits `POSE_TEMPLATE_MM`. The rotation is decomposed as
    R = Ry(yaw) Rx(pitch) Rz(roll) in model axes (x right, y up, z towards the viewer);
    see the module docstring for the signs.
    """
    h, w = image_size
    focal = float(max(h, w))
    camera = np.array([[focal, 0, (w - 1) / 2], [0, focal, (h - 1) / 2], [0, 0, 1]], np.float64)
    # OpenCV's camera looks down +z with y down: flip the template's y and z.
    object_points = POSE_TEMPLATE_MM * np.array([1.0, -1.0, -1.0])
    image_points = np.asarray(ibug68, np.float64)[list(POSE_POINTS)]
    ok, rvec, _ = cv2.solvePnP(object_points, image_points, camera, None,
                               flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return np.full(3, np.nan)
    r_cv, _ = cv2.Rodrigues(rvec)
    # R_cv = Ry(yaw_cv) Rx(pitch_cv) Rz(roll_cv); the flip F = diag(1, -1, -1) between the
    # axes turns model-space yaw and roll around and keeps pitch (positive = nose down).
    yaw_cv = math.atan2(r_cv[0, 2], r_cv[2, 2])
    pitch_cv = math.asin(float(np.clip(-r_cv[1, 2], -1.0, 1.0)))
    roll_cv = math.atan2(r_cv[1, 0], r_cv[1, 1])
    return np.degrees([-yaw_cv, -pitch_cv, -roll_cv])


def mouth_aspect_ratio(mesh: np.ndarray) -> float:
    """Mean inner-lip gap over inner mouth width (0 closed, ~0.5+ wide open)."""
    gaps = [_dist(mesh[u], mesh[d]) for u, d in _MOUTH_LIPS]
    width = _dist(mesh[_MOUTH_CORNERS[0]], mesh[_MOUTH_CORNERS[1]])
    return float(np.mean(gaps) / max(width, 1e-6))


def eye_aspect_ratio(mesh: np.ndarray) -> float:
    """Soukupova & Cech's EAR averaged over both eyes (~0.3 open, under ~0.15 closed)."""
    ratios = []
    for (a, b), lids in zip(_EYE_CORNERS, _EYE_LIDS, strict=True):
        gaps = [_dist(mesh[u], mesh[d]) for u, d in lids]
        ratios.append(sum(gaps) / (2 * max(_dist(mesh[a], mesh[b]), 1e-6)))
    return float(np.mean(ratios))


def gaze_offset(mesh: np.ndarray) -> np.ndarray:
    """(2,) iris centre minus eye-corner midpoint, in eye widths, along the corner-to-corner
    axis (positive toward the image's right) and across it (positive downwards), averaged
    over both eyes."""
    mesh = np.asarray(mesh, np.float64)
    offsets = []
    for (a, b), iris in zip(_EYE_CORNERS, _IRIS_CENTRES, strict=True):
        axis = mesh[b] - mesh[a]
        width = max(float(np.linalg.norm(axis)), 1e-6)
        along = axis / width
        across = np.array([-along[1], along[0]])
        rel = mesh[iris] - (mesh[a] + mesh[b]) / 2
        offsets.append([rel @ along / width, rel @ across / width])
    return np.mean(offsets, axis=0)


def inter_ocular_distance(ibug68: np.ndarray) -> float:
    """Distance between the two eye centres (means of iBUG 36-41 and 42-47), pixels."""
    ibug68 = np.asarray(ibug68, np.float64)
    return _dist(ibug68[36:42].mean(axis=0), ibug68[42:48].mean(axis=0))


def measure_face(mesh478: np.ndarray, ibug68: np.ndarray,
                 image_size: tuple[int, int]) -> FaceMeasures:
    """All per-face measurements from landmarks already in the original frame's pixels."""
    from fitting.faces import landmark_box

    mesh478 = np.asarray(mesh478, np.float64)
    ibug68 = np.asarray(ibug68, np.float64)
    return FaceMeasures(
        box=landmark_box(mesh478), ibug68=ibug68, pose_deg=head_pose_deg(ibug68, image_size),
        mar=mouth_aspect_ratio(mesh478), ear=eye_aspect_ratio(mesh478),
        gaze=gaze_offset(mesh478), iod=inter_ocular_distance(ibug68))


def parse_target_face(spec: str) -> str | tuple[float, float]:
    """``largest`` | ``center`` (``centre``) | ``X,Y`` (the face whose box centre is nearest
    this pixel) -> a normalised selector; a bad spec raises Morph3dError."""
    key = str(spec).strip().lower()
    if key in ("largest", "center", "centre"):
        return "center" if key == "centre" else key
    parts = key.split(",")
    if len(parts) == 2:
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if math.isfinite(x) and math.isfinite(y):
                return (x, y)
    raise Morph3dError(f"bad target face {spec!r}: use largest, center or a pixel X,Y")


def choose_face(boxes: np.ndarray, image_size: tuple[int, int],
                selector: str | tuple[float, float]) -> int:
    """Index of the chosen face among (N>0, 4) boxes (ties go to the first)."""
    from fitting.faces import box_areas

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if selector == "largest":
        return int(np.argmax(box_areas(boxes)))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if selector == "center":
        h, w = image_size
        point = np.array([(w - 1) / 2, (h - 1) / 2])
    else:
        point = np.asarray(selector, np.float64)
    return int(np.argmin(np.linalg.norm(centres - point, axis=1)))


def face_hull_mask(ibug68: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """H x W bool: the convex hull of the jaw and brow points (`FACE_HULL_POINTS`), pixels
    whose centres lie inside it."""
    h, w = image_size
    mask = np.zeros((h, w), np.uint8)
    points = np.asarray(ibug68, np.float64)[FACE_HULL_POINTS]
    if not np.isfinite(points).all():
        return mask.astype(bool)
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def appearance_metrics(original: np.ndarray, output: np.ndarray,
                       mask: np.ndarray) -> dict[str, float]:
    """`APPEARANCE_KEYS` of `output` against `original` (uint8 RGB, same size) inside the
    bool `mask` (see the module docstring); NaN everywhere for an empty mask."""
    from skimage.metrics import structural_similarity

    if original.shape != output.shape:
        raise ValueError(f"frames differ in size: {original.shape} vs {output.shape}")
    if not mask.any():
        return dict.fromkeys(APPEARANCE_KEYS, math.nan)
    # Work on the mask's box plus the SSIM window's reach: the same numbers, far less work.
    ys, xs = np.nonzero(mask)
    pad = SSIM_WINDOW
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, mask.shape[0])
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, mask.shape[1])
    a, b, m = original[y0:y1, x0:x1], output[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    grey_a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    grey_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    if min(a.shape[:2]) >= SSIM_WINDOW:
        _, ssim_map = structural_similarity(grey_a, grey_b, win_size=SSIM_WINDOW,
                                            data_range=255.0, full=True)
        ssim = float(ssim_map[m].mean())
    else:
        ssim = math.nan
    diff = a[m].astype(np.float64) - b[m].astype(np.float64)
    mse = float(np.mean(diff * diff))
    psnr = PSNR_CAP_DB if mse == 0 else min(10.0 * math.log10(255.0 ** 2 / mse), PSNR_CAP_DB)
    lap_a = cv2.Laplacian(grey_a, cv2.CV_64F, ksize=3)[m].std()
    lap_b = cv2.Laplacian(grey_b, cv2.CV_64F, ksize=3)[m].std()
    detail = float(lap_b / lap_a) if lap_a > 0 else math.nan
    lab_a = cv2.cvtColor(a.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[m].mean(axis=0)
    lab_b = cv2.cvtColor(b.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[m].mean(axis=0)
    lab = float(np.linalg.norm(lab_a.astype(np.float64) - lab_b.astype(np.float64)))
    return {"face_ssim": ssim, "face_psnr": psnr, "detail_ratio": detail,
            "face_lab_delta": lab}


def face_appearance(original: np.ndarray, output: np.ndarray,
                    ibug68: np.ndarray) -> dict[str, float]:
    """`appearance_metrics` inside the hull of the original's `ibug68` (its pixels); an
    output of another size is resampled to the original's first."""
    if output.shape != original.shape:
        h, w = original.shape[:2]
        output = cv2.resize(output, (w, h), interpolation=cv2.INTER_AREA
                            if output.shape[0] > h else cv2.INTER_CUBIC)
    return appearance_metrics(original, output, face_hull_mask(ibug68, original.shape[:2]))


def _scale_points(points: np.ndarray, from_size: tuple[int, int],
                  to_size: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (pixel centres at integers) from one frame size to another."""
    if tuple(from_size) == tuple(to_size):
        return np.asarray(points, np.float64)
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    return (np.asarray(points, np.float64) + 0.5) * scale - 0.5


# --------------------------------------------------------------------------------------------
# Frame streaming and the per-chunk worker
# --------------------------------------------------------------------------------------------


class _Cursor:
    """Forward-only access by frame index to a stream of `morph3d.media.Frame`s."""

    def __init__(self, frames: Iterator[Any]) -> None:
        self._frames = frames
        self._peek: Any = None
        self._done = False

    def get(self, index: int) -> Any:
        """The frame with `index`, or None if the stream skips it (or has ended)."""
        while not self._done:
            if self._peek is None:
                self._peek = next(self._frames, None)
                if self._peek is None:
                    self._done = True
                    break
            if self._peek.index >= index:
                break
            self._peek = None
        if self._peek is not None and self._peek.index == index:
            return self._peek
        return None


def _match(candidates: Any, reference_box: np.ndarray) -> tuple[int, float]:
    """(index, IoU) of the candidate face whose mesh box overlaps `reference_box` most, or
    (-1, best IoU) when none reaches MATCH_IOU."""
    from fitting.faces import MEDIAPIPE478, box_iou, landmark_box

    if not len(candidates["boxes"]):
        return -1, 0.0
    overlaps = box_iou(reference_box[None], landmark_box(candidates[MEDIAPIPE478]))[0]
    best = int(np.argmax(overlaps))
    iou = float(overlaps[best])
    return (best if iou >= MATCH_IOU else -1), iou


def _faces_in(detector: Any, rgb: np.ndarray, to_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Detected faces with their landmarks mapped into the original frame's coordinates."""
    from fitting.faces import IBUG68, MEDIAPIPE478

    found = detector.detect(rgb)
    size = rgb.shape[:2]
    return {
        "boxes": _scale_points(found.boxes.reshape(-1, 2), size, to_size).reshape(-1, 4),
        MEDIAPIPE478: _scale_points(found.landmarks[MEDIAPIPE478], size, to_size),
        IBUG68: _scale_points(found.landmarks[IBUG68], size, to_size),
        "ibug68_native": np.asarray(found.landmarks[IBUG68], np.float64),
    }


def analyse_chunk(job: ChunkJob) -> list[FrameRecord]:
    """Analyse the paired frames with index in [job.start, job.stop). Runs in a worker."""
    from fitting.embedding import face_embedding
    from fitting.faces import IBUG68, MEDIAPIPE478, get_landmark_backend
    from morph3d.media import iter_frames

    selector = parse_target_face(job.target_face)
    size = job.target_size
    records: list[FrameRecord] = []
    with get_landmark_backend(LANDMARK_BACKEND) as detector:
        output = _Cursor(iter_frames(job.output, job.start, job.stop))
        reencoded = (_Cursor(iter_frames(job.reencoded, job.start, job.stop))
                     if job.reencoded else None)
        for frame in iter_frames(job.target, job.start, job.stop):
            out_frame = output.get(frame.index)
            if out_frame is None:
                continue
            ren_frame = reencoded.get(frame.index) if reencoded is not None else None
            original = _faces_in(detector, frame.rgb, size)
            identical = (out_frame.rgb.shape == frame.rgb.shape
                         and np.array_equal(out_frame.rgb, frame.rgb))
            # Same pixels give the same detections and embeddings: skip the work.
            swapped = original if identical else _faces_in(detector, out_frame.rgb, size)
            record = FrameRecord(index=frame.index, original_faces=len(original["boxes"]),
                                 output_faces=len(swapped["boxes"]))
            records.append(record)
            if not record.original_faces:
                continue
            k = choose_face(original["boxes"], size, selector)
            record.original = measure_face(original[MEDIAPIPE478][k], original[IBUG68][k], size)
            record.appearance = face_appearance(frame.rgb, out_frame.rgb,
                                                original["ibug68_native"][k])
            orig_embedding = face_embedding(frame.rgb, original["ibug68_native"][k])
            record.id_dist_source_vs_original = _dist(orig_embedding, job.source_embedding)
            j, record.output_iou = _match(swapped, record.original.box)
            if j >= 0:
                record.output = measure_face(swapped[MEDIAPIPE478][j], swapped[IBUG68][j], size)
                out_embedding = (orig_embedding if identical and j == k else
                                 face_embedding(out_frame.rgb, swapped["ibug68_native"][j]))
                record.output_embedding = out_embedding
                record.id_dist_source = _dist(out_embedding, job.source_embedding)
                record.id_dist_target = _dist(out_embedding, orig_embedding)
            if ren_frame is not None:
                record.reencoded_appearance = face_appearance(frame.rgb, ren_frame.rgb,
                                                              original["ibug68_native"][k])
                copy = _faces_in(detector, ren_frame.rgb, size)
                r, _ = _match(copy, record.original.box)
                if r >= 0:
                    record.reencoded = measure_face(copy[MEDIAPIPE478][r], copy[IBUG68][r], size)
    return records


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation, NaN-safe: 1.0 for two identical series (constant ones included),
    NaN for fewer than 2 points or when only one series is constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or len(x) != len(y):
        return math.nan
    if np.array_equal(x, y):
        return 1.0
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(np.clip(float(dx @ dy) / denom, -1.0, 1.0))


def _mean(values: Sequence[float] | np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(values.mean()) if values.size else math.nan


def _wrap_deg(angle: np.ndarray) -> np.ndarray:
    return (np.asarray(angle) + 180.0) % 360.0 - 180.0


def added_point_motion(out_prev: np.ndarray, out_cur: np.ndarray, orig_prev: np.ndarray,
                       orig_cur: np.ndarray, iod: float) -> np.ndarray:
    """The frame-to-frame motion of each point of `out` beyond that of `orig` (L x 2 each):
    ``|(out[t+1] - out[t]) - (orig[t+1] - orig[t])|`` (L,), over `iod` pixels."""
    extra = (out_cur - out_prev) - (orig_cur - orig_prev)
    return np.linalg.norm(extra, axis=1) / max(iod, 1e-6)


def added_motion(out_prev: np.ndarray, out_cur: np.ndarray, orig_prev: np.ndarray,
                 orig_cur: np.ndarray, iod: float) -> float:
    """`added_point_motion` averaged over the points."""
    return float(added_point_motion(out_prev, out_cur, orig_prev, orig_cur, iod).mean())


def point_jitter(records: Sequence[FrameRecord], which: str) -> np.ndarray:
    """P x 68: `added_point_motion` of `which` ("output" or "reencoded") over the original
    for each of the P consecutive frame pairs with the face in both."""
    values = []
    for prev, cur in zip(records[:-1], records[1:], strict=True):
        a0, a1 = getattr(prev, which), getattr(cur, which)
        if cur.index != prev.index + 1 or a0 is None or a1 is None:
            continue
        o0, o1 = prev.original, cur.original
        values.append(added_point_motion(a0.ibug68, a1.ibug68, o0.ibug68, o1.ibug68,
                                         (o0.iod + o1.iod) / 2))
    return np.array(values, np.float64).reshape(-1, 68)


def landmark_jitter(records: Sequence[FrameRecord], which: str) -> tuple[float, np.ndarray]:
    """(mean, per-pair values) of the extra frame-to-frame motion of `which` ("output" or
    "reencoded") over the original; see the module docstring. NaN with no consecutive pair."""
    values = point_jitter(records, which).mean(axis=1)
    return _mean(values), values


def jitter_by_region(records: Sequence[FrameRecord], which: str) -> dict[str, float]:
    """`landmark_jitter`'s mean over each face region's iBUG points alone: where the added
    motion is (jaw outline, brows, nose, eyes, mouth)."""
    per_point = point_jitter(records, which)
    return {name: _mean(per_point[:, points].mean(axis=1)) if len(per_point) else math.nan
            for name, points in IBUG68_REGIONS.items()}


def original_motion(records: Sequence[FrameRecord]) -> float:
    """Mean frame-to-frame iBUG motion of the original face, in inter-ocular distances."""
    values = []
    for prev, cur in zip(records[:-1], records[1:], strict=True):
        if cur.index != prev.index + 1 or prev.original is None or cur.original is None:
            continue
        iod = max((prev.original.iod + cur.original.iod) / 2, 1e-6)
        step = np.linalg.norm(cur.original.ibug68 - prev.original.ibug68, axis=1).mean()
        values.append(float(step / iod))
    return _mean(values)


def compare_faces(records: Sequence[FrameRecord], which: str) -> dict[str, Any]:
    """Pose, expression, gaze and jitter of `which` ("output" / "reencoded") vs the original,
    over the frames where both have the face."""
    pairs = [(r.original, getattr(r, which)) for r in records
             if r.original is not None and getattr(r, which) is not None]
    result: dict[str, Any] = {"frames_matched": len(pairs)}
    if pairs:
        orig = [p[0] for p in pairs]
        other = [p[1] for p in pairs]
        errors = _wrap_deg(np.array([o.pose_deg for o in other])
                           - np.array([o.pose_deg for o in orig]))
        valid = np.isfinite(errors).all(axis=1)
        errors = errors[valid]
        maes, maes_centred = [], []
        for axis, name in enumerate(ANGLE_NAMES):
            e = errors[:, axis]
            bias = _mean(e)
            mae, mae_centred = _mean(np.abs(e)), _mean(np.abs(e - bias))
            result[f"pose_{name}_mae_deg"] = mae
            result[f"pose_{name}_bias_deg"] = bias
            result[f"pose_{name}_mae_deg_offset_removed"] = mae_centred
            maes.append(mae)
            maes_centred.append(mae_centred)
        result["pose_mae_deg"] = _mean(maes)
        result["pose_mae_deg_offset_removed"] = _mean(maes_centred)
        for name in ("mar", "ear"):
            a = [getattr(o, name) for o in orig]
            b = [getattr(o, name) for o in other]
            result[f"{name}_corr"] = pearson(b, a)
            result[f"{name}_mad"] = _mean(np.abs(np.subtract(b, a)))
            result[f"{name}_mean_original"] = _mean(a)
            result[f"{name}_mean_{which}"] = _mean(b)
        gaze_diff = np.array([o.gaze for o in other]) - np.array([o.gaze for o in orig])
        result["gaze_err"] = _mean(np.linalg.norm(gaze_diff, axis=1))
        result["gaze_err_along"] = _mean(np.abs(gaze_diff[:, 0]))
        result["gaze_err_across"] = _mean(np.abs(gaze_diff[:, 1]))
    result["jitter"], _ = landmark_jitter(records, which)
    result["jitter_regions"] = jitter_by_region(records, which)
    return result


def appearance_means(records: Sequence[FrameRecord], which: str) -> dict[str, float]:
    """Each of `APPEARANCE_KEYS` averaged over the frames that have it (`which`:
    "appearance" or "reencoded_appearance"); NaN where no frame has it."""
    rows = [getattr(r, which) for r in records if getattr(r, which) is not None]
    out = {}
    for key in APPEARANCE_KEYS:
        values = np.array([row[key] for row in rows], np.float64)
        values = values[np.isfinite(values)]
        out[key] = _mean(values)
    return out


def aggregate(records: Sequence[FrameRecord]) -> dict[str, Any]:
    """The top-level metrics from the per-frame records (sorted by index)."""
    with_face = [r for r in records if r.original is not None]
    matched = [r for r in with_face if r.output is not None]
    id_source = np.array([r.id_dist_source for r in matched], np.float64)
    metrics: dict[str, Any] = {
        "frames": len(records),
        "frames_original_face": len(with_face),
        "frames_matched": len(matched),
        "coverage": len(matched) / len(with_face) if with_face else math.nan,
        "id_dist_source": _mean(id_source),
        "id_dist_source_median": float(np.median(id_source)) if id_source.size else math.nan,
        "id_swap_rate": _mean(id_source < SAME_PERSON_THRESHOLD) if id_source.size else math.nan,
        "id_dist_target": _mean([r.id_dist_target for r in matched]),
        "id_dist_source_vs_original": _mean([r.id_dist_source_vs_original for r in with_face]),
    }
    metrics.update(appearance_means(records, "appearance"))
    faces = compare_faces(records, "output")
    faces.pop("frames_matched")
    metrics["jitter_added"] = faces.pop("jitter")
    metrics["jitter_added_regions"] = faces.pop("jitter_regions")
    metrics.update(faces)
    metrics["jitter_original"] = original_motion(records)
    if any(r.reencoded is not None for r in records):
        floor = compare_faces(records, "reencoded")
        floor.update(appearance_means(records, "reencoded_appearance"))
        floor["coverage"] = (floor["frames_matched"] / len(with_face) if with_face
                             else math.nan)
        metrics["jitter_noise_floor"] = floor["jitter"]
        metrics["jitter_noise_floor_regions"] = floor["jitter_regions"]
        metrics["noise_floor"] = floor
    else:
        metrics["jitter_noise_floor"] = math.nan
        metrics["jitter_noise_floor_regions"] = None
        metrics["noise_floor"] = None
    return metrics


def _face_json(face: FaceMeasures | None, prefix: str) -> dict[str, Any]:
    if face is None:
        return {}
    out = {f"{prefix}_{n}_deg": float(v) for n, v in zip(ANGLE_NAMES, face.pose_deg, strict=True)}
    out.update({f"{prefix}_mar": face.mar, f"{prefix}_ear": face.ear,
                f"{prefix}_gaze": [float(v) for v in face.gaze],
                f"{prefix}_nose_tip": [float(v) for v in face.ibug68[_NOSE_TIP_IBUG]],
                f"{prefix}_box": [float(v) for v in face.box]})
    return out


def per_frame_json(records: Sequence[FrameRecord]) -> list[dict[str, Any]]:
    """One JSON-friendly dict per analysed frame (NaN where a value does not apply)."""
    _, jitter = landmark_jitter(records, "output")
    jitter_at: dict[int, float] = {}
    k = 0
    for prev, cur in zip(records[:-1], records[1:], strict=True):
        if (cur.index == prev.index + 1 and prev.output is not None and cur.output is not None
                and prev.original is not None and cur.original is not None):
            jitter_at[cur.index] = float(jitter[k])
            k += 1
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "index": r.index, "original_faces": r.original_faces, "output_faces": r.output_faces,
            "original_face": r.original is not None, "matched": r.output is not None,
            "iou": r.output_iou, "id_dist_source": r.id_dist_source,
            "id_dist_target": r.id_dist_target,
            "id_dist_source_vs_original": r.id_dist_source_vs_original,
            "jitter_added": jitter_at.get(r.index, math.nan),
        }
        row.update(r.appearance or dict.fromkeys(APPEARANCE_KEYS, math.nan))
        row.update(_face_json(r.original, "original"))
        row.update(_face_json(r.output, "output"))
        rows.append(row)
    return rows


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(result: dict[str, Any], path: PathLike) -> None:
    """Write `evaluate`'s result as JSON (NaN as null), atomically."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"JSON output path is a directory: {path}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False)
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------


def source_face_embedding(source: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding, mesh box, first frame) of the largest face in the source photo (or the
    first frame of a source video)."""
    from fitting.embedding import face_embedding
    from fitting.faces import IBUG68, MEDIAPIPE478, detect_faces, landmark_box
    from morph3d.media import iter_frames

    first = next(iter(iter_frames(source, 0, 1)), None)
    if first is None:
        raise InputError(f"no frame could be read from the source {source}")
    faces = detect_faces(first.rgb, LANDMARK_BACKEND)
    if not len(faces):
        raise Morph3dError(f"no face found in the source photo {source}")
    k = int(np.argmax(faces.areas()))
    embedding = face_embedding(first.rgb, faces.landmarks[IBUG68][k])
    return embedding, landmark_box(faces.landmarks[MEDIAPIPE478][k]), first.rgb


def _reencode(target: Path, stop: int | None, folder: Path) -> tuple[Path, str] | None:
    """(path, codec description) of the target's first frames re-encoded with H.264 at
    CRF 23 (or FFmpeg's fallback encoder without libx264); None for a still image."""
    from morph3d.media import VideoWriter, is_image_path, iter_frames, probe_video

    if is_image_path(target):
        return None
    info = probe_video(target)
    out = folder / "reencoded.mkv"
    with VideoWriter(out, info, crf=NOISE_FLOOR_CRF, preset="medium") as writer:
        for frame in iter_frames(target, 0, stop):
            writer.write(frame.rgb, frame.index)
    codec = (f"libx264 crf {NOISE_FLOOR_CRF} preset medium" if writer.codec == "libx264"
             else writer.codec)
    return out, f"{codec} {writer.pix_fmt}"


def _chunks(count: int, parts: int, stop: int | None) -> list[tuple[int, int | None]]:
    """[start, stop) ranges splitting `count` frames into `parts`; the last one runs to
    `stop` (None: to the end) so frames beyond an estimated count are not lost."""
    parts = max(1, min(parts, count))
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    ranges: list[tuple[int, int | None]] = [(bounds[i], bounds[i + 1]) for i in range(parts)]
    ranges[-1] = (ranges[-1][0], stop)
    return ranges


def _run_chunks(jobs: list[ChunkJob], workers: int) -> list[FrameRecord]:
    if workers <= 1 or len(jobs) == 1:
        results = [analyse_chunk(job) for job in jobs]
    else:
        import multiprocessing

        # spawn, not fork: the parent may hold mediapipe/dlib threads and graphs.
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(analyse_chunk, jobs))
        except BrokenProcessPool:
            raise Morph3dError(
                "an evaluation worker process died (out of memory, or started from code "
                "without an `if __name__ == \"__main__\":` guard); try --workers 1") from None
    records: dict[int, FrameRecord] = {}
    for chunk in results:
        for record in chunk:
            records.setdefault(record.index, record)
    return [records[i] for i in sorted(records)]


def evaluate(source: PathLike, target: PathLike, output: PathLike, *, workers: int = 1,
             plots_dir: PathLike | None = None, target_face: str = "largest",
             max_frames: int | None = None, noise_floor: bool = True) -> dict[str, Any]:
    """Score the swap `output` of `target` (original video or image) with the `source` photo.

    Frames are paired by index; `max_frames` keeps the first N. `workers` > 1 analyses frame
    chunks in that many spawned processes (same numbers as 1 worker; call this from under
    ``if __name__ == "__main__":`` in scripts). `target_face`: ``largest``, ``center`` or a
    pixel ``X,Y`` of the original. `noise_floor`: also score an H.264 CRF-23 re-encode of the
    original (videos only) for `jitter_noise_floor`. `plots_dir`: write PNG plots and a
    contact sheet there.

    Returns the aggregated metrics at the top level (see the module docstring), `noise_floor`
    (the same metrics for the re-encode, or None), `inputs`, `settings`, `seconds`, and
    `per_frame`: one dict per analysed frame. Raises Morph3dError (one line) for unreadable
    inputs, no face in the source, no face in the original, or no matching face anywhere in
    the output (a blank or faceless output).
    """
    from morph3d.media import probe_video

    started = time.perf_counter()
    source, target, output = Path(source), Path(target), Path(output)
    parse_target_face(target_face)
    if int(workers) < 1:
        raise Morph3dError(f"workers must be at least 1, got {workers}")
    if max_frames is not None and int(max_frames) < 1:
        raise Morph3dError(f"max frames must be at least 1, got {max_frames}")
    workers = int(workers)
    stop = int(max_frames) if max_frames is not None else None
    target_info = probe_video(target)
    output_info = probe_video(output)
    source_embedding, source_box, source_rgb = source_face_embedding(source)
    count = min(target_info.frame_count, output_info.frame_count)
    count = max(1, min(count, stop) if stop is not None else count)

    with tempfile.TemporaryDirectory(prefix="morph3d-eval-") as tmp:
        reencoded, reencode_codec = None, None
        if noise_floor and count >= 3:
            made = _reencode(target, stop, Path(tmp))
            if made is not None:
                reencoded, reencode_codec = made
        jobs = [ChunkJob(target=str(target), output=str(output),
                         reencoded=str(reencoded) if reencoded else None, start=a, stop=b,
                         source_embedding=source_embedding, target_face=target_face,
                         target_size=(target_info.height, target_info.width))
                for a, b in _chunks(count, workers, stop)]
        records = _run_chunks(jobs, workers)

    if not records:
        raise Morph3dError(f"{output} and {target} have no frame index in common")
    metrics = aggregate(records)
    if metrics["frames_original_face"] == 0:
        raise Morph3dError(f"no face found in any of the {len(records)} analysed frames of "
                           f"the original {target}")
    if metrics["frames_matched"] == 0:
        raise Morph3dError(
            f"no face matching the original's found in any of the {len(records)} analysed "
            f"frames of the output {output} (blank or faceless output?)")
    result: dict[str, Any] = dict(metrics)
    result["inputs"] = {
        "source": str(source), "target": str(target), "output": str(output),
        "target_size": [target_info.width, target_info.height],
        "output_size": [output_info.width, output_info.height],
        "target_frames": target_info.frame_count, "output_frames": output_info.frame_count,
        "fps": float(target_info.fps),
    }
    result["settings"] = {
        "workers": workers, "target_face": target_face, "max_frames": stop,
        "landmark_backend": LANDMARK_BACKEND, "match_iou": MATCH_IOU,
        "same_person_threshold": SAME_PERSON_THRESHOLD,
        "noise_floor": reencode_codec,
    }
    result["per_frame"] = per_frame_json(records)
    if plots_dir is not None:
        result["plots"] = [str(p) for p in write_plots(
            records, Path(plots_dir), source_rgb=source_rgb, source_box=source_box,
            target=target, output=output)]
    result["seconds"] = time.perf_counter() - started
    result["seconds_per_frame"] = result["seconds"] / len(records)
    return result


# --------------------------------------------------------------------------------------------
# Plots and the contact sheet
# --------------------------------------------------------------------------------------------

CONTACT_CELL_PX = 224
CONTACT_SAMPLES = 4
CROP_SCALE = 1.8  # crop side over the face box's longer side


def _save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure (Agg canvas) as PNG through `atomic_write`, whose temporary
    name the next run's guard knows (a killed eval's leftover is removed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path, "wb", parents=False) as f:
        fig.savefig(f, format="png", dpi=100)
    return path


def _series(records: Sequence[FrameRecord], which: str, value: Any) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        face = getattr(r, which)
        xs.append(r.index)
        ys.append(value(face) if face is not None else math.nan)
    return xs, ys


def face_crop(rgb: np.ndarray, box, side_px: int, scale: float = CROP_SCALE,
              upscale: int = cv2.INTER_LINEAR) -> np.ndarray:
    """A square crop around `box` (`scale` times its longer side), black outside the
    image, resized to side_px (`upscale` is the interpolation used when enlarging)."""
    h, w = rgb.shape[:2]
    centre = (np.asarray(box[:2], np.float64) + np.asarray(box[2:], np.float64)) / 2
    side = max(int(round(scale * float(max(box[2] - box[0], box[3] - box[1])))), 8)
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    crop = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > side_px else upscale
    return cv2.resize(crop, (side_px, side_px), interpolation=interp)


def label_cell(cell: np.ndarray, text: str) -> np.ndarray:
    cell = cell.copy()
    cv2.rectangle(cell, (0, cell.shape[0] - 22), (cell.shape[1], cell.shape[0]), (0, 0, 0), -1)
    cv2.putText(cell, text, (5, cell.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return cell


def _frame_at(path: Path, index: int) -> np.ndarray | None:
    from morph3d.media import iter_frames

    for frame in iter_frames(path, index, index + 1):
        return frame.rgb
    return None


def contact_sheet(records: Sequence[FrameRecord], source_rgb: np.ndarray,
                  source_box: np.ndarray, target: Path, output: Path,
                  samples: int = CONTACT_SAMPLES) -> np.ndarray:
    """Rows of face crops `source | original | output` for up to `samples` matched frames
    spread over the clip (uint8 RGB)."""
    matched = [r for r in records if r.output is not None]
    picks = [matched[i] for i in sorted({round(k * (len(matched) - 1) / max(samples - 1, 1))
                                         for k in range(min(samples, len(matched)))})]
    side = CONTACT_CELL_PX
    source_cell = label_cell(face_crop(source_rgb, source_box, side), "source")
    rows = []
    for r in picks:
        original, swapped = _frame_at(target, r.index), _frame_at(output, r.index)
        if original is None or swapped is None:
            continue
        box = r.original.box
        # the box lives in the original's pixels; map it into the output's
        out_box = _scale_points(box.reshape(2, 2), original.shape[:2],
                                swapped.shape[:2]).reshape(4)
        rows.append(np.concatenate([
            source_cell,
            label_cell(face_crop(original, box, side), f"original #{r.index}"),
            label_cell(face_crop(swapped, out_box, side),
                   f"output #{r.index} id {r.id_dist_source:.2f}"),
        ], axis=1))
    return np.concatenate(rows, axis=0) if rows else source_cell


def write_plots(records: Sequence[FrameRecord], folder: Path, *, source_rgb: np.ndarray,
                source_box: np.ndarray, target: Path, output: Path) -> list[Path]:
    """identity.png, expression.png, pose.png, trajectory.png and contact_sheet.png in
    `folder` (created if missing); returns their paths."""
    from matplotlib.figure import Figure

    from morph3d.media import write_image

    if folder.exists() and not folder.is_dir():
        raise InputError(f"plots path is not a folder: {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for key, label in (("id_dist_source", "output vs source photo"),
                       ("id_dist_target", "output vs original frame"),
                       ("id_dist_source_vs_original", "source vs original (baseline)")):
        ax.plot([r.index for r in records], [getattr(r, key) for r in records], label=label)
    ax.axhline(SAME_PERSON_THRESHOLD, color="grey", ls="--", lw=1, label="same person (0.6)")
    ax.set(xlabel="frame", ylabel="dlib embedding distance", title="identity per frame")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save_figure(fig, folder / "identity.png"))

    fig = Figure(figsize=(9, 6))
    for row, (name, title) in enumerate((("mar", "mouth opening (MAR)"),
                                         ("ear", "eye opening (EAR)"))):
        ax = fig.add_subplot(2, 1, row + 1)
        for which in ("original", "output"):
            ax.plot(*_series(records, which, lambda f, n=name: getattr(f, n)), label=which)
        ax.set(xlabel="frame", ylabel=name.upper(), title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save_figure(fig, folder / "expression.png"))

    fig = Figure(figsize=(9, 7))
    for axis, name in enumerate(ANGLE_NAMES):
        ax = fig.add_subplot(3, 1, axis + 1)
        for which in ("original", "output"):
            ax.plot(*_series(records, which, lambda f, a=axis: f.pose_deg[a]), label=which)
        ax.set(ylabel=f"{name} (deg)")
        ax.legend(fontsize=8)
    fig.axes[-1].set_xlabel("frame")
    fig.tight_layout()
    written.append(_save_figure(fig, folder / "pose.png"))

    fig = Figure(figsize=(9, 6))
    for axis, coord in enumerate("xy"):
        ax = fig.add_subplot(2, 1, axis + 1)
        for which in ("original", "output", "reencoded"):
            xs, ys = _series(records, which, lambda f, a=axis: f.ibug68[_NOSE_TIP_IBUG, a])
            if np.isfinite(ys).any():
                ax.plot(xs, ys, label=which, lw=1)
        ax.set(xlabel="frame", ylabel=f"{coord} (px)",
               title=f"nose tip (iBUG {_NOSE_TIP_IBUG}) {coord}, original frame pixels")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save_figure(fig, folder / "trajectory.png"))

    sheet = contact_sheet(records, source_rgb, source_box, target, output)
    write_image(folder / "contact_sheet.png", sheet)
    written.append(folder / "contact_sheet.png")
    return written


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A short human-readable report of `evaluate`'s result."""

    def f(key: str, digits: int = 3, data: dict[str, Any] | None = None) -> str:
        value = (data or result).get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "n/a"
        return f"{value:.{digits}f}"

    floor = result.get("noise_floor") or {}
    return [
        f"frames: {result['frames']} analysed, {result['frames_original_face']} with a face "
        f"in the original, {result['frames_matched']} matched in the output "
        f"(coverage {f('coverage')})",
        f"identity: id_dist_source {f('id_dist_source')} (median "
        f"{f('id_dist_source_median')}, swap rate {f('id_swap_rate')}), id_dist_target "
        f"{f('id_dist_target')}, source vs original {f('id_dist_source_vs_original')}",
        f"pose: mae {f('pose_mae_deg', 2)} deg (offset removed "
        f"{f('pose_mae_deg_offset_removed', 2)}); bias yaw {f('pose_yaw_bias_deg', 2)} "
        f"pitch {f('pose_pitch_bias_deg', 2)} roll {f('pose_roll_bias_deg', 2)}",
        f"expression: mar_corr {f('mar_corr')} (mad {f('mar_mad')}), ear_corr "
        f"{f('ear_corr')} (mad {f('ear_mad')}); gaze_err {f('gaze_err')} eye widths",
        f"appearance in the face (jaw + brow hull): face_ssim {f('face_ssim')}, face_psnr "
        f"{f('face_psnr', 2)} dB, detail_ratio {f('detail_ratio')}, face_lab_delta "
        f"{f('face_lab_delta', 2)}" + (
            f" (re-encoded original: ssim {f('face_ssim', 3, floor)}, psnr "
            f"{f('face_psnr', 2, floor)} dB, detail {f('detail_ratio', 3, floor)}, lab "
            f"{f('face_lab_delta', 2, floor)})" if floor else ""),
        f"stability: jitter_added {f('jitter_added', 4)} (noise floor "
        f"{f('jitter_noise_floor', 4)}, original motion {f('jitter_original', 4)}) "
        f"inter-ocular distances per frame",
        "stability by region (added / floor): " + ", ".join(
            f"{name} {f(name, 4, result.get('jitter_added_regions') or {})} / "
            f"{f(name, 4, result.get('jitter_noise_floor_regions') or {})}"
            for name in IBUG68_REGIONS),
        f"noise floor (re-encoded original): pose mae "
        f"{f('pose_mae_deg', 2, floor)} deg, mar_corr {f('mar_corr', 3, floor)}, ear_corr "
        f"{f('ear_corr', 3, floor)}, gaze_err {f('gaze_err', 3, floor)}" if floor else
        "noise floor: not measured",
        f"seconds: {f('seconds', 1)} ({f('seconds_per_frame', 3)} per frame)",
    ]
