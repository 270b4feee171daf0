"""Where morph3d keeps files it builds: one cache directory, overridable by MORPH3D_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The per-user cache (built head model, converted BFM, fitted clips)."""
    root = os.environ.get("MORPH3D_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "morph3d"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
