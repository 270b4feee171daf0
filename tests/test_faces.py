"""Face detection, landmarks (mediapipe and dlib backends) and identity embeddings, on real
photos from ../shared/media."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitting.detection import get_landmark_backend
from fitting.embedding import (
    SAME_PERSON_THRESHOLD,
    embedding_distance,
    face_embedding,
    face_embeddings,
)
from fitting.face_alignment_backend import find_cached_weights
from fitting.faces import IBUG68, MEDIAPIPE478, FrameFaces, box_iou, landmark_box
from fitting.landmark_maps import IBUG68_FROM_MEDIAPIPE478_MATRIX, ibug68_from_mediapipe478
from morph3d.errors import Morph3dError

BACKENDS = ("mediapipe", "dlib")


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def backends():
    opened = {name: get_landmark_backend(name) for name in BACKENDS}
    yield opened
    for backend in opened.values():
        backend.close()


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    """Mean point error over the outer-eye-corner distance (iBUG points 36 and 45)."""
    return float(np.linalg.norm(points - truth, axis=1).mean()
                 / np.linalg.norm(truth[36] - truth[45]))


def annotated(media_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = media_dir / "annotated"
    if name == "takeo":
        lines = (folder / "takeo.pts").read_text().splitlines()
        rows = [line.split() for line in lines[lines.index("{") + 1:lines.index("}")]]
        truth = np.array(rows, np.float64) - 1.0  # the .pts format is 1-based
        return read_rgb(folder / "takeo.ppm"), truth
    data = json.loads((folder / "lenna.ljson").read_text())
    yx = np.array(data["groups"]["LJSON"]["landmarks"]["points"], np.float64)
    return read_rgb(folder / "lenna.png"), yx[:, ::-1]  # LJSON stores [y, x], 0-based


# ------------------------------------------------------------------------------------------
# Detection and landmarks
# ------------------------------------------------------------------------------------------


@pytest.mark.media
@pytest.mark.parametrize("name", BACKENDS)
def test_one_face_in_mark(media_dir, backends, name):
    image = read_rgb(media_dir / "mark.jpg")
    faces = backends[name].detect(image)
    assert len(faces) == 1
    assert faces.image_size == image.shape[:2]
    assert faces.boxes.dtype == np.float32 and faces.boxes.shape == (1, 4)
    assert set(faces.landmarks) == set(backends[name].schemes)
    points = faces.landmarks[IBUG68][0]
    assert points.shape == (68, 2) and points.dtype == np.float32
    # the landmarks lie on the face the box marks
    assert box_iou(faces.boxes, landmark_box(points)[None])[0, 0] > 0.4


@pytest.mark.media
@pytest.mark.parametrize("name", BACKENDS)
def test_three_faces_in_three_people(media_dir, backends, name):
    image = read_rgb(media_dir / "three_people.png")
    faces = backends[name].detect(image)
    assert len(faces) == 3
    ordered = faces.sorted_by_area()
    assert np.all(np.diff(ordered.areas()) <= 0)
    # three different people side by side: their boxes do not overlap
    overlaps = box_iou(faces.boxes, faces.boxes)
    assert np.all(overlaps[~np.eye(3, dtype=bool)] == 0)
    h, w = image.shape[:2]
    assert np.all(faces.boxes[:, :2] >= -0.5) and np.all(faces.boxes[:, 2] <= w - 0.5)
    assert np.all(faces.boxes[:, 3] <= h - 0.5)


@pytest.mark.media
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("photo", ["takeo", "lenna"])
def test_ibug68_accuracy_on_annotated_photos(media_dir, backends, name, photo):
    image, truth = annotated(media_dir, photo)
    faces = backends[name].detect(image)
    assert len(faces) == 1
    error = nme(faces.landmarks[IBUG68][0], truth)
    print(f"\nNME {name} on {photo}: {100 * error:.2f} %")
    assert error < 0.08


@pytest.mark.media
def test_dlib_cnn_detector_on_takeo(media_dir):
    image, truth = annotated(media_dir, "takeo")
    faces = get_landmark_backend("dlib-cnn").detect(image)
    assert len(faces) == 1 and faces.scores[0] > 0.5
    error = nme(faces.landmarks[IBUG68][0], truth)
    print(f"\nNME dlib-cnn on takeo: {100 * error:.2f} %")
    assert error < 0.08


@pytest.mark.parametrize("name", BACKENDS)
def test_flat_grey_image_has_no_face(backends, name):
    faces = backends[name].detect(np.full((360, 480, 3), 128, np.uint8))
    assert len(faces) == 0
    assert faces.boxes.shape == (0, 4) and faces.scores.shape == (0,)
    assert faces.landmarks[IBUG68].shape == (0, 68, 2)


@pytest.mark.media
def test_grey_and_float_inputs(media_dir, backends):
    grey = cv2.imread(str(media_dir / "murakami_gray.jpg"), cv2.IMREAD_GRAYSCALE)
    faces = backends["mediapipe"].detect(grey)
    assert len(faces) == 1
    as_float = backends["mediapipe"].detect(grey.astype(np.float32) / 255.0)
    np.testing.assert_allclose(as_float.landmarks[MEDIAPIPE478], faces.landmarks[MEDIAPIPE478])


@pytest.mark.media
def test_mediapipe_video_mode_is_deterministic_and_close_to_still_mode(media_dir, backends):
    import av

    with av.open(str(media_dir / "nggyup.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24")
                  for f in itertools.islice(container.decode(video=0), 12)]
    backend = backends["mediapipe"]
    first = list(backend.detect_video(frames, detect_every=5))
    second = list(backend.detect_video(frames, detect_every=5))
    assert [len(f) for f in first] == [1] * len(frames)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.landmarks[MEDIAPIPE478], b.landmarks[MEDIAPIPE478])
        np.testing.assert_array_equal(a.boxes, b.boxes)
    for frame, tracked in zip(frames, first, strict=True):
        still = backend.detect(frame)
        size = float(np.sqrt(still.areas()[0]))
        difference = np.abs(still.landmarks[IBUG68] - tracked.landmarks[IBUG68]).mean()
        assert difference < 0.02 * size
        assert box_iou(still.boxes, tracked.boxes)[0, 0] > 0.8


def test_frame_faces_select_sort_save_load(tmp_path):
    rng = np.random.default_rng(0)
    faces = FrameFaces(
        boxes=np.array([[0, 0, 10, 10], [0, 0, 30, 30], [5, 5, 25, 20]], np.float32),
        scores=np.array([0.9, 0.8, 0.7]),
        landmarks={IBUG68: rng.normal(size=(3, 68, 2))},
        image_size=(100, 200),
    )
    ordered = faces.sorted_by_area()
    np.testing.assert_array_equal(ordered.scores, np.float32([0.8, 0.7, 0.9]))
    np.testing.assert_array_equal(ordered.landmarks[IBUG68][0], faces.landmarks[IBUG68][1])
    path = tmp_path / "faces.npz"
    faces.save(path)
    loaded = FrameFaces.load(path)
    assert loaded.image_size == (100, 200)
    np.testing.assert_array_equal(loaded.boxes, faces.boxes)
    np.testing.assert_array_equal(loaded.landmarks[IBUG68], faces.landmarks[IBUG68])
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_ibug68_map_is_a_convex_combination():
    matrix = IBUG68_FROM_MEDIAPIPE478_MATRIX
    assert matrix.shape == (68, 478)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert matrix.min() >= 0
    # a rigid motion of the mesh moves the derived points the same way
    rng = np.random.default_rng(1)
    mesh = rng.uniform(0, 100, (2, 478, 2)).astype(np.float32)
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = mesh @ rotation.T + [5.0, -3.0]
    np.testing.assert_allclose(ibug68_from_mediapipe478(moved),
                               ibug68_from_mediapipe478(mesh) @ rotation.T + [5.0, -3.0],
                               rtol=1e-4, atol=1e-3)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(Morph3dError, match="unknown landmark backend"):
        get_landmark_backend("nope")


def test_face_alignment_without_weights_is_a_clear_error(tmp_path):
    url = "https://example.invalid/models/2DFAN4-11f355bf06.pth.tar"
    assert find_cached_weights([url], tmp_path) is None
    (tmp_path / "2DFAN4-11f355bf06.pth.tar").write_bytes(b"")
    assert find_cached_weights([url], tmp_path) == tmp_path / "2DFAN4-11f355bf06.pth.tar"
    empty = tmp_path / "empty"
    empty.mkdir()
    if importlib.util.find_spec("face_alignment") is None:
        match = "face_alignment package"
    else:
        match = "weights not found"
    with pytest.raises(Morph3dError, match=match):
        get_landmark_backend("face-alignment", cache_dir=empty)


# ------------------------------------------------------------------------------------------
# Identity embeddings
# ------------------------------------------------------------------------------------------


@pytest.mark.media
def test_embeddings_tell_people_apart(media_dir, backends):
    mark = read_rgb(media_dir / "mark.jpg")
    other = read_rgb(media_dir / "khabenskii.jpg")
    # the same person, mirrored and at 60 % size
    mark_small = np.ascontiguousarray(cv2.resize(mark[:, ::-1], None, fx=0.6, fy=0.6,
                                                 interpolation=cv2.INTER_AREA))
    detector = backends["mediapipe"]
    embeddings = [face_embedding(image, detector.detect(image).landmarks[IBUG68][0])
                  for image in (mark, other, mark_small)]
    assert all(e.shape == (128,) and e.dtype == np.float32 for e in embeddings)
    different = embedding_distance(embeddings[0], embeddings[1])
    same = embedding_distance(embeddings[0], embeddings[2])
    print(f"\nembedding distance mark-khabenskii {different:.3f}, mark-mirrored {same:.3f}")
    assert different > SAME_PERSON_THRESHOLD
    assert same < SAME_PERSON_THRESHOLD
    # from a dlib box (5-point alignment) it agrees with the landmark-based one
    box = backends["dlib"].detect(mark).boxes[0]
    assert embedding_distance(face_embedding(mark, box), embeddings[0]) < 0.3


@pytest.mark.media
def test_batch_embeddings_of_three_people(media_dir, backends):
    image = read_rgb(media_dir / "three_people.png")
    faces = backends["dlib"].detect(image)
    embeddings = face_embeddings(image, faces.landmarks[IBUG68])
    assert embeddings.shape == (3, 128)
    distances = embedding_distance(embeddings[:, None], embeddings[None])
    assert np.all(distances[~np.eye(3, dtype=bool)] > SAME_PERSON_THRESHOLD)
    assert face_embeddings(image, np.zeros((0, 4))).shape == (0, 128)
