"""The swap's work folder: cache keys from the inputs' content and the model, and the
cached stage results (npz) read back with a one-line note when they are unusable.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from morph3d.errors import InputError, Morph3dError
from morph3d.io.paths import cache_dir
from morph3d.swap.options import WORK_FORMAT, SwapOptions, file_digest

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Stages 2-4: cached fits
# ---------------------------------------------------------------------------------------------


def work_directory(options: SwapOptions) -> Path:
    path = options.work_dir or cache_dir() / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_key(model) -> str:
    """The model a fit was made with (name, build, sizes): fits of another build are stale."""
    signature = json.dumps(model_signature(model), sort_keys=True)
    return hashlib.sha256(signature.encode()).hexdigest()[:12]


def clip_key(target: Path, options: SwapOptions, ref_digest: str | None) -> str:
    parts = [file_digest(target), options.model, options.backend, str(options.target_face),
             ref_digest or "", str(options.max_frames), f"w{WORK_FORMAT}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from morph3d.io.atomic import atomic_write

    with atomic_write(path) as f:  # a temp file unique per process, renamed when whole
        np.savez(f, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz, read now (numpy reads members lazily: a damaged member would
    fail later, outside the cache's error handling)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is corrupt ({exc})") from None


def load_cached(path: Path, load: Callable[[Path], T], what: str) -> tuple[T | None, str | None]:
    """`load(path)` for a work-folder cache entry, or None when there is none; and the note
    for the user when the entry was there but unusable (else None).

    The entries are morph3d's own (written atomically, so normally whole); one that cannot
    be read (torn by a full disk or a copy, damaged on disk) is a cache miss: noted,
    deleted, and computed again, instead of failing every later run."""
    if not path.is_file():
        return None, None
    try:
        return load(path), None
    except (Morph3dError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        path.unlink(missing_ok=True)
        return None, (f"cached {what} could not be read ({reason}): deleted it and computed "
                      "it again")


def model_signature(model) -> dict[str, Any]:
    """What must match between a template's fit and the swap's model."""
    info = model.info()
    return {"name": str(info["name"]), "build": str(info.get("meta.build", "")),
            "vertices": int(info["vertices"]),
            "identity_components": int(info["identity_components"]),
            "expression_components": int(info["expression_components"])}
