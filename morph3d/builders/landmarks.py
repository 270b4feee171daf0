"""Pin landmark schemes onto the model surface by detecting them on renders of the mean head.

The shipped detectors (dlib's 68-point iBUG predictor, mediapipe's 478-point face mesh) run
on flat-shaded renders of the mean face with painted lips, brows, irises and mouth. Each
detected pixel is mapped back to a triangle + barycentrics through the render's triangle-id
buffer; several slightly different views are averaged in 3D and snapped back onto the
surface, and the iBUG points are made left/right symmetric.

The model carries two iBUG-68 tables (`fitting.correspondence.ibug68_table` says which fit
uses which): "ibug68" from those renders, matched to the 68 points derived from mediapipe's
mesh (the swap's default input; its compositor reads this table too), and "ibug68_annotation",
`IBUG68_MEAN_MM`, derived from dlib on real faces (`tools/derive_ibug68.py`): the iBUG 300-W
annotation convention, matched to dlib's points and used for the reported 68 points.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from morph3d.builders.parts import vertex_parts
from morph3d.builders.preview import pixel_to_surface, render_preview, rotation_yaw_pitch
from morph3d.errors import ModelError
from morph3d.model.model import ModelData, SurfacePoints

# iBUG-68 left/right pairs (0-based); unlisted points lie on the mid-line.
IBUG68_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
       (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)
IBUG68_MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)
# Eye-contour points: iBUG 36-47 and the mediapipe eye rings (both eyes).
IBUG68_EYE = tuple(range(36, 48))
MEDIAPIPE_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
                 263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# Inner-lip points: with the mouth closed both lips meet, so each point must be pinned to
# its own lip (the lower lip moves with jawOpen, the upper lip does not).
IBUG68_UPPER_INNER_LIP = (61, 62, 63)
IBUG68_LOWER_INNER_LIP = (65, 66, 67)
MEDIAPIPE_UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415)
MEDIAPIPE_LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
# The iBUG-68 points on the mean head (mm), derived by tools/derive_ibug68.py from dlib's
# detections on 443 real faces (video frames and photos of ../shared/media and their mirror
# images; not the annotated test images): the model is fitted to each face, and each iBUG
# point is the frontally visible mean-head surface point whose projection agrees best with
# dlib's (jaw points 0-4/12-16: the height of their contour row), made symmetric. Renders
# of the painted mean (`detect_on_views`) put the brows too wide and jaw points 3/4/13 too
# high against the iBUG annotation convention: held-out NME to dlib 6.1 -> 4.5 %. Built as
# the "ibug68_annotation" table. (Re-derived from fits with the annotation-path settings of
# `fitting.fit`, the table moved little and the photo NME did not change: kept.)
IBUG68_MEAN_MM: tuple[tuple[float, float, float], ...] = (
    (-72.72, -2.46, -61.48),  # 0
    (-71.49, -20.67, -61.13),  # 1
    (-70.88, -39.14, -59.32),  # 2
    (-62.59, -58.31, -45.64),  # 3
    (-57.61, -75.28, -41.06),  # 4
    (-47.37, -89.70, -22.88),  # 5
    (-33.33, -100.88, -9.24),  # 6
    (-16.89, -107.82, 0.87),  # 7
    (0.00, -109.89, 3.96),  # 8
    (16.89, -107.82, 0.87),  # 9
    (33.33, -100.88, -9.24),  # 10
    (47.37, -89.70, -22.88),  # 11
    (57.61, -75.28, -41.06),  # 12
    (62.59, -58.31, -45.64),  # 13
    (70.88, -39.14, -59.32),  # 14
    (71.49, -20.67, -61.13),  # 15
    (72.72, -2.46, -61.48),  # 16
    (-56.72, 9.92, -4.84),  # 17
    (-49.89, 16.41, 7.36),  # 18
    (-38.13, 19.83, 19.01),  # 19
    (-25.44, 18.87, 24.61),  # 20
    (-13.33, 13.72, 26.00),  # 21
    (13.33, 13.72, 26.00),  # 22
    (25.44, 18.87, 24.61),  # 23
    (38.13, 19.83, 19.01),  # 24
    (49.89, 16.41, 7.36),  # 25
    (56.72, 9.92, -4.84),  # 26
    (0.00, -0.88, 23.46),  # 27
    (0.00, -12.53, 27.63),  # 28
    (0.00, -24.27, 34.76),  # 29
    (0.00, -36.71, 42.52),  # 30
    (-12.22, -45.42, 25.59),  # 31
    (-6.84, -47.20, 29.32),  # 32
    (0.00, -48.83, 30.85),  # 33
    (6.84, -47.20, 29.32),  # 34
    (12.22, -45.42, 25.59),  # 35
    (-40.84, -3.43, 10.29),  # 36
    (-33.77, 1.84, 15.02),  # 37
    (-25.89, 1.91, 15.53),  # 38
    (-18.74, -4.04, 12.28),  # 39
    (-25.59, -5.96, 15.07),  # 40
    (-33.81, -5.92, 14.69),  # 41
    (18.74, -4.04, 12.28),  # 42
    (25.89, 1.91, 15.53),  # 43
    (33.77, 1.84, 15.02),  # 44
    (40.84, -3.43, 10.29),  # 45
    (33.81, -5.92, 14.69),  # 46
    (25.59, -5.96, 15.07),  # 47
    (-23.28, -69.26, 19.90),  # 48
    (-14.94, -63.97, 28.27),  # 49
    (-6.26, -60.78, 32.66),  # 50
    (0.00, -62.32, 33.35),  # 51
    (6.26, -60.78, 32.66),  # 52
    (14.94, -63.97, 28.27),  # 53
    (23.28, -69.26, 19.90),  # 54
    (15.30, -75.89, 24.99),  # 55
    (6.57, -78.57, 28.28),  # 56
    (0.00, -78.91, 29.22),  # 57
    (-6.57, -78.57, 28.28),  # 58
    (-15.30, -75.89, 24.99),  # 59
    (-19.68, -68.22, 19.29),  # 60
    (-5.37, -66.85, 27.36),  # 61
    (0.00, -67.16, 27.57),  # 62
    (5.37, -66.85, 27.36),  # 63
    (19.68, -68.22, 19.29),  # 64
    (6.47, -68.81, 28.02),  # 65
    (0.00, -69.11, 29.35),  # 66
    (-6.47, -68.81, 28.02),  # 67
)

VIEWS = ((0.0, 0.0), (0.12, 0.0), (-0.12, 0.0), (0.0, 0.1), (0.0, -0.1))  # yaw, pitch (rad)


def detection_colors(model: ModelData) -> np.ndarray:
    """Per-vertex colours that make the mean head look enough like a face for detectors."""
    parts = vertex_parts(model)
    mean, r = model.mean, model.regions
    colors = np.tile([0.86, 0.70, 0.60], (len(mean), 1))
    colors[r["lips"]] = [0.68, 0.33, 0.33]
    colors[r["mouth_interior"]] = [0.25, 0.08, 0.08]
    colors[r["teeth"]] = [0.95, 0.95, 0.9]
    colors[r["tongue"]] = [0.7, 0.3, 0.3]
    for p in (4, 5):
        sel = parts == p
        centre = mean[sel].mean(0)
        d = mean[sel] - centre
        cos = d[:, 2] / (np.linalg.norm(d, axis=1) + 1e-9)
        eye = np.tile([0.95, 0.95, 0.95], (sel.sum(), 1))
        eye[cos > 0.80] = [0.35, 0.22, 0.12]  # iris
        eye[cos > 0.95] = [0.03, 0.03, 0.03]  # pupil
        colors[sel] = eye
        # Eyebrow: a band of skin 9-19 mm above the eye centre, within 24 mm sideways.
        skin = parts == 0
        brow = (skin & (mean[:, 1] > centre[1] + 9) & (mean[:, 1] < centre[1] + 19)
                & (np.abs(mean[:, 0] - centre[0]) < 24) & (mean[:, 2] > centre[2] - 5))
        colors[brow] = [0.30, 0.22, 0.16]
    return colors


def _dlib_model_path(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelError("face-recognition-models is not installed (pip install it)")
    return Path(spec.origin).parent / "models" / name


def detect_ibug68(image: np.ndarray) -> np.ndarray | None:
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_dlib_model_path("shape_predictor_68_face_landmarks.dat")))
    boxes = detector(image, 1)
    if len(boxes) == 0:
        return None
    box = max(boxes, key=lambda b: b.area())
    shape = predictor(image, box)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def detect_mediapipe478(image: np.ndarray) -> np.ndarray | None:
    import mediapipe as mp

    from fitting.mediapipe_backend import started_solution
    from morph3d.io.native_stderr import native_stderr_captured

    with native_stderr_captured():  # the graph's TFLite/absl start-up lines
        mesh = started_solution(mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=0.3))
    with mesh:
        result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    lms = result.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h] for p in lms], dtype=np.float64)


def closest_surface_points(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                           allowed: np.ndarray | None = None) -> SurfacePoints:
    """Snap 3D points to the closest point on the mesh (triangle + barycentrics)."""
    from scipy.spatial import cKDTree

    tri_ids = np.arange(len(triangles)) if allowed is None else np.nonzero(allowed)[0]
    centroids = vertices[triangles[tri_ids]].mean(1)
    tree = cKDTree(centroids)
    out_tri = np.empty(len(points), np.int64)
    out_bary = np.empty((len(points), 3), np.float32)
    for i, p in enumerate(points):
        _, cand = tree.query(p, k=min(24, len(tri_ids)))
        best = (np.inf, 0, None)
        for c in np.atleast_1d(cand):
            f = tri_ids[c]
            q, bary = _closest_point_on_triangle(p, *vertices[triangles[f]])
            d = np.sum((q - p) ** 2)
            if d < best[0]:
                best = (d, f, bary)
        out_tri[i], out_bary[i] = best[1], best[2]
    return SurfacePoints(out_tri, out_bary)


def _closest_point_on_triangle(p, a, b, c) -> tuple[np.ndarray, np.ndarray]:
    """Closest point to p on triangle abc and its barycentrics (Ericson, RTCD 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab @ ap, ac @ ap
    if d1 <= 0 and d2 <= 0:
        return a, np.array([1.0, 0, 0])
    bp = p - b
    d3, d4 = ab @ bp, ac @ bp
    if d3 >= 0 and d4 <= d3:
        return b, np.array([0, 1.0, 0])
    vc = d1 * d4 - d3 * d2
    if vc <= 0 and d1 >= 0 and d3 <= 0:
        v = d1 / (d1 - d3)
        return a + v * ab, np.array([1 - v, v, 0])
    cp = p - c
    d5, d6 = ab @ cp, ac @ cp
    if d6 >= 0 and d5 <= d6:
        return c, np.array([0, 0, 1.0])
    vb = d5 * d2 - d1 * d6
    if vb <= 0 and d2 >= 0 and d6 <= 0:
        w = d2 / (d2 - d6)
        return a + w * ac, np.array([1 - w, 0, w])
    va = d3 * d6 - d5 * d4
    if va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        return b + w * (c - b), np.array([0, 1 - w, w])
    denom = 1.0 / (va + vb + vc)
    v, w = vb * denom, vc * denom
    return a + ab * v + ac * w, np.array([1 - v - w, v, w])


def _positions(points: SurfacePoints, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    return points.positions(vertices, triangles)


def detect_on_views(model: ModelData, detector, count: int, size: int = 640,
                    views=VIEWS) -> np.ndarray:
    """Average 3D positions (mm) of a detector's points over several views of the mean."""
    colors = detection_colors(model)
    total = np.zeros((count, 3))
    hits = np.zeros(count)
    for yaw, pitch in views:
        rot = rotation_yaw_pitch(yaw, pitch)
        # Frame the face (not the whole head) so detectors see a face-sized object.
        render = render_preview(model.mean, model.triangles, colors, size=size, rotation=rot,
                                centre=np.array([0.0, -35.0, 0.0]), extent_mm=260.0)
        pts = detector(render.image)
        if pts is None:
            continue
        for i, p in enumerate(pts):
            hit = pixel_to_surface(render, model.triangles, p)
            if hit is None:
                continue
            f, bary = hit
            total[i] += bary @ model.mean[model.triangles[f]]
            hits[i] += 1
    if (hits == 0).any():
        raise ModelError("landmark detection failed on the renders of the mean head")
    return total / hits[:, None]


def symmetrize_ibug68(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    flip = np.array([-1.0, 1.0, 1.0])
    for a, b in IBUG68_PAIRS:
        pa = 0.5 * (points[a] + points[b] * flip)
        out[a], out[b] = pa, pa * flip
    for m in IBUG68_MIDLINE:
        out[m, 0] = 0.0
    return out


def snap_to_lid_margins(model: ModelData, parts: np.ndarray, points: np.ndarray,
                        size: int = 1024) -> np.ndarray:
    """Move eye-contour points onto the lid margin as seen from the front.

    Detectors on a flat-shaded render place the lid points loosely; the lid margin (skin
    pixels touching visible eyeball pixels in a frontal render) is where a blink moves the
    surface, so that is where the correspondence must sit.
    """
    centre, extent = np.array([0.0, 0.0, 0.0]), 120.0
    colors = np.ones((len(model.mean), 3))
    render = render_preview(model.mean, model.triangles, colors, size=size, centre=centre,
                            extent_mm=extent)
    ids = render.triangle_id
    tri_part = np.where(ids >= 0, parts[model.triangles[ids.clip(0), 0]], -1)
    eye = np.isin(tri_part, (4, 5))
    skin = tri_part == 0
    grown = eye.copy()
    grown[1:] |= eye[:-1]
    grown[:-1] |= eye[1:]
    grown[:, 1:] |= eye[:, :-1]
    grown[:, :-1] |= eye[:, 1:]
    margin = np.argwhere(skin & grown)[:, ::-1].astype(float)  # x, y
    scale = size / extent
    out = points.copy()
    for i, p in enumerate(points):
        pixel = np.array([(p[0] - centre[0]) * scale + (size - 1) / 2,
                          -(p[1] - centre[1]) * scale + (size - 1) / 2])
        q = margin[np.linalg.norm(margin - pixel, axis=1).argmin()]
        f, bary = pixel_to_surface(render, model.triangles, q)
        out[i] = bary @ model.mean[model.triangles[f]]
    return out


def pin_points(model: ModelData, points: np.ndarray, allowed: np.ndarray,
               overrides: dict[tuple[int, ...], np.ndarray]) -> SurfacePoints:
    """Snap points to the surface within `allowed` triangles, except index groups that get
    their own allowed triangles (lips, irises)."""
    tri = np.empty(len(points), np.int64)
    bary = np.empty((len(points), 3), np.float32)
    rest = np.ones(len(points), bool)
    for group, group_allowed in overrides.items():
        idx = list(group)
        pinned = closest_surface_points(points[idx], model.mean, model.triangles, group_allowed)
        tri[idx], bary[idx] = pinned.triangles, pinned.barycentrics
        rest[idx] = False
    pinned = closest_surface_points(points[rest], model.mean, model.triangles, allowed)
    tri[rest], bary[rest] = pinned.triangles, pinned.barycentrics
    return SurfacePoints(tri, bary)


def lip_triangles(model: ModelData, parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skin triangles of the upper and of the lower lip (by how far jawOpen moves them)."""
    skin_tris = (parts[model.triangles] == 0).all(1)
    jaw_drop = model.expression_basis[model.expression_names.index("jawOpen"), :, 1]
    tri_drop = jaw_drop[model.triangles].mean(1)
    return skin_tris & (tri_drop > -1.0), skin_tris & (tri_drop < -3.0)


def pin_ibug68(model: ModelData, points: np.ndarray, parts: np.ndarray) -> SurfacePoints:
    """68 x 3 points (mm, near the mean head) -> surface points: eye points on the lid
    margin, inner-lip points on their own lip, the rest on the closest skin."""
    skin_tris = (parts[model.triangles] == 0).all(1)
    upper_lip, lower_lip = lip_triangles(model, parts)
    ibug = np.array(points, np.float64)
    eye = list(IBUG68_EYE)
    ibug[eye] = snap_to_lid_margins(model, parts, ibug[eye])
    return pin_points(model, ibug, skin_tris, {
        IBUG68_UPPER_INNER_LIP: upper_lip, IBUG68_LOWER_INNER_LIP: lower_lip})


# Where the built model's "ibug68" table comes from: "renders" (dlib on renders of the mean,
# `detect_on_views`) or "dlib-derived" (`IBUG68_MEAN_MM`). Used as the table for the
# mediapipe-derived 68 points, the dlib-derived one made the swap worse on the moving clip
# (nggyup.mp4 with mark.jpg, id_dist_source 0.487 -> 0.524; orig.webm gaze error 0.048 ->
# 0.060; BENCHMARKS.md, Fitting), so "ibug68" stays render-derived and the dlib-derived
# points are the separate "ibug68_annotation" table (always built).
IBUG68_SOURCE = "renders"


def attach_landmarks(model: ModelData, log=print, ibug68_source: str = IBUG68_SOURCE
                     ) -> None:
    """Pin ibug68 (see `IBUG68_SOURCE`) and ibug68_annotation (`IBUG68_MEAN_MM`), detect
    mediapipe478 on renders of the mean, and store them on `model`."""
    parts = vertex_parts(model)
    skin_tris = (parts[model.triangles] == 0).all(1)
    eye_tris = np.isin(parts[model.triangles], (4, 5)).all(1)
    upper_lip, lower_lip = lip_triangles(model, parts)
    if ibug68_source == "renders":
        ibug = symmetrize_ibug68(detect_on_views(model, detect_ibug68, 68))
    elif ibug68_source == "dlib-derived":
        ibug = np.array(IBUG68_MEAN_MM)
    else:
        raise ModelError(f"unknown iBUG-68 source '{ibug68_source}'")
    model.landmarks["ibug68"] = pin_ibug68(model, ibug, parts)
    model.landmarks["ibug68_annotation"] = pin_ibug68(model, np.array(IBUG68_MEAN_MM), parts)
    mp = detect_on_views(model, detect_mediapipe478, 478)
    mp_eye = list(MEDIAPIPE_EYE)
    mp[mp_eye] = snap_to_lid_margins(model, parts, mp[mp_eye])
    model.landmarks["mediapipe478"] = pin_points(model, mp, skin_tris, {
        tuple(range(468, 478)): eye_tris, MEDIAPIPE_UPPER_INNER_LIP: upper_lip,
        MEDIAPIPE_LOWER_INNER_LIP: lower_lip})
    model.landmarks["anthropometric"] = anthropometric_points(model, parts)


ANTHROPOMETRIC_NAMES = ("nasion", "menton", "zygion_left", "zygion_right")


def anthropometric_points(model: ModelData, parts: np.ndarray) -> SurfacePoints:
    """Nasion, menton and the two zygia on the mean, for anthropometric checks.

    nasion: the deepest mid-line skin point between the eyes; menton: the lowest mid-line
    point of the chin (iBUG 8); zygia: the most lateral skin points of the cheekbone band
    (from the eyes down to the nose base) no more than 45 mm behind the outer eye corners,
    i.e. on the zygomatic arch in front of the ears.
    """
    mean, tris = model.mean, model.triangles
    ibug = model.landmarks["ibug68"].positions(mean, tris)
    skin = parts == 0
    mid = skin & (np.abs(mean[:, 0]) < 2.0)
    eye_y = ibug[[36, 39, 42, 45], 1].mean()
    band = mid & (np.abs(mean[:, 1] - (eye_y + 4)) < 10) & (mean[:, 2] > ibug[27, 2] - 25)
    nasion = mean[band][mean[band, 2].argmin()]  # deepest point of the nose root
    menton = ibug[8]
    low = ibug[33, 1]
    arch_z = ibug[[36, 45], 2].mean() - 45.0
    cheek = skin & (mean[:, 1] < eye_y) & (mean[:, 1] > low) & (mean[:, 2] > arch_z)
    cheek &= ~model.regions["eyes"]
    zl = mean[cheek][mean[cheek, 0].argmax()]
    zr = mean[cheek][mean[cheek, 0].argmin()]
    skin_tris = (parts[tris] == 0).all(1)
    return closest_surface_points(np.stack([nasion, menton, zl, zr]), mean, tris, skin_tris)
