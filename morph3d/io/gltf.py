"""glTF binary (.glb) of a fitted head, assembled with pygltflib.

The identity mesh (seams split: one glTF vertex per distinct (vertex, uv) pair), normals, UV
texture embedded as PNG, the model's expressions as morph targets named in
`mesh.extras.targetNames` (Blender's importer turns them into shape keys). For several
frames, an animation with `weights` and node `rotation` / `translation` channels sampled at
`k / fps` seconds. Blender's importer converts seconds to frames with the *scene's* frame
rate: set it to the video's fps first (the fps is also stored in `scene.extras.fps`). Given
the fit's pinhole intrinsics, a matching glTF camera sits at the origin (vertical field of
view from fy; set the render resolution to the video's size to frame the head as in the
video).

The scene is that of `morph3d.io.export_scene`, in metres (the glTF spec's unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pygltflib
from scipy.spatial.transform import Rotation

from morph3d.io.export_scene import MM_PER_M, SceneFrames, identity_vertices
from morph3d.io.export_texture import png_bytes
from morph3d.model.geometry import vertex_normals
from morph3d.model.model import ModelData

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


def continuous_quaternions(matrices: np.ndarray) -> np.ndarray:
    """F x 3 x 3 rotations -> F x 4 unit quaternions (x, y, z, w), signs kept continuous."""
    quats = Rotation.from_matrix(matrices).as_quat()  # scalar last, as glTF wants
    for k in range(1, len(quats)):
        if np.dot(quats[k], quats[k - 1]) < 0:
            quats[k] = -quats[k]
    return quats


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
              frames: SceneFrames, fps: float, frame: int | None,
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
    image_view = gltf.view(png_bytes(texture_rgb))

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


def _gltf_camera(intrinsics: dict[str, float]) -> pygltflib.Camera:
    """A glTF perspective camera with the pinhole's fields of view (principal point: extras)."""
    yfov = 2.0 * np.arctan(intrinsics["height"] / (2.0 * intrinsics["fy"]))
    aspect = (intrinsics["width"] / intrinsics["fx"]) / (intrinsics["height"] / intrinsics["fy"])
    return pygltflib.Camera(name="camera", type=pygltflib.PERSPECTIVE, extras=intrinsics,
                            perspective=pygltflib.Perspective(
                                yfov=float(yfov), aspectRatio=float(aspect), znear=0.01,
                                zfar=100.0))


def _animation(gltf: _GltfBuilder, frames: SceneFrames, quats: np.ndarray | None, fps: float,
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
