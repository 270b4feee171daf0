"""Atomic file writes: outputs appear whole or not at all.

Every file morph3d writes goes through `atomic_write`: a temporary file in the target's
folder, renamed over the target once complete (a crash leaves no half-written output).
The temporary file is locked while it is written, so that a later run can tell a dead
run's leftover from a live one (`morph3d.io.outputs.remove_stale_temps`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from morph3d.io.outputs import atomic_temp_prefix, lock_temp


def default_file_mode() -> int:
    """0666 less the process umask: what `open()` would have given (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, parents: bool = True
                 ) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it to `path`.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    `parents` creates missing folders, for morph3d's own caches; files the user named are
    checked first by `morph3d.io.outputs.check_outputs`, which refuses a missing folder, and
    are written with ``parents=False``.
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=atomic_temp_prefix(path), suffix=".tmp")
    try:
        lock_temp(fd)  # held until the file object is closed
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, parents: bool = True) -> None:
    with atomic_write(path, "wb", parents=parents) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, parents: bool = True) -> None:
    with atomic_write(path, "w", parents=parents) as f:
        f.write(text)
