"""Mesh export of a fitted head: glTF binary (.glb) for Blender and viewers, OBJ, PLY.

`export_mesh` takes plain arrays (no fitting classes); `export_fit` adapts any fit object
that carries them by name.

Every format places the head in the scene of `morph3d.io.export_scene` (the camera at the
origin looking down -z, y up). Units: glTF is in metres (the spec's unit); OBJ and PLY stay
in millimetres, as the project's model space.

Formats:
- `.glb` (`morph3d.io.gltf`): the identity mesh with normals, the UV texture embedded (a
  neutral skin texture, `morph3d.io.export_texture`, when none is given), the model's
  expressions as morph targets, an animation for several frames and the fit's camera.
- `.obj`: one frame (expression and pose applied), with `<stem>.mtl` and
  `<stem>_texture.png` beside it; faces use per-corner UV indices (`f v/vt`).
- `.ply`: binary little-endian positions (mm) and faces. Several frames write a sequence
  beside the named path: `out.ply` -> `out_0000.ply`, `out_0001.ply`, ...

The .glb is assembled with pygltflib and the .ply written by trimesh; the .obj is written
here (see `obj_files` for why).

Every file is written to a temp file and renamed; a multi-file export renames only once
all of its files are complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import atomic_write
from morph3d.io.export_scene import (
    camera_intrinsics,
    float_array,
    identity_vertices,
    prepare_frames,
)
from morph3d.io.export_texture import default_texture, png_bytes, texture_uint8
from morph3d.io.gltf import glb_bytes
from morph3d.model.model import ModelData

SUFFIXES = (".glb", ".obj", ".ply")


def _model_data(model: Any) -> ModelData:
    if isinstance(model, ModelData):
        return model
    if isinstance(getattr(model, "data", None), ModelData):
        return model.data
    if isinstance(model, str | os.PathLike):
        from morph3d.model.registry import load_model_data

        return load_model_data(str(model))
    raise TypeError(f"expected a MorphableModel, ModelData or model name, got {type(model)}")


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------


def _write_together(files: Iterable[tuple[Path, bytes]]) -> list[Path]:
    """Write every (path, bytes) with `atomic_write`, renaming them only once all are
    written (in order): a failure leaves none of the set's temp files and no new file."""
    files = list(files)
    with ExitStack() as stack:
        # Entered last to first so that the stack's exits rename first to last.
        for path, payload in reversed(files):
            stack.enter_context(atomic_write(path)).write(payload)
    return [path for path, _ in files]


# ---------------------------------------------------------------------------------------------
# OBJ and PLY
# ---------------------------------------------------------------------------------------------


def obj_files(path: Path, data: ModelData, vertices: np.ndarray,
              texture_rgb: np.ndarray) -> list[tuple[Path, bytes]]:
    """(path, bytes) of `<stem>_texture.png`, `<stem>.mtl` and the .obj, in that order.

    Written by hand, not by trimesh's OBJ exporter: a trimesh mesh has one UV per vertex, so
    its OBJ repeats every seam vertex (positions no longer one per model vertex, in the
    model's order, as `f v/vt` with separate UV indices keeps them), and it names the
    texture after the material (`skin.png`) instead of `<stem>_texture.png`.
    """
    texture_path = path.with_name(f"{path.stem}_texture.png")
    mtl_path = path.with_suffix(".mtl")
    mtl = (
        "# morph3d head material\n"
        "newmtl skin\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
        f"map_Kd {texture_path.name}\n"
    )
    v_lines = [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in vertices.tolist()]
    vt_lines = [f"vt {u:.6f} {v:.6f}" for u, v in data.uv_coords.tolist()]
    f_lines = [
        f"f {a}/{ta} {b}/{tb} {c}/{tc}"
        for (a, b, c), (ta, tb, tc) in zip((data.triangles + 1).tolist(),
                                           (data.uv_triangles + 1).tolist(), strict=True)
    ]
    obj = "\n".join([
        f"# morph3d head '{data.name}', millimetres, x right, y up, z towards the viewer",
        f"mtllib {mtl_path.name}", f"o {data.name}", *v_lines, *vt_lines, "usemtl skin", "s 1",
        *f_lines, "",
    ])
    return [(texture_path, png_bytes(texture_rgb)), (mtl_path, mtl.encode()),
            (path, obj.encode())]


def ply_bytes(vertices: np.ndarray, triangles: np.ndarray) -> bytes:
    """Binary little-endian PLY by trimesh: float32 x, y, z (mm) and uchar-counted int32
    faces, vertices in the model's order (no merging: `process=False`)."""
    import trimesh  # imported here: only .ply export needs it, and it is slow to import

    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float64), faces=triangles,
                           process=False, validate=False)
    return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False,
                                           include_attributes=False)


def ply_sequence_paths(path: Path, count: int) -> list[Path]:
    """`out.ply` -> out_0000.ply ... (at least 4 digits) for a `count`-frame sequence."""
    digits = max(4, len(str(count - 1)))
    return [path.with_name(f"{path.stem}_{k:0{digits}d}{path.suffix}") for k in range(count)]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def export_mesh(
    path: str | os.PathLike,
    model: Any,
    identity: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    expression_frames: np.ndarray | None = None,
    rotations: np.ndarray | None = None,
    translations: np.ndarray | None = None,
    fps: float = 30.0,
    frame: int | None = None,
    valid: np.ndarray | None = None,
    camera: Any = None,
    offset: np.ndarray | None = None,
) -> list[Path]:
    """Write the head as .glb, .obj or .ply (by suffix); returns the files written.

    model: a MorphableModel, ModelData or model name. identity: (K,) coefficients in
    standard deviations. texture: H x W x 3 RGB (float in [0, 1] or uint8; row 0 is v = 1);
    None gives `default_texture`. expression_frames: F x J (or J) weights; rotations:
    F x 3 axis-angle rad and translations: F x 3 mm, the OpenCV model -> camera pose (see
    `morph3d.io.export_scene`). valid: F bools; invalid or non-finite frames hold the previous
    valid frame. frame: export only that frame; None means every frame (a glb animation
    or a PLY sequence when F > 1) and frame 0 for OBJ, which holds one frame. camera: the
    fit's pinhole (fx, fy, cx, cy, width, height as attributes or keys), added to a .glb.
    offset: V x 3 mm added to the neutral shape (a photo fit's `Identity.offset`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"cannot export '{path.name}': use a {', '.join(SUFFIXES)} file name")
    data = _model_data(model)
    coefficients = None
    if identity is not None:
        coefficients = float_array(identity, "identity").reshape(-1)
        if coefficients.shape != (data.num_identity,):
            raise InputError(f"identity must have {data.num_identity} coefficients for model "
                             f"'{data.name}', got {coefficients.size}")
        if not np.isfinite(coefficients).all():
            raise InputError("identity coefficients have non-finite values")
    if offset is not None:
        offset = float_array(offset, "offset")
        if offset.shape != data.mean.shape or not np.isfinite(offset).all():
            raise InputError(f"offset must be a finite {data.mean.shape} array")
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be positive, got {fps}")
    frames = prepare_frames(data, expression_frames, rotations, translations, valid)
    intrinsics = camera_intrinsics(camera)
    if frame is not None:
        limit = max(frames.count, 1)
        if not 0 <= frame < limit:
            raise InputError(f"frame {frame} is out of range: there are {limit} frame(s)")

    if suffix == ".glb":
        texture_rgb = texture_uint8(default_texture(data) if texture is None else texture)
        payload = glb_bytes(data, coefficients, texture_rgb, frames, fps, frame, intrinsics,
                            offset)
        return _write_together([(path, payload)])

    neutral = identity_vertices(data, coefficients, offset)

    def frame_vertices(k: int) -> np.ndarray:
        vertices = neutral
        if frames.expression is not None:
            vertices = vertices + np.einsum("j,jvc->vc", frames.expression[k],
                                            data.expression_basis)
        return frames.posed(vertices, k) if frames.count else vertices

    if suffix == ".obj":
        texture_rgb = texture_uint8(default_texture(data) if texture is None else texture)
        k = frame or 0
        return _write_together(obj_files(path, data, frame_vertices(k), texture_rgb))

    triangles = data.triangles.astype(np.int32)
    if frame is not None or frames.count <= 1:
        return _write_together([(path, ply_bytes(frame_vertices(frame or 0), triangles))])
    return _write_together(
        (out, ply_bytes(frame_vertices(k), triangles))
        for k, out in enumerate(ply_sequence_paths(path, frames.count))
    )


def _first_attribute(obj: Any, *names: str) -> Any:
    """The first non-None value among dotted attribute names (`identity.coefficients`)."""
    for name in names:
        value: Any = obj
        for part in name.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


def export_fit(fit: Any, model: Any, path: str | os.PathLike, frame: int | None = None,
               fps: float | None = None) -> list[Path]:
    """Export any fit object through `export_mesh`, reading its arrays by attribute name.

    Looked up (first present wins): identity coefficients `identity.coefficients`,
    `identity_coefficients`, `identity` (an array); texture `identity.texture`, `texture`;
    per-frame `expression` / `expressions` (F x J), `rotation` / `rotations` (F x 3
    axis-angle rad, OpenCV model -> camera), `translation` / `translations` (F x 3 mm), each
    also under `faces.`, `frames.` or `pose.` (fitting's `VideoFit` keeps them in `faces`);
    `camera` (fx, fy, cx, cy, width, height); `fps` (absent or <= 0: 30). `valid` flags are
    not used: a fit bridges its faceless frames itself, and non-finite frames are held.
    A photo fit with one frame exports that frame.
    """
    identity = _first_attribute(fit, "identity.coefficients", "identity_coefficients")
    if identity is None:
        candidate = getattr(fit, "identity", None)
        if isinstance(candidate, np.ndarray) or hasattr(candidate, "detach"):
            identity = candidate
    texture = _first_attribute(fit, "identity.texture", "texture")

    def per_frame(*names: str) -> Any:
        nested = [f"{group}.{name}" for group in ("faces", "frames", "pose") for name in names]
        return _first_attribute(fit, *names, *nested)

    expression = per_frame("expression", "expressions")
    rotation = per_frame("rotation", "rotations")
    translation = per_frame("translation", "translations")
    if fps is None:
        fit_fps = _first_attribute(fit, "fps", "video.fps")
        fps = float(fit_fps) if fit_fps is not None and float(fit_fps) > 0 else 30.0
    if identity is None and expression is None and rotation is None:
        raise Morph3dError(f"nothing to export: {type(fit).__name__} has no identity, "
                           "expression or pose arrays")
    return export_mesh(path, model, identity=identity, texture=texture,
                       expression_frames=expression, rotations=rotation,
                       translations=translation, fps=fps, frame=frame,
                       camera=getattr(fit, "camera", None),
                       offset=_first_attribute(fit, "identity.offset"))
