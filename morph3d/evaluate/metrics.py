"""Clip metrics from the per-frame records: identity, motion and jitter added by the swap,
appearance means; the JSON report and its summary lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from morph3d.errors import InputError
from morph3d.evaluate.measures import (
    _NOSE_TIP_IBUG,
    ANGLE_NAMES,
    APPEARANCE_KEYS,
    IBUG68_REGIONS,
    FaceMeasures,
    FrameRecord,
    PathLike,
)
from morph3d.io.atomic import atomic_write_text

SAME_PERSON_THRESHOLD = 0.6  # dlib's figure for its 128-D descriptor


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
        f"{f('face_psnr', 2)} dB, detail_ratio {f('detail_ratio')} (over the grey level "
        f"{f('detail_ratio_relative')}), face_lab_delta "
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
