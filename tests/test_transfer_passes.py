"""`transfer.actor_non_skin`'s piece counts in compiled passes against the numpy formulas
they replace (bincounts over connected pieces), bit for bit."""

from __future__ import annotations

import cv2
import numpy as np

from morph3d.swap.transfer import _kept_pieces, _with_joined


def test_kept_pieces_and_the_joined_fringe_are_the_bincount_formulas() -> None:
    changed = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        score = cv2.GaussianBlur(rng.random((80, 90), np.float32), (0, 0), 2.0)
        score = (score - score.min()) / (score.max() - score.min()) * np.float32(7.0)
        score[rng.random((80, 90)) < 0.01] = np.inf
        score[0, :3] = [np.nan, np.float32(6.0), np.nextafter(np.float32(6), np.float32(7))]
        features = rng.random((80, 90)) < 0.2
        above = np.zeros((80, 90), bool)
        above[: 20 + 5 * seed] = True
        count, labels = cv2.connectedComponents((score > 3.0).astype(np.uint8), connectivity=8)
        clear = np.bincount(labels[score > 6.0], minlength=count) > 0
        hair = (np.bincount(labels[above], minlength=count)
                > np.bincount(labels[features], minlength=count)) & clear
        clear[0] = hair[0] = False
        want = np.where(features, hair[labels], clear[labels])
        got = _kept_pieces(labels, count, score, np.float32(6.0), features, above)
        assert got.dtype == bool and np.array_equal(got, want)
        changed += int((want != clear[labels]).sum())

        fringe = rng.random((80, 90)) < 0.3
        count, labels = cv2.connectedComponents((fringe | want).astype(np.uint8),
                                                connectivity=8)
        joined = np.bincount(labels[want], minlength=count) > 0
        joined[0] = False
        expected = want | (fringe & joined[labels])
        assert np.array_equal(_with_joined(labels, count, want, fringe), expected)
        assert (expected != want).any()  # some fringe joins
    assert changed  # the features turn some clear pieces' pixels off
