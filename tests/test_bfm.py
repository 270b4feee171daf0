"""BFM conversion: tiny files written in each supported layout, converted and checked."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from morph3d.builders.bfm import build_bfm, convert_bfm, default_bfm_path, load_bfm
from morph3d.errors import ModelError
from morph3d.model.model import ModelData, MorphableModel

RADIUS_MM = 90.0
AZIMUTHS = np.radians(np.arange(-80, 81, 20))  # 9 columns, left to right
ELEVATIONS = np.radians(np.arange(-40, 41, 20))  # 5 rows, bottom to top
N_COLS, N_ROWS = len(AZIMUTHS), len(ELEVATIONS)
N = N_COLS * N_ROWS  # 45 vertices
K, J = 5, 3  # identity and expression components
NOSE = 2 * N_COLS + 4  # elevation 0, azimuth 0: the front-most vertex


def vid(row: int, col: int) -> int:
    return row * N_COLS + col


def sphere_cap() -> tuple[np.ndarray, np.ndarray]:
    """A face-like cap of a sphere centred at the origin (mm) and its CCW-outward triangles."""
    el, az = np.meshgrid(ELEVATIONS, AZIMUTHS, indexing="ij")
    points = RADIUS_MM * np.stack(
        [np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], axis=-1
    ).reshape(-1, 3)
    tris = []
    for r in range(N_ROWS - 1):
        for c in range(N_COLS - 1):
            tris += [[vid(r, c), vid(r, c + 1), vid(r + 1, c + 1)],
                     [vid(r, c), vid(r + 1, c + 1), vid(r + 1, c)]]
    return points, np.array(tris, dtype=np.int64)


def ibug_keypoints() -> np.ndarray:
    """68 vertex ids (0-based) placed where the frame check expects them."""
    rng = np.random.default_rng(7)
    kp = rng.integers(0, N, size=68)
    kp[36], kp[45] = vid(3, 2), vid(3, 6)  # eye corners: subject's right at -x, left at +x
    kp[27], kp[8], kp[30] = vid(3, 4), vid(0, 4), NOSE  # nose bridge, chin, nose tip
    ring = [vid(1, 3), vid(0, 3), vid(0, 4), vid(0, 5), vid(1, 5), vid(2, 5), vid(2, 4), vid(2, 3)]
    kp[48:60] = ring + ring[-1:] * 4  # outer lip contour around vertex (1, 4)
    return kp


def orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, cols)))
    return q


@pytest.fixture(scope="module")
def cap():
    return sphere_cap()


def offset_of(data: ModelData) -> np.ndarray:
    return np.array([float(v) for v in data.metadata["origin_offset_mm"].split()])


def assert_outward(data: ModelData, centre: np.ndarray) -> None:
    """Every face normal of the sphere cap points away from the sphere centre."""
    v = data.mean.astype(np.float64)
    t = data.triangles
    normals = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    centroids = v[t].mean(axis=1)
    assert ((normals * (centroids - centre)).sum(axis=1) > 0).all()
    model = MorphableModel(data)
    nose = int(np.argmax(data.mean[:, 2]))
    normal = model.vertex_normals(model.vertices())[0, nose]
    assert normal[2] > 0.9


# ---------------------------------------------------------------------------------------------
# Writers for each layout (field names, shapes and dtypes as in the real files)
# ---------------------------------------------------------------------------------------------


def write_bfm2009(path: Path, points_mm: np.ndarray, tris: np.ndarray, **drop) -> dict:
    shape_pc = orthonormal(points_mm.size, K, seed=1)
    fields = {
        "shapeMU": (points_mm * 1000.0).reshape(-1, 1).astype(np.float32),  # micrometres
        "shapePC": shape_pc.astype(np.float32),
        "shapeEV": np.array([[4000.0], [3000.0], [2000.0], [1000.0], [500.0]]),  # um std
        "texMU": np.full((points_mm.size, 1), 128.0, dtype=np.float32),
        "texPC": orthonormal(points_mm.size, K, seed=2).astype(np.float32),
        "texEV": np.ones((K, 1)),
        "tl": (tris + 1).astype(np.float64),  # 1-based, F x 3
    }
    for name in drop:
        fields.pop(name)
    scipy.io.savemat(path, fields)
    return fields


def write_3ddfa_expression(path: Path, n_vertices: int, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    fields = {
        "mu_exp": rng.normal(scale=300.0, size=(3 * n_vertices, 1)),  # um offsets
        "w_exp": rng.normal(scale=50.0, size=(3 * n_vertices, J)),  # not unit norm
        "sigma_exp": np.array([[20.0], [10.0], [5.0]]),
    }
    scipy.io.savemat(path, fields, do_compression=True)  # MATLAB v7 compressed elements
    return fields


def write_front(path: Path, points_mm: np.ndarray, tris: np.ndarray, keypoints: np.ndarray):
    rng = np.random.default_rng(4)
    fields = {
        "meanshape": (points_mm / 100.0).reshape(1, -1).astype(np.float32),  # decimetres
        "idBase": rng.normal(scale=0.002, size=(points_mm.size, K)).astype(np.float32),
        "exBase": rng.normal(scale=0.001, size=(points_mm.size, J)).astype(np.float32),
        "meantex": np.full((1, points_mm.size), 128.0, dtype=np.float32),
        "texBase": np.zeros((points_mm.size, K), dtype=np.float32),
        "tri": (tris[:, [0, 2, 1]] + 1).astype(np.float64),  # clockwise, as Deep3D stores it
        "keypoints": (keypoints + 1).reshape(68, 1).astype(np.float64),
        "point_buf": np.ones((len(points_mm), 8)),
    }
    scipy.io.savemat(path, fields)
    return fields


def write_statismo_h5(path: Path, points_mm: np.ndarray, tris: np.ndarray) -> dict:
    rng = np.random.default_rng(5)
    fields = {
        "shape/model/mean": points_mm.reshape(-1).astype(np.float32),
        "shape/model/pcaBasis": orthonormal(points_mm.size, K, seed=6).astype(np.float32),
        "shape/model/pcaVariance": np.array([25.0, 16.0, 9.0, 4.0, 1.0], dtype=np.float32),
        "shape/representer/points": points_mm.T.astype(np.float32),
        "shape/representer/cells": tris.T.astype(np.uint32),
        "expression/model/mean": rng.normal(scale=0.5, size=points_mm.size).astype(np.float32),
        "expression/model/pcaBasis": orthonormal(points_mm.size, J, seed=8).astype(np.float32),
        "expression/model/pcaVariance": np.array([9.0, 4.0, 1.0], dtype=np.float32),
    }
    with h5py.File(path, "w") as f:
        for name, value in fields.items():
            f[name] = value
    return fields


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def test_bfm2009_with_3ddfa_expression(tmp_path, cap):
    points, tris = cap
    shape = write_bfm2009(tmp_path / "01_MorphableModel.mat", points, tris)
    expr = write_3ddfa_expression(tmp_path / "Model_Expression.mat", N)
    out = convert_bfm(tmp_path / "01_MorphableModel.mat", tmp_path / "Model_Expression.mat",
                      output=tmp_path / "bfm.npz")
    data = ModelData.load(out)
    assert data.num_vertices == N and data.num_identity == K and data.num_expression == J
    assert data.expression_names == ["exp00", "exp01", "exp02"]
    assert data.metadata["mm_per_file_unit"] == "0.001"

    # micrometres -> millimetres, mu_exp added, origin at the bounding-box centre
    offset = offset_of(data)
    expected_mean = (shape["shapeMU"].reshape(-1, 3) + expr["mu_exp"].reshape(-1, 3)) * 1e-3
    np.testing.assert_allclose(data.mean + offset, expected_mean, atol=1e-3)
    np.testing.assert_allclose((data.mean.max(0) + data.mean.min(0)) / 2, 0.0, atol=1e-3)
    assert 150 < np.ptp(data.mean, axis=0).max() < 200  # a head-sized cap in mm
    np.testing.assert_allclose(data.identity_std, shape["shapeEV"].ravel() * 1e-3, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(data.identity_basis.reshape(K, -1), axis=1), 1.0,
                               rtol=1e-5)

    model = MorphableModel(data)
    base = model.vertices()[0].double().numpy()
    identity = torch.zeros(1, K)
    identity[0, 2] = 1.5
    moved = model.vertices(identity=identity)[0].double().numpy()
    want = 1.5 * shape["shapeEV"][2, 0] * shape["shapePC"][:, 2].reshape(-1, 3) * 1e-3
    np.testing.assert_allclose(moved - base, want, atol=1e-4)

    expression = torch.zeros(1, J)
    expression[0, 1] = 1.0
    moved = model.vertices(expression=expression)[0].double().numpy()
    want = expr["sigma_exp"][1, 0] * expr["w_exp"][:, 1].reshape(-1, 3) * 1e-3
    np.testing.assert_allclose(moved - base, want, atol=1e-4)

    assert_outward(data, centre=-offset)
    assert data.metadata["triangles_flipped"] == "false"
    assert data.landmarks == {}  # none in these files and no landmark file given
    assert data.regions["face_skin"].all() and not data.regions["lips"].any()
    assert data.uv_coords.min() >= 0 and data.uv_coords.max() <= 1
    assert data.uv_triangles.shape == data.triangles.shape
    # mirror: the cap is symmetric in x, so each vertex maps onto its mirrored grid vertex
    rows, cols = np.divmod(np.arange(N), N_COLS)
    np.testing.assert_array_equal(data.mirror, rows * N_COLS + (N_COLS - 1 - cols))


def test_bfm2009_trimmed_to_expression_vertices(tmp_path, cap):
    """53490 -> 53215 in the real files: the shape is cut with model_info.mat's trimIndex."""
    points, tris = cap
    extra = np.array([3, 10, 22, 30, 44])  # shape-file positions of 5 "inner mouth" vertices
    is_grid = np.ones(N + len(extra), dtype=bool)
    is_grid[extra] = False
    shape_points = np.zeros((N + len(extra), 3))
    shape_points[is_grid] = points
    shape_points[~is_grid] = [0.0, -20.0, 40.0]  # inside the head
    trim_index = np.flatnonzero(is_grid)  # grid vertex i lives at shape vertex trim_index[i]
    shape = write_bfm2009(tmp_path / "01_MorphableModel.mat", shape_points, trim_index[tris])
    (tmp_path / "exp").mkdir()  # model_info.mat is found beside the shape file too
    expr = write_3ddfa_expression(tmp_path / "exp" / "Model_Expression.mat", N)
    expected_mean_um = points * 1000.0 + expr["mu_exp"].reshape(-1, 3)
    keypoints = ibug_keypoints()
    scipy.io.savemat(tmp_path / "model_info.mat", {
        "trimIndex": (trim_index + 1).reshape(-1, 1).astype(np.float64),
        "tri": (tris.T + 1).astype(np.float64),  # 3 x F, 1-based, trimmed topology
        "keypoints": (keypoints + 1).reshape(1, 68).astype(np.float64),
    })
    data = build_bfm(tmp_path / "01_MorphableModel.mat",
                     tmp_path / "exp" / "Model_Expression.mat")
    assert data.num_vertices == N
    assert "model_info.mat" in data.metadata["trimmed_with"]
    np.testing.assert_allclose(data.mean + offset_of(data), expected_mean_um * 1e-3, atol=1e-3)
    directions = shape["shapePC"].reshape(-1, 3, K)[trim_index]  # trimmed basis, um per um
    np.testing.assert_allclose(
        data.identity_std,
        shape["shapeEV"].ravel() * 1e-3 * np.linalg.norm(directions.reshape(-1, K), axis=0),
        rtol=1e-4,
    )
    model = MorphableModel(data)
    verts = model.vertices()
    np.testing.assert_allclose(model.landmarks(verts, "ibug68")[0].numpy(),
                               verts[0, keypoints].numpy(), atol=1e-5)


def test_exp_pca_bin_expression(tmp_path, cap):
    points, tris = cap
    write_bfm2009(tmp_path / "01_MorphableModel.mat", points, tris)
    rng = np.random.default_rng(9)
    exp_mu = rng.normal(scale=100.0, size=3 * N).astype(np.float32)
    exp_pc = rng.normal(scale=30.0, size=(J, 3 * N)).astype(np.float32)  # J rows of 3N
    with open(tmp_path / "Exp_Pca.bin", "wb") as f:
        f.write(np.array([J], dtype="<i4").tobytes())
        f.write(exp_mu.astype("<f4").tobytes())
        f.write(exp_pc.astype("<f4").tobytes())
    std = np.array([7.0, 3.0, 2.0, 99.0])  # the real std_exp.txt may list more values
    np.savetxt(tmp_path / "std_exp.txt", std)
    data = build_bfm(tmp_path / "01_MorphableModel.mat", tmp_path / "Exp_Pca.bin")
    assert data.num_expression == J
    np.testing.assert_allclose(data.expression_basis[2],
                               std[2] * exp_pc[2].reshape(-1, 3) * 1e-3, rtol=1e-5, atol=1e-7)
    # expMU is ignored (as Deep3DFaceRecon does): the mean is the shape mean
    np.testing.assert_allclose(data.mean + offset_of(data), points, atol=1e-3)


def test_deep3d_front_model(tmp_path, cap):
    points, tris = cap
    keypoints = ibug_keypoints()
    fields = write_front(tmp_path / "BFM_model_front.mat", points, tris, keypoints)
    data = ModelData.load(convert_bfm(tmp_path / "BFM_model_front.mat",
                                      output=tmp_path / "out" / "front.npz"))
    assert data.metadata["mm_per_file_unit"] == "100"  # decimetres
    np.testing.assert_allclose(data.mean + offset_of(data), points, atol=1e-3)
    assert data.metadata["triangles_flipped"] == "true"  # stored clockwise
    assert_outward(data, centre=-offset_of(data))

    model = MorphableModel(data)
    base = model.vertices()
    identity = torch.zeros(1, K)
    identity[0, 3] = 1.0  # Deep3DFaceRecon's bases are pre-scaled: one unit = one column
    np.testing.assert_allclose((model.vertices(identity=identity) - base)[0].numpy(),
                               fields["idBase"][:, 3].reshape(-1, 3) * 100.0, atol=1e-4)
    expression = torch.zeros(1, J)
    expression[0, 0] = -2.0
    np.testing.assert_allclose((model.vertices(expression=expression) - base)[0].numpy(),
                               -2.0 * fields["exBase"][:, 0].reshape(-1, 3) * 100.0, atol=1e-4)

    lms = model.landmarks(base, "ibug68")[0].numpy()
    np.testing.assert_allclose(lms, base[0, keypoints].numpy(), atol=1e-5)
    lips = data.regions["lips"]
    assert lips[vid(1, 4)] and lips[keypoints[48:60]].all() and not lips[vid(4, 0)]


def test_face3d_struct_model(tmp_path, cap):
    """face3d's BFM.mat: one struct `model` with shape, expression, 3 x F tri and kpt_ind."""
    points, tris = cap
    rng = np.random.default_rng(11)
    keypoints = ibug_keypoints()
    exp_pc = rng.normal(scale=40.0, size=(3 * N, J))
    model = {
        "shapeMU": (points * 1000.0).reshape(-1, 1), "shapePC": orthonormal(3 * N, K, 12),
        "shapeEV": np.full((K, 1), 2000.0), "expMU": np.zeros((3 * N, 1)), "expPC": exp_pc,
        "expEV": np.array([[2.0], [1.0], [0.5]]), "tri": (tris.T + 1).astype(np.float64),
        "kpt_ind": (keypoints + 1).reshape(1, 68).astype(np.float64),
    }
    scipy.io.savemat(tmp_path / "BFM.mat", {"model": model})
    data = build_bfm(tmp_path / "BFM.mat")
    assert data.num_vertices == N and data.num_expression == J
    np.testing.assert_allclose(data.expression_basis[0], 2.0 * exp_pc[:, 0].reshape(-1, 3) * 1e-3,
                               atol=1e-6)
    np.testing.assert_allclose(data.landmarks["ibug68"].positions(data.mean, data.triangles),
                               data.mean[keypoints], atol=1e-5)


def test_mat73_front_model_matches_v5(tmp_path, cap):
    """MATLAB v7.3 files are HDF5 with a 512-byte header and transposed datasets."""
    points, tris = cap
    fields = write_front(tmp_path / "v5.mat", points, tris, ibug_keypoints())
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in fields.items():
            f[name] = np.ascontiguousarray(value.T)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" "))
    a, b = build_bfm(tmp_path / "v5.mat"), build_bfm(path)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.identity_basis, b.identity_basis)
    np.testing.assert_array_equal(a.triangles, b.triangles)


def test_statismo_h5(tmp_path, cap):
    points, tris = cap
    fields = write_statismo_h5(tmp_path / "model2017-1_face12_nomouth.h5", points, tris)
    data = build_bfm(tmp_path / "model2017-1_face12_nomouth.h5")
    assert data.num_vertices == N and data.metadata["mm_per_file_unit"] == "1"
    np.testing.assert_allclose(data.identity_std, np.sqrt(fields["shape/model/pcaVariance"]),
                               rtol=1e-6)
    # the expression mean is a displacement field: added to the shape mean
    expected = points + fields["expression/model/mean"].reshape(-1, 3)
    np.testing.assert_allclose(data.mean + offset_of(data), expected, atol=1e-3)
    model = MorphableModel(data)
    expression = torch.zeros(1, J)
    expression[0, 2] = 1.0
    delta = (model.vertices(expression=expression) - model.vertices())[0].numpy()
    want = np.sqrt(fields["expression/model/pcaVariance"][2]) * fields[
        "expression/model/pcaBasis"][:, 2].reshape(-1, 3)
    np.testing.assert_allclose(delta, want, atol=1e-5)
    assert_outward(data, centre=-offset_of(data))


def test_landmark_file_and_default_path(tmp_path, cap, monkeypatch):
    monkeypatch.setenv("MORPH3D_CACHE", str(tmp_path / "cache"))
    assert default_bfm_path() == tmp_path / "cache" / "models" / "bfm.npz"
    with pytest.raises(ModelError, match="convert-bfm"):
        load_bfm()
    points, tris = cap
    write_statismo_h5(tmp_path / "bfm.h5", points, tris)
    keypoints = ibug_keypoints()
    lines = ["# iBUG 68, zero-based vertex ids"] + [str(k) for k in keypoints]
    (tmp_path / "lm.txt").write_text("\n".join(lines) + "\n")
    out = convert_bfm(tmp_path / "bfm.h5", landmarks_path=tmp_path / "lm.txt")
    assert out == default_bfm_path()
    data = load_bfm()
    points_on_mesh = data.landmarks["ibug68"].positions(data.mean, data.triangles)
    np.testing.assert_allclose(points_on_mesh, data.mean[keypoints], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Malformed input: one-line ModelError naming the file and the problem
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found.*nowhere.mat"):
        convert_bfm(tmp_path / "nowhere.mat")


def test_truncated_mat(tmp_path, cap):
    path = tmp_path / "01_MorphableModel.mat"
    write_bfm2009(path, *cap)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="01_MorphableModel.mat: truncated MATLAB") as info:
        build_bfm(path)
    assert "\n" not in str(info.value)


def test_truncated_h5(tmp_path, cap):
    path = tmp_path / "model2019_bfm.h5"
    write_statismo_h5(path, *cap)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="model2019_bfm.h5.*corrupt"):
        build_bfm(path)


def test_missing_field(tmp_path, cap):
    write_bfm2009(tmp_path / "shape.mat", *cap, shapeEV=None)
    with pytest.raises(ModelError, match="shape.mat: missing field.*shapeEV"):
        build_bfm(tmp_path / "shape.mat")
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["shape/model/mean"] = np.zeros(3 * N, dtype=np.float32)
    with pytest.raises(ModelError, match="bad.h5: missing dataset shape/model/pcaBasis"):
        build_bfm(tmp_path / "bad.h5")
    scipy.io.savemat(tmp_path / "other.mat", {"foo": np.ones(3)})
    with pytest.raises(ModelError, match="other.mat: not a recognised BFM file"):
        build_bfm(tmp_path / "other.mat")


def test_vertex_count_mismatch(tmp_path, cap):
    write_bfm2009(tmp_path / "shape.mat", *cap)
    write_3ddfa_expression(tmp_path / "Model_Expression.mat", N - 4)
    with pytest.raises(ModelError, match=r"Model_Expression.mat: .*41 vertices.*has 45"):
        build_bfm(tmp_path / "shape.mat", tmp_path / "Model_Expression.mat")


def test_expression_file_problems(tmp_path, cap):
    points, tris = cap
    write_bfm2009(tmp_path / "shape.mat", points, tris)
    (tmp_path / "Exp_Pca.bin").write_bytes(np.array([J], "<i4").tobytes()
                                           + np.zeros(3 * N * (J + 1), "<f4").tobytes())
    with pytest.raises(ModelError, match="Exp_Pca.bin: needs std_exp.txt"):
        build_bfm(tmp_path / "shape.mat", tmp_path / "Exp_Pca.bin")
    (tmp_path / "Exp_Pca.bin").write_bytes((tmp_path / "Exp_Pca.bin").read_bytes()[:-10])
    with pytest.raises(ModelError, match="Exp_Pca.bin: not an Exp_Pca.bin file or truncated"):
        build_bfm(tmp_path / "shape.mat", tmp_path / "Exp_Pca.bin")
    write_statismo_h5(tmp_path / "bfm.h5", points, tris)
    write_3ddfa_expression(tmp_path / "Model_Expression.mat", N)
    with pytest.raises(ModelError, match="already contains an expression model"):
        build_bfm(tmp_path / "bfm.h5", tmp_path / "Model_Expression.mat")


def test_bad_landmark_files(tmp_path, cap):
    write_statismo_h5(tmp_path / "bfm.h5", *cap)
    keypoints = ibug_keypoints()
    (tmp_path / "short.txt").write_text("\n".join(map(str, keypoints[:67])))
    with pytest.raises(ModelError, match="short.txt: has 67 vertex indices, expected 68"):
        build_bfm(tmp_path / "bfm.h5", landmarks_path=tmp_path / "short.txt")
    swapped = keypoints.copy()
    swapped[[36, 45]] = swapped[[45, 36]]  # mirrored eyes: not an x-right frame
    (tmp_path / "mirrored.txt").write_text("\n".join(map(str, swapped)))
    with pytest.raises(ModelError, match="mirrored.txt: landmarks do not fit the model frame"):
        build_bfm(tmp_path / "bfm.h5", landmarks_path=tmp_path / "mirrored.txt")
    (tmp_path / "range.txt").write_text("\n".join(["999"] * 68))
    with pytest.raises(ModelError, match=r"range.txt: vertex indices must be in 0\.\.44"):
        build_bfm(tmp_path / "bfm.h5", landmarks_path=tmp_path / "range.txt")
