"""Fitting results as plain values: numpy arrays in dataclasses, saved to versioned .npz.

- `CameraParams`: one perspective pinhole (pixels; OpenCV convention, centres at integers).
- `FaceParams`: per-frame head pose, expression and lighting (F frames).
- `Identity`: one person's shape coefficients and, optionally, a UV albedo texture.
- `VideoFit`: everything fitted for one face in one clip (a photo is a one-frame clip).

Pose convention (what `render.camera.Camera` and `cv2.solvePnP` use): a model-space point X
(mm; x right, y up, z towards the viewer) is at `R(rotation) @ X + translation` in OpenCV
camera space (x right, y down, z forward, mm); `rotation` is axis-angle in radians.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write

FIT_FORMAT_VERSION = 1
SH_COEFFS = 9


@dataclass
class CameraParams:
    """A perspective pinhole: focal lengths and principal point in pixels, image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def default_for(cls, width: int, height: int, focal: float | None = None) -> CameraParams:
        """Centred principal point; focal defaults to 1.2 x the longer side (phone-like)."""
        f = float(focal) if focal is not None else 1.2 * max(width, height)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 intrinsics K (float64), as cv2 wants it."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_camera(self, rotation: np.ndarray, translation: np.ndarray):
        """A `render.Camera` with this intrinsics and the pose (axis-angle rad, mm)."""
        import torch

        from render.camera import Camera, axis_angle_to_matrix

        R = axis_angle_to_matrix(torch.as_tensor(np.asarray(rotation, np.float32)))
        t = torch.as_tensor(np.asarray(translation, np.float32))
        return Camera(float(self.fx), float(self.fy), float(self.cx), float(self.cy),
                      int(self.width), int(self.height), R=R, t=t)

    def _arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}intrinsics": np.array([self.fx, self.fy, self.cx, self.cy], np.float64),
                f"{prefix}size": np.array([self.width, self.height], np.int64)}

    @classmethod
    def _from(cls, z: dict[str, np.ndarray], prefix: str) -> CameraParams:
        fx, fy, cx, cy = (float(v) for v in z[f"{prefix}intrinsics"])
        w, h = (int(v) for v in z[f"{prefix}size"])
        return cls(fx, fy, cx, cy, w, h)


@dataclass
class FaceParams:
    """Per-frame parameters of one face; F frames, J expressions.

    rotation: F x 3 axis-angle (radians), translation: F x 3 (mm), model -> OpenCV camera.
    expression: F x J blendshape weights in [0, 1].
    sh: F x 9 x 3 second-order spherical-harmonics lighting (`render.sh_shading` convention).
    valid: F bool, False for frames without a face (their values are interpolated or held).
    """

    rotation: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    sh: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        self.rotation = np.asarray(self.rotation, np.float32).reshape(-1, 3)
        n = len(self.rotation)
        self.translation = np.asarray(self.translation, np.float32).reshape(n, 3)
        self.expression = np.asarray(self.expression, np.float32).reshape(n, -1)
        self.sh = np.asarray(self.sh, np.float32).reshape(n, SH_COEFFS, 3)
        self.valid = np.asarray(self.valid, bool).reshape(n)

    def __len__(self) -> int:
        return len(self.rotation)

    @classmethod
    def empty(cls, frames: int, expressions: int) -> FaceParams:
        sh = np.zeros((frames, SH_COEFFS, 3), np.float32)
        sh[:, 0] = 1.0  # ambient white: unshaded albedo
        return cls(np.zeros((frames, 3)), np.zeros((frames, 3)),
                   np.zeros((frames, expressions)), sh, np.zeros(frames, bool))

    def frame(self, index: int) -> FaceParams:
        """A one-frame FaceParams."""
        s = slice(index, index + 1)
        return FaceParams(self.rotation[s], self.translation[s], self.expression[s],
                          self.sh[s], self.valid[s])

    @classmethod
    def concatenate(cls, parts: list[FaceParams]) -> FaceParams:
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("rotation", "translation", "expression", "sh", "valid")))


@dataclass
class Identity:
    """One person: identity coefficients (K, std units) and an optional UV albedo texture.

    texture: T x T x 3 float32 RGB in [0, 1] (row 0 is v = 1, as in `render.texture`);
    confidence: T x T float32 in [0, 1] (0 = texel never seen; its colour is a fill-in).
    offset: V x 3 float32 mm or None: a smooth corrective deformation added to the model's
    neutral shape (photo fits to annotation-convention landmarks, `fitting.fit.fit_corrective`:
    where the model's span cannot reach the detected points); None for the swap's fits.
    """

    coefficients: np.ndarray
    texture: np.ndarray | None = None
    confidence: np.ndarray | None = None
    offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.coefficients = np.asarray(self.coefficients, np.float32).reshape(-1)
        if self.offset is not None:
            self.offset = np.asarray(self.offset, np.float32).reshape(-1, 3)
        if self.texture is not None:
            self.texture = np.asarray(self.texture, np.float32)
            if self.confidence is None:
                self.confidence = np.ones(self.texture.shape[:2], np.float32)
            self.confidence = np.asarray(self.confidence, np.float32).reshape(
                self.texture.shape[:2])


@dataclass
class VideoFit:
    """One face fitted over a clip (or a photo: one frame, fps 0).

    landmarks: scheme -> F x L x 2 pixel positions the fit used (NaN on faceless frames).
    faceless: indices of frames where no face was found (bridged by interpolation).
    scene_cut: (F,) bool, frames that start a new shot (empty: unknown); smoothing and
        temporal state (the compositor's) restart there.
    """

    identity: Identity
    faces: FaceParams
    camera: CameraParams
    fps: float = 0.0
    faceless: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    model_name: str = "default"
    source: str = ""
    scene_cut: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        self.faceless = np.asarray(self.faceless, np.int64).reshape(-1)
        self.scene_cut = np.asarray(self.scene_cut, bool).reshape(-1)
        self.landmarks = {k: np.asarray(v, np.float32) for k, v in self.landmarks.items()}

    @property
    def num_frames(self) -> int:
        return len(self.faces)

    # -- storage -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, compress: bool = True) -> None:
        """Write an npz atomically (temp file in the same folder, then rename). `compress`
        False: stored as it is, for a cache the same machine reads back (a swap's work
        folder): deflating the texture costs more CPU than the third of the file it saves."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FIT_FORMAT_VERSION),
            "kind": np.array("morph3d.VideoFit"),
            "model_name": np.array(self.model_name),
            "source": np.array(self.source),
            "fps": np.array(self.fps, np.float64),
            "faceless": self.faceless,
            "scene_cut": self.scene_cut,
            "identity/coefficients": self.identity.coefficients,
            "faces/rotation": self.faces.rotation,
            "faces/translation": self.faces.translation,
            "faces/expression": self.faces.expression,
            "faces/sh": self.faces.sh,
            "faces/valid": self.faces.valid,
            **self.camera._arrays("camera/"),
        }
        if self.identity.texture is not None:
            arrays["identity/texture"] = self.identity.texture
            arrays["identity/confidence"] = self.identity.confidence
        if self.identity.offset is not None:
            arrays["identity/offset"] = self.identity.offset
        for scheme, points in self.landmarks.items():
            arrays[f"landmarks/{scheme}"] = points
        with atomic_write(path) as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VideoFit:
        """Read a file written by `save`; missing, corrupt or other-version files raise
        InputError."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"fit file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                z = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"fit file {path} is corrupt or not a morph3d fit ({exc})") from None
        if str(z.get("kind", "")) != "morph3d.VideoFit":
            raise InputError(f"{path} is not a morph3d fit file")
        version = int(z["format_version"])
        if version != FIT_FORMAT_VERSION:
            raise InputError(f"fit file {path} has format {version}, expected "
                             f"{FIT_FORMAT_VERSION}: fit again")
        identity = Identity(z["identity/coefficients"], z.get("identity/texture"),
                            z.get("identity/confidence"), z.get("identity/offset"))
        faces = FaceParams(z["faces/rotation"], z["faces/translation"], z["faces/expression"],
                           z["faces/sh"], z["faces/valid"])
        return cls(identity=identity, faces=faces, camera=CameraParams._from(z, "camera/"),
                   fps=float(z["fps"]), faceless=z["faceless"],
                   landmarks={k.split("/", 1)[1]: v for k, v in z.items()
                              if k.startswith("landmarks/")},
                   model_name=str(z["model_name"]), source=str(z["source"]),
                   scene_cut=z.get("scene_cut", np.zeros(0, bool)))
