"""The evaluation's pictures: per-frame plots and a contact sheet of face crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from morph3d.errors import InputError
from morph3d.evaluate.measures import _NOSE_TIP_IBUG, ANGLE_NAMES, FrameRecord, _scale_points
from morph3d.evaluate.metrics import SAME_PERSON_THRESHOLD
from morph3d.io.atomic import atomic_write

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
    from morph3d.io.media import iter_frames

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

    from morph3d.io.images import write_image

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
