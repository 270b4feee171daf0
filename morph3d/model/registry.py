"""Which morphable model to use: the embedded default (built on first use) or a converted BFM.

`load_model("default")` builds the MakeHuman head into the cache the first time (about
20 s) and loads it in well under a second afterwards. `load_model("bfm")` loads the model
written by `morph3d model convert-bfm`; any other string is taken as a path to a model npz.

The built default is morph3d's own cache entry: one that cannot be read (a torn or damaged
file) is deleted and built again. Every other model file is the user's: a corrupt one is a
one-line `ModelError` and is never touched.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from morph3d.builders.head import BUILD_VERSION
from morph3d.errors import ModelError
from morph3d.io.paths import models_dir
from morph3d.model.model import FORMAT_VERSION, ModelData, MorphableModel
from morph3d.model.subdivision import subdivide_model

MODEL_NAMES = ("default", "bfm")
# flock excludes other processes; threads of one process share the lock file's owner, so
# they also take this lock first.
_thread_lock = threading.Lock()


def default_model_path() -> Path:
    return models_dir() / f"default-{BUILD_VERSION}-f{FORMAT_VERSION}.npz"


def bfm_model_path() -> Path:
    return models_dir() / "bfm.npz"


def _say(msg: str) -> None:
    print(f"[morph3d] {msg}", flush=True)


@contextmanager
def file_lock(lock_path: Path, log: Callable[[str], None] | None = None,
              waiting: str = "") -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if needed) across processes and
    threads. When another holder has it, says `waiting` through `log` once, then blocks.
    The kernel drops the lock when its holder exits, so a killed builder never leaves it
    stuck."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+b")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise ModelError(f"cannot write to the model cache {lock_path.parent}: "
                         f"{exc.strerror or exc} (set MORPH3D_CACHE to a writable folder)"
                         ) from None
    with _thread_lock, handle as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting and log is not None:
                log(waiting)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(path: Path, build: Callable[[Path], None], what: str,
               log: Callable[[str], None] | None = None,
               usable: Callable[[Path], bool] = Path.is_file) -> Path:
    """Make sure the cache file `path` exists, building it with `build(path)` at most once
    across processes: the others wait for the builder (a lock file beside `path`) and then
    find its result. `build` must write `path` atomically (it appears whole or not at all).
    `usable(path)` says whether a file found there can be used as it is."""
    if usable(path):
        return path
    say = log or _say
    with file_lock(path.with_name(f".{path.name}.lock"), say,
                   f"waiting for another morph3d process building {what}"):
        if not usable(path):  # built while we waited?
            say(f"building {what} into {path} (first use only)")
            build(path)
    return path


def _build_default(path: Path, log: Callable[[str], None]) -> None:
    from morph3d.builders.head import build_head_model

    build_head_model(log=log).save(path)


def ensure_default_model(log=None) -> Path:
    """Build the default head model into the cache unless it is there already."""
    say = log or _say
    return build_once(default_model_path(), lambda p: _build_default(p, say),
                      "the default head model", say)


def model_path(name: str) -> Path:
    if name == "default":
        return ensure_default_model()
    if name == "bfm":
        path = bfm_model_path()
        if not path.is_file():
            raise ModelError(
                f"no converted Basel Face Model at {path}: run `morph3d model convert-bfm` "
                "first (see assets/bfm/README.md)"
            )
        return path
    path = Path(os.path.expanduser(name))
    if path.suffix == ".npz" or path.exists():
        return path
    raise ModelError(f"unknown model '{name}': use one of {', '.join(MODEL_NAMES)} or a .npz path")


@lru_cache(maxsize=4)
def _load_data(path: str, mtime: float, inode: int) -> ModelData:
    return ModelData.load(path)


def _load(path: Path) -> ModelData:
    stat = path.stat()
    return _load_data(str(path), stat.st_mtime, stat.st_ino)


def _readable(path: Path) -> bool:
    """The cache's model file exists and loads; an unreadable one is deleted (a miss)."""
    if not path.is_file():
        return False
    try:
        _load(path)
    except ModelError as exc:
        _say(f"warning: the cached default model could not be read ({exc}); "
             "deleting it and building it again")
        path.unlink(missing_ok=True)
        return False
    return True


def load_default_model_data(log=None) -> ModelData:
    """The default model from the cache, built first when it is missing or unreadable."""
    say = log or _say
    path = default_model_path()
    try:
        return _load(path)
    except (ModelError, FileNotFoundError):
        pass
    build_once(path, lambda p: _build_default(p, say), "the default head model", say,
               usable=_readable)
    return _load(path)


def load_model_data(name: str = "default") -> ModelData:
    if name == "default":
        return load_default_model_data()
    path = model_path(name)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return _load(path)
    except ModelError as exc:
        if name != "bfm":
            raise
        # Built from the user's own BFM files, which morph3d does not keep: say how to
        # rebuild it rather than deleting it.
        raise ModelError(f"{exc}; convert it again with `morph3d model convert-bfm`") from None


def load_model(name: str = "default", subdivided: bool = False) -> MorphableModel:
    """The named model as a torch module (CPU; move it with `.to(device)`)."""
    data = load_model_data(name)
    # A denser copy (one subdivision step) with the same parameters and landmarks.
    return MorphableModel(subdivide_model(data) if subdivided else data)
