"""The source photos' fit: `fit_photo` gives one fit per photo, and the openings (mouth,
eyes) of every photo are hidden from the texture they share (`swap.fits.hide_openings`)."""

from __future__ import annotations

import numpy as np
import pytest

from fitting import photo as FP
from fitting.synthetic import synthetic_face
from morph3d.swap.fits import hide_openings


def _mouth(points: dict[str, np.ndarray], opening: float) -> dict[str, np.ndarray]:
    """The photo's points with the inner lips closed (0) or the lower one dropped by
    `opening` x the mouth's width."""
    ibug = np.array(points["ibug68"], np.float64)
    ibug[[65, 66, 67]] = ibug[[63, 62, 61]]
    ibug[[65, 66, 67], 1] += opening * np.linalg.norm(ibug[54] - ibug[48])
    return {**points, "ibug68": ibug}


def test_two_photos_two_fits_and_each_photos_openings_hidden(model):
    rng = np.random.default_rng(3)
    photos = [synthetic_face(model, rng, yaw_deg=yaw, noise_px=0.0)[3] for yaw in (-5, 10)]
    image = np.zeros((480, 640, 3), np.uint8)
    fits = FP.fit_photo([image, image], model, landmarks=photos, photometric=False)
    assert isinstance(fits, list) and [f.num_frames for f in fits] == [1, 1]
    assert fits[0].identity is fits[1].identity
    assert isinstance(FP.fit_photo(image, model, landmarks=photos[0], photometric=False), list)

    size = 128

    def hidden(landmarks: list[dict[str, np.ndarray]]) -> int:
        fits[0].identity.texture = np.full((size, size, 3), 0.5, np.float32)
        fits[0].identity.confidence = np.ones((size, size), np.float32)
        return hide_openings(fits[:len(landmarks)], model, landmarks)

    closed = [_mouth(p, 0.0) for p in photos]
    first_only = hidden(closed[:1])
    both_closed = hidden(closed)
    second_open = hidden([closed[0], _mouth(photos[1], 0.3)])
    assert 0 < first_only <= both_closed  # the second photo's eyes are checked too
    assert second_open > both_closed  # an open mouth in the second photo alone is hidden
    with pytest.raises(ValueError):  # a photo without its points is a bug, not skipped
        hidden(closed[:1] * 2 + closed[:1])
