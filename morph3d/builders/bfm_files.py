"""Reading the Basel Face Model's files into a `RawModel`, in the file's own units and layout;
`morph3d.builders.bfm` builds the morph3d model from it.

Supported inputs (detected from the file contents, not the name):
- BFM 2009 `01_MorphableModel.mat`: shapeMU (3N x 1), shapePC (3N x K, unit-norm columns),
  shapeEV (K, standard deviations), tl (F x 3, 1-based); micrometres. Also the same model
  under 3DDFA's names (`Model_Shape.mat`: mu_shape, w, sigma, tri) and face3d's `BFM.mat`
  (struct `model` with shapeMU/shapePC/shapeEV/expMU/expPC/expEV/tri/kpt_ind).
  Optional expression file: 3DDFA `Model_Expression.mat` (mu_exp 3N x 1, w_exp 3N x J,
  sigma_exp J; mu_exp is added to the mean as face3d does) or Guo et al.'s `Exp_Pca.bin`
  (int32 J, float32 expMU[3N], float32 expPC[J][3N], little-endian; standard deviations from
  `std_exp.txt` beside it; expMU is ignored as Deep3DFaceRecon does). Both cover 53215 of the
  53490 BFM 2009 vertices (inner mouth removed): the shape model is then cut down with the
  `trimIndex` from 3DDFA's `model_info.mat` or Deep3DFaceRecon's `BFM_exp_idx.mat`, looked up
  beside the expression file or the shape file.
- Deep3DFaceRecon `BFM_model_front.mat`: meanshape (1 x 3N), idBase (3N x 80), exBase (3N x 64),
  both already multiplied by their standard deviations, tri (F x 3, 1-based), keypoints
  (68, 1-based vertex ids, iBUG order); decimetres (BFM 2009 micrometres / 1e5).
- BFM 2017 / 2019 statismo `.h5`: {shape,expression}/model/{mean (3N), pcaBasis (3N x K,
  orthonormal), pcaVariance (K, variances)}, shape/representer/{points (3 x N), cells (3 x F,
  0-based)}; millimetres. expression/model/mean is a displacement field added to the mean.
- MATLAB v7.3 (HDF5) variants of the .mat files are read with h5py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morph3d.errors import ModelError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
IBUG68_COUNT = 68
TRIM_INDEX_FILES = ("model_info.mat", "BFM_exp_idx.mat")
EXP_PCA_STD_FILE = "std_exp.txt"

# Every MATLAB variable any supported format uses (others, e.g. textures, are never loaded).
_MAT_VARIABLES = (
    "shapeMU", "shapePC", "shapeEV", "tl", "tri", "mu_shape", "w", "sigma", "model",
    "meanshape", "idBase", "exBase", "keypoints", "kpt_ind",
    "mu_exp", "w_exp", "sigma_exp", "expMU", "expPC", "expEV", "trimIndex",
)


@dataclass
class RawModel:
    """A BFM as read, in file units, vertex-interleaved (x0 y0 z0 x1 ...)."""

    source: str  # format label, recorded in the metadata
    unit: str  # documented length unit of the file (a key of `bfm.MM_PER_UNIT`)
    mean: np.ndarray  # V x 3
    identity: np.ndarray  # 3V x K, file units per standard deviation
    triangles: np.ndarray  # F x 3 int64, 0-based
    expression: np.ndarray | None = None  # 3V x J, file units per unit coefficient
    keypoints: np.ndarray | None = None  # 68 int64 0-based vertex ids (iBUG order)
    notes: dict[str, str] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def existing_file(path: Path | str, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"{what} file not found: {path}")
    return path


def _file_kind(path: Path) -> str:
    """'hdf5' (statismo h5), 'mat73' (MATLAB v7.3), 'mat' (MATLAB v5/v7) or 'other'."""
    with open(path, "rb") as f:
        head = f.read(520)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(b"MATLAB"):
        return "mat73" if head[512:520] == HDF5_SIGNATURE else "mat"
    return "other"


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    """The variables of a MATLAB file that any supported format uses, as numpy arrays."""
    kind = _file_kind(path)
    try:
        if kind == "mat73":
            return _read_mat73(path)
        import scipy.io

        if kind == "mat":
            _check_mat_complete(path)
        names = [name for name, _shape, _cls in scipy.io.whosmat(path)]
        wanted = [n for n in names if n in _MAT_VARIABLES]
        arrays = scipy.io.loadmat(path, variable_names=wanted) if wanted else {}
    except ModelError:
        raise
    except Exception as exc:  # scipy raises many types for truncated or foreign files
        raise ModelError(f"{path}: unreadable or corrupt MATLAB file ({_one_line(exc)})") from None
    arrays = {k: v for k, v in arrays.items() if not k.startswith("__")}
    model = arrays.get("model")
    if model is not None and model.dtype.names:  # face3d BFM.mat: one struct of fields
        struct = model.reshape(-1)[0]
        arrays = {name: np.asarray(struct[name]) for name in model.dtype.names}
    return arrays


def _check_mat_complete(path: Path) -> None:
    """Walk the top-level data elements of a MATLAB v5/v7 file: scipy reads a truncated file
    without complaint up to the last complete variable, which would look like a missing field."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128:
            raise ModelError(f"{path}: truncated MATLAB file ({size} bytes)")
        order = "<" if header[126:128] == b"IM" else ">"
        position = 128
        while position < size:
            f.seek(position)
            tag = f.read(8)
            if len(tag) < 8:
                break  # trailing padding
            data_type, length = np.frombuffer(tag, dtype=f"{order}u4")
            if data_type >> 16:  # small data element: 4 bytes of data inside the tag
                position += 8
                continue
            end = position + 8 + int(length)
            if end > size:
                raise ModelError(
                    f"{path}: truncated MATLAB file (a variable needs {end} bytes, file has {size})"
                )
            position = end if data_type == 15 else (end + 7) // 8 * 8  # 15: miCOMPRESSED


def _read_mat73(path: Path) -> dict[str, np.ndarray]:
    """MATLAB v7.3 (HDF5): datasets are stored transposed (column-major)."""
    import h5py

    with h5py.File(path, "r") as f:
        return {
            name: np.asarray(f[name][()]).T
            for name in f.keys()
            if name in _MAT_VARIABLES and isinstance(f[name], h5py.Dataset)
        }


def _require(arrays: dict[str, np.ndarray], names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ModelError(f"{path}: missing field(s) {', '.join(missing)}")


def _vertices_from_vector(vector: np.ndarray, path: Path, name: str) -> np.ndarray:
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    if flat.size == 0 or flat.size % 3:
        raise ModelError(f"{path}: field {name} has {flat.size} values, not 3 per vertex")
    return flat.reshape(-1, 3)


def _columns(matrix: np.ndarray, rows: int, path: Path, name: str) -> np.ndarray:
    """A basis as rows x K (accepting K x rows), float64."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2:
        raise ModelError(f"{path}: field {name} must be a matrix, has shape {m.shape}")
    if m.shape[0] != rows and m.shape[1] == rows:
        m = m.T
    if m.shape[0] != rows:
        raise ModelError(
            f"{path}: field {name} has shape {m.shape}, expected {rows} rows "
            f"({rows // 3} vertices x 3)"
        )
    return m


def _stds(values: np.ndarray, count: int, path: Path, name: str, variance: bool = False):
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < count:
        raise ModelError(f"{path}: field {name} has {v.size} values, expected {count}")
    v = v[:count]
    if not np.isfinite(v).all() or (v < -1e-9 * max(1.0, np.abs(v).max())).any():
        raise ModelError(f"{path}: field {name} has negative or non-finite values")
    v = np.clip(v, 0.0, None)
    return np.sqrt(v) if variance else v


def _index_array(values: np.ndarray, path: Path, name: str, one_based: bool) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: field {name} must hold numbers") from None
    if not np.isfinite(a).all() or (np.round(a) != a).any():
        raise ModelError(f"{path}: field {name} must hold whole numbers")
    a = np.round(a).astype(np.int64)
    return a - 1 if one_based else a


def _triangles(values: np.ndarray, n_vertices: int, path: Path, name: str,
               one_based: bool) -> np.ndarray:
    t = _index_array(values, path, name, one_based)
    if t.ndim == 2 and t.shape[1] != 3 and t.shape[0] == 3:
        t = t.T
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] == 0:
        raise ModelError(f"{path}: field {name} must be F x 3 triangles, has shape {t.shape}")
    if t.min() < 0 or t.max() >= n_vertices:
        base = 1 if one_based else 0
        raise ModelError(
            f"{path}: field {name} has vertex ids outside {base}..{n_vertices - 1 + base}"
        )
    return np.ascontiguousarray(t)


def _keypoints(values: np.ndarray, n_vertices: int, path: Path, name: str,
               one_based: bool) -> np.ndarray:
    k = _index_array(values, path, name, one_based).reshape(-1)
    if k.size != IBUG68_COUNT:
        raise ModelError(f"{path}: field {name} has {k.size} landmarks, expected 68")
    if k.min() < 0 or k.max() >= n_vertices:
        raise ModelError(f"{path}: field {name} has vertex ids outside the mesh")
    return k


def read_shape_model(path: Path) -> RawModel:
    kind = _file_kind(path)
    if kind == "hdf5":
        return _read_statismo_h5(path)
    if kind == "other" and path.suffix.lower() != ".mat":
        raise ModelError(f"{path}: not a BFM shape file (expected a MATLAB .mat or an .h5)")
    arrays = _read_mat(path)
    if "meanshape" in arrays or "idBase" in arrays:
        return _read_deep3d_front(arrays, path)
    if "shapeMU" in arrays or "mu_shape" in arrays:
        return _read_bfm2009(arrays, path)
    raise ModelError(
        f"{path}: not a recognised BFM file (no shapeMU/shapePC/shapeEV, mu_shape/w/sigma "
        "or meanshape/idBase/exBase fields)"
    )


def _read_bfm2009(arrays: dict[str, np.ndarray], path: Path) -> RawModel:
    """01_MorphableModel.mat, 3DDFA Model_Shape.mat or face3d BFM.mat (micrometres)."""
    if "shapeMU" in arrays:
        mean_key, pc_key, std_key, label = "shapeMU", "shapePC", "shapeEV", "bfm2009"
    else:
        mean_key, pc_key, std_key, label = "mu_shape", "w", "sigma", "bfm2009-3ddfa"
    tri_key = "tl" if "tl" in arrays else "tri"
    _require(arrays, (mean_key, pc_key, std_key), path)
    if tri_key not in arrays:
        raise ModelError(f"{path}: missing field tl (triangles)")
    mean = _vertices_from_vector(arrays[mean_key], path, mean_key)
    pcs = _columns(arrays[pc_key], mean.size, path, pc_key)
    std = _stds(arrays[std_key], pcs.shape[1], path, std_key)
    raw = RawModel(
        source=label, unit="um", mean=mean, identity=pcs * std,
        triangles=_triangles(arrays[tri_key], len(mean), path, tri_key, one_based=True),
    )
    if "expPC" in arrays:  # face3d BFM.mat carries the 3DDFA expression model
        _require(arrays, ("expPC", "expEV"), path)
        exp_pcs = _columns(arrays["expPC"], mean.size, path, "expPC")
        exp_std = _stds(arrays["expEV"], exp_pcs.shape[1], path, "expEV")
        raw.expression = exp_pcs * exp_std
        if "expMU" in arrays:
            raw.mean = raw.mean + _vertices_from_vector(arrays["expMU"], path, "expMU")
        raw.notes["expression_source"] = f"{path.name} (3DDFA)"
    for key in ("kpt_ind", "keypoints"):
        if key in arrays:
            raw.keypoints = _keypoints(arrays[key], len(mean), path, key, one_based=True)
            break
    return raw


def _read_deep3d_front(arrays: dict[str, np.ndarray], path: Path) -> RawModel:
    """Deep3DFaceRecon BFM_model_front.mat (decimetres, bases pre-scaled by their stds)."""
    _require(arrays, ("meanshape", "idBase", "exBase", "tri"), path)
    mean = _vertices_from_vector(arrays["meanshape"], path, "meanshape")
    raw = RawModel(
        source="deep3dfacerecon-front", unit="dm", mean=mean,
        identity=_columns(arrays["idBase"], mean.size, path, "idBase"),
        triangles=_triangles(arrays["tri"], len(mean), path, "tri", one_based=True),
        expression=_columns(arrays["exBase"], mean.size, path, "exBase"),
    )
    raw.notes["expression_source"] = f"{path.name} (Guo et al. PCA, std units)"
    if "keypoints" in arrays:
        raw.keypoints = _keypoints(arrays["keypoints"], len(mean), path, "keypoints", True)
    return raw


def _read_statismo_h5(path: Path) -> RawModel:
    """BFM 2017/2019 (and the 2009 statismo export): orthonormal bases + variances (mm)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            def dataset(name: str) -> np.ndarray:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise ModelError(f"{path}: missing dataset {name}")
                return np.asarray(f[name][()])

            mean = _vertices_from_vector(dataset("shape/model/mean"), path, "shape/model/mean")
            basis = _columns(dataset("shape/model/pcaBasis"), mean.size, path,
                             "shape/model/pcaBasis")
            std = _stds(dataset("shape/model/pcaVariance"), basis.shape[1], path,
                        "shape/model/pcaVariance", variance=True)
            cells_name = next(
                (n for n in ("shape/representer/cells", "representer/cells") if n in f),
                "shape/representer/cells",
            )
            triangles = _triangles(dataset(cells_name), len(mean), path, cells_name, False)
            points_name = "shape/representer/points"
            if points_name in f:
                points = np.asarray(f[points_name][()])
                if len(mean) not in points.shape:
                    raise ModelError(
                        f"{path}: {points_name} has shape {points.shape} but the mean has "
                        f"{len(mean)} vertices"
                    )
            raw = RawModel(source="bfm-statismo-h5", unit="mm", mean=mean,
                            identity=basis * std, triangles=triangles)
            if "expression/model" in f:
                exp_mean = dataset("expression/model/mean").astype(np.float64).reshape(-1)
                if exp_mean.size != mean.size:
                    raise ModelError(
                        f"{path}: expression model has {exp_mean.size // 3} vertices but the "
                        f"shape model has {len(mean)}"
                    )
                exp_basis = _columns(dataset("expression/model/pcaBasis"), mean.size, path,
                                     "expression/model/pcaBasis")
                exp_std = _stds(dataset("expression/model/pcaVariance"), exp_basis.shape[1],
                                path, "expression/model/pcaVariance", variance=True)
                raw.expression = exp_basis * exp_std
                exp_mean = exp_mean.reshape(-1, 3)
                # A displacement field (BFM 2017/2019) is small next to the shape; a copy of
                # absolute positions would sit on the shape mean and is not added twice.
                if np.sqrt((exp_mean**2).mean()) < np.sqrt(((exp_mean - mean) ** 2).mean()):
                    raw.mean = raw.mean + exp_mean
                    raw.notes["expression_mean"] = "added (displacement field)"
                else:
                    raw.notes["expression_mean"] = "ignored (absolute positions)"
                raw.notes["expression_source"] = f"{path.name} (PCA, std units)"
    except ModelError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError for bad files
        raise ModelError(f"{path}: unreadable or corrupt HDF5 file ({_one_line(exc)})") from None
    return raw


# -- expression files for BFM 2009 ------------------------------------------------------------


def attach_expression(raw: RawModel, shape_path: Path, expression_path: Path) -> None:
    if raw.expression is not None:
        raise ModelError(
            f"{shape_path} already contains an expression model; convert it without "
            f"{expression_path.name}"
        )
    if not raw.source.startswith("bfm2009"):
        raise ModelError(
            f"{expression_path}: an expression file only combines with a BFM 2009 .mat, "
            f"not with {shape_path.name}"
        )
    kind = _file_kind(expression_path)
    if kind == "hdf5":
        raise ModelError(f"{expression_path}: an .h5 is not a BFM 2009 expression file")
    if kind == "other" and expression_path.suffix.lower() != ".mat":
        basis, offsets, label = _read_exp_pca_bin(expression_path)
    else:
        basis, offsets, label = _read_expression_mat(expression_path)

    n_shape, n_expr = len(raw.mean), basis.shape[0] // 3
    if n_expr != n_shape:
        _trim_to_expression(raw, shape_path, expression_path, n_expr)
    raw.expression = basis
    if offsets is not None:
        raw.mean = raw.mean + offsets
    raw.notes["expression_source"] = label


def _read_expression_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    arrays = _read_mat(path)
    if "w_exp" in arrays or "mu_exp" in arrays:
        mean_key, pc_key, std_key = "mu_exp", "w_exp", "sigma_exp"
    elif "expPC" in arrays:
        mean_key, pc_key, std_key = "expMU", "expPC", "expEV"
    else:
        raise ModelError(
            f"{path}: not a BFM expression file (no mu_exp/w_exp/sigma_exp fields)"
        )
    _require(arrays, (pc_key, std_key), path)
    pcs = np.asarray(arrays[pc_key], dtype=np.float64)
    if pcs.ndim != 2 or max(pcs.shape) % 3:
        raise ModelError(f"{path}: field {pc_key} has shape {pcs.shape}, not 3N x J")
    rows = max(pcs.shape)  # 3N vertex coordinates outnumber the J components
    pcs = _columns(pcs, rows, path, pc_key)
    std = _stds(arrays[std_key], pcs.shape[1], path, std_key)
    offsets = None
    if mean_key in arrays:
        offsets = _vertices_from_vector(arrays[mean_key], path, mean_key)
        if offsets.size != rows:
            raise ModelError(
                f"{path}: {mean_key} has {len(offsets)} vertices but {pc_key} has {rows // 3}"
            )
    return pcs * std, offsets, f"{path.name} (3DDFA, std units, {mean_key} added)"


def _read_exp_pca_bin(path: Path) -> tuple[np.ndarray, None, str]:
    """Guo et al. Exp_Pca.bin: int32 J, float32 expMU[3N], float32 expPC[J][3N] (LE)."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ModelError(f"{path}: too short for an Exp_Pca.bin file ({len(raw)} bytes)")
    count = int(np.frombuffer(raw[:4], dtype="<i4")[0])
    floats = (len(raw) - 4) // 4
    if count <= 0 or count > 10000 or (len(raw) - 4) % 4 or floats % (3 * (count + 1)):
        raise ModelError(
            f"{path}: not an Exp_Pca.bin file or truncated ({len(raw)} bytes for {count} "
            "components)"
        )
    n3 = floats // (count + 1)
    values = np.frombuffer(raw[4:], dtype="<f4").astype(np.float64)
    basis = values[n3:].reshape(count, n3).T  # 3N x J
    std_path = path.with_name(EXP_PCA_STD_FILE)
    if not std_path.is_file():
        raise ModelError(f"{path}: needs {EXP_PCA_STD_FILE} (expression std devs) beside it")
    try:
        std_values = np.loadtxt(std_path, dtype=np.float64).reshape(-1)
    except Exception as exc:
        raise ModelError(f"{std_path}: unreadable ({_one_line(exc)})") from None
    std = _stds(std_values, count, std_path, EXP_PCA_STD_FILE)
    if not np.isfinite(basis).all():
        raise ModelError(f"{path}: expression basis has non-finite values")
    return basis * std, None, f"{path.name} (Guo et al. PCA, std units, expMU ignored)"


def _trim_to_expression(raw: RawModel, shape_path: Path, expression_path: Path,
                        n_expr: int) -> None:
    """Cut the shape model down to the expression model's vertices using a trimIndex file."""
    n_shape = len(raw.mean)
    candidates = []
    for folder in dict.fromkeys((expression_path.parent, shape_path.parent)):
        candidates += [folder / name for name in TRIM_INDEX_FILES if (folder / name).is_file()]
    for side_path in candidates:
        arrays = _read_mat(side_path)
        if "trimIndex" not in arrays:
            continue
        index = _index_array(arrays["trimIndex"], side_path, "trimIndex", True).reshape(-1)
        if index.size != n_expr or index.min() < 0 or index.max() >= n_shape:
            continue
        break
    else:
        raise ModelError(
            f"{expression_path}: expression model has {n_expr} vertices but {shape_path.name} "
            f"has {n_shape}; put 3DDFA's model_info.mat (trimIndex) beside either file"
        )
    k = raw.identity.shape[1]
    raw.identity = raw.identity.reshape(n_shape, 3, k)[index].reshape(-1, k)
    raw.mean = raw.mean[index]
    new_id = np.full(n_shape, -1, dtype=np.int64)
    new_id[index] = np.arange(index.size)
    if "tri" in arrays:
        raw.triangles = _triangles(arrays["tri"], n_expr, side_path, "tri", one_based=True)
    else:
        remapped = new_id[raw.triangles]
        raw.triangles = remapped[(remapped >= 0).all(axis=1)]
    if "keypoints" in arrays:
        raw.keypoints = _keypoints(arrays["keypoints"], n_expr, side_path, "keypoints", True)
    elif raw.keypoints is not None:
        remapped_kp = new_id[raw.keypoints]
        raw.keypoints = remapped_kp if (remapped_kp >= 0).all() else None
    raw.notes["trimmed_with"] = f"{side_path.name} ({n_shape} -> {n_expr} vertices)"


def read_landmark_file(path: Path, n_vertices: int) -> np.ndarray:
    """68 zero-based vertex ids, one per line ('#' comments and blank lines ignored)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable landmark file ({_one_line(exc)})") from None
    ids = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise ModelError(f"{path}:{number}: not a vertex index: {text!r}") from None
    if len(ids) != IBUG68_COUNT:
        raise ModelError(f"{path}: has {len(ids)} vertex indices, expected 68 (iBUG order)")
    keypoints = np.asarray(ids, dtype=np.int64)
    if keypoints.min() < 0 or keypoints.max() >= n_vertices:
        raise ModelError(f"{path}: vertex indices must be in 0..{n_vertices - 1}")
    return keypoints
