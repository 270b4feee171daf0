"""The face-alignment landmark backend (optional): Bulat's 2D-FAN with its S3FD detector.

Used only when the `face_alignment` package and both weight files are already in the torch
hub cache: nothing is ever downloaded. Gives ``ibug68``. Conventions (pixels, boxes as
edges) are those of `fitting.faces`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fitting.faces import IBUG68, FrameFaces, LandmarkBackend, as_rgb_uint8
from morph3d.errors import Morph3dError


def _urls_in(table: Any) -> list[str]:
    """All URL strings in a (possibly nested) dict of model URLs."""
    if isinstance(table, str):
        return [table]
    if isinstance(table, dict):
        return [u for value in table.values() for u in _urls_in(value)]
    return []


def find_cached_weights(urls: Iterable[str], cache_dir: Path) -> Path | None:
    """The first of `urls` whose file name is already in `cache_dir`, or None."""
    for url in urls:
        candidate = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and face_alignment) keep downloaded weights."""
    try:
        import torch
        return Path(torch.hub.get_dir()) / "checkpoints"
    except ImportError:
        return Path(os.path.expanduser("~/.cache/torch/hub/checkpoints"))


class FaceAlignmentBackend(LandmarkBackend):
    """Bulat's 2D-FAN (`face_alignment`) with its S3FD detector, CPU only, weights from the
    torch hub cache. Raises Morph3dError when the package or either weight file is absent."""

    name = "face-alignment"
    schemes = (IBUG68,)

    def __init__(self, device: str = "cpu", cache_dir: str | os.PathLike | None = None) -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise Morph3dError("the face-alignment backend needs the face_alignment package "
                               "and its weights on disk; use the mediapipe or dlib backend")
        cache = Path(cache_dir) if cache_dir is not None else torch_hub_checkpoints()
        try:
            import face_alignment
            from face_alignment import api as fa_api
            from face_alignment.detection.sfd import sfd_detector
        except Exception as exc:  # a broken install raises anything from numba to torch
            raise Morph3dError(f"cannot import face_alignment: {exc}") from exc
        fan_urls = [u for u in _urls_in(getattr(fa_api, "models_urls", {}))
                    + _urls_in(getattr(fa_api, "default_model_urls", {})) if "2DFAN" in u]
        fan = find_cached_weights(fan_urls, cache)
        s3fd = find_cached_weights(_urls_in(getattr(sfd_detector, "models_urls", {})), cache)
        if fan is None or s3fd is None:
            missing = " and ".join(n for n, p in (("2D-FAN", fan), ("S3FD", s3fd)) if p is None)
            raise Morph3dError(f"face-alignment weights not found ({missing}) in {cache}; "
                               "they are never downloaded: copy them there or use mediapipe")
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None)
        if landmarks_type is None:
            landmarks_type = face_alignment.LandmarksType._2D
        kwargs: dict[str, Any] = {"device": device, "flip_input": False,
                                  "face_detector": "sfd",
                                  "face_detector_kwargs": {"path_to_detector": str(s3fd)}}
        if "compile" in inspect.signature(face_alignment.FaceAlignment.__init__).parameters:
            kwargs["compile"] = False
        # The FAN weights are found by file name in the hub cache (checked above), so the
        # library's download-if-missing path is never taken.
        if cache != torch_hub_checkpoints():
            import torch
            torch.hub.set_dir(str(cache.parent))
        self._model = face_alignment.FaceAlignment(landmarks_type, **kwargs)

    def detect(self, image: np.ndarray) -> FrameFaces:
        rgb = as_rgb_uint8(image)
        points, _, boxes = self._model.get_landmarks_from_image(rgb, return_bboxes=True,
                                                                return_landmark_score=True)
        if not points:
            return FrameFaces.empty(rgb.shape[:2], self.schemes)
        boxes = np.asarray(boxes, np.float32).reshape(len(points), -1)
        return FrameFaces(boxes=boxes[:, :4] - np.float32(0.5), scores=boxes[:, 4],
                          landmarks={IBUG68: np.stack([p[:, :2] for p in points])},
                          image_size=rgb.shape[:2])
