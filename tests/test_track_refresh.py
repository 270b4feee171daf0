"""How often `FaceTracker` refreshes a tracked face's identity embedding: every
`embed_every` frames where other faces are about or while its identity is young, every
`embed_every_alone` frames for a face alone in the picture once `settled_embeddings` made
its identity. The embeddings are stand-ins (one fixed vector per person, told
apart by where the face is), so only the tracker's own decisions are under test."""

from __future__ import annotations

import numpy as np
import pytest

import fitting.track as track
from fitting.embedding import EMBEDDING_SIZE
from fitting.faces import FrameFaces
from fitting.track import FaceTracker

SIZE = (480, 640)


@pytest.fixture
def embedded_frames(monkeypatch) -> list[int]:
    """The frames at which the tracker asked for embeddings, once per face."""
    frames: list[int] = []
    people = np.eye(EMBEDDING_SIZE, dtype=np.float32)[:2]

    def fake(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        frames.extend([int(image[0, 0, 0])] * len(boxes))
        return people[(np.asarray(boxes)[:, 0] > SIZE[1] / 2).astype(int)]

    monkeypatch.setattr(track, "face_embeddings", fake)
    return frames


def run(tracker: FaceTracker, boxes_per_frame: list[list[list[float]]]) -> np.ndarray:
    for frame, boxes in enumerate(boxes_per_frame):
        image = np.zeros((*SIZE, 3), np.uint8)
        image[0, 0, 0] = frame  # tells the stand-in which frame it is embedding
        tracker._thumbnail = tracker._small = None  # no cut or repeat tests: plain frames
        tracker.update(image, FrameFaces(np.float32(boxes), np.ones(len(boxes)), {}, SIZE))
    return tracker.result().track_id


def test_a_face_alone_is_refreshed_every_embed_every_alone_frames_once_settled(
        embedded_frames):
    boxes = [[[100.0 + f, 100.0, 200.0 + f, 220.0]] for f in range(130)]
    ids = run(FaceTracker(embed_every=15, embed_every_alone=30, settled_embeddings=3), boxes)
    assert embedded_frames == [0, 15, 30, 60, 90, 120]
    assert set(ids.tolist()) == {0}


def test_faces_side_by_side_are_refreshed_every_embed_every_frames(embedded_frames):
    boxes = [[[100.0 + f, 100.0, 200.0 + f, 220.0], [400.0, 100.0, 500.0, 220.0]]
             for f in range(50)]
    ids = run(FaceTracker(embed_every=15, embed_every_alone=30, settled_embeddings=1), boxes)
    assert embedded_frames == [0, 0, 15, 15, 30, 30, 45, 45]
    assert ids.reshape(50, 2).tolist() == [[0, 1]] * 50


def test_a_face_whose_company_left_is_alone_once_the_other_track_is_gone(embedded_frames):
    # the second face leaves after frame 9; its track stays about for `max_gap` frames
    boxes = [[[100.0, 100.0, 200.0, 220.0], [400.0, 100.0, 500.0, 220.0]]] * 10 + [
        [[100.0, 100.0, 200.0, 220.0]]] * 70
    run(FaceTracker(embed_every=15, embed_every_alone=30, max_gap=15, settled_embeddings=1),
        boxes)
    # frames 0 (both new) and 15 (the other track last seen at 9: still about); then alone
    assert embedded_frames == [0, 0, 15, 45, 75]
