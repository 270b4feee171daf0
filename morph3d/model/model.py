"""The morphable head model: data as plain arrays, math as pure functions, one torch module.

Conventions (stated once, used everywhere):
- Model space is in millimetres, x to the subject's left as seen by a viewer facing them is
  *image right*; precisely: x right, y up, z towards the viewer (a right-handed frame).
- `vertices = mean + sum_k identity[k] * identity_std[k] * identity_basis[k]
               + sum_j expression[j] * expression_basis[j]`.
  Identity coefficients are in units of standard deviations (prior N(0, I));
  expression weights are ARKit blendshape weights, nominally in [0, 1].
- Landmarks are points on the surface: a triangle index plus barycentric weights, so they
  survive subdivision and follow any deformation.

`ModelData` is the serialisable value (npz on disk); `MorphableModel` is the torch module
that holds it in buffers and evaluates it in batches (the shape of smplx's body models).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from morph3d.errors import ModelError
from morph3d.io.atomic import atomic_write

FORMAT_VERSION = 1
LANDMARK_SCHEMES = ("ibug68", "mediapipe478")
# The regions a face render carries as per-vertex channels, in their channel order (the
# renderer's and the transfer's region windows); `neural.completion.NET_INPUT_REGIONS` is
# the completion net's own order of the same names.
REGION_CHANNELS = ("face_skin", "eyes", "lips", "mouth_interior", "teeth", "tongue", "eyeballs")
REGIONS = (*REGION_CHANNELS, "neck_boundary")


@dataclass(frozen=True)
class SurfacePoints:
    """Points on a mesh surface: `triangles` (L,) int64 and `barycentrics` (L, 3) float32."""

    triangles: np.ndarray
    barycentrics: np.ndarray

    def positions(self, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """(L, 3) positions of the points on a mesh `vertices` (V, 3), `triangles` (F, 3)."""
        corners = vertices[triangles[self.triangles]]  # L x 3 x 3
        return np.einsum("lc,lcd->ld", self.barycentrics, corners)


@dataclass
class ModelData:
    """Everything that defines a morphable model, as numpy arrays (units: millimetres).

    Shapes: V vertices, F triangles, T texture coordinates, K identity components,
    J expression components.
    """

    name: str
    mean: np.ndarray  # V x 3 float32, mm
    identity_basis: np.ndarray  # K x V x 3 float32, unit-norm directions
    identity_std: np.ndarray  # K float32, mm along each direction
    expression_basis: np.ndarray  # J x V x 3 float32, mm per unit weight
    expression_names: list[str]  # J names (ARKit names for the default model)
    triangles: np.ndarray  # F x 3 int64, counter-clockwise seen from outside
    uv_coords: np.ndarray  # T x 2 float32 in [0, 1], v up (OpenGL texture convention)
    uv_triangles: np.ndarray  # F x 3 int64 indices into uv_coords
    regions: dict[str, np.ndarray]  # region name -> V bool
    landmarks: dict[str, SurfacePoints]  # scheme name -> points
    mirror: np.ndarray | None = None  # V int64: index of the left/right mirror vertex
    texture_size: int = 512  # default UV texture resolution in pixels
    metadata: dict[str, str] = field(default_factory=dict)

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ModelError naming the first inconsistency found."""
        v = self.mean.shape[0]
        checks = [
            (self.mean.ndim == 2 and self.mean.shape[1] == 3, "mean must be V x 3"),
            (self.identity_basis.shape[1:] == (v, 3), "identity_basis must be K x V x 3"),
            (
                self.identity_std.shape == (self.identity_basis.shape[0],),
                "identity_std must have one value per identity component",
            ),
            (self.expression_basis.shape[1:] == (v, 3), "expression_basis must be J x V x 3"),
            (
                len(self.expression_names) == self.expression_basis.shape[0],
                "expression_names must name every expression component",
            ),
            (self.triangles.ndim == 2 and self.triangles.shape[1] == 3, "triangles must be F x 3"),
            (
                self.triangles.size == 0
                or (self.triangles.min() >= 0 and self.triangles.max() < v),
                "triangles index outside the vertex list",
            ),
            (self.uv_triangles.shape == self.triangles.shape, "uv_triangles must match triangles"),
            (np.isfinite(self.mean).all(), "mean has non-finite values"),
            (np.isfinite(self.identity_basis).all(), "identity_basis has non-finite values"),
            (np.isfinite(self.expression_basis).all(), "expression_basis has non-finite values"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelError(f"model '{self.name}': {message}")
        for region, mask in self.regions.items():
            if mask.shape != (v,):
                raise ModelError(f"model '{self.name}': region '{region}' must be a V mask")
        for scheme, points in self.landmarks.items():
            if points.triangles.size and points.triangles.max() >= len(self.triangles):
                raise ModelError(f"model '{self.name}': landmarks '{scheme}' index bad triangles")

    # -- derived quantities ------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def num_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    # -- storage -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write an uncompressed npz atomically (temp file, then rename)."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION),
            "name": np.array(self.name),
            "mean": self.mean.astype(np.float32),
            "identity_basis": self.identity_basis.astype(np.float32),
            "identity_std": self.identity_std.astype(np.float32),
            "expression_basis": self.expression_basis.astype(np.float32),
            "expression_names": np.array(self.expression_names),
            "triangles": self.triangles.astype(np.int64),
            "uv_coords": self.uv_coords.astype(np.float32),
            "uv_triangles": self.uv_triangles.astype(np.int64),
            "texture_size": np.array(self.texture_size),
            "metadata_keys": np.array(list(self.metadata.keys()), dtype=str),
            "metadata_values": np.array(list(self.metadata.values()), dtype=str),
        }
        if self.mirror is not None:
            arrays["mirror"] = self.mirror.astype(np.int64)
        for region, mask in self.regions.items():
            arrays[f"region/{region}"] = mask.astype(bool)
        for scheme, points in self.landmarks.items():
            arrays[f"landmarks/{scheme}/triangles"] = points.triangles.astype(np.int64)
            arrays[f"landmarks/{scheme}/barycentrics"] = points.barycentrics.astype(np.float32)
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelData:
        """Read a model written by `save`; a missing or corrupt file raises ModelError."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelError(
                f"model file {path} is corrupt or not a morph3d model ({exc})"
            ) from None
        required = ("format_version", "name", "mean", "identity_basis", "identity_std",
                    "expression_basis", "expression_names", "triangles", "uv_coords",
                    "uv_triangles")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ModelError(f"model file {path} lacks {', '.join(missing)}")
        if int(arrays["format_version"]) != FORMAT_VERSION:
            raise ModelError(
                f"model file {path} has format {int(arrays['format_version'])}, "
                f"expected {FORMAT_VERSION}: rebuild or reconvert it"
            )
        regions = {k.split("/", 1)[1]: v.astype(bool) for k, v in arrays.items()
                   if k.startswith("region/")}
        schemes = {k.split("/")[1] for k in arrays if k.startswith("landmarks/")}
        landmarks = {
            s: SurfacePoints(arrays[f"landmarks/{s}/triangles"],
                             arrays[f"landmarks/{s}/barycentrics"])
            for s in sorted(schemes)
        }
        data = cls(
            name=str(arrays["name"]),
            mean=arrays["mean"],
            identity_basis=arrays["identity_basis"],
            identity_std=arrays["identity_std"],
            expression_basis=arrays["expression_basis"],
            expression_names=[str(n) for n in arrays["expression_names"]],
            triangles=arrays["triangles"],
            uv_coords=arrays["uv_coords"],
            uv_triangles=arrays["uv_triangles"],
            regions=regions,
            landmarks=landmarks,
            mirror=arrays.get("mirror"),
            texture_size=int(arrays.get("texture_size", 512)),
            metadata=dict(zip([str(k) for k in arrays.get("metadata_keys", [])],
                              [str(v) for v in arrays.get("metadata_values", [])], strict=True)),
        )
        data.validate()
        return data


# ---------------------------------------------------------------------------------------------
# Pure functions (torch, batched, differentiable)
# ---------------------------------------------------------------------------------------------


def blend_vertices(
    mean: torch.Tensor,
    identity_basis: torch.Tensor,
    identity_std: torch.Tensor,
    expression_basis: torch.Tensor,
    identity: torch.Tensor,
    expression: torch.Tensor,
) -> torch.Tensor:
    """Linear 3DMM: mean (V x 3) + identity (B x K) and expression (B x J) -> B x V x 3 (mm)."""
    scaled = identity * identity_std  # B x K, mm
    offsets = torch.einsum("bk,kvc->bvc", scaled, identity_basis)
    offsets = offsets + torch.einsum("bj,jvc->bvc", expression, expression_basis)
    return mean.unsqueeze(0) + offsets


def surface_points(
    vertices: torch.Tensor, triangles: torch.Tensor, point_triangles: torch.Tensor,
    barycentrics: torch.Tensor,
) -> torch.Tensor:
    """Positions of barycentric surface points: vertices B x V x D -> B x L x D."""
    corner_ids = triangles[point_triangles]  # L x 3
    corners = vertices[:, corner_ids]  # B x L x 3 x D
    return (corners * barycentrics[None, :, :, None]).sum(dim=2)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


class MorphableModel(torch.nn.Module):
    """A morphable head model held in torch buffers; moves with `.to(device)`.

    Example:
        model = load_model("default")
        verts = model.vertices(identity=torch.zeros(2, model.num_identity),
                               expression=torch.zeros(2, model.num_expression))  # 2 x V x 3
        lms = model.landmarks(verts, "ibug68")                                     # 2 x 68 x 3
    """

    mean: torch.Tensor
    identity_basis: torch.Tensor
    identity_std: torch.Tensor
    expression_basis: torch.Tensor
    triangles: torch.Tensor
    uv_coords: torch.Tensor
    uv_triangles: torch.Tensor

    def __init__(self, data: ModelData):
        super().__init__()
        data.validate()
        self.data = data
        self.name = data.name
        self.expression_names = list(data.expression_names)
        self.register_buffer("mean", torch.from_numpy(data.mean.astype(np.float32)))
        self.register_buffer(
            "identity_basis", torch.from_numpy(data.identity_basis.astype(np.float32))
        )
        self.register_buffer("identity_std", torch.from_numpy(data.identity_std.astype(np.float32)))
        self.register_buffer(
            "expression_basis", torch.from_numpy(data.expression_basis.astype(np.float32))
        )
        self.register_buffer("triangles", torch.from_numpy(data.triangles.astype(np.int64)))
        self.register_buffer("uv_coords", torch.from_numpy(data.uv_coords.astype(np.float32)))
        self.register_buffer("uv_triangles", torch.from_numpy(data.uv_triangles.astype(np.int64)))
        for scheme, points in data.landmarks.items():
            self.register_buffer(f"_lm_{scheme}_tri", torch.from_numpy(points.triangles))
            self.register_buffer(
                f"_lm_{scheme}_bary", torch.from_numpy(points.barycentrics.astype(np.float32))
            )

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.data.num_vertices

    @property
    def num_triangles(self) -> int:
        return self.data.num_triangles

    @property
    def num_identity(self) -> int:
        return self.data.num_identity

    @property
    def num_expression(self) -> int:
        return self.data.num_expression

    @property
    def landmark_schemes(self) -> list[str]:
        return sorted(self.data.landmarks)

    def region(self, name: str) -> np.ndarray:
        """V bool mask of a named region (see REGIONS)."""
        if name not in self.data.regions:
            raise KeyError(f"model '{self.name}' has no region '{name}'")
        return self.data.regions[name]

    def expression_index(self, name: str) -> int:
        return self.expression_names.index(name)

    # -- evaluation --------------------------------------------------------------------------
    def vertices(
        self,
        identity: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Vertex positions in mm, B x V x 3.

        identity: B x K (standard deviations), expression: B x J (blendshape weights);
        either may be None (zeros). Differentiable with respect to both.
        """
        batch = batch_size or next(
            (t.shape[0] for t in (identity, expression) if t is not None), 1
        )
        device, dtype = self.mean.device, self.mean.dtype
        if identity is None:
            identity = torch.zeros(batch, self.num_identity, device=device, dtype=dtype)
        if expression is None:
            expression = torch.zeros(batch, self.num_expression, device=device, dtype=dtype)
        if identity.shape[-1] != self.num_identity:
            raise ValueError(f"identity needs {self.num_identity} values, got {identity.shape[-1]}")
        if expression.shape[-1] != self.num_expression:
            raise ValueError(
                f"expression needs {self.num_expression} values, got {expression.shape[-1]}"
            )
        return blend_vertices(
            self.mean, self.identity_basis, self.identity_std, self.expression_basis,
            identity.to(dtype), expression.to(dtype),
        )

    def landmarks(self, vertices: torch.Tensor, scheme: str = "ibug68") -> torch.Tensor:
        """Landmark positions B x L x 3 on `vertices` (B x V x 3) for a named scheme."""
        if scheme not in self.data.landmarks:
            raise KeyError(f"model '{self.name}' has no landmark scheme '{scheme}'")
        tri = getattr(self, f"_lm_{scheme}_tri")
        bary = getattr(self, f"_lm_{scheme}_bary").to(vertices.dtype)
        return surface_points(vertices, self.triangles, tri, bary)

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Area-weighted unit normals B x V x 3 (render's function, on this topology)."""
        from render import vertex_normals

        return vertex_normals(vertices, self.triangles)

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "vertices": self.num_vertices,
            "triangles": self.num_triangles,
            "identity_components": self.num_identity,
            "expression_components": self.num_expression,
            "landmark_schemes": self.landmark_schemes,
            "regions": sorted(self.data.regions),
            **{f"meta.{k}": v for k, v in self.data.metadata.items()},
        }


def model_fields() -> list[str]:
    """Names of the ModelData fields (handy for converters and docs)."""
    return [f.name for f in fields(ModelData)]
