"""The one guard every writing command runs before any work: outputs never overwrite inputs.

`check_outputs(inputs, outputs)` fails in one line (an `InputError`) when an output path is a
folder, its folder is missing or not writable, two outputs name the same file, or an output
names one of the inputs (through `..`, a symlink or a hard link). Commands call it with every
file they read and every file they will write, before the first second of fitting.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from morph3d.errors import InputError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """True if `a` and `b` name the same file (paths resolved, symlinks and hard links)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def check_writable_dir(folder: PathLike, what: str = "output folder") -> Path:
    """`folder` exists, is a folder, and this process may create files in it."""
    d = Path(folder) if str(folder) else Path(".")
    if not d.exists():
        raise InputError(f"{what} does not exist: {d}")
    if not d.is_dir():
        raise InputError(f"{what} is not a folder: {d}")
    # A real probe, not os.access: root passes access checks on a read-only mount.
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".morph3d-write-probe.")
    except OSError as exc:
        raise InputError(f"{what} is not writable: {d} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return d


def check_outputs(inputs: Iterable[PathLike | None], outputs: Iterable[PathLike | None]) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace an input.

    `None` entries (options not given) are skipped. An existing output that is not an input
    may be replaced (atomically, by a temporary file renamed over it)."""
    ins = [Path(p) for p in inputs if p is not None]
    outs = [Path(p) for p in outputs if p is not None]
    seen: list[Path] = []
    for out in outs:
        if out.is_dir():
            raise InputError(f"output path is a folder: {out}")
        check_writable_dir(out.parent)
        if out.exists() and not os.access(out, os.W_OK):
            raise InputError(f"output file is not writable: {out}")
        for p in ins:
            if same_file(out, p):
                raise InputError(f"output path {out} is one of the inputs; choose another name")
        for other in seen:
            if same_file(out, other):
                raise InputError(f"two outputs name the same file: {out}")
        seen.append(out)
