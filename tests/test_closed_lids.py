"""Closed lids in a blink keep the face's tone (`morph3d.swap.transfer.closed_lids`,
`eye_openness`, `capped_lightness`; `morph3d.swap.albedo.usual_eye_openness`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def face_points(opening: float, iod: float = 60.0, centre=(128.0, 120.0)) -> np.ndarray:
    """mediapipe 478 points (frame pixels) with only the eyes' corners and mid lids set:
    eyes `iod` apart, each 0.45 IOD wide, lids `opening` x the width apart; the rest sit at
    the face's centre (finite, unread)."""
    from morph3d.swap.transfer import EYE_POINTS

    points = np.tile(np.asarray(centre, np.float64), (478, 1))
    width = 0.45 * iod
    for (outer, inner, up, low), side in zip(EYE_POINTS, (-1, 1), strict=True):
        ex, ey = centre[0] + side * iod / 2, centre[1]
        points[outer] = (ex + side * width / 2, ey)
        points[inner] = (ex - side * width / 2, ey)
        points[up] = (ex, ey - opening * width / 2)
        points[low] = (ex, ey + opening * width / 2)
    return points


def test_eye_openness_is_the_lids_distance_over_the_eyes_width() -> None:
    from morph3d.swap.transfer import eye_openness

    assert np.allclose(eye_openness(face_points(0.3)), [0.3, 0.3])
    both = eye_openness(np.stack([face_points(0.3), face_points(0.1)]))
    assert both.shape == (2, 2) and np.allclose(both[1], [0.1, 0.1])


def test_open_eyes_have_no_closed_lids_and_a_blink_weights_the_upper_lids() -> None:
    """Eyes as open as usual: nothing. A blink: each eye's lids weighted, reaching further up
    (the upper lid and crease) than down, nothing at the mouth; a squint halfway between
    usual and closed weighs less."""
    from morph3d.swap.transfer import closed_lids

    usual = np.float32([0.3, 0.3])
    box, size, iod = (0.0, 0.0, 256.0), 256, 60.0
    assert closed_lids(face_points(0.3), usual, box, size, iod) is None
    assert closed_lids(face_points(0.1), None, box, size, iod) is None  # nothing usual known
    lids = closed_lids(face_points(0.05), usual, box, size, iod)
    assert lids is not None and lids.shape == (size, size)
    left_eye = (120, 98)  # row, column of the image-left eye's centre
    assert lids[left_eye] == 1.0
    assert lids[120 - 15, 98] > 0.9 and lids[120 + 15, 98] < 0.1  # 0.25 IOD up / down
    assert lids[120 + 60, 128] == 0.0  # the mouth
    squint = closed_lids(face_points(0.75 * 0.3), usual, box, size, iod)
    assert squint is not None and 0.3 < squint[left_eye] < 0.7


def test_the_ratio_over_closed_lids_is_held_to_the_level_with_its_colour() -> None:
    from morph3d.composite.colour import LUMA
    from morph3d.swap.transfer import capped_lightness

    ratio = np.full((4, 4, 3), [1.8, 2.0, 2.2], np.float32)
    ratio[:, 2:] = [0.8, 0.9, 1.0]  # below the level: left alone
    where = np.zeros((4, 4), np.float32)
    where[:2] = 1.0
    out = capped_lightness(ratio, where, 1.2)
    assert np.allclose(out[:2, :2] @ LUMA, 1.2, atol=1e-5)
    assert np.allclose(out[:2, :2] / out[:2, :2, 1:2], ratio[:2, :2] / ratio[:2, :2, 1:2])
    assert np.array_equal(out[2:], ratio[2:]) and np.array_equal(out[:, 2:], ratio[:, 2:])


def test_the_usual_opening_is_the_median_over_the_frames_with_points() -> None:
    from morph3d.swap.albedo import usual_eye_openness

    frames = np.stack([face_points(o) for o in (0.3, 0.32, 0.05, 0.28, 0.3)])
    frames[1] = np.nan  # a frame without a face
    fit = SimpleNamespace(landmarks={"mediapipe478": frames})
    assert np.allclose(usual_eye_openness(fit), [0.29, 0.29])
    assert usual_eye_openness(SimpleNamespace(landmarks={"ibug68": frames[:, :68]})) is None
