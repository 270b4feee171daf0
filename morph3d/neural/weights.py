"""The learned nets' weights files: float32 ``.npz`` arrays + an ``arch`` JSON string, with a
``.json`` manifest beside it that holds the file's sha256 (`write_weights`, `load_verified`).
Shared by inference (loading) and training (writing).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from morph3d.errors import ModelError
from morph3d.io.atomic import atomic_write, atomic_write_bytes
from morph3d.io.paths import sha256_file

T = TypeVar("T")

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # morph3d/weights


# --------------------------------------------------------------------------------------------
# Files: atomic writes, weights + manifest, verified loading
# --------------------------------------------------------------------------------------------


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def manifest_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def state_arrays(net: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A torch module's state as float32 numpy arrays, names prefixed with `prefix`."""
    return {f"{prefix}{name}": tensor.detach().cpu().numpy().astype(np.float32)
            for name, tensor in net.state_dict().items()}


def write_weights(path: str | os.PathLike, arrays: dict[str, np.ndarray], arch: dict[str, Any],
                  manifest_arch: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `arrays` + `arch` (a JSON string under ``arch``; its ``format`` names the
    layout) and the manifest (format, file name, sha256, size, `manifest_arch`, then
    `manifest`) atomically; returns the manifest written."""
    path = Path(path)
    save_npz(path, {**arrays, "arch": np.array(json.dumps(arch))})
    manifest = {"format": arch["format"], "file": path.name, "sha256": sha256_file(path),
                "bytes": path.stat().st_size, "arch": manifest_arch, **manifest}
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(manifest_path(path), text.encode())
    return manifest


def load_verified(path: str | os.PathLike | None, default: Path, fmt: str,
                  build: Callable[[dict[str, Any], dict[str, np.ndarray]], T], *, label: str,
                  manifest_label: str, fallback: str, retrain: str
                  ) -> tuple[T, dict[str, Any] | None] | None:
    """(build(arch, arrays), manifest) of the weights at `path` (default: `default`).

    Missing file: warns (the caller's `fallback`) and returns None. A file whose sha256
    does not match its manifest (required beside `default`), a manifest that cannot be
    read, or weights `build` cannot load (any exception): a one-line `ModelError`.
    """
    p = Path(path) if path is not None else default
    if not p.is_file():
        warnings.warn(f"{label} weights not found at {p}; {fallback}", RuntimeWarning,
                      stacklevel=3)
        return None
    mpath = manifest_path(p)
    manifest = None
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the {manifest_label} manifest {mpath}: {exc}"
                             ) from None
    elif p.resolve() == default:
        raise ModelError(f"the shipped {manifest_label} manifest {mpath} is missing")
    if manifest is not None and manifest.get("sha256") != sha256_file(p):
        raise ModelError(f"{label} weights {p} are corrupt (sha256 does not match "
                         f"{mpath.name}); reinstall them or retrain with `{retrain}`")
    try:
        with np.load(p, allow_pickle=False) as z:
            arch = json.loads(str(z["arch"]))
            arrays = {k: z[k] for k in z.files if k != "arch"}
        if arch.get("format") != fmt:
            raise ValueError(f"unknown format {arch.get('format')!r}")
        built = build(arch, arrays)
    except Exception as exc:  # zip, numpy, json and torch all raise their own types
        raise ModelError(f"cannot load {label} weights {p}: "
                         f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    return built, manifest
