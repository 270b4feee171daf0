"""Hands in front of the face (`morph3d.composite.learned_occluders`), on real pixels: a hand
of orig.webm's frame 0 moved over the actor's cheek in frame 30 of the same clip (same skin,
same light: the colour cues cannot tell it from the face)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("mediapipe")

from morph3d.composite.compositor import (  # noqa: E402
    CompositorConfig,
    FaceCompositor,
    FrameInputs,
)
from morph3d.composite.masks import face_geometry, face_region  # noqa: E402

# The raised hand at the viewer's left in orig.webm frame 0: the convex hull of its 21
# mediapipe hand landmarks (pixels), and its palm centre (wrist and finger bases).
HAND_HULL = np.array([[124, 366], [122, 382], [111, 403], [91, 419], [58, 367], [52, 349],
                      [49, 336], [48, 326], [62, 310], [73, 302], [90, 308], [122, 355]],
                     np.int32)
PALM = np.array([79.0, 372.0])


def _frames(path, indices: set[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out, i = {}, 0
    while len(out) < len(indices):
        ok, bgr = cap.read()
        if not ok:
            break
        if i in indices:
            out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()
    return out


@pytest.fixture(scope="module")
def hand_over_face(media_dir):
    from fitting.mediapipe_backend import MediapipeBackend

    frames = _frames(media_dir / "orig.webm", {0, 30})
    source, target = frames[0], frames[30]
    backend = MediapipeBackend()
    try:
        ibug = backend.detect(target).landmarks["ibug68"][0].astype(np.float64)
    finally:
        backend.close()
    h, w = target.shape[:2]
    hand = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hand, HAND_HULL, 1)
    hand = cv2.erode(hand, np.ones((3, 3), np.uint8))  # hand pixels only, not its rim
    shift = 0.5 * (ibug[5] + ibug[48]) - PALM  # palm onto the lower cheek
    move = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    alpha = cv2.warpAffine(hand.astype(np.float32), move, (w, h))
    moved = cv2.warpAffine(source, move, (w, h))
    a = alpha[..., None]
    pasted = np.round(target * (1 - a) + moved * a).astype(np.uint8)
    on_face = (alpha > 0.5) & face_region((h, w), {"ibug68": ibug})
    return target, pasted, ibug, on_face


def _alpha(frame: np.ndarray, ibug: np.ndarray, hands: bool) -> np.ndarray:
    h, w = frame.shape[:2]
    lm = {"ibug68": ibug}
    coverage = face_region((h, w), lm, forehead_margin=0.5).astype(np.float32)
    render = np.full((h, w, 3), 0.5, np.float32)
    compositor = FaceCompositor(CompositorConfig(hands=hands))
    try:
        _, report = compositor.process(FrameInputs(frame=frame, render=render, coverage=coverage,
                                                   actor_landmarks=lm, swapped_landmarks=lm))
    finally:
        compositor.close()
    return report.alpha


def test_hand_over_the_face_is_kept(hand_over_face):
    _, pasted, ibug, on_face = hand_over_face
    assert on_face.sum() > 2000  # the hand covers a good part of the face
    colour_only = _alpha(pasted, ibug, hands=False)
    with_hands = _alpha(pasted, ibug, hands=True)
    # the colour cues alone paint over the hand: it has the face's own skin colour
    assert (colour_only[on_face] == 0).mean() < 0.2
    assert (with_hands[on_face] == 0).mean() > 0.8


def test_no_hand_no_change(hand_over_face):
    """Frame 30 as it is: the hands are below the face, the mask is the colour cues' one."""
    target, _, ibug, _ = hand_over_face
    np.testing.assert_array_equal(_alpha(target, ibug, hands=True),
                                  _alpha(target, ibug, hands=False))


def test_restart_after_a_cut_is_quiet(hand_over_face, capfd):
    """A shot cut restarts the tracker's graph, which logs its start-up to fd 2 again: that
    must stay off the terminal like the first start."""
    from morph3d.composite.learned_occluders import HandOccluders

    _, pasted, ibug, _ = hand_over_face
    h, w = pasted.shape[:2]
    geometry = face_geometry({"ibug68": ibug})
    hands = HandOccluders()
    try:
        capfd.readouterr()
        first = hands.hulls(pasted, geometry, (0, 0, w, h))
        hands.reset()
        again = hands.hulls(pasted, geometry, (0, 0, w, h))
    finally:
        hands.close()
    assert first.any() and np.array_equal(first, again)
    assert capfd.readouterr().err.strip() == ""


def test_an_ear_is_not_a_hand(media_dir):
    """nggyup.mp4's close-up, frames 10-21: the hand detector takes the actor's ear (at the
    face's side, half the size of a hand held at the face) for a hand; it must not be cut."""
    from fitting.mediapipe_backend import MediapipeBackend
    from morph3d.composite.learned_occluders import HandOccluders

    frames = _frames(media_dir / "nggyup.mp4", set(range(22)))
    backend = MediapipeBackend()
    try:
        tracked = list(backend.detect_video([frames[i] for i in range(22)]))
    finally:
        backend.close()
    hands = HandOccluders()
    try:
        found = []
        for i in range(10, 22):
            h, w = frames[i].shape[:2]
            geometry = face_geometry({"ibug68": tracked[i].landmarks["ibug68"][0]})
            found.append(int(hands.hulls(frames[i], geometry, (0, 0, w, h)).sum()))
    finally:
        hands.close()
    assert found == [0] * len(found)


def test_the_swap_option():
    """`--occluders hands` reaches the options (a manifest row may set it too); anything
    else is one InputError."""
    from morph3d.errors import InputError
    from morph3d.swap.batch_manifest import JOB_OPTIONS
    from morph3d.swap.options import SwapOptions

    assert SwapOptions().occluders == "colour"
    assert SwapOptions(occluders="hands").occluders == "hands"
    assert JOB_OPTIONS["occluders"]("hands") == "hands"
    with pytest.raises(InputError, match="occluders takes colour or hands"):
        SwapOptions(occluders="hand")
