"""Mesh export of a fitted head: glTF binary (.glb) for Blender and viewers, OBJ, PLY.

`export_mesh` takes plain arrays (no fitting classes); `export_fit` adapts any fit object
that carries them by name.

Scene convention (every format): the fitted pose is an OpenCV-style extrinsic, model ->
camera, `X_cam = R @ X_model + t` (R from the axis-angle `rotations`, t in mm), exactly as
in `render.camera`. The exported scene is that camera space turned to y up:
`X_scene = C @ X_cam` with `C = diag(1, -1, -1)`, i.e. the camera sits at the origin
looking down -z with y up (the glTF / OpenGL camera convention), and the head is placed at
`C @ R` / `C @ t`. A frontal fit (`R = diag(1, -1, -1)`, `t = (0, 0, d)`) therefore gives
an upright head facing +z at `z = -d`. Without poses the head is left in model space
(x right, y up, z towards the viewer), which already matches glTF's axes.

Units: glTF is in metres (the spec's unit); OBJ and PLY stay in millimetres, as the
project's model space.

Formats:
- `.glb`: the identity mesh (seams split: one glTF vertex per distinct (vertex, uv) pair),
  normals, UV texture embedded as PNG (a neutral skin texture when none is given), the
  model's expressions as morph targets named in `mesh.extras.targetNames` (Blender's
  importer turns them into shape keys). For several frames, an animation with `weights`
  and node `rotation` / `translation` channels sampled at `k / fps` seconds. Blender's
  importer converts seconds to frames with the *scene's* frame rate: set it to the
  video's fps first (the fps is also stored in `scene.extras.fps`). Given the fit's pinhole
  intrinsics, a matching glTF camera sits at the origin (vertical field of view from fy;
  set the render resolution to the video's size to frame the head as in the video).
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

import io
import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pygltflib
from PIL import Image
from scipy.spatial.transform import Rotation

from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import atomic_write
from morph3d.model.geometry import vertex_normals
from morph3d.model.model import ModelData

SUFFIXES = (".glb", ".obj", ".ply")
OPENCV_TO_SCENE = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) -> y up
MM_PER_M = 1000.0

SKIN_RGB = (0.87, 0.68, 0.58)
REGION_RGB = {  # painted in this order over skin; later regions win where UVs overlap
    "lips": (0.74, 0.45, 0.43),
    "mouth_interior": (0.42, 0.17, 0.18),
    "tongue": (0.72, 0.36, 0.38),
    "teeth": (0.93, 0.91, 0.85),
}
SCLERA_RGB = (0.93, 0.91, 0.88)
IRIS_RGB = (0.33, 0.24, 0.17)
PUPIL_RGB = (0.03, 0.03, 0.03)
IRIS_HALF_ANGLE_RAD = 0.42  # angular radius of the iris seen from the eyeball centre
PUPIL_HALF_ANGLE_RAD = 0.15

_TYPE_BY_WIDTH = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}


# ---------------------------------------------------------------------------------------------
# Geometry helpers (numpy)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeamSplit:
    """A mesh re-indexed with one vertex per distinct (vertex, uv) corner pair.

    vertex_ids: N model-vertex index of each split vertex; uv_ids: N index into uv_coords;
    triangles: F x 3 indices into the N split vertices (same order as the model's).
    """

    vertex_ids: np.ndarray
    uv_ids: np.ndarray
    triangles: np.ndarray


def split_uv_seams(triangles: np.ndarray, uv_triangles: np.ndarray) -> SeamSplit:
    """Split vertices along UV seams (formats with a single index per vertex need it)."""
    corners = np.stack([triangles.ravel(), uv_triangles.ravel()], axis=1).astype(np.int64)
    pairs, inverse = np.unique(corners, axis=0, return_inverse=True)
    return SeamSplit(pairs[:, 0], pairs[:, 1], inverse.reshape(-1, 3).astype(np.int64))


def unit_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Float32 unit vertex normals V x 3 for glTF, which requires unit length: the model's
    normals, with +z for a vertex on no (or only degenerate) triangles."""
    normals = vertex_normals(vertices.astype(np.float64), triangles)
    normals[~np.any(normals, axis=1)] = (0.0, 0.0, 1.0)
    return normals.astype(np.float32)


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


def continuous_quaternions(matrices: np.ndarray) -> np.ndarray:
    """F x 3 x 3 rotations -> F x 4 unit quaternions (x, y, z, w), signs kept continuous."""
    quats = Rotation.from_matrix(matrices).as_quat()  # scalar last, as glTF wants
    for k in range(1, len(quats)):
        if np.dot(quats[k], quats[k - 1]) < 0:
            quats[k] = -quats[k]
    return quats


# ---------------------------------------------------------------------------------------------
# Texture
# ---------------------------------------------------------------------------------------------


def _uv_to_pixels(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """UV (v up) -> pixel coordinates (x right, y down, pixel centres at integers)."""
    return np.stack([uv[..., 0] * width - 0.5, (1.0 - uv[..., 1]) * height - 0.5], axis=-1)


def default_texture(data: ModelData, size: int | None = None) -> np.ndarray:
    """A neutral UV texture, size x size x 3 float32 RGB in [0, 1] (row 0 is v = 1).

    Skin everywhere, with lips, mouth, tongue and teeth tinted by region and eyeballs given
    a sclera, iris and pupil (placed by the angle from each eyeball's forward +z axis).
    """
    size = int(size or data.texture_size)
    image = np.empty((size, size, 3), np.float32)
    image[:] = SKIN_RGB
    shift = 4  # sub-pixel precision of the polygon fill
    corners_px = _uv_to_pixels(data.uv_coords[data.uv_triangles], size, size)
    fixed = np.round(corners_px * (1 << shift)).astype(np.int32)  # F x 3 x 2
    for region, rgb in REGION_RGB.items():
        if region not in data.regions:
            continue
        for t in np.flatnonzero(data.regions[region][data.triangles].all(axis=1)):
            cv2.fillConvexPoly(image, fixed[t], rgb, lineType=cv2.LINE_8, shift=shift)
    eyeballs = [data.regions[k] for k in ("left_eyeball", "right_eyeball") if k in data.regions]
    if not eyeballs and "eyeballs" in data.regions:
        eyeballs = [data.regions["eyeballs"]]
    for mask in eyeballs:
        _paint_eyeball(image, data, mask, corners_px, fixed, shift)
    return image


def _paint_eyeball(image: np.ndarray, data: ModelData, mask: np.ndarray,
                   corners_px: np.ndarray, fixed: np.ndarray, shift: int) -> None:
    """Colour an eyeball's texels by the angle of their surface point from the +z axis."""
    tris = np.flatnonzero(mask[data.triangles].all(axis=1))
    if tris.size == 0:
        return
    centre = data.mean[mask].mean(axis=0)
    # Back triangles first so the front of the eye wins where its UVs overlap the back.
    tris = tris[np.argsort(data.mean[data.triangles[tris]][:, :, 2].mean(axis=1))]
    owner = np.full(image.shape[:2], -1.0, np.float32)
    for t in tris:
        cv2.fillConvexPoly(owner, fixed[t], float(t), lineType=cv2.LINE_8, shift=shift)
    rows, cols = np.nonzero(owner >= 0)
    if rows.size == 0:
        return
    owned = owner[rows, cols].astype(np.int64)
    a, b, c = (corners_px[owned, i] for i in range(3))
    p = np.stack([cols, rows], axis=1).astype(np.float64)
    # Barycentric coordinates of each texel centre in its triangle (2D, clipped to it).
    v0, v1, v2 = b - a, c - a, p - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    w1 = np.clip((v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det, 0, 1)
    w2 = np.clip((v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det, 0, 1 - w1)
    weights = np.stack([1 - w1 - w2, w1, w2], axis=1)
    points = np.einsum("nc,ncd->nd", weights, data.mean[data.triangles[owned]])
    direction = points - centre
    cos_angle = direction[:, 2] / np.maximum(np.linalg.norm(direction, axis=1), 1e-9)
    angle = np.arccos(np.clip(cos_angle, -1, 1))
    colours = np.where((angle < PUPIL_HALF_ANGLE_RAD)[:, None], PUPIL_RGB,
                       np.where((angle < IRIS_HALF_ANGLE_RAD)[:, None], IRIS_RGB, SCLERA_RGB))
    image[rows, cols] = colours


def _texture_uint8(texture: np.ndarray) -> np.ndarray:
    """Validate an H x W x 3 texture (float in [0, 1] or uint8) and return it as uint8 RGB."""
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] not in (3, 4) or min(texture.shape[:2]) < 1:
        raise InputError(f"texture must be an H x W x 3 RGB image, got shape {texture.shape}")
    texture = texture[:, :, :3]
    if texture.dtype == np.uint8:
        return np.ascontiguousarray(texture)
    if not np.isfinite(texture).all():
        raise InputError("texture has non-finite values")
    return np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8)


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------


@dataclass
class _Frames:
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


def _model_data(model: Any) -> ModelData:
    if isinstance(model, ModelData):
        return model
    if isinstance(getattr(model, "data", None), ModelData):
        return model.data
    if isinstance(model, str | os.PathLike):
        from morph3d.model.registry import load_model_data

        return load_model_data(str(model))
    raise TypeError(f"expected a MorphableModel, ModelData or model name, got {type(model)}")


def _float_array(value: Any, name: str) -> np.ndarray:
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
    array = _float_array(value, name)
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


def _prepare_frames(data: ModelData, expression_frames: Any, rotations: Any,
                    translations: Any, valid: Any) -> _Frames:
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
    return _Frames(count, expression, scene_r, scene_t)


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
# glTF binary
# ---------------------------------------------------------------------------------------------


class _GltfBuilder:
    """Collects pygltflib buffer views and accessors over one little-endian binary buffer."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.buffer_views: list[pygltflib.BufferView] = []
        self.accessors: list[pygltflib.Accessor] = []

    def view(self, payload: bytes, target: int | None = None) -> int:
        self.blob.extend(b"\x00" * (-len(self.blob) % 4))  # 4-byte aligned views
        self.buffer_views.append(pygltflib.BufferView(
            buffer=0, byteOffset=len(self.blob), byteLength=len(payload), target=target))
        self.blob.extend(payload)
        return len(self.buffer_views) - 1

    def accessor(self, array: np.ndarray, target: int | None = None, bounds: bool = False,
                 name: str | None = None) -> int:
        """One accessor over a new tightly packed view; N x C float32 or (N,) uint indices."""
        array = np.ascontiguousarray(array)
        component = {np.dtype(np.float32): pygltflib.FLOAT,
                     np.dtype(np.uint16): pygltflib.UNSIGNED_SHORT,
                     np.dtype(np.uint32): pygltflib.UNSIGNED_INT}[array.dtype]
        width = 1 if array.ndim == 1 else array.shape[1]
        flat = array.reshape(len(array), width)
        self.accessors.append(pygltflib.Accessor(
            bufferView=self.view(array.astype(array.dtype.newbyteorder("<")).tobytes(), target),
            componentType=component,
            count=int(array.shape[0]),
            type=_TYPE_BY_WIDTH[width],
            min=[float(x) for x in flat.min(axis=0)] if bounds else None,
            max=[float(x) for x in flat.max(axis=0)] if bounds else None,
            name=name,
        ))
        return len(self.accessors) - 1


def glb_bytes(data: ModelData, identity: np.ndarray | None, texture_rgb: np.ndarray,
              frames: _Frames, fps: float, frame: int | None,
              camera: dict[str, float] | None = None, offset: np.ndarray | None = None
              ) -> bytes:
    """The .glb file for a model, identity, texture and frames (see the module docstring)."""
    split = split_uv_seams(data.triangles, data.uv_triangles)
    neutral = identity_vertices(data, identity, offset)  # mm
    normals = unit_normals(neutral, data.triangles)[split.vertex_ids]
    positions = (neutral[split.vertex_ids] / MM_PER_M).astype(np.float32)
    uv = data.uv_coords[split.uv_ids].astype(np.float32)
    texcoords = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # glTF: origin top-left, v down
    index_type = np.uint16 if len(positions) < 65535 else np.uint32

    gltf = _GltfBuilder()
    attributes = pygltflib.Attributes(
        POSITION=gltf.accessor(positions, pygltflib.ARRAY_BUFFER, bounds=True),
        NORMAL=gltf.accessor(normals, pygltflib.ARRAY_BUFFER),
        TEXCOORD_0=gltf.accessor(texcoords, pygltflib.ARRAY_BUFFER),
    )
    indices = gltf.accessor(split.triangles.reshape(-1).astype(index_type),
                            pygltflib.ELEMENT_ARRAY_BUFFER)
    targets = []
    for j, name in enumerate(data.expression_names):
        deltas = (data.expression_basis[j][split.vertex_ids] / MM_PER_M).astype(np.float32)
        targets.append(pygltflib.Attributes(
            POSITION=gltf.accessor(deltas, pygltflib.ARRAY_BUFFER, bounds=True, name=name)))
    image_view = gltf.view(_png_bytes(texture_rgb))

    num_targets = len(targets)
    animate = frames.count > 1 and frame is None
    shown = 0 if frame is None else frame
    weights = np.zeros(num_targets)
    if frames.expression is not None and not animate:
        weights = frames.expression[shown]
    node = pygltflib.Node(name=data.name, mesh=0)
    quats = None
    if frames.rotation is not None:
        quats = continuous_quaternions(frames.rotation)
        node.rotation = [float(x) for x in quats[shown]]
        node.translation = [float(x) for x in frames.translation[shown] / MM_PER_M]
    primitive = pygltflib.Primitive(attributes=attributes, indices=indices, material=0,
                                    mode=pygltflib.TRIANGLES, targets=targets or None)
    mesh = pygltflib.Mesh(name=data.name, primitives=[primitive])
    if targets:
        mesh.weights = [float(w) for w in weights]
        mesh.extras = {"targetNames": list(data.expression_names)}
    scene = pygltflib.Scene(name="morph3d", nodes=[0],
                            extras={"fps": float(fps), "units": "metres",
                                    "frames": int(frames.count)})
    document = pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0", generator="morph3d"),
        scene=0,
        scenes=[scene],
        nodes=[node],
        meshes=[mesh],
        materials=[pygltflib.Material(
            name="skin",
            pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                baseColorTexture=pygltflib.TextureInfo(index=0), metallicFactor=0.0,
                roughnessFactor=0.6),
            doubleSided=True,
        )],
        textures=[pygltflib.Texture(sampler=0, source=0)],
        samplers=[pygltflib.Sampler(magFilter=pygltflib.LINEAR,
                                    minFilter=pygltflib.LINEAR_MIPMAP_LINEAR,
                                    wrapS=pygltflib.CLAMP_TO_EDGE,
                                    wrapT=pygltflib.CLAMP_TO_EDGE)],
        images=[pygltflib.Image(name="texture", mimeType="image/png", bufferView=image_view)],
    )
    if camera is not None:
        document.cameras = [_gltf_camera(camera)]
        document.nodes.append(pygltflib.Node(name="camera", camera=0))  # origin, looking -z
        scene.nodes.append(1)
        scene.extras["camera"] = camera
    if animate:
        document.animations = [_animation(gltf, frames, quats, fps, num_targets)]
    document.accessors = gltf.accessors
    document.bufferViews = gltf.buffer_views
    blob = bytes(gltf.blob) + b"\x00" * (-len(gltf.blob) % 4)  # GLB chunks are 4-byte sized
    document.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    document.set_binary_blob(blob)
    return b"".join(document.save_to_bytes())


def _camera_intrinsics(camera: Any) -> dict[str, float] | None:
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


def _gltf_camera(intrinsics: dict[str, float]) -> pygltflib.Camera:
    """A glTF perspective camera with the pinhole's fields of view (principal point: extras)."""
    yfov = 2.0 * np.arctan(intrinsics["height"] / (2.0 * intrinsics["fy"]))
    aspect = (intrinsics["width"] / intrinsics["fx"]) / (intrinsics["height"] / intrinsics["fy"])
    return pygltflib.Camera(name="camera", type=pygltflib.PERSPECTIVE, extras=intrinsics,
                            perspective=pygltflib.Perspective(
                                yfov=float(yfov), aspectRatio=float(aspect), znear=0.01,
                                zfar=100.0))


def _animation(gltf: _GltfBuilder, frames: _Frames, quats: np.ndarray | None, fps: float,
               num_targets: int) -> pygltflib.Animation:
    times = (np.arange(frames.count) / fps).astype(np.float32)
    time_accessor = gltf.accessor(times, bounds=True, name="time")
    samplers: list[pygltflib.AnimationSampler] = []
    channels: list[pygltflib.AnimationChannel] = []

    def channel(output: np.ndarray, path: str, name: str) -> None:
        samplers.append(pygltflib.AnimationSampler(
            input=time_accessor, output=gltf.accessor(output, name=name),
            interpolation=pygltflib.ANIM_LINEAR))
        channels.append(pygltflib.AnimationChannel(
            sampler=len(samplers) - 1,
            target=pygltflib.AnimationChannelTarget(node=0, path=path)))

    if frames.expression is not None and num_targets:
        channel(frames.expression.reshape(-1).astype(np.float32), "weights", "weights")
    if quats is not None:
        channel(quats.astype(np.float32), "rotation", "rotation")
        channel((frames.translation / MM_PER_M).astype(np.float32), "translation",
                "translation")
    return pygltflib.Animation(name="fit", channels=channels, samplers=samplers,
                               extras={"fps": float(fps), "frames": int(frames.count)})


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
    return [(texture_path, _png_bytes(texture_rgb)), (mtl_path, mtl.encode()),
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
    the module docstring). valid: F bools; invalid or non-finite frames hold the previous
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
        coefficients = _float_array(identity, "identity").reshape(-1)
        if coefficients.shape != (data.num_identity,):
            raise InputError(f"identity must have {data.num_identity} coefficients for model "
                             f"'{data.name}', got {coefficients.size}")
        if not np.isfinite(coefficients).all():
            raise InputError("identity coefficients have non-finite values")
    if offset is not None:
        offset = _float_array(offset, "offset")
        if offset.shape != data.mean.shape or not np.isfinite(offset).all():
            raise InputError(f"offset must be a finite {data.mean.shape} array")
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be positive, got {fps}")
    frames = _prepare_frames(data, expression_frames, rotations, translations, valid)
    intrinsics = _camera_intrinsics(camera)
    if frame is not None:
        limit = max(frames.count, 1)
        if not 0 <= frame < limit:
            raise InputError(f"frame {frame} is out of range: there are {limit} frame(s)")

    if suffix == ".glb":
        texture_rgb = _texture_uint8(default_texture(data) if texture is None else texture)
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
        texture_rgb = _texture_uint8(default_texture(data) if texture is None else texture)
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
