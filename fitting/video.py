"""Video fitting: one identity for the clip, then cheap per-frame pose, expression and light.

Steps (`fit_video`):

1. `video_landmarks`: stream the frames once, detect + track faces (`fitting.track`), pick
   one face (largest by default), smooth its landmarks without lag (`fitting.smooth`).
   Only the landmark arrays are kept, never the frames (bounded memory).
2. `select_identity_frames`: ~20 well-spread frames with near-frontal poses.
3. `fitting.photo.fit_landmarks` on them jointly: one identity (and the focal length).
4. `track_frame` per frame: warm-started from the previous frame's pose and expression,
   a jaw-contour update and a few bounded Gauss-Newton steps with a temporal prior
   (penalising change from the previous frame); a few ms per frame in numpy.
5. If photometric: per-frame SH lighting from front-facing vertex colours (linear, no
   rendering) and the albedo texture from the most frontal identity frames.
6. `bridge_gaps`: frames without the face are marked invalid and their parameters
   interpolated from the neighbouring valid frames (held at the ends).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fitting.correspondence import LandmarkSet, landmark_set, update_jaw_contour
from fitting.fit import estimate_pose_pnp
from fitting.lighting import _as_float_image, fit_lighting_and_texture, sh_basis_np
from fitting.model_arrays import IBUG68, model_arrays
from fitting.params import SH_COEFFS, CameraParams, FaceParams, Identity, VideoFit
from fitting.photo import fit_landmarks, head_pose_degrees
from fitting.pose import FrameState, rotation_matrix
from fitting.solvers import Priors, gauss_newton, single_threaded
from morph3d.errors import Morph3dError
from morph3d.model.geometry import vertex_normals


class ClipLandmarks(NamedTuple):
    """What step 1 gives the fit: the selected face's landmarks, the frame size, the cuts."""

    points: dict[str, np.ndarray]  # scheme -> F x L x 2 pixels, NaN where the face is absent
    image_size: tuple[int, int]  # (H, W) pixels
    scene_cut: np.ndarray  # (F,) bool: the frame starts a new shot
    faces_found: int = 1  # people in the clip (the chooser's face tracks, pieces joined)


def video_landmarks(path, backend: str = "mediapipe", select: str | np.ndarray = "largest",
                    max_frames: int | None = None, smooth: bool = True,
                    progress: bool = True) -> ClipLandmarks:
    """Step 1: per-frame landmarks of the selected face, the frame size and the shot cuts
    the tracker saw (the fit must not carry a pose across a cut). The face is chosen among
    one detector's tracks whatever the backend (`fitting.track.track_clip`), so every
    backend fits the same person; a reference embedding that matches nobody in the clip
    is a one-line InputError."""
    from tqdm import tqdm

    from fitting.people import choose_person, joined_trajectory
    from fitting.smooth import smooth_tracks
    from fitting.track import track_clip
    from morph3d.io.media import iter_pictures, probe_video

    info = probe_video(path)
    total = info.frame_count if max_frames is None else min(info.frame_count, max_frames)
    # pictures converted to RGB where the detectors look (the same pixels as whole frames')
    frames = tqdm(iter_pictures(path, stop=max_frames), total=total, desc="detecting faces",
                  unit="frame", disable=not progress, leave=False)
    tracks, chooser = track_clip(frames, backend, max_frames=max_frames)
    if not len(chooser):
        chooser = tracks  # as on photos: the backend's own faces when the chooser saw none
    if not len(tracks):
        raise Morph3dError(f"no face found in {path}")
    person = choose_person(tracks, chooser, select)
    image_size, scene_cut = tuple(tracks.image_size), tracks.scene_cut.copy()
    ids, found, raw = person.ids, person.faces_found, person.tracks
    # the raw detections go once smoothed: at most two copies of the clip's points live
    del tracks, chooser, person
    chosen = smooth_tracks(raw) if smooth else raw
    del raw
    trajectories = {s: joined_trajectory(chosen, ids, s) for s in chosen.landmarks}
    return ClipLandmarks(trajectories, image_size, scene_cut, found)


def landmark_jumps(points: np.ndarray, max_shift: float = 0.5, max_scale: float = 1.4
                   ) -> np.ndarray:
    """(F,) bool: frames whose face box (from F x L x 2 landmarks) moved by more than
    `max_shift` face sizes or changed size by more than `max_scale` since the previous
    frame: a cut the tracker did not flag (or a re-detection elsewhere). Warm-starting
    across such a jump would drag the old pose along for several frames."""
    ok = np.isfinite(points).all(axis=(1, 2))
    lo, hi = np.full((len(points), 2), np.nan), np.full((len(points), 2), np.nan)
    lo[ok], hi[ok] = points[ok].min(axis=1), points[ok].max(axis=1)
    centre, size = (lo + hi) / 2, np.maximum((hi - lo).max(axis=1), 1.0)
    jumps = np.zeros(len(points), bool)
    prev = None
    for i in np.flatnonzero(ok):
        if prev is not None:
            shift = np.linalg.norm(centre[i] - centre[prev]) / max(size[i], size[prev])
            ratio = max(size[i], size[prev]) / min(size[i], size[prev])
            jumps[i] = shift > max_shift or ratio > max_scale
        prev = i
    return jumps


def select_identity_frames(model, landmarks: dict[str, np.ndarray], camera: CameraParams,
                           count: int = 20) -> np.ndarray:
    """Step 2: up to `count` frame indices, one per equal slice of the valid frames, each the
    most frontal (smallest |yaw| + |pitch| by PnP on the mean shape) of its slice."""
    valid = np.flatnonzero(np.isfinite(landmarks[IBUG68]).all(axis=(1, 2)))
    if not len(valid):
        return valid
    zeros_id = np.zeros(model.num_identity)
    zeros_ex = np.zeros(model.num_expression)
    chosen = []
    for part in np.array_split(valid, min(count, len(valid))):
        best, best_angle = int(part[0]), math.inf
        # A few candidates per slice are enough (slices can be long).
        for i in part[:: max(1, len(part) // 5)]:
            ls = landmark_set(model, {s: p[i] for s, p in landmarks.items()})
            try:
                st = estimate_pose_pnp(ls, zeros_id, zeros_ex, camera)
            except Morph3dError:
                continue
            yaw, pitch, _ = head_pose_degrees(st.rotation)
            if abs(yaw) + abs(pitch) < best_angle:
                best, best_angle = int(i), abs(yaw) + abs(pitch)
        chosen.append(best)
    return np.array(sorted(set(chosen)), np.int64)


@dataclass
class ShSampler:
    """Front-facing face-skin vertices for per-frame SH estimation: a subsample of vertices
    with their incident triangles (re-indexed), so normals are cheap, and the model's bases
    at those vertices (gathered once: gathering them from the whole model every frame cost
    more than the estimate)."""

    vertex_ids: np.ndarray  # all vertices the local triangles touch
    triangles: np.ndarray  # local indices into vertex_ids
    sample: np.ndarray  # local indices of the sampled vertices
    albedo: np.ndarray  # sample x 3 (1 when unknown)
    mean: np.ndarray  # U x 3 mm, the model's mean at vertex_ids
    identity: np.ndarray  # 3U x K (mm per std), rows x, y, z of each vertex in turn
    expression: np.ndarray  # 3U x J
    _neutral: tuple[np.ndarray, np.ndarray] | None = None  # (identity, U x 3 mm) last used

    @classmethod
    def for_model(cls, model, count: int = 400, seed: int = 0) -> ShSampler:
        arrays = model_arrays(model)
        rng = np.random.default_rng(seed)
        face = arrays.face_vertices
        sample = np.sort(rng.choice(face, size=min(count, len(face)), replace=False))
        tris = arrays.triangles[np.isin(arrays.triangles, sample).any(1)]
        ids, local = np.unique(tris, return_inverse=True)
        return cls(ids, local.reshape(-1, 3), np.searchsorted(ids, sample),
                   np.ones((len(sample), 3)), np.ascontiguousarray(arrays.mean[ids]),
                   arrays.identity[ids].reshape(3 * len(ids), -1),
                   arrays.expression[ids].reshape(3 * len(ids), -1))

    def set_albedo_from_texture(self, model, texture: np.ndarray) -> None:
        """Per-sample albedo looked up in a UV texture (nearest texel)."""
        data = model.data
        first_uv = np.zeros(data.num_vertices, np.int64)
        first_uv[data.triangles.reshape(-1)] = data.uv_triangles.reshape(-1)
        uv = data.uv_coords[first_uv[self.vertex_ids[self.sample]]]
        T = texture.shape[0]
        col = np.clip((uv[:, 0] * T).astype(int), 0, T - 1)
        row = np.clip(((1 - uv[:, 1]) * T).astype(int), 0, T - 1)
        self.albedo = np.clip(texture[row, col].astype(np.float64), 0.05, 1.0)

    def estimate(self, image: np.ndarray | Yuv420Pixels, model, identity: np.ndarray,
                 state: FrameState, camera: CameraParams, regularise: float = 0.05
                 ) -> np.ndarray:
        """9 x 3 SH lighting from the frame's colours at the visible sampled vertices."""
        n = len(self.vertex_ids)
        neutral = self._neutral
        if neutral is None or not np.array_equal(neutral[0], identity):
            # A clip has one identity: its neutral shape is made once.
            neutral = (identity.copy(), self.mean + (self.identity @ identity).reshape(n, 3))
            self._neutral = neutral
        verts = neutral[1] + (self.expression @ state.expression).reshape(n, 3)
        R = rotation_matrix(state.rotation)
        normals = (vertex_normals(verts, self.triangles)[self.sample] @ R.T) * np.array(
            [1.0, -1.0, -1.0])
        cam = verts[self.sample] @ R.T + state.translation
        z = np.maximum(cam[:, 2], 1e-6)
        u = camera.fx * cam[:, 0] / z + camera.cx
        v = camera.fy * cam[:, 1] / z + camera.cy
        H, W = image.shape[:2]
        keep = (normals[:, 2] > 0.3) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
        sh = np.zeros((SH_COEFFS, 3))
        sh[0] = 1.0
        if keep.sum() < 30:
            return sh
        rows, cols = np.round(v[keep]).astype(int), np.round(u[keep]).astype(int)
        if isinstance(image, Yuv420Pixels):
            colors = image.at(rows, cols).astype(np.float64) / 255.0
        else:
            colors = image[rows, cols]
            colors = colors.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
        basis = sh_basis_np(normals[keep])
        reg = regularise * keep.sum()
        for c in range(3):
            A = basis * self.albedo[keep, c:c + 1]
            H = A.T @ A + reg * np.eye(SH_COEFFS)
            sh[:, c] = np.linalg.solve(H, A.T @ colors[:, c] + reg * sh[:, c])
        return sh


class Yuv420Pixels:
    """RGB (uint8) of chosen pixels of a decoded 4:2:0 video frame, converted only where
    read: the SH estimate reads a few hundred pixels per frame, and converting the whole
    frame (`morph3d.io.media.frame_rgb`) costs more than decoding it.

    The conversion is the one swscale's accurate path gives an untagged clip (BT.601 limited
    range, chroma sited left and interpolated bilinearly, rounded): `matches` checks a frame
    against the full conversion, and the fit uses this only where the clip's first frame
    agrees."""

    def __init__(self, frame) -> None:
        self.frame = frame  # keeps the planes' memory alive
        self.shape = (frame.height, frame.width, 3)
        self.planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes]

    @staticmethod
    def possible(frame) -> bool:
        return frame.format.name == "yuv420p" and not frame.rotation

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """N x 3 uint8 RGB at pixels (rows, cols)."""
        Y, U, V = self.planes
        h, w = (self.shape[0] + 1) // 2, (self.shape[1] + 1) // 2
        xs, ys = cols / 2.0, np.maximum(rows - 0.5, 0.0) / 2.0  # chroma plane coordinates
        x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
        fx, fy = xs - x0, ys - y0
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)

        def chroma(P: np.ndarray) -> np.ndarray:
            top = P[y0, x0] * (1.0 - fx) + P[y0, x1] * fx
            bottom = P[y1, x0] * (1.0 - fx) + P[y1, x1] * fx
            return top * (1.0 - fy) + bottom * fy - 128.0

        y = (Y[rows, cols] - 16.0) * (255.0 / 219.0)
        u, v = chroma(U) * (255.0 / 224.0), chroma(V) * (255.0 / 224.0)
        kr, kb = 0.299, 0.114
        kg = 1.0 - kr - kb
        rgb = np.stack([y + 2.0 * (1.0 - kr) * v,
                        y - 2.0 * (1.0 - kb) * kb / kg * u - 2.0 * (1.0 - kr) * kr / kg * v,
                        y + 2.0 * (1.0 - kb) * u], 1)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def matches(self, rgb: np.ndarray, step: int = 7) -> bool:
        """Whether these pixels are the full conversion `rgb`'s (every `step`-th row and
        column): within 1 level everywhere and equal on 99 % of them."""
        rows, cols = np.meshgrid(np.arange(0, self.shape[0], step),
                                 np.arange(0, self.shape[1], step), indexing="ij")
        mine = self.at(rows.ravel(), cols.ravel()).astype(int)
        theirs = rgb[rows.ravel(), cols.ravel()].astype(int)
        return bool(np.abs(mine - theirs).max() <= 1 and (mine == theirs).mean() >= 0.99)


def track_frame(ls: LandmarkSet, identity: np.ndarray, previous: FrameState | None,
                camera: CameraParams, priors: Priors, iterations: int = 3) -> FrameState:
    """Step 4: one frame's pose + expression, warm-started from `previous` (None: PnP)."""
    if previous is None:
        state = estimate_pose_pnp(ls, identity, np.zeros(ls.expression.shape[2]), camera)
        state = gauss_newton(ls, identity, state, camera, pose=True, expression=False,
                             priors=priors, iterations=2)[1]
        prior_state = None
    else:
        state = previous.copy()
        prior_state = previous
    for _ in range(iterations):
        update_jaw_contour(ls, identity, state, camera)
        state = gauss_newton(ls, identity, state, camera, pose=True, expression=True,
                             priors=priors, previous=prior_state)[1]
    return state


def bridge_gaps(faces: FaceParams) -> FaceParams:
    """Step 6: parameters of invalid frames interpolated linearly between the valid frames
    around them (held constant before the first and after the last valid frame)."""
    valid = np.flatnonzero(faces.valid)
    if len(valid) == 0 or len(valid) == len(faces):
        return faces
    frames = np.arange(len(faces))
    out = {}
    for name in ("rotation", "translation", "expression", "sh"):
        values = getattr(faces, name).reshape(len(faces), -1).astype(np.float64)
        filled = np.stack([np.interp(frames, valid, values[valid, k])
                           for k in range(values.shape[1])], 1)
        out[name] = filled.reshape(getattr(faces, name).shape)
    return FaceParams(out["rotation"], out["translation"], out["expression"], out["sh"],
                      faces.valid.copy())


@single_threaded()
def fit_video(path, model, landmarks: dict[str, np.ndarray] | None = None,
              backend: str = "mediapipe", select: str = "largest",
              max_frames: int | None = None, identity_frames: int = 20,
              focal: float | None = None, photometric: bool = True, smooth: bool = True,
              progress: bool = True, priors: Priors | None = None,
              timings: list[float] | None = None,
              on_frame: Callable[[int, FrameState], None] | None = None,
              scene_cut: np.ndarray | None = None) -> VideoFit:
    """Fit one face over a clip; see the module docstring for the steps.

    landmarks: precomputed {scheme: F x L x 2 pixels, NaN on faceless frames} (skips
    detection); focal in pixels (None: estimated from the identity frames). `timings`, if
    given, receives the per-frame solver time in ms (detection and decoding excluded).
    scene_cut: (F,) bool, frames that start a new shot (from `video_landmarks`); the
    per-frame fit restarts there, as it does after jumps of the face box.
    """
    from tqdm import tqdm

    from morph3d.io.media import frame_rgb, iter_frames, probe_video

    info = probe_video(path)
    fps = float(info.fps)
    if landmarks is None:
        landmarks, (H, W), scene_cut, _ = video_landmarks(path, backend, select, max_frames,
                                                          smooth, progress)
    else:
        landmarks = {k: np.asarray(v, np.float64) for k, v in landmarks.items()}
        H, W = info.height, info.width
    if IBUG68 not in landmarks:
        raise Morph3dError("video landmarks need the ibug68 scheme")
    n_frames = len(landmarks[IBUG68])
    present = np.isfinite(landmarks[IBUG68]).all(axis=(1, 2))
    if not present.any():
        raise Morph3dError(f"no face found in {path}")
    cuts = landmark_jumps(landmarks[IBUG68])
    if scene_cut is not None:
        given = np.asarray(scene_cut, bool).reshape(-1)[:n_frames]
        cuts[:len(given)] |= given

    # Steps 2-3: one identity (and the focal length) from well-spread frontal frames.
    guess = CameraParams.default_for(W, H, focal)
    chosen = select_identity_frames(model, landmarks, guess, identity_frames)
    per_frame = [{s: p[i] for s, p in landmarks.items()} for i in chosen]
    identity, id_states, cams, _ = fit_landmarks(model, per_frame, [(H, W)] * len(chosen),
                                                 focal=focal, refine_steps=10, priors=priors)
    camera = cams[0]
    priors = priors or Priors()
    track_priors = Priors(**{**priors.__dict__, "temporal_pose": 3.0,
                             "temporal_expression": 1.0})

    # Step 4 (+5): per frame. Frames are decoded only for the photometric part.
    frontal = chosen[np.argsort([sum(abs(a) for a in head_pose_degrees(s.rotation)[:2])
                                 for s in id_states])[:1]] if photometric else np.zeros(0, int)
    texture_frames: dict[int, np.ndarray] = {}
    sampler = ShSampler.for_model(model) if photometric else None
    faces = FaceParams.empty(n_frames, model.num_expression)
    template = landmark_set(model, {s: p[int(np.flatnonzero(present)[0])]
                                    for s, p in landmarks.items()})
    rows = {s: (np.arange(68) if s == IBUG68 else model_arrays(model).mediapipe_selected)
            for s in template.scheme_slices}  # the template's point order
    frames = (iter_frames(path, stop=max_frames, rgb=False) if photometric else
              ({"index": i} for i in range(n_frames)))
    fast: bool | None = None  # whether the clip's frames are read with Yuv420Pixels
    previous: FrameState | None = None
    for item in tqdm(frames, total=n_frames, desc="fitting", unit="frame", disable=not progress,
                     leave=False):
        i = item.index if photometric else item["index"]
        if i >= n_frames:
            break
        if not present[i] or cuts[i]:
            previous = None  # a new shot (or no face): start from PnP, not the old pose
        if not present[i]:
            continue
        start = time.perf_counter()
        ls = template.copy_for(np.concatenate([landmarks[s][i][rows[s]] for s in rows]))
        state = track_frame(ls, identity, previous, camera, track_priors)
        if sampler is not None:
            decoded = item.decoded
            if item.rgb is None and fast is None:
                fast = (Yuv420Pixels.possible(decoded)
                        and Yuv420Pixels(decoded).matches(frame_rgb(decoded)))
            image = (item.rgb if item.rgb is not None else
                     Yuv420Pixels(decoded) if fast else frame_rgb(decoded))
            state.sh = sampler.estimate(image, model, identity, state, camera)
        if timings is not None:
            timings.append((time.perf_counter() - start) * 1000.0)
        faces.rotation[i], faces.translation[i] = state.rotation, state.translation
        faces.expression[i] = state.expression
        if state.sh is not None:
            faces.sh[i] = state.sh
        faces.valid[i] = True
        if i in frontal:
            texture_frames[i] = item.rgb if item.rgb is not None else frame_rgb(item.decoded)
        if on_frame is not None:
            on_frame(i, state)
        previous = state

    texture = confidence = None
    if photometric and texture_frames:
        idx = sorted(texture_frames)
        states = [FrameState(faces.rotation[i].astype(np.float64),
                             faces.translation[i].astype(np.float64),
                             faces.expression[i].astype(np.float64)) for i in idx]
        lit, texture, confidence = fit_lighting_and_texture(
            model, [_as_float_image(texture_frames[i]) for i in idx], identity, states,
            [camera] * len(idx), steps=0)
        # Per-frame SH were estimated with albedo 1: divide out the texture's mean skin colour.
        sampler.set_albedo_from_texture(model, texture)
        mean_albedo = np.clip(sampler.albedo.mean(0), 0.05, 1.0)
        faces.sh[faces.valid] = faces.sh[faces.valid] / mean_albedo[None, None, :]
    faces = bridge_gaps(faces)
    faceless = np.flatnonzero(~faces.valid)
    return VideoFit(identity=Identity(identity, texture, confidence), faces=faces,
                    camera=camera, fps=fps, faceless=faceless,
                    landmarks={k: v.astype(np.float32) for k, v in landmarks.items()},
                    model_name=model.name, source=str(path), scene_cut=cuts)
