"""Which face of a clip or image to take: the one grammar of every `--target-face` option
(swap, template build, batch rows, eval) and its choice among boxes or face tracks.

    largest      the largest face (by box area; over a clip, by mean box area)
    N            the N-th largest (0 = largest); ``index:N`` is the same, as cache keys and
                 template manifests spell it
    center       the face whose box centre is nearest the image centre
    X,Y          the face whose box centre is nearest that pixel
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from morph3d.errors import InputError

GRAMMAR = "largest, N (0 = largest), center or a pixel X,Y"


@dataclass(frozen=True)
class FaceChoice:
    """A parsed target-face option; `str()` gives its canonical text (parsed back equal)."""

    rule: str = "largest"  # largest | index | center | point
    index: int = 0
    point: tuple[float, float] | None = None

    def __str__(self) -> str:
        if self.rule == "index":
            return f"index:{self.index}"
        if self.rule == "point" and self.point is not None:
            return f"{self.point[0]:g},{self.point[1]:g}"
        return self.rule


def parse_face_choice(text: str | FaceChoice) -> FaceChoice:
    """`text` in the grammar above -> FaceChoice; anything else is a one-line InputError."""
    if isinstance(text, FaceChoice):
        return text
    key = str(text).strip().lower()
    if key in ("largest", ""):
        return FaceChoice()
    if key in ("center", "centre"):
        return FaceChoice("center")
    number = key[len("index:"):].strip() if key.startswith("index:") else key
    if number.isdigit():
        index = int(number)
        return FaceChoice("index", index) if index else FaceChoice()
    parts = key.split(",")
    if len(parts) == 2:
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if math.isfinite(x) and math.isfinite(y):
                return FaceChoice("point", point=(x, y))
    raise InputError(f"target face takes {GRAMMAR}, not {str(text)!r}")


def choose_box(boxes: np.ndarray, image_size: tuple[int, int], choice: FaceChoice,
               areas: np.ndarray | None = None) -> int:
    """Index of the chosen face among (N > 0, 4) boxes x0, y0, x1, y1 (ties go to the first);
    -1 when the choice asks for the N-th largest of fewer faces. `areas`: what "largest"
    ranks by (default: the boxes' areas)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if areas is None:
        areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    if choice.rule in ("largest", "index"):
        ranked = np.argsort(-np.asarray(areas, np.float64), kind="stable")
        return int(ranked[choice.index]) if choice.index < len(ranked) else -1
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if choice.rule == "center":
        h, w = image_size
        point = np.array([(w - 1) / 2, (h - 1) / 2])
    else:
        point = np.asarray(choice.point, np.float64)
    return int(np.argmin(np.linalg.norm(centres - point, axis=1)))
