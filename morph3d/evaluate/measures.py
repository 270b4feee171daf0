"""Per-face measures on one frame: head pose, eye/mouth openness, gaze, and the appearance
of the face region against the original (SSIM, PSNR, detail, Lab).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

PathLike = str | os.PathLike[str]
IBUG68_REGIONS = {"jaw": slice(0, 17), "brows": slice(17, 27), "nose": slice(27, 36),
                  "eyes": slice(36, 48), "mouth": slice(48, 68)}
FACE_HULL_POINTS = slice(0, 27)  # iBUG jaw (0-16) and brows (17-26): the face's outline
PSNR_CAP_DB = 100.0  # identical pixels (MSE 0): a finite number, so clip means stay finite
SSIM_WINDOW = 7  # scikit-image's default Gaussian-free window
APPEARANCE_KEYS = ("face_ssim", "face_psnr", "detail_ratio", "detail_ratio_relative",
                   "face_lab_delta")

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
    # each side's detail over its own grey level: a lighter face shows its texture
    # proportionally stronger, which this one does not count
    level_a, level_b = grey_a[m].mean(), grey_b[m].mean()
    relative = (float(detail * level_a / level_b) if lap_a > 0 and level_b > 0
                else math.nan)
    lab_a = cv2.cvtColor(a.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[m].mean(axis=0)
    lab_b = cv2.cvtColor(b.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[m].mean(axis=0)
    lab = float(np.linalg.norm(lab_a.astype(np.float64) - lab_b.astype(np.float64)))
    return {"face_ssim": ssim, "face_psnr": psnr, "detail_ratio": detail,
            "detail_ratio_relative": relative, "face_lab_delta": lab}


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
