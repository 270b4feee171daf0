"""The landmark stage on pictures converted where they are read: the same tracks."""

from __future__ import annotations

import numpy as np
import pytest

from fitting.track import CHANGE_IMAGES, track_faces
from morph3d.io.media import VideoPicture, iter_frames, iter_pictures


@pytest.mark.media
def test_pictures_give_the_tracks_of_whole_frames(media_dir):
    """nggyup.mp4's first 40 frames (a cut at 22, a repeated frame every 6th): the mesh
    crops converted alone, the detector's and dlib's frames whole, the cut test on the fast
    conversion; the same landmarks, embeddings, cuts and repeats as from whole RGB frames."""
    clip = media_dir / "nggyup.mp4"
    whole = track_faces(f.rgb for f in iter_frames(clip, stop=40))
    made: list[VideoPicture] = []

    def pictures():
        for picture in iter_pictures(clip, stop=40):
            made.append(picture)
            yield picture

    parts = track_faces(pictures())
    assert len(made) == 40
    # the cut test's grey pictures were made as the frames were read
    assert all(CHANGE_IMAGES in p.notes for p in made)
    # most frames were never converted whole (the detector's every 10th and dlib's were)
    assert sum(p._rgb is not None for p in made) <= 15
    np.testing.assert_array_equal(parts.scene_cut, whole.scene_cut)
    np.testing.assert_array_equal(parts.repeated, whole.repeated)
    assert np.flatnonzero(parts.scene_cut).tolist() == [22]
    np.testing.assert_array_equal(parts.frame_index, whole.frame_index)
    np.testing.assert_array_equal(parts.track_id, whole.track_id)
    np.testing.assert_array_equal(parts.embeddings, whole.embeddings)
    assert set(parts.landmarks) == set(whole.landmarks)
    for scheme, points in whole.landmarks.items():
        np.testing.assert_array_equal(parts.landmarks[scheme], points)
