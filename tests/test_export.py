"""Mesh export: glTF binary structure and morph targets, OBJ, PLY, the fit adapter, Blender."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from morph3d.errors import InputError, Morph3dError
from morph3d.io.export import export_fit, export_mesh
from morph3d.io.export_scene import OPENCV_TO_SCENE, identity_vertices
from morph3d.io.export_texture import default_texture
from morph3d.io.gltf import continuous_quaternions, split_uv_seams
from morph3d.model.model import ModelData, MorphableModel
from morph3d.model.registry import load_model_data

FRONT = np.diag([1.0, -1.0, -1.0])  # model -> OpenCV camera, frontal view (render.camera)
COMPONENT_DTYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


@pytest.fixture(scope="module")
def data() -> ModelData:
    return load_model_data("default")


def video_params(data: ModelData, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A plausible fit: frontal-ish OpenCV poses half a metre away, weights in [0, 1]."""
    rng = np.random.default_rng(seed)
    front = Rotation.from_matrix(FRONT)
    turns = Rotation.from_rotvec(rng.normal(0.0, 0.2, (frames, 3)))
    return {
        "expression_frames": rng.uniform(0.0, 1.0, (frames, data.num_expression)),
        "rotations": (front * turns).as_rotvec(),  # head turns in model space, then FRONT
        "translations": np.array([0.0, 0.0, 500.0]) + rng.normal(0.0, 20.0, (frames, 3)),
    }


def camera_vertices(vertices_mm: np.ndarray, rotvec: np.ndarray, t_mm: np.ndarray) -> np.ndarray:
    """OpenCV camera-space positions, X_cam = R X + t (mm)."""
    return vertices_mm @ Rotation.from_rotvec(rotvec).as_matrix().T + t_mm


# -- glTF reading helpers ----------------------------------------------------------------------


def read_glb(path: Path) -> tuple[pygltflib.GLTF2, bytes]:
    gltf = pygltflib.GLTF2().load_binary(str(path))
    return gltf, gltf.binary_blob()


def check_glb_container(payload: bytes, blob_length: int) -> None:
    """GLB 2.0 framing: the header's length is the file's; a JSON then a BIN chunk, both a
    multiple of 4 bytes long, the BIN chunk as long as the glTF buffer."""
    magic, version, total = struct.unpack_from("<4sII", payload, 0)
    assert (magic, version, total) == (b"glTF", 2, len(payload))
    json_length, json_type = struct.unpack_from("<I4s", payload, 12)
    assert json_type == b"JSON" and json_length % 4 == 0
    bin_length, bin_type = struct.unpack_from("<I4s", payload, 20 + json_length)
    assert bin_type == b"BIN\x00" and bin_length % 4 == 0 and bin_length == blob_length
    assert 28 + json_length + bin_length == len(payload)
    json.loads(payload[20:20 + json_length])


def accessor_array(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = np.dtype(COMPONENT_DTYPES[accessor.componentType]).newbyteorder("<")
    width = WIDTHS[accessor.type]
    start = view.byteOffset + (accessor.byteOffset or 0)
    array = np.frombuffer(blob, dtype, accessor.count * width, start)
    assert view.byteStride in (None, 0, width * dtype.itemsize)
    assert accessor.count * width * dtype.itemsize <= view.byteLength
    return array.reshape(accessor.count, width) if width > 1 else array


def glb_mesh_arrays(gltf, blob) -> dict[str, np.ndarray]:
    primitive = gltf.meshes[0].primitives[0]
    arrays = {name: accessor_array(gltf, blob, getattr(primitive.attributes, name))
              for name in ("POSITION", "NORMAL", "TEXCOORD_0")}
    arrays["indices"] = accessor_array(gltf, blob, primitive.indices).reshape(-1, 3)
    return arrays


def gl_to_model_vertex(indices: np.ndarray, data: ModelData) -> np.ndarray:
    """Model vertex of each glTF vertex, recovered from the triangle lists (same order)."""
    mapping = np.full(indices.max() + 1, -1)
    mapping[indices] = data.triangles
    assert (mapping[indices] == data.triangles).all(), "a glTF vertex maps to two model vertices"
    assert (mapping >= 0).all(), "unused glTF vertices"
    return mapping


# -- seams and texture -------------------------------------------------------------------------


def test_split_uv_seams_keeps_each_corner(data):
    split = split_uv_seams(data.triangles, data.uv_triangles)
    assert (split.vertex_ids[split.triangles] == data.triangles).all()
    assert (split.uv_ids[split.triangles] == data.uv_triangles).all()
    pairs = set(zip(split.vertex_ids.tolist(), split.uv_ids.tolist(), strict=True))
    assert len(pairs) == len(split.vertex_ids) >= data.num_vertices  # distinct and complete


def test_default_texture_colours_regions(data):
    texture = default_texture(data)
    size = data.texture_size
    assert texture.shape == (size, size, 3) and texture.dtype == np.float32
    assert 0.0 <= texture.min() and texture.max() <= 1.0

    def texel(region: str, pick) -> np.ndarray:
        tris = np.flatnonzero(data.regions[region][data.triangles].all(axis=1))
        t = pick(tris)
        u, v = data.uv_coords[data.uv_triangles[t]].mean(axis=0)
        return texture[int((1 - v) * size), int(u * size)]

    forehead = texel("skin", lambda tris: tris[np.argmax(data.mean[data.triangles[tris]][
        :, :, 1].mean(axis=1))])
    teeth = texel("teeth", lambda tris: tris[len(tris) // 2])
    eye = data.regions["left_eyeball"]
    front = texel("left_eyeball", lambda tris: tris[np.argmax(data.mean[data.triangles[tris]][
        :, :, 2].mean(axis=1))])
    assert forehead[0] > forehead[1] > forehead[2]  # skin: warm
    assert teeth.mean() > forehead.mean() + 0.1
    assert front.mean() < 0.2, "the front of the eyeball shows the pupil"
    assert eye.sum() > 0


# -- glTF --------------------------------------------------------------------------------------


def test_glb_structure_geometry_and_morph_targets(data, tmp_path):
    rng = np.random.default_rng(1)
    identity = rng.normal(0.0, 1.0, data.num_identity)
    out = tmp_path / "head.glb"
    assert export_mesh(out, data, identity=identity) == [out]
    assert [p.name for p in tmp_path.iterdir()] == ["head.glb"]  # no temp files left
    gltf, blob = read_glb(out)

    assert gltf.asset.version == "2.0" and len(gltf.meshes) == 1 and len(gltf.nodes) == 1
    assert gltf.scenes[gltf.scene].nodes == [0] and gltf.nodes[0].mesh == 0
    assert len(gltf.buffers) == 1 and gltf.buffers[0].byteLength == len(blob)
    assert all(view.byteOffset % 4 == 0 for view in gltf.bufferViews)
    assert not gltf.animations
    check_glb_container(out.read_bytes(), len(blob))

    arrays = glb_mesh_arrays(gltf, blob)
    primitive = gltf.meshes[0].primitives[0]
    assert primitive.mode in (None, 4)
    assert gltf.bufferViews[gltf.accessors[primitive.indices].bufferView].target == 34963
    assert gltf.accessors[primitive.indices].componentType in (5123, 5125)
    for name in ("POSITION", "NORMAL", "TEXCOORD_0"):
        accessor = gltf.accessors[getattr(primitive.attributes, name)]
        assert accessor.componentType == 5126
        assert gltf.bufferViews[accessor.bufferView].target == 34962

    indices = arrays["indices"]
    assert indices.shape == (data.num_triangles, 3)
    to_model = gl_to_model_vertex(indices, data)
    # Positions: identity mesh in metres, POSITION bounds exact.
    expected = identity_vertices(data, identity) / 1000.0
    np.testing.assert_allclose(arrays["POSITION"], expected[to_model], atol=1e-6)
    position = gltf.accessors[primitive.attributes.POSITION]
    np.testing.assert_allclose(position.min, arrays["POSITION"].min(axis=0), atol=1e-7)
    np.testing.assert_allclose(position.max, arrays["POSITION"].max(axis=0), atol=1e-7)
    # UVs: the model's per-corner UVs with v flipped (glTF's origin is top-left).
    uv = data.uv_coords[data.uv_triangles]
    np.testing.assert_allclose(arrays["TEXCOORD_0"][indices][..., 0], uv[..., 0], atol=1e-6)
    np.testing.assert_allclose(arrays["TEXCOORD_0"][indices][..., 1], 1 - uv[..., 1], atol=1e-6)
    # Normals: unit, pointing outwards on the face (+z at the nose tip).
    np.testing.assert_allclose(np.linalg.norm(arrays["NORMAL"], axis=1), 1.0, atol=1e-4)
    nose = np.argmax(arrays["POSITION"][:, 2])
    assert arrays["NORMAL"][nose, 2] > 0.7

    # Morph targets: one per expression, named, deltas = the model's offsets in metres.
    mesh = gltf.meshes[0]
    assert mesh.extras["targetNames"] == data.expression_names
    assert len(primitive.targets) == data.num_expression == 52
    assert mesh.weights == [0.0] * 52
    for j in (0, data.expression_names.index("jawOpen"), 51):
        accessor_index = primitive.targets[j]["POSITION"]
        deltas = accessor_array(gltf, blob, accessor_index)
        np.testing.assert_allclose(deltas, data.expression_basis[j][to_model] / 1000, atol=1e-7)
        accessor = gltf.accessors[accessor_index]
        np.testing.assert_allclose(accessor.min, deltas.min(axis=0), atol=1e-7)
        np.testing.assert_allclose(accessor.max, deltas.max(axis=0), atol=1e-7)

    # Texture: an embedded PNG used by the material.
    material = gltf.materials[primitive.material]
    texture = gltf.textures[material.pbrMetallicRoughness.baseColorTexture.index]
    image = gltf.images[texture.source]
    assert image.mimeType == "image/png"
    view = gltf.bufferViews[image.bufferView]
    png = Image.open(io.BytesIO(blob[view.byteOffset:view.byteOffset + view.byteLength]))
    assert png.size == (data.texture_size, data.texture_size) and png.mode == "RGB"


def test_glb_animation_matches_the_fit(data, tmp_path):
    frames, fps = 6, 25.0
    params = video_params(data, frames)
    valid = np.ones(frames, bool)
    valid[3] = False
    out = tmp_path / "video.glb"
    export_mesh(out, data, fps=fps, valid=valid, **params)
    gltf, blob = read_glb(out)
    assert gltf.meshes[0].weights == [0.0] * 52
    (animation,) = gltf.animations
    paths = {channel.target.path: channel for channel in animation.channels}
    assert set(paths) == {"weights", "rotation", "translation"}
    assert all(channel.target.node == 0 for channel in animation.channels)

    def sampled(path: str) -> tuple[np.ndarray, np.ndarray]:
        sampler = animation.samplers[paths[path].sampler]
        assert sampler.interpolation == "LINEAR"
        input_accessor = gltf.accessors[sampler.input]
        assert input_accessor.min is not None and input_accessor.max is not None
        return accessor_array(gltf, blob, sampler.input), accessor_array(gltf, blob,
                                                                         sampler.output)

    times, weights = sampled("weights")
    np.testing.assert_allclose(times, np.arange(frames) / fps, atol=1e-6)
    expected = params["expression_frames"].copy()
    expected[3] = expected[2]  # an invalid frame holds the previous valid one
    np.testing.assert_allclose(weights.reshape(frames, 52), expected, atol=1e-6)

    # Pose: the node transform maps model points to the OpenCV camera points turned y up.
    _, quats = sampled("rotation")
    _, translations = sampled("translation")
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-5)
    assert (np.sum(quats[1:] * quats[:-1], axis=1) > 0).all()  # no sign flips
    neutral = identity_vertices(data)[::97]
    for k in (0, 3, frames - 1):
        source = 2 if k == 3 else k
        scene = neutral @ Rotation.from_quat(quats[k]).as_matrix().T + translations[k] * 1000
        cam = camera_vertices(neutral, params["rotations"][source],
                              params["translations"][source])
        np.testing.assert_allclose(scene, cam @ OPENCV_TO_SCENE.T, atol=1e-2)


def test_frontal_pose_is_upright_and_in_front_of_the_camera(data, tmp_path):
    out = tmp_path / "photo.glb"
    frontal = Rotation.from_matrix(FRONT).as_rotvec()
    expression = np.zeros(data.num_expression)
    expression[data.expression_names.index("jawOpen")] = 0.5
    export_mesh(out, data, expression_frames=expression, rotations=frontal,
                translations=[0, 0, 600.0])
    gltf, _ = read_glb(out)
    node = gltf.nodes[0]
    np.testing.assert_allclose(np.abs(node.rotation), [0, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(node.translation, [0, 0, -0.6], atol=1e-6)
    assert gltf.meshes[0].weights == pytest.approx(expression.tolist())
    assert not gltf.animations  # a single frame is a static pose


def test_quaternions_stay_continuous_through_half_turns():
    matrices = Rotation.from_rotvec(np.outer(np.linspace(0, 1.9 * np.pi, 40), [0, 1, 0]))
    quats = continuous_quaternions(matrices.as_matrix())
    assert (np.sum(quats[1:] * quats[:-1], axis=1) > 0.9).all()
    np.testing.assert_allclose(Rotation.from_quat(quats).as_matrix(), matrices.as_matrix(),
                               atol=1e-9)


# -- OBJ and PLY -------------------------------------------------------------------------------


def expected_frame_vertices(data, params, k, identity=None) -> np.ndarray:
    vertices = identity_vertices(data, identity) + np.einsum(
        "j,jvc->vc", params["expression_frames"][k], data.expression_basis)
    return camera_vertices(vertices, params["rotations"][k],
                           params["translations"][k]) @ OPENCV_TO_SCENE.T


def test_obj_writes_one_posed_frame_with_material_and_texture(data, tmp_path):
    params = video_params(data, 4, seed=2)
    identity = np.random.default_rng(3).normal(0.0, 1.0, data.num_identity)
    texture = np.random.default_rng(4).uniform(0, 1, (64, 48, 3)).astype(np.float32)
    out = tmp_path / "head.obj"
    written = export_mesh(out, data, identity=identity, texture=texture, frame=2, **params)
    assert sorted(p.name for p in written) == ["head.mtl", "head.obj", "head_texture.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)

    lines = out.read_text().splitlines()
    v = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("v ")])
    vt = np.array([[float(x) for x in line.split()[1:]] for line in lines
                   if line.startswith("vt ")])
    faces = [line.split()[1:] for line in lines if line.startswith("f ")]
    np.testing.assert_allclose(v, expected_frame_vertices(data, params, 2, identity), atol=2e-4)
    np.testing.assert_allclose(vt, data.uv_coords, atol=2e-6)
    corners = np.array([[c.split("/") for c in face] for face in faces], dtype=np.int64)
    assert corners.shape == (data.num_triangles, 3, 2)
    assert (corners[..., 0] - 1 == data.triangles).all()
    assert (corners[..., 1] - 1 == data.uv_triangles).all()
    assert "mtllib head.mtl" in lines and "usemtl skin" in lines
    assert "map_Kd head_texture.png" in (tmp_path / "head.mtl").read_text()
    png = np.asarray(Image.open(tmp_path / "head_texture.png"))
    np.testing.assert_array_equal(png, np.round(texture * 255).astype(np.uint8))
    # an independent reader sees the same triangles, UVs and material
    mesh = trimesh.load(out, process=False)
    np.testing.assert_allclose(mesh.vertices[mesh.faces], v[data.triangles], atol=1e-6)
    np.testing.assert_allclose(mesh.visual.uv[mesh.faces], data.uv_coords[data.uv_triangles],
                               atol=2e-6)
    assert mesh.visual.material.image.size == (texture.shape[1], texture.shape[0])


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) as trimesh loads them, after checking the header's layout: float32
    positions and uchar-counted int32 faces, nothing else (what other readers expect)."""
    payload = path.read_bytes()
    header = payload[:payload.index(b"end_header\n")].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert [line for line in header if not line.startswith(("comment", "element"))][2:] == [
        "property float x", "property float y", "property float z",
        "property list uchar int vertex_indices"]
    mesh = trimesh.load(path, process=False)
    assert isinstance(mesh, trimesh.Trimesh)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)


def test_ply_single_frame_and_sequence(data, tmp_path):
    vertices, faces = read_ply(export_mesh(tmp_path / "neutral.ply", data)[0])
    np.testing.assert_allclose(vertices, data.mean, atol=1e-4)
    assert (faces == data.triangles).all()

    params = video_params(data, 3, seed=5)
    written = export_mesh(tmp_path / "seq" / "face.ply", data, **params)
    assert [p.name for p in written] == ["face_0000.ply", "face_0001.ply", "face_0002.ply"]
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == [p.name for p in written]
    for k, path in enumerate(written):
        vertices, faces = read_ply(path)
        np.testing.assert_allclose(vertices, expected_frame_vertices(data, params, k), atol=1e-3)
        assert (faces == data.triangles).all()
    one = export_mesh(tmp_path / "one.ply", data, frame=1, **params)
    assert [p.name for p in one] == ["one.ply"]
    np.testing.assert_allclose(read_ply(one[0])[0], expected_frame_vertices(data, params, 1),
                               atol=1e-3)


# -- errors and the fit adapter ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("head.fbx", {}, "use a .glb"),
        ("head.glb", {"identity": np.zeros(3)}, "identity must have"),
        ("head.glb", {"expression_frames": np.zeros((4, 52)), "rotations": np.zeros((3, 3))},
         "disagree"),
        ("head.obj", {"expression_frames": np.zeros((2, 52)), "frame": 2}, "out of range"),
        ("head.glb", {"texture": np.zeros((8, 8))}, "texture must be"),
        ("head.obj", {"texture": np.full((8, 8, 3), np.nan)}, "non-finite"),
        ("head.glb", {"expression_frames": np.zeros((2, 52)), "valid": [False, False]},
         "no valid frames"),
        ("head.ply", {"expression_frames": np.zeros((2, 7))}, "F x 52"),
    ],
)
def test_bad_inputs_raise_and_write_nothing(data, tmp_path, name, kwargs, message):
    with pytest.raises(InputError, match=message):
        export_mesh(tmp_path / name, data, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_fit_reads_a_fit_object(data, tmp_path):
    params = video_params(data, 4, seed=6)
    texture = np.random.default_rng(7).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    # Laid out like fitting's VideoFit: identity.*, faces.* per frame, camera, fps.
    fit = SimpleNamespace(
        identity=SimpleNamespace(coefficients=np.full(data.num_identity, 0.5), texture=texture),
        faces=SimpleNamespace(expression=params["expression_frames"],
                              rotation=params["rotations"], translation=params["translations"],
                              valid=np.ones(4, bool)),
        camera=SimpleNamespace(fx=800.0, fy=800.0, cx=319.5, cy=239.5, width=640, height=480),
        fps=12.0,
    )
    out = tmp_path / "fit.glb"
    export_fit(fit, MorphableModel(data), out)  # a torch module works as well as its data
    gltf, blob = read_glb(out)
    assert {c.target.path for c in gltf.animations[0].channels} == {"weights", "rotation",
                                                                     "translation"}
    (camera,) = gltf.cameras
    assert camera.perspective.yfov == pytest.approx(2 * np.arctan(240 / 800))
    assert camera.perspective.aspectRatio == pytest.approx(640 / 480)
    assert gltf.scenes[0].nodes == [0, 1] and gltf.nodes[1].camera == 0
    sampler = gltf.animations[0].samplers[0]
    np.testing.assert_allclose(accessor_array(gltf, blob, sampler.input), np.arange(4) / 12.0,
                               atol=1e-6)
    view = gltf.bufferViews[gltf.images[0].bufferView]
    png = np.asarray(Image.open(io.BytesIO(blob[view.byteOffset:view.byteOffset +
                                                view.byteLength])))
    np.testing.assert_array_equal(png, np.round(texture * 255).astype(np.uint8))
    arrays = glb_mesh_arrays(gltf, blob)
    to_model = gl_to_model_vertex(arrays["indices"], data)
    expected = identity_vertices(data, fit.identity.coefficients)[to_model] / 1000
    np.testing.assert_allclose(arrays["POSITION"], expected, atol=1e-6)


def test_export_fit_adds_the_corrective_offset(data, tmp_path):
    """A dlib photo fit's `Identity.offset` (its texture was extracted on that deformed
    face) is part of the exported neutral mesh."""
    coefficients = np.full(data.num_identity, 0.3)
    offset = np.random.default_rng(3).normal(0, 2.0, data.mean.shape)
    fit = SimpleNamespace(identity=SimpleNamespace(coefficients=coefficients, offset=offset))
    vertices, _ = read_ply(export_fit(fit, data, tmp_path / "offset.ply")[0])
    np.testing.assert_allclose(vertices, identity_vertices(data, coefficients) + offset,
                               atol=1e-3)
    with pytest.raises(InputError, match="offset must be"):
        export_mesh(tmp_path / "bad.ply", data, offset=np.zeros((3, 3)))


def test_export_fit_reads_flat_attributes_and_defaults_fps(data, tmp_path):
    params = video_params(data, 3, seed=9)
    fit = SimpleNamespace(expressions=params["expression_frames"], rotations=params["rotations"],
                          translations=params["translations"], fps=0.0)
    written = export_fit(fit, data, tmp_path / "flat.ply")
    assert [p.name for p in written] == ["flat_0000.ply", "flat_0001.ply", "flat_0002.ply"]
    gltf, blob = read_glb(export_fit(fit, data, tmp_path / "flat.glb")[0])
    times = accessor_array(gltf, blob, gltf.animations[0].samplers[0].input)
    np.testing.assert_allclose(times, np.arange(3) / 30.0, atol=1e-6)  # fps 0 -> 30
    with pytest.raises(Morph3dError, match="nothing to export"):
        export_fit(SimpleNamespace(fps=30.0), data, tmp_path / "empty.glb")


# -- Blender -----------------------------------------------------------------------------------

BLENDER_SCRIPT = r"""
import json, sys
try:
    import numpy
except ImportError:
    print("MORPH3D_NO_NUMPY", flush=True)
    sys.exit(0)
if not hasattr(numpy, "bool"):  # Blender 3.4's importer uses np.bool (gone in numpy >= 1.24)
    numpy.bool = numpy.bool_
import bpy
path, fps = sys.argv[sys.argv.index("--") + 1:][:2]
bpy.context.scene.render.fps = int(fps)  # the importer turns seconds into scene frames
bpy.ops.import_scene.gltf(filepath=path)
heads = [o for o in bpy.context.scene.objects if o.type == "MESH" and o.data.shape_keys]
out = {"blender": bpy.app.version_string, "heads": len(heads)}
if heads:
    head = heads[0]
    keys = head.data.shape_keys
    out["shape_keys"] = [k.name for k in keys.key_blocks]
    out["vertices"] = len(head.data.vertices)
    key_action = keys.animation_data.action if keys.animation_data else None
    out["key_frames"] = list(key_action.frame_range) if key_action else None
    out["key_curves"] = len(key_action.fcurves) if key_action else 0
    action = head.animation_data.action if head.animation_data else None
    out["object_frames"] = list(action.frame_range) if action else None
    out["object_paths"] = sorted({c.data_path for c in action.fcurves}) if action else []
print("MORPH3D_JSON " + json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_blender_imports_shape_keys_and_animation(data, tmp_path):
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("blender is not on PATH (Debian: apt-get install blender python3-numpy)")
    frames, fps = 5, 30
    out = tmp_path / "blender.glb"
    export_mesh(out, data, fps=fps, **video_params(data, frames, seed=8))
    run = subprocess.run(
        [blender, "-b", "--factory-startup", "--python-exit-code", "1",
         "--python-expr", BLENDER_SCRIPT, "--", str(out), str(fps)],
        capture_output=True, text=True, timeout=300,
    )
    if "MORPH3D_NO_NUMPY" in run.stdout:
        pytest.skip("Blender's Python lacks numpy, which its glTF importer needs "
                    "(Debian: apt-get install python3-numpy)")
    lines = [line for line in run.stdout.splitlines() if line.startswith("MORPH3D_JSON ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1].split(" ", 1)[1])
    assert result["heads"] == 1
    assert result["shape_keys"] == ["Basis", *data.expression_names]
    assert result["vertices"] >= data.num_vertices
    assert result["key_curves"] == 52
    assert result["key_frames"] == [0.0, frames - 1.0]  # F keyframes, one per scene frame
    assert result["object_frames"] == [0.0, frames - 1.0]
    assert result["object_paths"] == ["location", "rotation_quaternion"]
