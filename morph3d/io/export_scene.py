"""The head every mesh export writes, in any format: its scene, neutral shape and frames.

Scene convention (every format): the fitted pose is an OpenCV-style extrinsic, model ->
camera, `X_cam = R @ X_model + t` (R from the axis-angle `rotations`, t in mm), exactly as
in `render.camera`. The exported scene is that camera space turned to y up:
`X_scene = C @ X_cam` with `C = diag(1, -1, -1)`, i.e. the camera sits at the origin
looking down -z with y up (the glTF / OpenGL camera convention), and the head is placed at
`C @ R` / `C @ t`. A frontal fit (`R = diag(1, -1, -1)`, `t = (0, 0, d)`) therefore gives
an upright head facing +z at `z = -d`. Without poses the head is left in model space
(x right, y up, z towards the viewer), which already matches glTF's axes.

Units: everything here is in millimetres, as the project's model space; glTF converts to
metres (`MM_PER_M`), OBJ and PLY stay in millimetres.

`prepare_frames` validates the per-frame arrays once for every format (one frame count,
invalid or non-finite frames holding the previous valid one) and turns the poses into
`SceneFrames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from morph3d.errors import InputError
from morph3d.model.model import ModelData

OPENCV_TO_SCENE = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) -> y up
MM_PER_M = 1000.0


def identity_vertices(data: ModelData, identity: np.ndarray | None = None,
                      offset: np.ndarray | None = None) -> np.ndarray:
    """Neutral-expression vertices V x 3 (mm) of identity coefficients (K,) in std units,
    plus a photo fit's corrective deformation `offset` (V x 3 mm, `Identity.offset`)."""
    vertices = data.mean.astype(np.float64)
    if identity is not None:
        vertices = vertices + np.einsum("k,kvc->vc", identity * data.identity_std,
                                        data.identity_basis)
    if offset is not None:
        vertices = vertices + offset
    return vertices


def scene_pose(rotations: np.ndarray, translations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV extrinsics (F x 3 axis-angle rad, F x 3 mm) -> y-up scene (F x 3 x 3, F x 3 mm).

    See the module docstring: the head's transform in a scene whose camera is at the origin
    looking down -z.
    """
    matrices = Rotation.from_rotvec(rotations).as_matrix()
    return OPENCV_TO_SCENE @ matrices, translations @ OPENCV_TO_SCENE.T


# ---------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------


@dataclass
class SceneFrames:
    """Per-frame parameters after validation; any of them may be absent (None)."""

    count: int  # F >= 1 when any per-frame array was given, else 0
    expression: np.ndarray | None  # F x J
    rotation: np.ndarray | None  # F x 3 x 3 scene rotations
    translation: np.ndarray | None  # F x 3 scene translations, mm

    def posed(self, vertices: np.ndarray, frame: int) -> np.ndarray:
        """Apply frame `frame`'s scene pose to V x 3 vertices (mm)."""
        if self.rotation is not None:
            vertices = vertices @ self.rotation[frame].T
        if self.translation is not None:
            vertices = vertices + self.translation[frame]
        return vertices


def float_array(value: Any, name: str) -> np.ndarray:
    """An array-like or torch tensor as a float64 numpy copy; InputError naming `name` if it
    is not numeric."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.array(value, dtype=np.float64)  # a copy: invalid frames are filled in place
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numeric") from None


def _per_frame(value: Any, name: str, width: int) -> np.ndarray | None:
    """(width,) or (F, width) -> (F, width) float64; None stays None."""
    if value is None:
        return None
    array = float_array(value, name)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != width:
        raise InputError(f"{name} must be F x {width}, got shape {array.shape}")
    return array


def _hold_invalid(arrays: Sequence[np.ndarray | None], valid: np.ndarray) -> None:
    """Replace invalid frames in place by the previous valid one (leading: the first valid)."""
    index = np.where(valid, np.arange(len(valid)), -1)
    index = np.maximum.accumulate(index)
    first = int(np.argmax(valid))
    index[index < 0] = first
    for array in arrays:
        if array is not None:
            array[:] = array[index]


def prepare_frames(data: ModelData, expression_frames: Any, rotations: Any,
                   translations: Any, valid: Any) -> SceneFrames:
    expression = _per_frame(expression_frames, "expression_frames", data.num_expression)
    rotation = _per_frame(rotations, "rotations", 3)
    translation = _per_frame(translations, "translations", 3)
    given = [a for a in (expression, rotation, translation) if a is not None]
    counts = {len(a) for a in given}
    if len(counts) > 1:
        raise InputError(f"per-frame arrays disagree on the number of frames: {sorted(counts)}")
    count = counts.pop() if counts else 0
    if given and count == 0:
        raise InputError("no frames to export (per-frame arrays are empty)")
    if count:
        ok = np.ones(count, bool) if valid is None else np.asarray(valid, bool).reshape(-1)
        if ok.shape != (count,):
            raise InputError(f"valid must have one flag per frame ({count}), got {ok.shape}")
        for array in given:
            ok = ok & np.isfinite(array).all(axis=1)
        if not ok.any():
            raise InputError("no valid frames to export")
        if not ok.all():
            _hold_invalid(given, ok)
    if rotation is None and translation is not None:
        rotation = np.zeros_like(translation)  # identity rotation in the camera frame
    scene_r = scene_t = None
    if rotation is not None:
        t = translation if translation is not None else np.zeros_like(rotation)
        scene_r, scene_t = scene_pose(rotation, t)
    return SceneFrames(count, expression, scene_r, scene_t)


def camera_intrinsics(camera: Any) -> dict[str, float] | None:
    """fx, fy, cx, cy (px) and width, height from an object or mapping; None if absent."""
    if camera is None:
        return None
    get = camera.get if isinstance(camera, dict) else lambda k: getattr(camera, k, None)
    values = {k: get(k) for k in ("fx", "fy", "cx", "cy", "width", "height")}
    if any(values[k] is None for k in ("fx", "fy", "width", "height")):
        raise InputError("camera needs fx, fy, width and height (pixels)")
    intrinsics = {k: float(v) for k, v in values.items() if v is not None}
    if min(intrinsics["fx"], intrinsics["fy"], intrinsics["width"], intrinsics["height"]) <= 0:
        raise InputError(f"camera intrinsics must be positive, got {intrinsics}")
    return intrinsics
