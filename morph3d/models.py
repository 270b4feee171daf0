"""Which morphable model to use: the embedded default (built on first use) or a converted BFM.

`load_model("default")` builds the MakeHuman head into the cache the first time (about
20 s) and loads it in well under a second afterwards. `load_model("bfm")` loads the model
written by `morph3d model convert-bfm`; any other string is taken as a path to a model npz.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from morph3d.errors import ModelError
from morph3d.head_builder import BUILD_VERSION
from morph3d.model import FORMAT_VERSION, ModelData, MorphableModel
from morph3d.paths import models_dir

MODEL_NAMES = ("default", "bfm")
_build_lock = threading.Lock()


def default_model_path() -> Path:
    return models_dir() / f"default-{BUILD_VERSION}-f{FORMAT_VERSION}.npz"


def bfm_model_path() -> Path:
    return models_dir() / "bfm.npz"


def ensure_default_model(log=None) -> Path:
    """Build the default head model into the cache unless it is there already."""
    path = default_model_path()
    with _build_lock:
        if not path.is_file():
            from morph3d.head_builder import build_head_model

            say = log or (lambda msg: print(f"[morph3d] {msg}", flush=True))
            say(f"building the default head model into {path} (first use only)")
            build_head_model(log=say).save(path)
    return path


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
def _load_data(path: str, mtime: float) -> ModelData:
    return ModelData.load(path)


def load_model_data(name: str = "default") -> ModelData:
    path = model_path(name)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return _load_data(str(path), path.stat().st_mtime)


def load_model(name: str = "default", subdivided: bool = False) -> MorphableModel:
    """The named model as a torch module (CPU; move it with `.to(device)`)."""
    model = MorphableModel(load_model_data(name))
    return model.subdivided() if subdivided else model
