"""Learned UV-texture completion: shipped weights, determinism, quality on a held-out person,
corrupt / missing weights, and resumable deterministic training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import corrupted_copy

from morph3d.errors import InputError, ModelError
from morph3d.neural.completion import (
    DEFAULT_WEIGHTS,
    CompletionConfig,
    CompletionNet,
    build_net,
    complete_texture,
    load_completion_net,
    uv_features,
)
from morph3d.neural.texture_completion import complete_uv_texture
from morph3d.neural.training.completion import (
    CompletionTrainOptions,
    TextureSample,
    TextureSamples,
    evaluate,
    save_weights,
    synthetic_visibility,
    train_completion,
)
from morph3d.neural.weights import manifest_path

# Mean change the shipped net may make to the classical fill on texels no photo saw (see
# test_keeps_the_classical_fill_where_nothing_was_seen): the hidden openings, all unseen.
OPENINGS_MAX_CHANGE = 0.005
UNSEEN_MAX_CHANGE = 0.005


@pytest.fixture(scope="module")
def net() -> CompletionNet:
    loaded = load_completion_net()
    assert loaded is not None, f"shipped weights missing at {DEFAULT_WEIGHTS}"
    return loaded


def face_like_texture(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth skin-coloured texture and a confidence that sees the left 60 %."""
    import cv2

    rng = np.random.default_rng(seed)
    base = np.array([0.75, 0.55, 0.45], np.float32)
    noise = cv2.resize(rng.random((8, 8, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    texture = np.clip(base + 0.15 * (noise - 0.5), 0, 1).astype(np.float32)
    confidence = np.zeros((size, size), np.float32)
    confidence[:, : int(size * 0.6)] = 0.9
    return texture, confidence


def test_shipped_weights_load_with_manifest(net) -> None:
    manifest = json.loads(manifest_path(DEFAULT_WEIGHTS).read_text())
    assert manifest["sha256"] == net.manifest["sha256"]
    assert DEFAULT_WEIGHTS.stat().st_size < 3 * 1024 * 1024
    metrics = manifest["metrics_heldout"]
    assert metrics["l1_ours"] < metrics["l1_classic"]
    assert metrics["ssim_ours"] > metrics["ssim_classic"]


def test_forward_pass_is_deterministic(net, model) -> None:
    texture, confidence = face_like_texture(512)
    first = net.complete(texture, confidence, model)
    second = net.complete(texture, confidence, model)
    assert first.texture.shape == (512, 512, 3) and first.texture.dtype == np.float32
    assert np.array_equal(first.texture, second.texture)
    assert 0.0 <= first.texture.min() and first.texture.max() <= 1.0
    # Texels the photo saw (confidence 0.9 >= 0.5) keep the classical result exactly; the
    # net changes the ones it did not see.
    classic = complete_uv_texture(texture, confidence).texture
    seen = confidence >= 0.5
    assert np.array_equal(first.texture[seen], classic[seen])
    assert np.abs(first.texture - classic)[~seen].max() > 1e-3
    with pytest.raises(InputError):
        net.complete(texture[..., 0], confidence, model)


def test_untrained_net_is_the_classical_completion(tmp_path, model) -> None:
    """Zero-initialised last layer: a fresh net changes nothing; also a save/load round
    trip of user-trained weights without a manifest."""
    config = CompletionConfig((4, 8))
    path = tmp_path / "fresh.npz"
    save_weights(path, build_net(config), config, {})
    manifest_path(path).unlink()
    loaded = load_completion_net(path)
    texture, confidence = face_like_texture(256, seed=1)
    out, used = complete_texture(texture, confidence, model, "neural", weights=path)
    assert used == "neural"
    assert np.abs(out.texture - complete_uv_texture(texture, confidence).texture).max() < 1e-6
    assert loaded.config.widths == (4, 8)


def test_corrupt_weights_raise_one_line_model_error(tmp_path) -> None:
    copy = corrupted_copy(DEFAULT_WEIGHTS, manifest_path(DEFAULT_WEIGHTS), tmp_path)
    with pytest.raises(ModelError) as info:
        load_completion_net(copy)
    assert "corrupt" in str(info.value) and "\n" not in str(info.value)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not weights")
    with pytest.raises(ModelError):
        load_completion_net(junk)


def test_missing_weights_fall_back_to_classic(tmp_path, model) -> None:
    missing = tmp_path / "none.npz"
    texture, confidence = face_like_texture(128, seed=2)
    with pytest.warns(RuntimeWarning, match="not found"):
        assert load_completion_net(missing) is None
    with pytest.warns(RuntimeWarning, match="classical"):
        out, used = complete_texture(texture, confidence, model, "neural", weights=missing)
    assert used == "classic"
    assert np.array_equal(out.texture, complete_uv_texture(texture, confidence).texture)
    with pytest.raises(InputError):
        complete_texture(texture, confidence, model, "magic")


@pytest.fixture(scope="module")
def heldout_fit(model, media_dir):
    """khabenskii.jpg (held out of training) fitted with its landmarks, as the swap does."""
    from fitting.detection import detect_faces
    from fitting.photo import fit_photo
    from morph3d.io.images import read_image

    image = read_image(media_dir / "khabenskii.jpg")
    faces = detect_faces(image, "mediapipe")
    best = int(np.argmax(faces.areas()))
    landmarks = {k: v[best].astype(np.float64) for k, v in faces.landmarks.items()}
    return fit_photo(image, model, landmarks=landmarks)[0], landmarks


def test_beats_classic_on_a_heldout_person(net, model, heldout_fit) -> None:
    """khabenskii.jpg is held out of training: fit it, hide texels with synthetic views
    from other poses, and compare both completions on the hidden texels."""
    fit = heldout_fit[0]
    masks = synthetic_visibility(model, fit, 3, np.random.default_rng(7))
    sample = TextureSample("khabenskii.jpg",
                           np.rint(fit.identity.texture * 255).astype(np.uint8),
                           np.rint(fit.identity.confidence * 255).astype(np.uint8), masks)
    m = evaluate(net, [sample], model)
    assert m["cases"] >= 2
    assert m["l1_ours"] < m["l1_classic"]
    assert m["ssim_ours"] > m["ssim_classic"]


def test_keeps_the_classical_fill_where_nothing_was_seen(net, model, heldout_fit) -> None:
    """The swap hides the photo's eye and mouth openings (`hide_openings`) before the
    completion; nothing there or beyond the silhouette was ever seen, so no photo says what
    it looks like. The net was trained to stay at the classical fill on such texels (a
    guess there moved the swap's identity away from the source): its mean change is small
    (the first shipped net darkened them by 0.016-0.027 on average)."""
    import copy

    from morph3d.neural.texture_completion import skin_rows
    from morph3d.swap.fits import hide_openings

    fit = copy.deepcopy(heldout_fit[0])
    assert hide_openings([fit], model, [heldout_fit[1]]) > 0
    texture, confidence = fit.identity.texture, fit.identity.confidence
    classic = complete_uv_texture(texture, confidence)
    ours = net.complete(texture, confidence, model, classic).texture
    features = uv_features(model, texture.shape[0])
    unseen = (confidence < 0.5) & skin_rows(texture.shape[0])[:, None] & (features[7] > 0.5)
    openings = unseen & ((features[1] > 0.05) | (features[2] > 0.05))
    change = np.abs(ours - classic.texture).mean(2)
    assert openings.sum() > 1000
    assert change[openings].mean() < OPENINGS_MAX_CHANGE
    assert change[unseen].mean() < UNSEEN_MAX_CHANGE


def _tiny_samples() -> TextureSamples:
    samples = TextureSamples()
    for i in range(3):
        texture, confidence = face_like_texture(128, seed=10 + i)
        synthetic = np.ones((2, 128, 128), np.float32)
        synthetic[0, :, 20:60] = 0
        synthetic[1, 30:70, :] = 0
        samples.train.append(TextureSample(
            f"f{i}.png#0.0", np.rint(texture * 255).astype(np.uint8),
            np.rint(confidence * 255).astype(np.uint8), (synthetic * 255).astype(np.uint8)))
    return samples


def _tiny_options(tmp_path, name: str) -> CompletionTrainOptions:
    return CompletionTrainOptions(data_dir=tmp_path, out=tmp_path / f"{name}.npz",
                                  checkpoint=tmp_path / f"{name}.pt", steps=4,
                                  widths=(4, 8), batch=2, crop=64, checkpoint_every=2,
                                  threads=1, progress=False)


def test_training_resumes_to_the_same_weights(tmp_path, model) -> None:
    samples = _tiny_samples()
    quiet = lambda message: None  # noqa: E731
    straight = _tiny_options(tmp_path, "straight")
    manifest = train_completion(straight, quiet, samples, model)
    assert manifest["trained"]["steps"] == 4
    assert manifest["data"]["train_textures"] == 3

    first = _tiny_options(tmp_path, "resumed")
    first.minutes = 1e-9  # stops after one step, checkpointed
    train_completion(first, quiet, samples, model)
    second = _tiny_options(tmp_path, "resumed")
    second.resume = True
    assert train_completion(second, quiet, samples, model)["trained"]["steps"] == 4
    with np.load(straight.out) as a, np.load(second.out) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key

    mismatched = _tiny_options(tmp_path, "resumed")
    mismatched.resume, mismatched.seed = True, 1
    with pytest.raises(InputError, match="other settings"):
        train_completion(mismatched, quiet, samples, model)


def test_uv_features_mark_regions(model) -> None:
    features = uv_features(model, 128)
    assert features.shape == (10, 128, 128)
    skin, lips = features[0], features[1]
    assert skin.mean() > 0.2 and 0 < lips.mean() < 0.1
    assert np.array_equal(features, uv_features(model, 128))


def test_a_hat_above_the_brows_is_hidden_before_completion(model) -> None:
    """Grace Hopper's cap (matplotlib's bundled photo, `make demo`'s source) sits on her
    forehead; the swap's face mask takes a band of the source's forehead, so the cap was
    pasted onto the actor as a dark stripe. `hide_forehead_occluders` hides those texels
    (the completion then fills them with skin) and leaves a plain skin texture alone."""
    import copy

    import matplotlib.cbook

    from fitting.detection import detect_faces
    from fitting.photo import fit_photo
    from morph3d.composite.occluders import ycrcb
    from morph3d.io.images import read_image
    from morph3d.swap.fits import hide_forehead_occluders

    image = read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    faces = detect_faces(image, "mediapipe")
    best = int(np.argmax(faces.areas()))
    landmarks = {k: v[best].astype(np.float64) for k, v in faces.landmarks.items()}
    fit = fit_photo(image, model, landmarks=landmarks)[0]
    plain = copy.deepcopy(fit)
    before = fit.identity.confidence.copy()
    hidden_count = hide_forehead_occluders(fit, model)
    hidden = (before > 0) & (fit.identity.confidence == 0)
    assert hidden_count == hidden.sum() > 5000
    luma = ycrcb(np.clip(fit.identity.texture, 0, 1))[..., 0]
    seen = before >= 0.5
    assert np.median(luma[hidden]) < 0.4 * np.median(luma[seen & ~hidden])  # the dark cap
    rows = np.nonzero(hidden.any(1))[0]
    assert rows.max() < 0.3 * hidden.shape[0]  # all above the brows (top of the atlas)
    # the same photo's texture with every texel at its median skin colour: nothing to hide
    plain.identity.texture[:] = np.median(plain.identity.texture[seen], axis=0)
    assert hide_forehead_occluders(plain, model) == 0


def test_net_input_regions_are_the_models_region_channels_reordered() -> None:
    """One list of region channels (the model's, which the renders carry); the net's input
    order is a permutation of it by name, so a renamed or added region cannot drift apart."""
    from morph3d.model.model import REGION_CHANNELS, REGIONS
    from morph3d.neural.completion import NET_INPUT_REGIONS
    from morph3d.swap import window

    assert window.REGION_CHANNELS is REGION_CHANNELS
    assert set(REGION_CHANNELS) <= set(REGIONS)
    assert sorted(NET_INPUT_REGIONS) == sorted(REGION_CHANNELS)
    assert len(set(NET_INPUT_REGIONS)) == len(NET_INPUT_REGIONS)
