"""The one guard every writing command runs before any work: outputs never overwrite inputs.

`check_outputs(inputs, outputs)` fails in one line (an `InputError`) when an output path is a
folder, its folder is missing or not writable, two outputs name the same file, or an output
names one of the inputs (through `..`, a symlink or a hard link). Commands call it with every
file they read and every file they will write, before the first second of fitting.

It also owns the names of the temporary files outputs are written through (`temp_path_beside`
for media, `atomic_write`'s ``.{name}.XXXXXXXX.tmp``), so that the temporary files a killed
run left beside an output are found and removed by the next run (`remove_stale_temps`).
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from morph3d.errors import InputError

PathLike = str | os.PathLike

# A temporary file younger than this is never taken for a dead run's leftover, even when
# nobody holds its lock (a writer takes the lock just after creating the file, and short
# writers, such as image saves, take none).
STALE_TEMP_AGE_S = 60.0


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


def check_creatable_dir(folder: PathLike, what: str = "work folder") -> Path:
    """`folder` is a writable folder, or can be created: its nearest existing ancestor is a
    writable folder. For caches and work folders, which morph3d creates on first use."""
    d = Path(folder).expanduser()
    if d.exists():
        return check_writable_dir(d, what)
    ancestor = d.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{what} cannot be created: {ancestor} is not a folder (for {d})")
    try:
        check_writable_dir(ancestor, what)
    except InputError:
        raise InputError(f"{what} cannot be created: {ancestor} is not writable (for {d})"
                         ) from None
    return d


def check_outputs(inputs: Iterable[PathLike | None], outputs: Iterable[PathLike | None]) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace an input.

    `None` entries (options not given) are skipped. An existing output that is not an input
    may be replaced (atomically, by a temporary file renamed over it). Temporary files that
    a killed earlier run left beside an output are removed (`remove_stale_temps`)."""
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
    for out in outs:
        remove_stale_temps(out)


# ----------------------------------------------------------------------------- temporary files


def temp_path_beside(out: Path, tag: str) -> Path:
    """A unique hidden temporary name in `out`'s folder that keeps the extension (encoders
    pick the format by it): ``.{stem}.{10 hex}.{tag}{suffix}``."""
    return out.with_name(f".{out.stem}.{uuid.uuid4().hex[:10]}.{tag}{out.suffix}")


def atomic_temp_prefix(out: Path) -> str:
    """The prefix of `atomic_write`'s temporary files for `out` (mkstemp adds 8 characters
    and the suffix ``.tmp``)."""
    return f".{out.name}."


def _temp_name_patterns(out: Path) -> tuple[re.Pattern[str], ...]:
    stem, suffix, name = (re.escape(s) for s in (out.stem, out.suffix, out.name))
    return (re.compile(rf"\.{stem}\.[0-9a-f]{{10}}\.(?:part|tmp){suffix}"),  # temp_path_beside
            re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp"))  # atomic_write (mkstemp)


def lock_temp(fd: int) -> None:
    """Mark an open temporary file as in use for as long as `fd` stays open (an exclusive
    `flock`; the kernel drops it when the process ends, however it ends). Best effort: where
    the filesystem has no locks, `remove_stale_temps` cannot lock the file either and keeps
    it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass


def create_locked_temp(path: Path) -> int:
    """Create `path` (which must not exist) and lock it (`lock_temp`); returns the fd,
    to be closed once the file was renamed or removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    lock_temp(fd)
    return fd


def _in_use(path: Path) -> bool:
    """True if some live process holds `path`'s temp lock (or it cannot be told)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a writer (EWOULDBLOCK), or locks unsupported here: keep it
        return True
    finally:
        os.close(fd)
    return False


def remove_stale_temps(out: PathLike, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporary files a killed run (SIGKILL, power loss) left beside `out`.

    Only files that are safe to take for leftovers go, all three conditions together:
    * the name is one of *this* output's own temporary names (`temp_path_beside`'s
      ``.{stem}.{10 hex}.part|tmp{suffix}`` or `atomic_write`'s ``.{name}.XXXXXXXX.tmp``),
      so another output's temporary files and the user's own files are never touched;
    * it is a regular file (not a link) unchanged for `min_age_s` seconds;
    * no live process holds its lock: writers keep an exclusive `flock` on their temporary
      file while they write, and the kernel releases it when the writer dies, so a
      concurrent run writing the same output keeps its file.
    Returns the files removed; files that cannot be removed are left (best effort)."""
    out = Path(out)
    folder = out.parent if str(out.parent) else Path(".")
    patterns = _temp_name_patterns(out)
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.startswith(".") or not any(p.fullmatch(name) for p in patterns):
            continue
        path = folder / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if not path.is_file() or path.is_symlink() or now - st.st_mtime < min_age_s:
            continue
        if _in_use(path):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
