"""The 68 points `fitting.landmark_maps` derives from mediapipe's 478 agree with the model's
iBUG annotation table on the model itself.

The map was made against dlib's points on real photos (the iBUG annotation convention), and the
"ibug68_annotation" table against the same convention. Applied to the default model's own
embedded mediapipe478 points, the map must land on that table: a systematic offset between
the two (a few mm, larger towards the chin) makes the fit tilt the head to reconcile them,
which shows up as a pitch error even with perfect detections.
"""

from __future__ import annotations

import numpy as np

from fitting import model_arrays as FM
from fitting.landmark_maps import ibug68_from_mediapipe478

GROUPS = {"brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "mouth": range(48, 68)}  # the jaw is matched to the outline, not to the table


def _table_mm(arrays: FM.ModelArrays, table: str) -> np.ndarray:
    ids, bary = arrays.landmarks[table]
    return np.einsum("lc,lcd->ld", bary, arrays.mean[ids])


def test_map_of_embedded_478_lands_on_the_annotation_table(model):
    arrays = FM.model_arrays(model)
    assert FM.IBUG68_ANNOTATION in arrays.landmarks and FM.MEDIAPIPE478 in arrays.landmarks
    derived = ibug68_from_mediapipe478(_table_mm(arrays, FM.MEDIAPIPE478))
    diff = derived - _table_mm(arrays, FM.IBUG68_ANNOTATION)  # mm on the mean head, y up
    for group, rows in GROUPS.items():
        d = diff[list(rows), :2]  # the image plane of a frontal face
        assert np.linalg.norm(d, axis=1).mean() < 2.0, group
        assert abs(d[:, 1].mean()) < 1.0, group  # no systematic vertical shift
