"""Where morph3d keeps files it builds (one cache directory, overridable by MORPH3D_CACHE),
how it names file contents (SHA-256), and where the bundled sample images are."""

from __future__ import annotations

import hashlib
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, streamed (a few seconds for a 1 GB clip)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# The demo's inputs (and extra training photos): images that ship inside installed packages.


def bundled_source() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def bundled_target_photo() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "astronaut.png"
