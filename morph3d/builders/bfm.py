"""Convert a user-supplied Basel Face Model (BFM) into a morph3d model (`--model bfm`).

The BFM may not be redistributed, so nothing here ships data: the user downloads it from the
University of Basel, runs `morph3d model convert-bfm`, and the converted npz lands in the user
cache (`default_bfm_path()`). See assets/bfm/README.md for the user-facing steps.

The files are read by `morph3d.builders.bfm_files` (which formats, detected from their
contents); this module scales, centres and orients that model and gives it what a morph3d
model has and the BFM lacks (landmarks on the surface, regions, UVs, the mirror map).

Every file's length unit is the documented one unless the mean's extent says otherwise (a head
is 60-600 mm across); the unit used is recorded in the model metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from morph3d.builders.bfm_files import (
    RawModel,
    attach_expression,
    existing_file,
    read_landmark_file,
    read_shape_model,
)
from morph3d.errors import ModelError
from morph3d.io.paths import models_dir
from morph3d.model.model import REGIONS, ModelData, SurfacePoints

MODEL_NAME = "bfm"
MM_PER_UNIT = {"um": 1e-3, "mm": 1.0, "cm": 10.0, "dm": 100.0, "m": 1000.0}
HEAD_EXTENT_MM = (60.0, 600.0)  # plausible largest bounding-box side of a face/head model


# ---------------------------------------------------------------------------------------------
# Where the converted model lives
# ---------------------------------------------------------------------------------------------


def default_bfm_path() -> Path:
    """Where `convert_bfm` writes by default and `--model bfm` reads from (the user cache)."""
    return models_dir() / f"{MODEL_NAME}.npz"


def load_bfm(path: Path | None = None) -> ModelData:
    """The converted BFM; a missing file raises ModelError telling the user how to convert."""
    path = Path(path) if path is not None else default_bfm_path()
    if not path.is_file():
        raise ModelError(
            f"Basel Face Model not converted yet ({path} missing): run "
            "`morph3d model convert-bfm 01_MorphableModel.mat Model_Expression.mat` "
            "(see assets/bfm/README.md)"
        )
    return ModelData.load(path)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def convert_bfm(
    shape_path: Path,
    expression_path: Path | None = None,
    output: Path | None = None,
    landmarks_path: Path | None = None,
) -> Path:
    """Convert BFM file(s) to a morph3d npz (default: `default_bfm_path()`); returns its path."""
    data = build_bfm(shape_path, expression_path, landmarks_path)
    output = Path(output).expanduser() if output is not None else default_bfm_path()
    data.save(output)
    return output


def build_bfm(
    shape_path: Path,
    expression_path: Path | None = None,
    landmarks_path: Path | None = None,
) -> ModelData:
    """Read BFM file(s) into a validated ModelData (millimetres, x right, y up, z out)."""
    shape_path = existing_file(shape_path, "BFM shape")
    if expression_path is not None:
        expression_path = existing_file(expression_path, "BFM expression")
    if landmarks_path is not None:
        landmarks_path = existing_file(landmarks_path, "landmark")

    raw = read_shape_model(shape_path)
    if expression_path is not None:
        attach_expression(raw, shape_path, expression_path)

    scale, unit = _mm_per_file_unit(raw.mean, raw.unit, shape_path)
    raw.notes["file_unit"] = unit if unit == raw.unit else f"{unit} (documented: {raw.unit})"
    keypoints = raw.keypoints
    landmark_source = f"{shape_path.name} keypoints"
    if landmarks_path is not None:
        keypoints = read_landmark_file(landmarks_path, len(raw.mean))
        landmark_source = landmarks_path.name
    return _assemble(raw, scale, keypoints, landmark_source, shape_path)


def add_convert_bfm_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `morph3d model convert-bfm` (the CLI calls `convert_bfm_from_args`)."""
    parser.add_argument("shape", type=Path, help="BFM shape file (.mat or .h5)")
    parser.add_argument(
        "expression", type=Path, nargs="?", default=None,
        help="expression file for BFM 2009 (Model_Expression.mat or Exp_Pca.bin)",
    )
    parser.add_argument(
        "--landmarks", type=Path, default=None,
        help="text file of 68 zero-based vertex indices (iBUG 68 order), one per line",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None,
        help=f"output npz (default: {default_bfm_path()})",
    )


def convert_bfm_from_args(args: argparse.Namespace) -> Path:
    return convert_bfm(args.shape, args.expression, args.output, args.landmarks)


# ---------------------------------------------------------------------------------------------
# Building the morph3d model
# ---------------------------------------------------------------------------------------------


def _mm_per_file_unit(mean: np.ndarray, documented: str, path: Path) -> tuple[float, str]:
    """The documented unit if the head's size fits it, else the unit that fits."""
    if not np.isfinite(mean).all():
        raise ModelError(f"{path}: mean shape has non-finite values")
    extent = float(np.ptp(mean, axis=0).max())
    low, high = HEAD_EXTENT_MM
    if extent <= 0:
        raise ModelError(f"{path}: mean shape is a single point")
    if low <= extent * MM_PER_UNIT[documented] <= high:
        return MM_PER_UNIT[documented], documented
    unit = min(MM_PER_UNIT, key=lambda u: abs(np.log(extent * MM_PER_UNIT[u] / 200.0)))
    if not low <= extent * MM_PER_UNIT[unit] <= high:
        raise ModelError(f"{path}: mean shape extent {extent:g} fits no length unit for a head")
    return MM_PER_UNIT[unit], unit


def _orient_outward(mean: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Make triangles counter-clockwise seen from outside: the normal near the nose tip (the
    front-most 10% of the depth) must point to +z, towards the viewer."""
    v0, v1, v2 = (mean[triangles[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    centre_z = (v0[:, 2] + v1[:, 2] + v2[:, 2]) / 3.0
    z = mean[:, 2]
    front = centre_z >= z.max() - 0.1 * (z.max() - z.min())
    if normals[front, 2].sum() < 0:
        return triangles[:, [0, 2, 1]].copy(), True
    return triangles, False


def _check_frame(mean: np.ndarray, keypoints: np.ndarray, source: str) -> None:
    """iBUG68 landmarks must sit as in an x right, y up, z towards the viewer face."""
    p = mean[keypoints]
    problems = []
    if not p[45, 0] > p[36, 0]:
        problems.append("left eye corner (45) not right of right eye corner (36) in x")
    if not p[27, 1] > p[8, 1]:
        problems.append("nose bridge (27) not above chin (8) in y")
    if not p[30, 2] > (p[36, 2] + p[45, 2]) / 2:
        problems.append("nose tip (30) not in front of the eye corners in z")
    if problems:
        raise ModelError(f"{source}: landmarks do not fit the model frame: {problems[0]}")


def _surface_points(keypoints: np.ndarray, triangles: np.ndarray, source: str) -> SurfacePoints:
    """Each vertex id becomes (a triangle using it, one-hot barycentric)."""
    tri_ids = np.empty(len(keypoints), dtype=np.int64)
    bary = np.zeros((len(keypoints), 3), dtype=np.float32)
    for i, vertex in enumerate(keypoints):
        rows, corners = np.nonzero(triangles == vertex)
        if rows.size == 0:
            raise ModelError(f"{source}: landmark {i} (vertex {vertex}) is in no triangle")
        tri_ids[i] = rows[0]
        bary[i, corners[0]] = 1.0
    return SurfacePoints(triangles=tri_ids, barycentrics=bary)


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: which 2D points lie inside a closed polygon (P x 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    ax, ay = polygon[:, 0], polygon[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    crosses = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = ax + (y - ay) * (bx - ax) / (by - ay)
    return ((crosses & (x < x_at)).sum(axis=1) % 2).astype(bool)


def _regions(mean: np.ndarray, triangles: np.ndarray,
             keypoints: np.ndarray | None) -> dict[str, np.ndarray]:
    """face_skin = every vertex; lips and eyes inside the iBUG contours (seen from the front);
    neck_boundary = open-edge vertices in the lowest quarter; the rest empty (BFM has no
    mouth interior, teeth, tongue or eyeballs)."""
    n = len(mean)
    regions = {name: np.zeros(n, dtype=bool) for name in REGIONS}
    regions["face_skin"][:] = True
    if keypoints is not None:
        lm = mean[keypoints]
        for name, contours in (("lips", [range(48, 60)]),
                               ("eyes", [range(36, 42), range(42, 48)])):
            for contour in contours:
                ring = lm[list(contour)]
                front = mean[:, 2] >= ring[:, 2].min() - 15.0  # mm: skip the back of the head
                regions[name] |= _inside_polygon(mean[:, :2], ring[:, :2]) & front
                regions[name][keypoints[list(contour)]] = True
    edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]],
                                    triangles[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(n, dtype=bool)
    boundary[unique[counts == 1].ravel()] = True
    y = mean[:, 1]
    regions["neck_boundary"] = boundary & (y <= y.min() + 0.25 * (y.max() - y.min()))
    return regions


def _cylindrical_uv(mean: np.ndarray) -> np.ndarray:
    """u along the arc around the vertical axis through the origin, v = height (v up); one
    scale for both so texels stay square, the longer side spanning [0, 1]."""
    angle = np.arctan2(mean[:, 0], mean[:, 2])
    radius = float(np.median(np.hypot(mean[:, 0], mean[:, 2]))) or 1.0
    uv = np.stack([angle * radius, mean[:, 1]], axis=1)
    low, span = uv.min(axis=0), np.ptp(uv, axis=0)
    scale = float(span.max()) or 1.0
    uv = (uv - low) / scale + (1.0 - span / scale) / 2.0
    return np.clip(uv, 0.0, 1.0).astype(np.float32)


def _mirror(mean: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.spatial import cKDTree

    distances, index = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0]))
    return index.astype(np.int64), float(np.max(distances))


def _assemble(raw: RawModel, scale: float, keypoints: np.ndarray | None,
              landmark_source: str, shape_path: Path) -> ModelData:
    mean = raw.mean * scale
    offset = (mean.min(axis=0) + mean.max(axis=0)) / 2.0
    mean = mean - offset  # origin at the bounding-box centre of the mean shape
    n = len(mean)

    identity = raw.identity * scale  # 3V x K, mm per std
    std = np.linalg.norm(identity, axis=0)
    directions = np.divide(identity, std, out=np.zeros_like(identity), where=std > 0)
    identity_basis = directions.T.reshape(-1, n, 3)
    if raw.expression is not None:
        expression_basis = (raw.expression * scale).T.reshape(-1, n, 3)
    else:
        expression_basis = np.zeros((0, n, 3))

    triangles, flipped = _orient_outward(mean, raw.triangles)
    landmarks: dict[str, SurfacePoints] = {}
    if keypoints is not None:
        _check_frame(mean, keypoints, landmark_source)
        landmarks["ibug68"] = _surface_points(keypoints, triangles, landmark_source)
    mirror, mirror_error = _mirror(mean)
    uv = _cylindrical_uv(mean)

    notes = {
        "source_format": raw.source,
        "source_file": shape_path.name,
        **raw.notes,
        "mm_per_file_unit": f"{scale:g}",
        "origin_offset_mm": " ".join(f"{v:.4f}" for v in offset),
        "origin": "bounding-box centre of the mean; source position = vertex + offset",
        "triangles_flipped": str(flipped).lower(),
        "uv": "cylindrical projection (BFM has no UVs)",
        "landmarks": f"ibug68 from {landmark_source}" if keypoints is not None else "none",
        "mirror_max_error_mm": f"{mirror_error:.3f}",
        "licence": "Basel Face Model: not redistributable; keep this file private",
    }
    data = ModelData(
        name=MODEL_NAME,
        mean=mean.astype(np.float32),
        identity_basis=identity_basis.astype(np.float32),
        identity_std=std.astype(np.float32),
        expression_basis=expression_basis.astype(np.float32),
        expression_names=[f"exp{j:02d}" for j in range(expression_basis.shape[0])],
        triangles=triangles.astype(np.int64),
        uv_coords=uv,
        uv_triangles=triangles.astype(np.int64).copy(),
        regions=_regions(mean, triangles, keypoints),
        landmarks=landmarks,
        mirror=mirror,
        metadata=notes,
    )
    data.validate()
    return data
