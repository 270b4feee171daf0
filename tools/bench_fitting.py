"""Benchmark the 3DMM fitting solvers (fitting/fit.py, fitting/video.py).

    python tools/bench_fitting.py [--quick] --json out.json

- synthetic: random faces (identity ~ N(0, I), sparse expressions, yaw up to +-60 deg) with
  their landmarks projected by a known camera + 1.5 px noise (iBUG jaw on the occluding
  contour); median face-region vertex error after rigid alignment (mm; also after a
  similarity alignment, which removes the size/distance ambiguity of landmarks) and pose
  error (deg); with the true focal given, and with the focal estimated; and without the
  noise (diagnostic: the floor of landmark-only fitting on the same faces). The size split
  (diagnostic): a face k times larger and k times farther away gives the same image, so the
  fitted size is the prior's guess; reported are the fitted / true face size (median error,
  its correlation with the fitted / true distance), the error the size error alone would
  cost (the true shape at the fitted size) and the fit's error at the true size. The landmarks
  are those of the default pipeline: the ibug68 and mediapipe478 points (the 68 matched
  to the model's "ibug68" table, as the mediapipe-derived 68 are); `synthetic_68_only`
  fits the 68 points alone (matched to the annotation table, as dlib's points are), and
  also reports what the photo fit's corrective deformation (`fitting.fit.fit_corrective`,
  added for such points) costs there: on synthetic faces the model is exact, so the
  deformation can only follow the noise (vertex error, and the reported 68 points' error
  against the noise-free ones, px, with and without it).
- rendered: the same faces rendered (grey shaded) over a plain background, the mediapipe
  detector run on them, then fitted: the same numbers (faces the detector misses counted).
- real photos: NME (mean error / outer-eye-corner distance) of the fitted model's 68
  landmarks vs the annotation, fitted to mediapipe's 478 (+ derived 68) and to dlib's 68 +
  mediapipe's 478 (backend "dlib+mediapipe"; with its corrective deformation, the default,
  and without), next to raw dlib and raw mediapipe; also dlib's shape predictor on
  mediapipe's box of the face (`fitting.choice.dlib_points_for`: the "dlib" backend's points
  where dlib's detector misses a face), raw and fitted through the "dlib+mediapipe" path; and
  mediapipe's own points fitted through the "dlib+mediapipe" path (what it fits where dlib
  misses the face).
- video: nggyup.mp4: mean frame-to-frame motion of the fitted projected landmarks relative
  to the raw detector's, a trajectory plot (docs/fitting_trajectory.png), per-frame solver
  ms (detection excluded); photo fit seconds (mark.jpg, detection excluded; the first
  photometric call includes importing and warming up the renderer; also the
  "dlib+mediapipe" photometric fit, with its corrective deformation).
- corrective transfer (needs `tools/derive_ibug68.py`'s detection cache, real frames that
  are not the annotated images): one frame's identity + corrective kept, pose and
  expression fitted on another frame of the same clip (>= 10 frames away); mean error of
  the reported 68 points to dlib's there (% of IOD) without the offset, with it, and with
  the other clip's person's offset: does the deformation carry over to the same face?

- turned (`--per-bin N`, default 12; `--seed S`, default 0; `--save-renders DIR`): random faces by
  yaw bin (0-20, 20-40, 40-60 deg) rendered with a photo's albedo (mark.jpg fitted, completed)
  under soft light over a smooth random background, landmarks by the real detectors ("mediapipe",
  "dlib+mediapipe"), fitted as `morph3d fit` fits a photo (focal estimated; also given,
  diagnostic), also with a glasses frame drawn over the render, the true 68 points + noise fitted
  without a detector (the fit's own floor), and the model's own embedded 478 points at the true
  pose fitted as mediapipe's ("embedded 478": the mediapipe path's correspondence floor, no
  detector). Per bin: NME of the fitted 68 points (mean error / true outer-eye-corner distance, %;
  also of the jaw alone and of the detector's raw 68) against the true 68 in the annotation
  convention (`annotated_68`: the jaw on the visible outline), pose error (deg), median
  face-region vertex error after rigid and similarity (NoW-style, scale included) alignment (mm),
  the signed pitch error and yaw towards frontal (deg), the raw 68 points' mean offset from the
  truth per group (jaw, brows, nose, eyes, mouth; mm at the face), the far-side jaw's distance to
  the rendered outline (px), detector misses (and dlib misses, where "dlib+mediapipe" used
  mediapipe's 68).

`--only PART ...` runs some parts: synthetic, real, video, photo, transfer, turned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"

from morph3d.model.geometry import median_aligned_distance  # noqa: E402


def sim_error(a: np.ndarray, b: np.ndarray, scale: bool = True) -> float:
    """Median distance (mm) of points `a` to `b` after the best similarity alignment
    (`scale=False`: rigid)."""
    return median_aligned_distance(a, b, scale=scale)


def rms_size(points: np.ndarray) -> float:
    """Root-mean-square distance of the points from their centroid (mm)."""
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def rigid_error(a: np.ndarray, b: np.ndarray) -> float:
    """Median distance (mm) of points `a` to `b` after the best rigid alignment."""
    return sim_error(a, b, scale=False)


# The background grey and the lighting of the rendered synthetic faces.
SYNTHETIC_BACKGROUND = 0.35
SYNTHETIC_SKIN = (0.85, 0.65, 0.55)


def synthetic_case(model, rng: np.random.Generator,
                   schemes: tuple[str, ...] = ("ibug68", "mediapipe478"), noise_px: float = 1.5):
    """One synthetic face at a yaw within +-60 deg: (identity, FrameState, camera, noisy
    landmarks {scheme: L x 2 px} for `schemes`, noise-free landmarks for both schemes).

    The ibug68 points come from the table the fit matches them to (see
    fitting.correspondence.ibug68_table): "ibug68" next to mediapipe478, the annotation one
    alone; the iBUG jaw lies on the occluding contour."""
    from scipy.spatial.transform import Rotation

    from fitting import correspondence as FC
    from fitting import model_arrays as FM
    from fitting import photo as FP
    from fitting import pose as FPose
    from fitting.synthetic import synthetic_face

    alpha, state, camera, _ = synthetic_face(model, rng)
    yaw = rng.uniform(-60, 60)  # re-pose with the wide yaw range
    head = Rotation.from_euler("YXZ", [yaw, rng.uniform(-12, 12), rng.uniform(-8, 8)],
                               degrees=True).as_matrix()
    state.rotation = FPose.axis_angle(FP.FRONT @ head)
    arrays = FM.model_arrays(model)
    convention = FC.MEDIAPIPE if "mediapipe478" in schemes else FC.ANNOTATION
    lms, clean = {}, {}
    for scheme in ("ibug68", "mediapipe478"):
        table = FC.ibug68_table(arrays, convention) if scheme == "ibug68" else scheme
        ids, bary = arrays.landmarks[table]
        ls = FC.LandmarkSet(np.full((len(ids), 2), np.nan), np.ones(len(ids)), ids.copy(),
                            bary.copy(), {scheme: slice(0, len(ids))}, arrays=arrays,
                            ibug_table=table)
        if scheme == "ibug68":
            FC.update_jaw_contour(ls, alpha, state, camera)
        pts = FPose.project(ls.positions(alpha, state.expression), state.rotation,
                            state.translation, camera)
        noise = rng.normal(0, 1.0, pts.shape) * noise_px  # drawn for both: same faces
        clean[scheme] = pts
        if scheme in schemes:
            lms[scheme] = pts + noise
    return alpha, state, camera, lms, clean


def synthetic_lighting():
    """1 x 9 x 3 SH coefficients of the rendered synthetic faces (a light from the upper
    left of the camera)."""
    import torch

    sh = torch.zeros(1, 9, 3)
    sh[0, 0], sh[0, 2], sh[0, 1] = 0.7, 0.35, 0.1
    return sh


def render_synthetic(model, alpha: np.ndarray, state, camera) -> np.ndarray:
    """The face rendered grey-skin shaded over a plain background: H x W x 3 uint8."""
    import torch

    from fitting import model_arrays as FM
    from render.helpers import render_mesh

    verts = FM.vertex_positions(model, alpha, state.expression)
    skin = torch.tensor(SYNTHETIC_SKIN).expand(len(verts), 3)
    with torch.no_grad():
        out = render_mesh(torch.as_tensor(verts, dtype=torch.float32)[None], model.triangles,
                          camera.to_camera(state.rotation, state.translation),
                          vertex_colors=skin, sh_coeffs=synthetic_lighting(),
                          background=SYNTHETIC_BACKGROUND)
    return (np.clip(out.image[0].numpy(), 0, 1) * 255).astype(np.uint8)


def synthetic(model, n: int, rendered: bool, given_focal: bool = True,
              noise_px: float = 1.5, schemes: tuple[str, ...] = ("ibug68", "mediapipe478")
              ) -> dict:
    from fitting import correspondence as FC
    from fitting import fit as F
    from fitting import model_arrays as FM
    from fitting import photo as FP
    from fitting import solvers as FS
    from fitting.params import FaceParams, Identity, VideoFit
    from fitting.synthetic import pose_error_deg, rigid_vertex_error

    rng = np.random.default_rng(0)
    verts_err, sim_err, pose_err, missed, seconds, focal_err = [], [], [], 0, [], []
    # The size/distance split: fitted face size / true size, fitted / true distance, the
    # error of the true shape at the fitted size, and of the fitted shape at the true size.
    size_ratio, distance_ratio, size_alone, true_size = [], [], [], []
    corrective = {"vertex": [], "similarity": [], "points_px": [], "points_px_off": []}
    for _ in range(n):
        alpha, state, camera, lms, clean = synthetic_case(model, rng, schemes, noise_px)
        convention = FC.MEDIAPIPE if "mediapipe478" in schemes else FC.ANNOTATION
        if rendered:
            image = render_synthetic(model, alpha, state, camera)
            try:
                lms = F.detect_landmarks(image, "mediapipe")
            except Exception:
                missed += 1
                continue
        t0 = time.perf_counter()
        ident, states, cams, ls_list = FP.fit_landmarks(
            model, [lms], [(480, 640)], focal=camera.fx if given_focal else None,
            convention=None if rendered else convention)
        focal_err.append(abs(cams[0].fx / camera.fx - 1.0))
        seconds.append(time.perf_counter() - t0)
        if not rendered and convention == FC.ANNOTATION:
            offset = F.fit_corrective(ls_list, ident, states, cams, FS.Priors())
            faces = FaceParams.empty(1, model.num_expression)
            faces.rotation[0], faces.translation[0] = states[0].rotation, states[0].translation
            faces.expression[0], faces.valid[0] = states[0].expression, True
            for off, key in ((None, "points_px"), (offset, "points_px_off")):
                fit = VideoFit(Identity(ident, offset=off), faces, cams[0])
                pred = FP.projected_landmarks(fit, model)[0]
                corrective[key].append(float(np.linalg.norm(pred - clean["ibug68"],
                                                             axis=1).mean()))
            face = FM.model_arrays(model).face_vertices
            fitted = FM.vertex_positions(model, ident, states[0].expression, offset)
            true_v = FM.vertex_positions(model, alpha, state.expression)
            corrective["vertex"].append(rigid_vertex_error(model, ident, states[0].expression,
                                                           alpha, state.expression,
                                                           offset=offset))
            corrective["similarity"].append(sim_error(fitted[face], true_v[face]))
        verts_err.append(rigid_vertex_error(model, ident, states[0].expression, alpha,
                                            state.expression))
        face = FM.model_arrays(model).face_vertices
        fitted_v = FM.vertex_positions(model, ident, states[0].expression)[face]
        true_v = FM.vertex_positions(model, alpha, state.expression)[face]
        sim_err.append(sim_error(fitted_v, true_v))
        ratio = rms_size(fitted_v) / rms_size(true_v)
        size_ratio.append(ratio)
        distance_ratio.append(states[0].translation[2] / state.translation[2])
        size_alone.append(rigid_error(true_v * ratio, true_v))
        true_size.append(rigid_error(fitted_v / ratio, true_v))
        pose_err.append(pose_error_deg(states[0].rotation, state.rotation))
    return {"faces": n, "noise_px": noise_px, "schemes": list(schemes),
            "missed_by_detector": missed,
            "median_vertex_mm": float(np.median(verts_err)),
            "median_vertex_mm_similarity_aligned": float(np.median(sim_err)),
            "median_pose_err_deg": float(np.median(pose_err)),
            "p90_pose_err_deg": float(np.percentile(pose_err, 90)),
            "landmark_fit_s_median": float(np.median(seconds)),
            "focal": "given (true)" if given_focal else "estimated",
            "median_focal_rel_err": float(np.median(focal_err)),
            "median_size_err_pct": float(np.median(np.abs(np.array(size_ratio) - 1)) * 100),
            "p90_size_err_pct": float(np.percentile(np.abs(np.array(size_ratio) - 1), 90) * 100),
            "size_vs_distance_corr": float(np.corrcoef(size_ratio, distance_ratio)[0, 1]),
            "median_vertex_mm_size_error_alone": float(np.median(size_alone)),
            "median_vertex_mm_at_true_size": float(np.median(true_size)),
            **({} if not corrective["vertex"] else {
                "corrective_median_vertex_mm": float(np.median(corrective["vertex"])),
                "corrective_median_vertex_mm_similarity_aligned":
                    float(np.median(corrective["similarity"])),
                "reported_68_err_px_without_corrective": float(np.mean(corrective["points_px"])),
                "reported_68_err_px_with_corrective":
                    float(np.mean(corrective["points_px_off"]))})}


def real_nme(model) -> dict:
    from fitting import fit as F
    from fitting import photo as FP
    from fitting.choice import dlib_points_for
    from fitting.detection import detect_faces_bounded
    from fitting.synthetic import nme
    from morph3d.io.images import read_image

    folder = MEDIA / "annotated"
    takeo = np.array((folder / "takeo.pts").read_text().split("{")[1].split("}")[0].split(),
                     float).reshape(68, 2) - 1.0
    lenna = np.array(json.loads((folder / "lenna.ljson").read_text())["groups"]["LJSON"]
                     ["landmarks"]["points"], float)[:, ::-1]
    out = {}
    for name, file, truth in (("takeo", "takeo.ppm", takeo), ("lenna", "lenna.png", lenna)):
        image = read_image(folder / file)
        dlib = F.detect_landmarks(image, "dlib")["ibug68"]
        mp = F.detect_landmarks(image, "mediapipe")
        both = {"ibug68": dlib, "mediapipe478": mp["mediapipe478"]}  # = "dlib+mediapipe"
        mp_faces = detect_faces_bounded(image, "mediapipe")
        on_box = dlib_points_for(image, mp_faces.boxes[int(np.argmax(mp_faces.areas()))])
        missed = {"ibug68": on_box, "mediapipe478": mp["mediapipe478"]}
        fitted = {}
        for key, lms, corrective in (("fitted_mediapipe", mp, None),
                                     ("fitted_dlib_mediapipe", both, None),
                                     ("fitted_dlib_mediapipe_no_corrective", both, False),
                                     ("fitted_dlib_predictor_on_mediapipe_box", missed, None),
                                     ("fitted_dlib_mediapipe_if_dlib_missed", mp, None)):
            backend = "mediapipe" if key == "fitted_mediapipe" else "dlib+mediapipe"
            fit = FP.fit_photo(image, model, landmarks=lms, photometric=False, backend=backend,
                              corrective=corrective)[0]
            fitted[key] = nme(FP.projected_landmarks(fit, model)[0], truth)
        out[name] = {**fitted, "dlib": nme(dlib, truth), "mediapipe": nme(mp["ibug68"], truth),
                     "dlib_predictor_on_mediapipe_box": nme(on_box, truth)}
    return out


def video(model, max_frames: int | None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fitting import photo as FP
    from fitting.video import fit_video, video_landmarks

    path = MEDIA / "nggyup.mp4"
    raw = video_landmarks(path, max_frames=max_frames, smooth=False, progress=False).points
    from fitting.smooth import smooth_trajectory

    smoothed = {s: smooth_trajectory(p) for s, p in raw.items()}
    timings: list[float] = []
    t0 = time.perf_counter()
    fit = fit_video(path, model, landmarks=smoothed, max_frames=max_frames, progress=False,
                    timings=timings)
    total = time.perf_counter() - t0
    fitted = FP.projected_landmarks(fit, model)
    det = raw["ibug68"]
    both = fit.faces.valid[1:] & fit.faces.valid[:-1] & np.isfinite(det).all(axis=(1, 2))[1:] \
        & np.isfinite(det).all(axis=(1, 2))[:-1]
    motion_fit = np.linalg.norm(np.diff(fitted, axis=0), axis=2).mean(1)[both].mean()
    motion_raw = np.linalg.norm(np.diff(det, axis=0), axis=2).mean(1)[both].mean()
    k = 30  # nose tip... iBUG 30
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(det[:, k, 0], lw=0.8, label="raw detector")
    ax.plot(smoothed["ibug68"][:, k, 0], lw=0.8, label="smoothed")
    ax.plot(fitted[:, k, 0], lw=0.8, label="fitted model")
    ax.set_xlabel("frame")
    ax.set_ylabel("x of iBUG 30 (nose tip), px")
    ax.legend()
    fig.tight_layout()
    (ROOT / "docs").mkdir(exist_ok=True)
    fig.savefig(ROOT / "docs" / "fitting_trajectory.png", dpi=100)
    return {"frames": fit.num_frames, "faceless": int(len(fit.faceless)),
            "video_motion_ratio": float(motion_fit / motion_raw),
            "fit_ms_per_frame": float(np.median(timings[1:])),
            "fit_ms_per_frame_p90": float(np.percentile(timings[1:], 90)),
            "video_fit_total_s_excluding_detection": total}


def photo_seconds(model) -> dict:
    from fitting import fit as F
    from fitting import photo as FP
    from morph3d.io.images import read_image

    image = read_image(MEDIA / "mark.jpg")
    lms = F.detect_landmarks(image)
    out = {}
    for key, photometric in (("landmarks_only", False), ("photometric_first_call", True),
                             ("photometric", True)):
        t0 = time.perf_counter()
        FP.fit_photo(image, model, landmarks=lms, photometric=photometric)
        out["photo_fit_s_" + key] = time.perf_counter() - t0
    # The annotation path (dlib's 68 + mediapipe's 478): + the corrective deformation.
    both = F.detect_landmarks(image, "dlib+mediapipe")
    t0 = time.perf_counter()
    FP.fit_photo(image, model, landmarks=both, backend="dlib+mediapipe")
    out["photo_fit_s_dlib_mediapipe_photometric"] = time.perf_counter() - t0
    return out


def corrective_transfer(model, pairs_per_clip: int = 72) -> dict:
    from fitting import correspondence as FC
    from fitting import fit as F
    from fitting import photo as FP
    from fitting import pose as FPose
    from fitting import solvers as FS

    cache = ROOT / "out" / "derive_ibug68_detections.npz"
    if not cache.is_file():
        return {"skipped": f"no {cache.relative_to(ROOT)} (run tools/derive_ibug68.py)"}
    z = np.load(cache)
    names = [str(n) for n in z["names"]]

    def lms(i: int) -> dict:
        return {"ibug68": z["dlib"][i].astype(np.float64),
                "mediapipe478": z["mediapipe"][i].astype(np.float64)}

    def size(i: int) -> tuple[int, int]:
        return tuple(int(v) for v in z["sizes"][i])

    def source(i: int) -> tuple[np.ndarray, np.ndarray]:
        a, st, cams, ls = FP.fit_landmarks(model, [lms(i)], [size(i)], convention=FC.ANNOTATION)
        return a, F.fit_corrective(ls, a, st, cams, FS.Priors())

    def error(i: int, alpha: np.ndarray, offset: np.ndarray | None) -> float:
        a, st, cams, ls = FP.fit_landmarks(model, [lms(i)], [size(i)], identity=alpha,
                                          convention=FC.ANNOTATION, offset=offset)
        rows = ls[0].scheme_slices["ibug68"]
        pred = FPose.project(ls[0].positions(a, st[0].expression)[rows], st[0].rotation,
                             st[0].translation, cams[0])
        dlib = lms(i)["ibug68"]
        iod = np.linalg.norm(dlib[36] - dlib[45])
        return float(np.linalg.norm(pred - dlib, axis=1).mean() / iod * 100)

    clips = ("nggyup.mp4", "orig.webm")
    frames = {c: [i for i, n in enumerate(names) if n.startswith(c + "#")
                  and "mirrored" not in n] for c in clips}
    out = {}
    for clip, other in (clips, clips[::-1]):
        fr = frames[clip]
        _, other_offset = source(frames[other][len(frames[other]) // 2])
        rows = []
        for s in fr[::max(1, len(fr) // 6)][:6]:
            alpha, offset = source(s)
            k = fr.index(s)
            targets = [t for j, t in enumerate(fr) if abs(j - k) >= 10]
            for t in targets[::max(1, len(targets) // (pairs_per_clip // 6))][:pairs_per_clip // 6]:
                rows.append([error(t, alpha, None), error(t, alpha, offset),
                             error(t, alpha, other_offset)])
        r = np.array(rows)
        out[clip] = {"pairs": len(r), "nme_to_dlib_no_offset": float(r[:, 0].mean()),
                     "nme_to_dlib_own_offset": float(r[:, 1].mean()),
                     "nme_to_dlib_other_persons_offset": float(r[:, 2].mean()),
                     "own_offset_better_fraction": float((r[:, 1] < r[:, 0]).mean())}
    return out


# --------------------------------------------------------------------------------------------
# Turned heads: textured renders by yaw bin, real detectors, the photo fit
# --------------------------------------------------------------------------------------------

YAW_BINS = ((0.0, 20.0), (20.0, 40.0), (40.0, 60.0))
# The jaw points on the side turned away from the camera: iBUG 9-16 (model x > 0) at
# yaw > 0, 0-7 at yaw < 0 (yaw as `fitting.photo.head_pose_degrees` gives it).
FAR_JAW = {1.0: (9, 10, 11, 12, 13, 14, 15, 16), -1.0: (0, 1, 2, 3, 4, 5, 6, 7)}
# (backend, focal): "estimated" as `morph3d fit` does, "true" = the render's (diagnostic).
# "glasses": a frame drawn over the render (`draw_glasses`) before detection. Backend
# "true 68": no detector, the true 68 points + 1.5 px noise fitted as dlib's (the fit's own
# floor on the same faces).
# Backend "embedded 478": no detector, the model's own mediapipe478 points projected at the
# true pose (and the 68 derived from them by `fitting.landmark_maps`), fitted as the
# "mediapipe" backend's points: a perfect detector as the model's correspondences define
# it, so its error is the mediapipe path's correspondence floor (its 478 embedding, the map
# and the iBUG table the derived 68 are matched to).
TURNED_RUNS = (("mediapipe", "estimated"), ("dlib+mediapipe", "estimated"),
               ("mediapipe", "true"), ("dlib+mediapipe", "true"),
               ("mediapipe", "estimated, glasses"), ("dlib+mediapipe", "estimated, glasses"),
               ("true 68", "estimated"), ("true 68", "true"),
               ("embedded 478", "estimated"), ("embedded 478", "true"))
# iBUG-68 point groups for the detectors' signed offsets from the truth.
IBUG68_GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
                 "eyes": range(36, 48), "mouth": range(48, 68)}
TEXTURE_PHOTO = "mark.jpg"


def photo_texture(model) -> np.ndarray:
    """A realistic albedo texture (T x T x 3 float in [0, 1]): `TEXTURE_PHOTO` fitted with
    lighting (`fit_photo`), its unseen texels completed classically (mirror + pull-push).
    Cached under out/ (keyed by the model's vertex count)."""
    from fitting import photo as FP
    from morph3d.neural.texture_completion import complete_uv_texture

    cache = ROOT / "out" / f"bench_fitting_texture_{model.num_vertices}.npz"
    if cache.is_file():
        return np.load(cache)["texture"]
    fit = FP.fit_photo(MEDIA / TEXTURE_PHOTO, model, photometric=True)[0]
    texture = complete_uv_texture(fit.identity.texture, fit.identity.confidence).texture
    cache.parent.mkdir(exist_ok=True)
    np.savez_compressed(cache, texture=texture.astype(np.float32))
    return texture


def draw_glasses(image: np.ndarray, model, alpha: np.ndarray, state, camera,
                 rng: np.random.Generator) -> np.ndarray:
    """A dark glasses frame drawn over a rendered face (a copy): two rims (ellipses, about
    50 x 36 mm) 12 mm in front of the eyes, the bridge, and the temple on the side facing
    the camera towards the ear, projected with the face's pose; rim 2-4 mm thick."""
    import cv2

    from fitting import correspondence as FC
    from fitting import model_arrays as FM
    from fitting import pose as FPose

    arrays = FM.model_arrays(model)
    ids, bary = arrays.landmarks[FC.ibug68_table(arrays, FC.ANNOTATION)]
    pts = np.einsum("lc,lcd->ld", bary, FM.vertex_positions(model, alpha, state.expression)[ids])
    front = pts[36:48, 2].max() + 12.0
    t = np.linspace(0, 2 * np.pi, 48)
    f = camera.fx / state.translation[2]
    thick = max(2, int(round(rng.uniform(2.0, 4.0) * f)))
    colour = tuple(int(c) for c in rng.uniform(5, 60, 3))
    out = image.copy()
    rims = []
    for eye in (pts[36:42], pts[42:48]):
        c = eye.mean(0)
        rim = np.stack([c[0] + 25.0 * np.cos(t), c[1] - 1.0 + 18.0 * np.sin(t),
                        np.full(len(t), front)], 1)
        rims.append(rim)
        uv = FPose.project(rim, state.rotation, state.translation, camera)
        cv2.polylines(out, [np.round(uv).astype(np.int32)], True, colour, thick, cv2.LINE_AA)
    inner = [rims[0][np.argmax(rims[0][:, 0])], rims[1][np.argmin(rims[1][:, 0])]]
    bridge = np.linspace(inner[0], inner[1], 8) + np.array([0, 4.0, 0])
    lines = [bridge]
    R = FPose.rotation_matrix(state.rotation)
    near = -1.0 if R[2, 0] > 0 else 1.0  # the model-x side facing the camera
    rim = rims[0] if near < 0 else rims[1]
    outer = rim[np.argmax(near * rim[:, 0])]
    ear = pts[0 if near < 0 else 16]
    lines.append(np.linspace(outer, np.array([ear[0], outer[1], ear[2] - 5.0]), 8))
    for line in lines:
        uv = FPose.project(line, state.rotation, state.translation, camera)
        cv2.polylines(out, [np.round(uv).astype(np.int32)], False, colour, thick, cv2.LINE_AA)
    return out


def signed_pose_error_deg(fitted: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(pitch, yaw towards frontal) of a fitted head rotation against the true one (axis-angle,
    model -> camera), deg, in the head's own yaw-pitch-roll angles (`turned_case`'s "YXZ"):
    pitch > 0 = the fitted head is tilted more chin-down (the top of the head towards the
    camera) than the true one; yaw towards frontal > 0 = the fitted |yaw| is smaller."""
    from scipy.spatial.transform import Rotation

    from fitting import photo as FP
    from fitting import pose as FPose

    def angles(r: np.ndarray) -> np.ndarray:
        return Rotation.from_matrix(FP.FRONT.T @ FPose.rotation_matrix(r)).as_euler(
            "YXZ", degrees=True)

    a, b = angles(fitted), angles(true)
    return float(a[1] - b[1]), float(abs(b[0]) - abs(a[0]))


def projected_table(model, table: str, alpha: np.ndarray, state, camera) -> np.ndarray:
    """L x 2 px: the model's landmark table `table` on the true face at the true pose."""
    from fitting import model_arrays as FM
    from fitting import pose as FPose

    ids, bary = FM.model_arrays(model).landmarks[table]
    points = np.einsum("lc,lcd->ld", bary, FM.vertex_positions(model, alpha, state.expression)[ids])
    return FPose.project(points, state.rotation, state.translation, camera)


def turned_case(model, rng: np.random.Generator, yaw_range: tuple[float, float]):
    """One random face (identity ~ N(0, I), sparse expression) with |yaw| in `yaw_range`
    (deg, either side), pitch +-10, roll +-5 deg, 600 mm from a 640 x 480, f = 800 px
    camera: (identity, FrameState, camera, true 68 points L x 2 px (`annotated_68`), yaw
    deg)."""
    from scipy.spatial.transform import Rotation

    from fitting import photo as FP
    from fitting import pose as FPose
    from fitting.params import CameraParams
    from fitting.synthetic import annotated_68

    alpha = rng.standard_normal(model.num_identity)
    beta = rng.uniform(0, 0.5, model.num_expression) * (rng.uniform(size=model.num_expression)
                                                        < 0.1)
    yaw = rng.uniform(*yaw_range) * rng.choice([-1.0, 1.0])
    head = Rotation.from_euler("YXZ", [yaw, rng.uniform(-10, 10), rng.uniform(-5, 5)],
                               degrees=True).as_matrix()
    state = FPose.FrameState(FPose.axis_angle(FP.FRONT @ head),
                             np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 600.0]), beta)
    camera = CameraParams.default_for(640, 480, 800.0)
    return alpha, state, camera, annotated_68(model, alpha, state, camera), yaw


def render_textured(model, texture: np.ndarray, alpha: np.ndarray, state, camera,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The face rendered with `texture` under soft SH light over a smooth random
    background: (H x W x 3 uint8, H x W bool coverage)."""
    import cv2
    import torch

    from fitting import model_arrays as FM
    from render.helpers import render_mesh

    h, w = camera.height, camera.width
    noise = cv2.resize(rng.uniform(0.15, 0.6, (6, 8, 3)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    sh = torch.zeros(1, 9, 3)
    sh[0, 0] = 0.9
    sh[0, 1:4] = torch.tensor(rng.uniform(-0.25, 0.25, 3), dtype=torch.float32)[:, None]
    data = model.data
    verts = FM.vertex_positions(model, alpha, state.expression)
    with torch.no_grad():
        out = render_mesh(torch.as_tensor(verts, dtype=torch.float32)[None], model.triangles,
                          camera.to_camera(state.rotation, state.translation),
                          texture_image=torch.as_tensor(texture, dtype=torch.float32),
                          uv_coords=torch.as_tensor(data.uv_coords, dtype=torch.float32),
                          uv_triangles=torch.as_tensor(data.uv_triangles),
                          sh_coeffs=sh, background=torch.as_tensor(noise)[None])
    return ((np.clip(out.image[0].numpy(), 0, 1) * 255).astype(np.uint8),
            out.coverage[0].numpy())


def turned(model, per_bin: int, seed: int = 0, save: Path | None = None) -> dict:
    """Textured synthetic renders by yaw bin, landmarks by the real detectors, fitted as
    `morph3d fit` fits a photo (landmarks only: lighting does not move the geometry)."""
    import cv2

    from fitting import fit as F
    from fitting import model_arrays as FM
    from fitting import photo as FP
    from fitting.landmark_maps import ibug68_from_mediapipe478
    from fitting.synthetic import outline_distance_px, pose_error_deg

    texture = photo_texture(model)
    face = FM.model_arrays(model).face_vertices
    out: dict = {"faces_per_bin": per_bin, "texture": TEXTURE_PHOTO, "seed": seed}
    for lo, hi in YAW_BINS:
        rng = np.random.default_rng([seed, int(lo)])
        rows: dict = {b: {"nme_pct": [], "nme_jaw_pct": [], "nme_raw_pct": [], "pose_deg": [],
                          "vertex_mm_rigid": [], "vertex_mm_similarity": [], "missed": 0,
                          "far_jaw_outline_px": [], "dlib_missed_mediapipe_68_used": 0,
                          "pitch_deg": [], "yaw_towards_frontal_deg": [], "offset_mm": []}
                      for b in TURNED_RUNS}
        outline = []  # the truth's far-side jaw points to the rendered outline, px
        for k in range(per_bin):
            alpha, state, camera, truth, yaw = turned_case(model, rng, (lo, hi))
            image, coverage = render_textured(model, texture, alpha, state, camera, rng)
            outline.append(float(np.median(outline_distance_px(
                truth[list(FAR_JAW[float(np.sign(yaw))])], coverage))))
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(save / f"yaw{int(lo):02d}_{k:02d}.png"),
                            cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            iod = np.linalg.norm(truth[36] - truth[45])
            true_v = FM.vertex_positions(model, alpha, state.expression)[face]
            glasses = draw_glasses(image, model, alpha, state, camera, rng)
            if save is not None:
                cv2.imwrite(str(save / f"yaw{int(lo):02d}_{k:02d}_glasses.png"),
                            cv2.cvtColor(glasses, cv2.COLOR_RGB2BGR))
            for backend, focal in TURNED_RUNS:
                r = rows[backend, focal]
                try:
                    if backend == "true 68":
                        lms = {"ibug68": truth + 1.5 * np.random.default_rng(
                            [seed, int(lo), k]).standard_normal(truth.shape)}
                    elif backend == "embedded 478":
                        mp = projected_table(model, "mediapipe478", alpha, state, camera)
                        lms = {"mediapipe478": mp, "ibug68": ibug68_from_mediapipe478(mp)}
                    else:
                        lms = F.detect_landmarks(glasses if "glasses" in focal else image,
                                                 backend)
                except Exception:
                    r["missed"] += 1
                    continue
                fit = FP.fit_photo(image, model, landmarks=lms,
                                   backend={"true 68": "dlib", "embedded 478": "mediapipe"}
                                   .get(backend, backend),
                                   photometric=False,
                                   focal=camera.fx if focal == "true" else None)[0]
                pred = FP.projected_landmarks(fit, model)[0]
                err = np.linalg.norm(pred - truth, axis=1) / iod * 100
                r["nme_pct"].append(float(err.mean()))
                if backend == "dlib+mediapipe" and np.allclose(
                        lms["ibug68"], ibug68_from_mediapipe478(lms["mediapipe478"])):
                    r["dlib_missed_mediapipe_68_used"] += 1
                r["nme_jaw_pct"].append(float(err[:17].mean()))
                far = FAR_JAW[float(np.sign(yaw))]
                r["far_jaw_outline_px"].append(float(np.median(
                    outline_distance_px(pred[list(far)], coverage))))
                r["nme_raw_pct"].append(float(np.linalg.norm(lms["ibug68"] - truth, axis=1)
                                              .mean() / iod * 100))
                r["pose_deg"].append(pose_error_deg(fit.faces.rotation[0].astype(np.float64),
                                                    state.rotation))
                pitch, towards = signed_pose_error_deg(fit.faces.rotation[0].astype(np.float64),
                                                       state.rotation)
                r["pitch_deg"].append(pitch)
                r["yaw_towards_frontal_deg"].append(towards)
                # The raw 68 points' offset from the truth, mm at the face (x mirrored to
                # yaw > 0, y down): per-group means that stay put across faces and poses are
                # a convention / correspondence difference, not detector noise.
                off = (lms["ibug68"] - truth) * state.translation[2] / camera.fx
                off[:, 0] *= np.sign(yaw)
                r["offset_mm"].append(off)
                fitted_v = FM.vertex_positions(model, fit.identity.coefficients.astype(np.float64),
                                               fit.faces.expression[0].astype(np.float64),
                                               fit.identity.offset)[face]
                r["vertex_mm_rigid"].append(rigid_error(fitted_v, true_v))
                r["vertex_mm_similarity"].append(sim_error(fitted_v, true_v))
        key = f"yaw_{int(lo)}_{int(hi)}"
        out[key] = {"truth_far_jaw_to_outline_px_median": float(np.median(outline))}
        for (backend, focal), r in rows.items():
            summary = {"detected": len(r["nme_pct"]), "missed_by_detector": r["missed"]}
            if backend == "dlib+mediapipe":
                summary["dlib_missed_mediapipe_68_used"] = r["dlib_missed_mediapipe_68_used"]
            if r["offset_mm"]:
                off = np.array(r["offset_mm"])
                summary["raw_68_offset_mm_by_group"] = {
                    g: {"x_mean": float(off[:, list(ix), 0].mean()),
                        "y_mean": float(off[:, list(ix), 1].mean()),
                        "y_sd_across_faces": float(off[:, list(ix), 1].mean(1).std())}
                    for g, ix in IBUG68_GROUPS.items()}
            for name in ("nme_pct", "nme_jaw_pct", "nme_raw_pct", "pose_deg", "pitch_deg",
                         "yaw_towards_frontal_deg", "vertex_mm_rigid", "vertex_mm_similarity",
                         "far_jaw_outline_px"):
                vals = np.array(r[name])
                summary[("mean_" if name.startswith("nme") else "median_") + name] = (
                    float(vals.mean() if name.startswith("nme") else np.median(vals))
                    if len(vals) else None)
            out[key][f"{backend}, {focal} focal"] = summary
        print(key, json.dumps(out[key]), flush=True)
    return out


PARTS = ("synthetic", "real", "video", "photo", "transfer", "turned")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", required=True)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--per-bin", type=int, default=None,
                    help="turned: faces per yaw bin (default 12, --quick 4)")
    ap.add_argument("--seed", type=int, default=0,
                    help="turned: the faces' seed (choose settings on one, report on another)")
    ap.add_argument("--save-renders", type=Path, default=None,
                    help="turned: write the rendered faces here (PNG)")
    args = ap.parse_args()
    from morph3d.model.registry import load_model

    model = load_model("default")
    n = 20 if args.quick else 200
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} cores", "quick": args.quick,
                    "load_average_start": os.getloadavg()}
    if "synthetic" in args.only:
        syn = synthetic(model, n, rendered=False)
        result["synthetic"] = syn
        result["synthetic_median_vertex_mm"] = syn["median_vertex_mm"]
        result["synthetic_pose_err_deg"] = syn["median_pose_err_deg"]
        result["synthetic_estimated_focal"] = synthetic(model, n, rendered=False,
                                                        given_focal=False)
        # Diagnostic: the same faces without landmark noise = what landmarks alone can tell
        # (the depth of a frontal face is not in its landmarks; the prior decides it).
        result["synthetic_noise_free"] = synthetic(model, n, rendered=False, noise_px=0.0)
        result["synthetic_68_only"] = synthetic(model, n, rendered=False, schemes=("ibug68",))
        result["rendered"] = synthetic(model, max(5, n // 4), rendered=True)
    if MEDIA.is_dir():
        if "real" in args.only:
            result["real_nme_iod"] = real_nme(model)
        if "video" in args.only:
            result.update(video(model, 90 if args.quick else None))
        if "photo" in args.only:
            result.update(photo_seconds(model))
    if "turned" in args.only and MEDIA.is_dir():
        result["turned"] = turned(model, args.per_bin or (4 if args.quick else 12),
                                  seed=args.seed, save=args.save_renders)
    if "transfer" in args.only:
        result["corrective_transfer"] = corrective_transfer(model, 24 if args.quick else 72)
    result["load_average_end"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
