"""The whole photo fit (`fit_photo`: landmarks, steps 1-9 of `fitting.fit`, lighting and
texture) and the summaries the CLI prints of a fit.

Units: pixels (OpenCV convention), millimetres, radians. Poses: X_cam = R X_model + t.
"""

from __future__ import annotations

import math

import numpy as np

from fitting.correspondence import (
    ANNOTATION,
    LandmarkSet,
    ibug68_convention,
    ibug68_table,
    landmark_set,
    update_jaw_contour,
)
from fitting.fit import _alternate, detect_landmarks, estimate_focal, fit_corrective, refine_joint
from fitting.lighting import fit_lighting_and_texture
from fitting.model_arrays import IBUG68, _basis_rows, model_arrays, offset_at
from fitting.params import CameraParams, FaceParams, Identity, VideoFit
from fitting.pose import FrameState, project, rotation_matrix
from fitting.solvers import Priors, single_threaded
from morph3d.errors import ModelError

# --------------------------------------------------------------------------------------------
# The whole photo fit
# --------------------------------------------------------------------------------------------


@single_threaded()
def fit_landmarks(model, landmarks: list[dict[str, np.ndarray]], sizes: list[tuple[int, int]],
                  focal: float | None = None, rounds: int = 4, refine_steps: int = 20,
                  contour: bool = True, priors: Priors | None = None,
                  identity: np.ndarray | None = None, convention: str | None = None,
                  offset: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[FrameState], list[CameraParams], list[LandmarkSet]]:
    """Steps 2-7 for one or more images of one person from their 2D landmarks.

    landmarks: per image {scheme: L x 2 pixels}; sizes: per image (H, W); focal in pixels
    (None: estimated). `identity` given = held fixed (only pose and expression are fitted).
    refine_steps: at most this many joint Gauss-Newton iterations (step 7; 0 = skip).
    convention: of the ibug68 points (see `landmark_set`; None = from the schemes given).
    offset: a fixed corrective deformation (`Identity.offset`, V x 3 mm), e.g. with a fixed
    `identity` to fit another photo of a person fitted before.
    """
    priors = priors or Priors()
    ls_list = [landmark_set(model, lm, convention, offset) for lm in landmarks]
    if focal is None:
        factor = estimate_focal(ls_list, sizes, priors)
        cameras = [CameraParams.default_for(w, h, factor * max(h, w)) for h, w in sizes]
    else:
        cameras = [CameraParams.default_for(w, h, focal) for h, w in sizes]
    fixed = identity is not None
    alpha = np.asarray(identity, np.float64) if fixed else np.zeros(ls_list[0].identity.shape[2])
    alpha, states, _, _ = _alternate(ls_list, cameras, alpha, [None] * len(ls_list), priors,
                                     rounds, contour=contour, fit_shape=not fixed)
    if refine_steps > 0:
        alpha, states = refine_joint(ls_list, cameras, alpha, states, priors,
                                     iterations=refine_steps, contour=contour,
                                     fit_shape=not fixed)
    return alpha, states, cameras, ls_list


def _as_image_list(images) -> tuple[list[np.ndarray], list[str]]:
    from morph3d.io.images import read_image
    from morph3d.io.limits import check_image_pixels

    if isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    out, names = [], []
    for i, img in enumerate(images):
        if isinstance(img, np.ndarray):
            out.append(img)
            names.append(f"image {i}")
        else:
            check_image_pixels(img)
            out.append(read_image(img))
            names.append(str(img))
    return out, names


def photometric_view(image: np.ndarray, landmarks: dict[str, np.ndarray], camera: CameraParams
                     ) -> tuple[np.ndarray, CameraParams]:
    """The image and camera the lighting and texture are fitted on: the photo itself up to
    `DETECT_MAX_SIDE` pixels; for a larger one, a crop around the face (`face_crop`, the face
    at most `FACE_MAX_WIDTH` wide) seen by the same camera moved into the crop's pixels, so
    the fitted pose and the reported points stay in the full photo's pixels while the
    renders and the float copies stay small."""
    from fitting.detection import DETECT_MAX_SIDE
    from fitting.faces import face_crop

    if max(image.shape[:2]) <= DETECT_MAX_SIDE:
        return image, camera
    points = np.concatenate([np.asarray(v, np.float64).reshape(-1, 2)
                             for v in landmarks.values()])
    crop = face_crop(image, points[np.isfinite(points).all(1)])
    h, w = crop.image.shape[:2]
    return crop.image, CameraParams(camera.fx * crop.sx, camera.fy * crop.sy,
                                    (camera.cx - crop.x0 + 0.5) * crop.sx - 0.5,
                                    (camera.cy - crop.y0 + 0.5) * crop.sy - 0.5, w, h)


@single_threaded()
def fit_photo(images, model, landmarks: dict | list[dict] | None = None,
              focal: float | None = None, backend: str = "mediapipe", photometric: bool = True,
              refine_steps: int = 60, photometric_steps: int = 25, contour: bool = True,
              priors: Priors | None = None, corrective: bool | None = None
              ) -> list[VideoFit]:
    """Fit the model to one photo or several photos of one person: one one-frame VideoFit
    per photo, all sharing one Identity (a list, not one N-frame fit: each photo has its own
    camera, and a VideoFit holds one).

    images: path(s) or RGB array(s) (uint8 or float in [0, 1]); landmarks: per image
    {scheme: L x 2} to skip detection; focal: pixels (None = estimated). `backend` also says
    where given landmarks came from: their ibug68 convention is `ibug68_convention(backend,
    landmarks)` (the "mediapipe" backend's 68 points are derived from its 478).
    corrective: add `fit_corrective`'s deformation to the identity (`Identity.offset`);
    None = for annotation-convention points (dlib, "dlib+mediapipe"), not for the
    "mediapipe" backend (the swap's fits stay pure 3DMM shapes).
    """
    imgs, names = _as_image_list(images)
    if landmarks is None:
        landmarks = [detect_landmarks(img, backend, name) for img, name in zip(imgs, names,
                                                                              strict=True)]
    elif isinstance(landmarks, dict):
        landmarks = [landmarks]
    if len(landmarks) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(landmarks)} landmark sets")
    sizes = [img.shape[:2] for img in imgs]
    conventions = {ibug68_convention(backend, lm) for lm in landmarks}
    if len(conventions) > 1:
        raise ValueError("landmarks of one fit must all come from one backend")
    convention = conventions.pop()
    alpha, states, cameras, ls_list = fit_landmarks(model, landmarks, sizes, focal=focal,
                                                    refine_steps=refine_steps, contour=contour,
                                                    priors=priors, convention=convention)
    if corrective is None:
        corrective = convention == ANNOTATION
    offset = (fit_corrective(ls_list, alpha, states, cameras, priors or Priors())
              if corrective else None)
    texture = confidence = None
    if photometric:
        work = [photometric_view(img, lm, cam) for img, lm, cam in zip(imgs, landmarks, cameras,
                                                                        strict=True)]
        states, texture, confidence = fit_lighting_and_texture(
            model, [img for img, _ in work], alpha, states, [cam for _, cam in work],
            steps=photometric_steps, offset=offset)
        del work
    identity = Identity(alpha, texture, confidence, offset)
    fits = []
    for st, cam, lm, name in zip(states, cameras, landmarks, names, strict=True):
        faces = FaceParams.empty(1, model.num_expression)
        faces.rotation[0], faces.translation[0] = st.rotation, st.translation
        faces.expression[0] = st.expression
        if st.sh is not None:
            faces.sh[0] = st.sh
        faces.valid[0] = True
        fits.append(VideoFit(identity=identity, faces=faces, camera=cam, fps=0.0,
                             landmarks={k: np.asarray(v, np.float32)[None] for k, v in lm.items()},
                             model_name=model.name, source=name))
    return fits


# --------------------------------------------------------------------------------------------
# Summaries for the CLI
# --------------------------------------------------------------------------------------------

FRONT = np.diag([1.0, -1.0, -1.0])  # model -> OpenCV camera for a face looking at the camera


def head_pose_degrees(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the head relative to a frontal view.

    The head rotation in model axes is H = FRONT^T R = Ry(yaw) Rx(pitch) Rz(roll)
    (right-handed angles about the model's up, right and forward axes): yaw > 0 turns the
    nose towards image right, pitch > 0 turns the nose down, roll > 0 turns the face
    counter-clockwise in the image.
    """
    H = FRONT.T @ rotation_matrix(rotation)
    pitch = math.asin(float(np.clip(-H[1, 2], -1.0, 1.0)))
    yaw = math.atan2(H[0, 2], H[2, 2])
    roll = math.atan2(H[1, 0], H[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def projected_landmarks(fit: VideoFit, model, scheme: str = IBUG68,
                        convention: str = ANNOTATION) -> np.ndarray:
    """F x L x 2 pixel positions of the model's `scheme` landmarks under the fit (the iBUG
    jaw at the fitted occluding contour). iBUG points are given in `convention`: by default
    the iBUG annotation's (`ibug68_table`), whatever the fit was fitted to."""
    arrays = model_arrays(model)
    if scheme not in arrays.landmarks:
        raise ModelError(f"model '{model.name}' has no {scheme} landmarks")
    table = ibug68_table(arrays, convention) if scheme == IBUG68 else scheme
    ids, bary = arrays.landmarks[table]
    mean, idb, exb = _basis_rows(arrays, ids, bary)
    alpha = fit.identity.coefficients.astype(np.float64)
    offset = fit.identity.offset
    if offset is not None:
        offset = np.asarray(offset, np.float64)
        if offset.shape != arrays.mean.shape:
            raise ModelError(f"the fit's corrective offset has {len(offset)} vertices, model "
                             f"'{model.name}' {len(arrays.mean)}")
    out = np.zeros((fit.num_frames, len(ids), 2), np.float32)
    f = fit.faces
    for i in range(fit.num_frames):
        st = FrameState(f.rotation[i].astype(np.float64), f.translation[i].astype(np.float64),
                        f.expression[i].astype(np.float64))
        if scheme == IBUG68 and arrays.contour_edges.get(table):
            ls = LandmarkSet(np.full((len(ids), 2), np.nan), np.ones(len(ids)), ids.copy(),
                             bary.copy(), {IBUG68: slice(0, len(ids))}, arrays=arrays,
                             ibug_table=table, offset=offset)
            update_jaw_contour(ls, alpha, st, fit.camera)
            pts = ls.positions(alpha, st.expression)
        else:
            pts = mean + idb @ alpha + exb @ st.expression + offset_at(offset, ids, bary)
        out[i] = project(pts, st.rotation, st.translation, fit.camera)
    return out


def fit_summary(fit: VideoFit, model) -> dict:
    """JSON-ready summary: camera, faceless frames and per frame the fitted model's 68
    projected landmarks (`landmarks68`, iBUG order and annotation convention, 0-based
    pixels) and head pose in degrees (yaw, pitch, roll: see `head_pose_degrees`)."""
    lm = projected_landmarks(fit, model)
    frames = []
    for i in range(fit.num_frames):
        yaw, pitch, roll = head_pose_degrees(fit.faces.rotation[i])
        frames.append({
            "index": i,
            "valid": bool(fit.faces.valid[i]),
            "landmarks68": np.round(lm[i].astype(np.float64), 2).tolist(),
            "yaw": round(yaw, 2), "pitch": round(pitch, 2), "roll": round(roll, 2),
            "translation_mm": np.round(fit.faces.translation[i].astype(np.float64), 2).tolist(),
            "expression": {name: round(float(v), 3) for name, v in
                           zip(model.expression_names, fit.faces.expression[i], strict=True)
                           if v > 0.05},
        })
    cam = fit.camera
    return {
        "model": fit.model_name,
        "source": fit.source,
        "frames_total": fit.num_frames,
        "fps": fit.fps,
        "faceless_frames": fit.faceless.tolist(),
        "camera": {"fx": cam.fx, "fy": cam.fy, "cx": cam.cx, "cy": cam.cy,
                   "width": cam.width, "height": cam.height},
        "identity": np.round(fit.identity.coefficients.astype(np.float64), 4).tolist(),
        "has_texture": fit.identity.texture is not None,
        "frames": frames,
    }
