"""Face tracking and person selection on real media from ../shared/media."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitting.choice import FaceChoice, choose_box, parse_face_choice, reference_embedding
from fitting.embedding import SAME_PERSON_THRESHOLD
from fitting.faces import IBUG68, MEDIAPIPE478
from fitting.people import (
    people,
    reference_distances,
    select_by_reference,
    select_index,
    select_largest,
    select_track,
)
from fitting.track import GreyBuffers, Tracks, frame_grey, prefetched, track_faces
from morph3d.errors import InputError, Morph3dError


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def first_frames(path: Path, count: int):
    import av

    with av.open(str(path)) as container:
        for frame in itertools.islice(container.decode(video=0), count):
            yield frame.to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def singer(media_dir) -> Tracks:
    """The first 40 frames of nggyup.mp4 (one singer; a cut to a wide shot at frame 22)."""
    return track_faces(first_frames(media_dir / "nggyup.mp4", 40))


@pytest.mark.media
def test_singer_keeps_one_track_id(singer):
    assert singer.n_frames == 40
    assert singer.image_size == (720, 1280)
    # a face in every frame, all of them the same track, across the cut
    np.testing.assert_array_equal(singer.frame_index, np.arange(40))
    assert singer.ids.tolist() == [0]
    assert singer.present(0).all()
    # the cut to the wide shot was seen, and only there
    assert np.flatnonzero(singer.scene_cut).tolist() == [22]
    # the clip was converted from 25 to 30 fps: every 6th frame repeats the one before
    assert np.flatnonzero(singer.repeated).tolist() == [6, 12, 18, 24, 30, 36]
    # identities were computed sparsely, not for every frame
    embedded = np.isfinite(singer.embeddings).all(axis=1)
    assert 2 <= embedded.sum() <= 8
    assert select_largest(singer) == 0
    assert set(singer.landmarks) == {IBUG68, MEDIAPIPE478}


@pytest.mark.media
def test_a_cut_in_a_dim_noisy_clip_is_seen_and_one_person_stays_one(media_dir):
    """The singer's clip at a third of its light with sensor noise: the cut to the wide shot
    changes the picture less than the clip's own threshold, and the two shots' faces are
    further apart by identity than in the bright clip; still one cut and one person."""
    rng = np.random.default_rng(0)
    dim = [np.clip(f.astype(np.float32) * 0.35 + rng.normal(0.0, 6.0, f.shape), 0, 255)
           .astype(np.uint8) for f in first_frames(media_dir / "nggyup.mp4", 40)]
    tracks = track_faces(dim)
    assert np.flatnonzero(tracks.scene_cut).tolist() == [22]
    assert len(np.unique(tracks.frame_index)) >= 38  # a face in (nearly) every frame
    assert [sorted(person) for person in people(tracks)] == [tracks.ids.tolist()]


def test_pieces_of_one_person_join_and_others_stay_apart():
    """Three tracks one after the other: the second's identity lies 0.52 from the first's
    (one person across a cut into a dim shot), the third's 0.61 (someone else: two people
    of the shared photos come this close)."""
    rng = np.random.default_rng(1)
    first = rng.normal(size=128).astype(np.float32)
    first /= np.linalg.norm(first)
    basis, _ = np.linalg.qr(np.stack([first, *rng.normal(size=(2, 128))], 1))
    frames = np.arange(30)
    track = frames // 10
    # the second and third move off the first in two orthogonal directions
    moves = np.stack([np.zeros(128), 0.52 * basis[:, 1], 0.61 * basis[:, 2]])
    embeddings = (first[None] + moves[track]).astype(np.float32)
    boxes = np.tile(np.float32([100, 100, 200, 220]), (30, 1))
    tracks = Tracks(30, (480, 640), frames, track, boxes, np.ones(30, np.float32),
                    {IBUG68: np.zeros((30, 68, 2), np.float32)}, embeddings)
    assert [sorted(p) for p in people(tracks)] == [[0, 1], [2]]


@pytest.mark.media
def test_tracks_save_load_and_views(singer, tmp_path):
    path = tmp_path / "tracks.npz"
    singer.save(path)
    loaded = Tracks.load(path)
    for name in ("frame_index", "track_id", "boxes", "scores", "scene_cut", "repeated"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(singer, name))
    np.testing.assert_array_equal(loaded.embeddings, singer.embeddings)  # NaN rows included
    np.testing.assert_array_equal(loaded.landmarks[IBUG68], singer.landmarks[IBUG68])
    trajectory = loaded.trajectory(0)
    assert trajectory.shape == (40, 68, 2) and np.isfinite(trajectory).all()
    assert np.isnan(loaded.trajectory(7)).all()  # no such track: absent everywhere
    assert loaded.frame_faces(3).landmarks[IBUG68].shape == (1, 68, 2)
    with pytest.raises(InputError):
        Tracks.load(tmp_path / "missing.npz")


def panned_then_mirrored(image: np.ndarray, frames_each: int = 5) -> list[np.ndarray]:
    """A small pan over `image`, then a cut to its mirror image (people trade places)."""
    h, w = image.shape[:2]
    clip = []
    for source, direction in ((image, 1), (np.ascontiguousarray(image[:, ::-1]), -1)):
        for k in range(frames_each):
            shift = np.float32([[1, 0, direction * 4 * k], [0, 1, 2 * k]])
            clip.append(cv2.warpAffine(source, shift, (w, h), borderMode=cv2.BORDER_REFLECT))
    return clip


@pytest.mark.media
def test_identities_follow_people_across_a_mirroring_cut(media_dir):
    image = read_rgb(media_dir / "three_people.png")
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    width = image.shape[1]
    tracks = track_faces(panned_then_mirrored(image))
    assert tracks.ids.tolist() == [0, 1, 2]
    assert tracks.scene_cut[5] and tracks.scene_cut.sum() == 1

    def id_by_position(frame: int, mirrored: bool) -> dict[int, float]:
        faces = tracks.frame_faces(frame)
        centres = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
        if mirrored:
            centres = width - 1 - centres
        return dict(zip(tracks.ids_in_frame(frame).tolist(), centres.tolist(), strict=True))

    before, after = id_by_position(4, False), id_by_position(5, True)
    assert set(before) == set(after) == {0, 1, 2}
    for track_id in before:  # same person, same place in the un-mirrored picture
        assert abs(before[track_id] - after[track_id]) < 40


@pytest.mark.media
def test_selection_by_size_index_and_reference_photo(media_dir):
    mark = read_rgb(media_dir / "mark.jpg")
    other = read_rgb(media_dir / "khabenskii.jpg")
    # a wide frame: khabenskii on the left (face ~170 px wide), mark on the right (~120 px)
    canvas = np.full((720, 1280, 3), 90, np.uint8)
    canvas[15:705, 40:500] = cv2.resize(other, (460, 690), interpolation=cv2.INTER_AREA)
    canvas[260:455, 860:1060] = cv2.resize(mark, (200, 195), interpolation=cv2.INTER_AREA)
    frames = [np.roll(canvas, k, axis=1) for k in range(3)]
    tracks = track_faces(frames)
    assert len(tracks.ids) == 2

    def track_at(x_range: tuple[int, int]) -> int:
        faces = tracks.frame_faces(0)
        centres = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
        inside = (centres > x_range[0]) & (centres < x_range[1])
        assert inside.sum() == 1
        return int(tracks.ids_in_frame(0)[inside][0])

    left, right = track_at((40, 500)), track_at((860, 1060))
    assert select_largest(tracks) == left
    assert select_index(tracks, 1) == right
    assert select_track(tracks, "index:1") == right
    assert select_track(tracks, "largest") == left
    with pytest.raises(Morph3dError, match="face index 2"):
        select_index(tracks, 2)
    with pytest.raises(Morph3dError):
        select_track(tracks, "biggest")

    # a reference photo of mark, mirrored and rescaled, picks mark's track
    photo = np.ascontiguousarray(cv2.resize(mark[:, ::-1], None, fx=0.7, fy=0.7))
    reference = reference_embedding(photo)
    distances = reference_distances(tracks, reference)
    print(f"\nmedian distances to the reference photo: {distances}")
    assert select_by_reference(tracks, reference) == right
    assert distances[right] < SAME_PERSON_THRESHOLD < distances[left]
    assert select_track(tracks, reference) == right
    # someone who is not in the clip: select_track refuses rather than take the closest
    stranger = reference_embedding(read_rgb(media_dir / "murakami_gray.jpg"))
    assert select_by_reference(tracks, stranger) in (left, right)
    with pytest.raises(InputError, match="no face in the clip matches"):
        select_track(tracks, stranger)


def test_selection_on_an_empty_clip_is_a_clear_error():
    empty = Tracks(n_frames=3, image_size=(10, 10), frame_index=np.zeros(0), track_id=np.zeros(0),
                   boxes=np.zeros((0, 4)), scores=np.zeros(0),
                   landmarks={IBUG68: np.zeros((0, 68, 2))}, embeddings=np.zeros((0, 128)))
    with pytest.raises(Morph3dError, match="no face"):
        select_largest(empty)
    with pytest.raises(Morph3dError, match="no face track has an identity"):
        select_by_reference(empty, np.zeros(128))


def test_face_choice_grammar():
    """The one grammar of every --target-face: largest, N, center, X,Y (and index:N, as
    cache keys and template manifests spell N); str() parses back to the same choice."""
    assert parse_face_choice("largest") == parse_face_choice(" Largest ") == FaceChoice()
    assert parse_face_choice("0") == parse_face_choice("index:0") == FaceChoice()
    assert parse_face_choice("2") == parse_face_choice("index:2") == FaceChoice("index", 2)
    assert parse_face_choice("centre") == parse_face_choice("center") == FaceChoice("center")
    assert parse_face_choice("10, 20.5") == FaceChoice("point", point=(10.0, 20.5))
    for text in ("largest", "3", "center", "-4,7.25"):
        choice = parse_face_choice(text)
        assert parse_face_choice(str(choice)) == choice
    for bad in ("biggest", "two", "index:", "-1", "1.5", "1,2,3", "x,y", "nan,1", "inf,0"):
        with pytest.raises(InputError) as err:
            parse_face_choice(bad)
        assert str(err.value).startswith("target face takes largest, N (0 = largest), center")
        assert "\n" not in str(err.value)


def test_face_choice_among_boxes_and_tracks():
    boxes = np.array([[0, 0, 50, 50], [300, 200, 340, 240], [100, 100, 260, 260]], float)
    size = (480, 640)
    assert choose_box(boxes, size, parse_face_choice("largest")) == 2
    assert choose_box(boxes, size, parse_face_choice("1")) == 0
    assert choose_box(boxes, size, parse_face_choice("2")) == 1
    assert choose_box(boxes, size, parse_face_choice("3")) == -1  # fewer faces than asked
    assert choose_box(boxes, size, parse_face_choice("center")) == 1
    assert choose_box(boxes, size, parse_face_choice("10,20")) == 0
    # Over a clip: sizes are mean areas over all frames (track 0, in frame 0 only, ranks
    # below track 1), places mean box centres.
    rows = [(0, 0, boxes[0]), (0, 1, boxes[1]), (1, 1, boxes[1] + 4), (1, 2, boxes[2])]
    tracks = Tracks(n_frames=2, image_size=size, frame_index=[r[0] for r in rows],
                    track_id=[r[1] for r in rows], boxes=np.array([r[2] for r in rows]),
                    scores=np.ones(4), landmarks={}, embeddings=np.zeros((4, 128)))
    assert select_track(tracks, "largest") == select_track(tracks, FaceChoice()) == 2
    assert select_track(tracks, "1") == 1
    assert select_track(tracks, "center") == 1
    assert select_track(tracks, "5,5") == 0
    with pytest.raises(Morph3dError, match="face index 3"):
        select_track(tracks, "3")


def test_tracker_rows_grow_in_place_and_stay_put_once_handed_out():
    """The tracker's row store: rows appended in batches of any size come back in order;
    arrays handed out mid-clip keep their rows while more are appended (past the capacity,
    so the store must copy instead of resizing them); the final arrays are exactly the
    rows, no spare capacity."""
    from fitting.track import _Columns

    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(int(n), 478, 2)).astype(np.float32)
               for n in rng.integers(0, 4, 300)]
    store = _Columns()
    snapshot = None
    for k, batch in enumerate(batches):
        store.append({"points": batch, "frame": np.full(len(batch), k, np.int64)})
        if k == 40:
            snapshot = store.arrays()
            kept = {key: value.copy() for key, value in snapshot.items()}
    for key in kept:
        np.testing.assert_array_equal(snapshot[key], kept[key])
    final = store.arrays()
    np.testing.assert_array_equal(final["points"], np.concatenate(batches))
    np.testing.assert_array_equal(final["frame"], np.concatenate(
        [np.full(len(b), k) for k, b in enumerate(batches)]))
    assert final["points"].base is None  # owns exactly its rows
    assert _Columns().arrays() == {}


@pytest.mark.media
def test_tracker_result_mid_clip_is_a_snapshot(singer, media_dir):
    """Replaying the singer's faces frame by frame gives track_faces' tracks again, and a
    result taken half-way is not changed by the frames that follow."""
    from fitting.track import FaceTracker

    tracker = FaceTracker()
    half = None
    for k, frame in enumerate(first_frames(media_dir / "nggyup.mp4", 40)):
        tracker.update(frame, singer.frame_faces(k))
        if k == 19:
            half = tracker.result()
            before = half.landmarks[MEDIAPIPE478].copy()
    final = tracker.result()
    for name in ("frame_index", "track_id", "boxes", "scores", "scene_cut", "repeated"):
        np.testing.assert_array_equal(getattr(final, name), getattr(singer, name))
    np.testing.assert_array_equal(final.embeddings, singer.embeddings)
    for scheme in (IBUG68, MEDIAPIPE478):
        np.testing.assert_array_equal(final.landmarks[scheme], singer.landmarks[scheme])
    assert half.n_frames == 20 and len(half) == 20
    np.testing.assert_array_equal(half.landmarks[MEDIAPIPE478], before)
    np.testing.assert_array_equal(before, singer.landmarks[MEDIAPIPE478][:20])


def test_frame_grey_is_the_channel_mean_bit_for_bit():
    """The tracker's grey equals numpy's float32 channel mean exactly, on every sum of three
    bytes and on the other image forms the tracker takes (RGBA, grey, [0, 1] float)."""
    rng = np.random.default_rng(0)
    values = np.arange(256, dtype=np.uint8)
    every_sum = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1)
    images = [every_sum.reshape(256, 256 * 256, 3)[:, ::7],  # a strided view
              rng.integers(0, 256, (721, 1283, 4), dtype=np.uint8),
              rng.integers(0, 256, (5, 9), dtype=np.uint8),
              rng.random((33, 17, 3), dtype=np.float32)]
    for image in images:
        rgb = np.ascontiguousarray(np.asarray(image)[..., :3]) if np.ndim(image) == 3 else image
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        expected = rgb.mean(axis=2, dtype=np.float32)
        grey = frame_grey(image)
        assert grey.dtype == np.float32 and grey.shape == expected.shape
        assert np.array_equal(grey, expected)
        # through reused buffers (the tracker's), after a frame of another size and content
        buffers = GreyBuffers()
        frame_grey(rng.integers(0, 256, (7, 3, 3), dtype=np.uint8), buffers)
        frame_grey(255 - rgb, buffers)
        grey = frame_grey(image, buffers)
        assert grey is buffers.grey and np.array_equal(grey, expected)


def test_prefetched_frames_keep_order_errors_and_early_stops():
    """The background reader hands over every frame in order, raises the source's error at
    its frame, and a consumer that stops early closes the source and ends the thread."""
    import threading

    frames = [np.full((2, 2, 3), k, np.uint8) for k in range(50)]
    got = list(prefetched(iter(frames), depth=3))
    assert len(got) == 50 and all(a is b for a, b in zip(got, frames, strict=True))
    assert list(prefetched(iter([]))) == []

    def failing():
        yield frames[0]
        yield frames[1]
        raise InputError("frame 2 is broken")

    seen = []
    with pytest.raises(InputError, match="frame 2 is broken"):
        for frame in prefetched(failing()):
            seen.append(frame)
    assert len(seen) == 2

    closed = []

    def endless():
        try:
            k = 0
            while True:
                yield np.full((2, 2, 3), k % 256, np.uint8)
                k += 1
        finally:
            closed.append(threading.current_thread().name)

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [int(next(stream)[0, 0, 0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed == ["frame-prefetch"]  # closed in the reader's thread, which has ended
    assert threading.active_count() == before
