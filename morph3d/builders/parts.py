"""The MakeHuman head's vertex parts (skin, teeth, tongue, eyes), stored in a model's regions:
shared by the head build and the landmark pinning.
"""

from __future__ import annotations

import numpy as np

from morph3d.model.model import ModelData

PART_NAMES = ("skin", "upper_teeth", "lower_teeth", "tongue", "left_eye", "right_eye")


def vertex_parts(model: ModelData) -> np.ndarray:
    """V part index into PART_NAMES, recovered from the part regions."""
    r = model.regions
    parts = np.zeros(model.num_vertices, np.int64)
    for index, name in enumerate(("skin", "upper_teeth", "lower_teeth", "tongue",
                                  "left_eyeball", "right_eyeball")):
        parts[r[name]] = index
    return parts
