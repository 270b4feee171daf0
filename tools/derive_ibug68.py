"""Re-derive the model's iBUG-68 correspondences from dlib's detections on real frames.

    python tools/derive_ibug68.py [--cache out/derive_ibug68_detections.npz]

Why: the model's ibug68 points were first found by running dlib on painted renders of the
mean head (`morph3d.builders.landmarks`). Renders are not photos: the fitted model's
projected brows came out wider than the iBUG annotation and jaw points 3/4/13 too high,
which kept the fitted real-photo NME behind raw dlib. dlib's predictor was trained on the
iBUG 300-W annotation, so its points on real faces carry the annotation convention.

How: dlib (68) and mediapipe (478) are run on real frames that are NOT the annotated test
images (every 2nd frame of nggyup.mp4, every frame of orig.webm, the photos in
../shared/media and skimage's astronaut) and on their mirror images (left/right balance);
each source weighs the same. Pass 1 fits each face to the dense mediapipe points only (the
ibug68 input left empty, so the fit does not depend on the table being derived); then, per
iBUG point, the frontally visible mean-head surface point near the old (render-derived)
point whose projection agrees best with dlib's over all faces (mean squared distance / dlib's
outer-eye-corner distance, clipped) is picked; the jaw-side points 0-4 and 12-16, which the
fit moves to the occluding contour (`fitting.correspondence.update_jaw_contour`), are
searched over the height of their contour row instead. Pass 2 does the same from fits to
dlib's 68 + mediapipe with the pass-1 points as the model's annotation table (as photos with
dlib's points are fitted, `fitting.correspondence.ibug68_table`; these fits know the jaw
line). The result is made left/right symmetric and printed as `IBUG68_MEAN_MM` for
`morph3d.builders.landmarks` (68 x 3 mm on the mean head): only those numbers go into the
code, nothing from the media. The build pins them as the "ibug68_annotation" table (the
"ibug68" table, matched to mediapipe's derived 68 points in the swap, stays render-derived:
see BENCHMARKS.md).
A held-out check (tables from the nggyup frames, scored on the rest) is printed first.
Detections and fits are cached under out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEDIA = ROOT.parent / "shared" / "media"
PHOTOS = ("mark.jpg", "khabenskii.jpg", "murakami_gray.jpg", "three_people.png",
          "aligned_source1.png", "aligned_source2.png", "aligned_source3.png",
          "aligned_target1.png", "aligned_target2.png", "aligned_target3.png")
VIDEOS = (("nggyup.mp4", 2), ("orig.webm", 1))


def images():
    """(name, RGB uint8) of every real frame used (never the annotated test images)."""
    from morph3d.io.images import read_image
    from morph3d.io.media import iter_frames

    for name in PHOTOS:
        yield name, read_image(MEDIA / name)
    try:
        from skimage import data

        yield "skimage-astronaut", np.ascontiguousarray(data.astronaut())
    except Exception:  # noqa: BLE001 - optional extra photo
        pass
    for name, step in VIDEOS:
        for frame in iter_frames(MEDIA / name):
            if frame.index % step == 0:
                yield f"{name}#{frame.index}", frame.rgb


def collect(cache: Path) -> dict[str, np.ndarray]:
    """dlib 68 + mediapipe 478 of the faces found by both (image and its mirror)."""
    from fitting.detection import get_landmark_backend

    dl, mp, sizes, names = [], [], [], []
    with get_landmark_backend("mediapipe") as mpd, get_landmark_backend("dlib") as dld:
        for name, rgb in images():
            for mirrored in (False, True):
                img = np.ascontiguousarray(rgb[:, ::-1]) if mirrored else rgb
                a, b = mpd.detect(img), dld.detect(img)
                if not len(a) or not len(b):
                    continue
                for k in range(len(a)):  # every mediapipe face with a dlib face on it
                    m = a.landmarks["mediapipe478"][k].astype(np.float64)
                    centres = b.landmarks["ibug68"].mean(1)
                    j = int(np.argmin(np.linalg.norm(centres - m.mean(0), axis=1)))
                    d = b.landmarks["ibug68"][j].astype(np.float64)
                    iod = np.linalg.norm(d[36] - d[45])
                    if np.linalg.norm(centres[j] - m.mean(0)) > 0.3 * iod:
                        continue
                    dl.append(d), mp.append(m), sizes.append(img.shape[:2])
                    names.append(name + (" mirrored" if mirrored else ""))
            print(name, len(dl), flush=True)
    out = {"dlib": np.array(dl), "mediapipe": np.array(mp), "sizes": np.array(sizes),
           "names": np.array(names)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "derive_ibug68_detections.npz")
    ap.add_argument("--collect-only", action="store_true")
    args = ap.parse_args()
    if args.cache.exists():
        det = dict(np.load(args.cache))
    else:
        det = collect(args.cache)
    print(f"{len(det['dlib'])} faces")
    if args.collect_only:
        return
    from morph3d.builders.head import BUILD_VERSION

    main_derive(det, args.cache.with_name(f"{args.cache.stem}_vproj_{BUILD_VERSION}.npy"))




# --------------------------------------------------------------------------------------------
# Fitting the faces (mediapipe only) and scoring candidate surface points against dlib
# --------------------------------------------------------------------------------------------


def fit_faces(model, det: dict[str, np.ndarray], with_dlib: bool = False,
              use: np.ndarray | None = None) -> np.ndarray:
    """F x V x 2: every model vertex projected under each face's fit to mediapipe's points
    (and dlib's 68 with the model's ibug68 points if `with_dlib`); faces not in `use` NaN."""
    from fitting import correspondence as FC
    from fitting import model_arrays as FM
    from fitting import photo as FP
    from fitting import pose as FPose

    out = np.full((len(det["dlib"]), model.num_vertices, 2), np.nan)
    nan68 = np.full((68, 2), np.nan)
    use = np.ones(len(out), bool) if use is None else use
    for i, (dl, mp, size) in enumerate(zip(det["dlib"], det["mediapipe"], det["sizes"],
                                           strict=True)):
        if not use[i]:
            continue
        lms = {"ibug68": dl if with_dlib else nan68, "mediapipe478": mp}
        # dlib's points: the annotation convention (the model's ibug68_annotation table, as
        # photos with dlib's points are fitted); without them, the mediapipe fit.
        alpha, states, cams, _ = FP.fit_landmarks(
            model, [lms], [tuple(size)], convention=FC.ANNOTATION if with_dlib else FC.MEDIAPIPE)
        st = states[0]
        verts = FM.vertex_positions(model, alpha, st.expression)
        out[i] = FPose.project(verts, st.rotation, st.translation, cams[0])
    return out


def face_weights(names: np.ndarray) -> np.ndarray:
    """Each source (nggyup, orig, the photos) weighs the same in total."""
    group = np.array([n.split("#")[0] if "#" in n else "photo" for n in names])
    w = np.zeros(len(names))
    for g in np.unique(group):
        w[group == g] = 1.0 / (group == g).sum()
    return w / w.sum()


def _scores(proj: np.ndarray, target: np.ndarray, iod: np.ndarray, w: np.ndarray,
            clip: float = 0.15) -> np.ndarray:
    """Weighted mean over faces of min(d, clip)^2, d = distance / IOD; proj F x C x 2."""
    d = np.linalg.norm(proj - target[:, None], axis=2) / iod[:, None]
    return (w[:, None] * np.minimum(d, clip) ** 2).sum(0)


def _bary_grid(steps: int = 8) -> np.ndarray:
    g = [(i, j, steps - i - j) for i in range(steps + 1) for j in range(steps + 1 - i)]
    return np.array(g, float) / steps


def best_surface_point(model, vproj: np.ndarray, target: np.ndarray, iod: np.ndarray,
                       w: np.ndarray, start: np.ndarray, allowed: np.ndarray,
                       radius_mm: float = 18.0) -> tuple[np.ndarray, float]:
    """The mean-head point (mm) among barycentric samples of the allowed triangles within
    `radius_mm` of `start` whose projections agree best with `target` (F x 2)."""
    tris = model.data.triangles
    cent = model.data.mean[tris].mean(1)
    cand = np.flatnonzero(allowed & (np.linalg.norm(cent - start, axis=1) < radius_mm))
    grid = _bary_grid()
    best = (np.inf, start)
    for chunk in np.array_split(cand, max(1, len(cand) // 64)):
        corners = vproj[:, tris[chunk]]  # F x T x 3 x 2
        proj = np.einsum("sc,ftcd->ftsd", grid, corners).reshape(len(vproj), -1, 2)
        s = _scores(proj, target, iod, w)
        k = int(np.argmin(s))
        if s[k] < best[0]:
            t, g = chunk[k // len(grid)], grid[k % len(grid)]
            best = (float(s[k]), g @ model.data.mean[tris[t]])
    return best[1], best[0]


def best_contour_height(model, vproj: np.ndarray, target: np.ndarray, iod: np.ndarray,
                        w: np.ndarray, start: np.ndarray, back: float
                        ) -> tuple[np.ndarray, float]:
    """The jaw-contour point: the row height whose per-face occluding-contour point (where
    the fit's `fitting.model_arrays.contour_candidates` row projects farthest outwards) agrees best
    with dlib; returned as that row's outermost point on the mean (a frontal view's)."""
    from fitting import model_arrays as FM

    arrays = FM.model_arrays(model)
    skin = FM._contour_skin(arrays, model.data.regions)
    best = (np.inf, start)
    side = np.sign(start[0])
    for y in np.arange(start[1] - 30.0, start[1] + 20.0, 1.0):
        point = np.array([start[0], y, start[2]])
        ids, wts = FM.contour_candidates(arrays, skin, point, back)
        if len(ids) < 3:
            continue
        p = wts[None, :, :1] * vproj[:, ids[:, 0]] + wts[None, :, 1:] * vproj[:, ids[:, 1]]
        # outward: along image x on the point's side (the faces are roughly upright)
        pick = p[np.arange(len(p)), np.argmax(side * p[..., 0], axis=1)]
        s = float(_scores(pick[:, None], target, iod, w)[0])
        if s < best[0]:
            mean = wts[:, :1] * arrays.mean[ids[:, 0]] + wts[:, 1:] * arrays.mean[ids[:, 1]]
            best = (s, mean[np.argmax(side * mean[:, 0])])
    return best[1], best[0]


def frontal_triangles(model, size: int = 1024) -> np.ndarray:
    """Triangles visible in an orthographic frontal render of the mean head."""
    from morph3d.builders.preview import render_preview

    data = model.data
    render = render_preview(data.mean, data.triangles, np.ones((len(data.mean), 3)), size=size,
                            centre=np.array([0.0, -35.0, 0.0]), extent_mm=260.0)
    seen = np.zeros(len(data.triangles), bool)
    ids = render.triangle_id
    seen[ids[ids >= 0]] = True
    return seen


def derive(model, det: dict[str, np.ndarray], vproj: np.ndarray, start: np.ndarray,
           use: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """68 x 3 mean-head points (mm) from the faces `use` (all by default), searched near
    `start` (68 x 3 mm), and per-point scores (weighted mean squared error / IOD)."""
    from fitting.model_arrays import CONTOUR_JAW
    from morph3d.builders.landmarks import (
        IBUG68_LOWER_INNER_LIP,
        IBUG68_UPPER_INNER_LIP,
        symmetrize_ibug68,
    )
    from morph3d.builders.parts import vertex_parts

    parts = vertex_parts(model.data)
    tris = model.data.triangles
    skin_v = parts == 0
    for name in ("eyes", "eyeballs", "mouth_interior", "teeth", "tongue", "lips"):
        if name in model.data.regions:
            skin_v = skin_v & ~model.data.regions[name]
    # Only surface seen in a frontal view of the mean: otherwise a point can slide in depth
    # (under the lip, behind the chin) where frontal faces cannot tell the difference.
    skin_tris = (parts[tris] == 0).all(1) & frontal_triangles(model)
    jaw_drop = model.data.expression_basis[model.expression_names.index("jawOpen"), :, 1]
    tri_drop = jaw_drop[tris].mean(1)
    allowed = {k: skin_tris & (tri_drop > -1.0) for k in IBUG68_UPPER_INNER_LIP}
    allowed.update({k: skin_tris & (tri_drop < -3.0) for k in IBUG68_LOWER_INNER_LIP})
    old = start
    use = np.ones(len(det["dlib"]), bool) if use is None else use
    dl, vproj = det["dlib"][use], vproj[use]
    iod = np.linalg.norm(dl[:, 36] - dl[:, 45], axis=1)
    w = face_weights(det["names"][use])
    new = old.copy()
    scores = {}
    for k in range(68):
        if k in CONTOUR_JAW:
            p, s = best_contour_height(model, vproj, dl[:, k], iod, w, old[k], old[0, 2] - 5.0)
        else:
            p, s = best_surface_point(model, vproj, dl[:, k], iod, w, old[k],
                                      allowed.get(k, skin_tris))
        new[k] = p
        scores[k] = s
    return symmetrize_ibug68(new), scores


def projected_table(model, vproj: np.ndarray, points: np.ndarray) -> np.ndarray:
    """F x 68 x 2: a 68-point table (mm on the mean) projected under each face's fit, the
    jaw-side points at their row's occluding contour (image x outwards)."""
    from fitting import model_arrays as FM
    from fitting.model_arrays import CONTOUR_JAW
    from morph3d.builders.landmarks import closest_surface_points
    from morph3d.builders.parts import vertex_parts

    arrays = FM.model_arrays(model)
    tris = model.data.triangles
    skin_tris = (vertex_parts(model.data)[tris] == 0).all(1)
    snap = closest_surface_points(points, model.data.mean, tris, skin_tris)
    corners = vproj[:, tris[snap.triangles]]  # F x 68 x 3 x 2
    out = np.einsum("lc,flcd->fld", snap.barycentrics.astype(np.float64), corners)
    skin = FM._contour_skin(arrays, model.data.regions)
    for k in CONTOUR_JAW:
        ids, wts = FM.contour_candidates(arrays, skin, points[k], points[0, 2] - 5.0)
        p = wts[None, :, :1] * vproj[:, ids[:, 0]] + wts[None, :, 1:] * vproj[:, ids[:, 1]]
        out[:, k] = p[np.arange(len(p)), np.argmax(np.sign(points[k, 0]) * p[..., 0], axis=1)]
    return out


def agreement(model, det: dict[str, np.ndarray], vproj: np.ndarray, points: np.ndarray,
              use: np.ndarray) -> float:
    """Weighted mean over faces of the mean point distance / IOD to dlib (the NME)."""
    dl = det["dlib"][use]
    iod = np.linalg.norm(dl[:, 36] - dl[:, 45], axis=1)
    pred = projected_table(model, vproj[use], points)
    nme = np.linalg.norm(pred - dl, axis=2).mean(1) / iod
    return float((face_weights(det["names"][use]) * nme).sum())


def render_start(model) -> np.ndarray:
    """The old definition, where the search starts: dlib on painted renders of the mean."""
    from morph3d.builders.landmarks import detect_ibug68, detect_on_views, symmetrize_ibug68

    return symmetrize_ibug68(detect_on_views(model.data, detect_ibug68, 68))


def two_passes(model, det: dict[str, np.ndarray], vproj_mp: np.ndarray, start: np.ndarray,
               use: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pass 1 from the mediapipe-only fits; pass 2 from fits to dlib's 68 + mediapipe (as a
    photo is fitted) with the pass-1 points in the model, which also know the jaw line.
    Returns (pass-1 points, pass-2 points, pass-2 scores), all from the faces `use`."""
    from fitting import model_arrays as FM
    from morph3d.builders.landmarks import pin_ibug68
    from morph3d.builders.parts import vertex_parts

    first, _ = derive(model, det, vproj_mp, start, use)
    saved = model.data.landmarks.get(FM.IBUG68_ANNOTATION)
    model.data.landmarks[FM.IBUG68_ANNOTATION] = pin_ibug68(model.data, first,
                                                            vertex_parts(model.data))
    FM._ARRAYS.pop(model, None)
    try:
        vproj = fit_faces(model, det, with_dlib=True, use=use)
    finally:
        if saved is None:
            del model.data.landmarks[FM.IBUG68_ANNOTATION]
        else:
            model.data.landmarks[FM.IBUG68_ANNOTATION] = saved
        FM._ARRAYS.pop(model, None)
    second, scores = derive(model, det, vproj, start, use)
    return first, second, scores


def main_derive(det: dict[str, np.ndarray], vproj_cache: Path) -> None:
    from morph3d.model.registry import load_model

    model = load_model("default")
    if vproj_cache.exists():
        vproj = np.load(vproj_cache)
    else:
        vproj = fit_faces(model, det)
        np.save(vproj_cache, vproj)
    start = render_start(model)
    # Held-out check: derive on the nggyup frames, score on orig.webm and the photos (with
    # the mediapipe-only fits, which do not depend on the iBUG points).
    train = np.array(["nggyup" in n for n in det["names"]])
    first, second, _ = two_passes(model, det, vproj, start, train)
    scores = [agreement(model, det, vproj, t, ~train) for t in (start, first, second)]
    print(f"held-out NME to dlib (orig.webm + photos, {int((~train).sum())} faces), tables "
          "from the nggyup frames: renders {:.4f}, pass 1 {:.4f}, pass 2 {:.4f}".format(*scores))
    _, new, scores = two_passes(model, det, vproj, start, np.ones(len(train), bool))
    np.set_printoptions(suppress=True)
    print("IBUG68_MEAN_MM = (")
    for k, p in enumerate(new):
        print(f"    ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f}),  # {k}")
    print(")")
    print("RMS / IOD (%) per point:",
          {k: round(float(np.sqrt(s)) * 100, 1) for k, s in scores.items()})


if __name__ == "__main__":
    main()
