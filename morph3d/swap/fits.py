"""Stages 2-4 of the swap: the clip's fit (landmarks, identity, per-frame parameters) and the
source's fit (identity and UV albedo from the photo(s), openings and occluders hidden).

Each stage returns its result with a `StageRun` (its seconds, whether the work folder had
it, its notes); the driver puts those into the swap's summary.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from morph3d.errors import InputError, Morph3dError
from morph3d.swap.cache import (
    _load_npz,
    _save_npz,
    clip_key,
    load_cached,
    model_key,
    work_directory,
)
from morph3d.swap.options import SOURCE_FORMAT, WORK_FORMAT, SwapOptions, file_digest
from morph3d.swap.stages import StageHook, stage


@dataclass(frozen=True)
class StageRun:
    """What one fitting stage did, for the swap's summary: its name (the summary's key),
    wall time in seconds, whether its result was read from the work folder, and its notes
    for the user, in the order they arose."""

    name: str
    seconds: float
    cached: bool
    notes: tuple[str, ...] = ()


def face_selection(options: SwapOptions) -> tuple[str | np.ndarray, str | None]:
    """Which of the target's faces to take, as `fitting.video.video_landmarks` wants it (a
    rule, or the reference photo's face embedding), and the reference photo's digest."""
    if options.target_face_ref is None:
        return str(options.target_face), None
    from fitting.choice import reference_embedding

    return reference_embedding(options.target_face_ref), file_digest(options.target_face_ref)


def fit_clips(target: Path, model, options: SwapOptions, hook: StageHook | None = None
              ) -> tuple[list, tuple[StageRun, StageRun]]:
    """Stages 2-3 (cached): one VideoFit per face the swap replaces: the chosen face's, or
    with target face "all" every person's (`fit_people`), and the two stages' runs
    ("landmarks", "fit clip"). `hook` sees those stages (`morph3d.swap.stages`)."""
    if options.target_face.rule == "all":
        return fit_people(target, model, options, hook)
    fit, runs = fit_clip(target, model, options, hook)
    return [fit], runs


def landmarks_stage(path: Path, compute, hook: StageHook | None
                    ) -> tuple[dict[str, np.ndarray], StageRun]:
    """The landmarks stage: the clip's landmarks read from `path` in the work folder, or
    `compute()`d and saved there, and the stage's run."""
    t = time.perf_counter()
    with stage(hook, "landmarks"):
        landmarks, note = load_cached(path, _load_npz, "landmarks")
        cached = landmarks is not None
        if not cached:
            landmarks = compute()
            _save_npz(path, landmarks)
    return landmarks, StageRun("landmarks", time.perf_counter() - t, cached, _notes(note))


def _notes(*notes: str | None) -> tuple[str, ...]:
    return tuple(n for n in notes if n is not None)


def fit_clip(target: Path, model, options: SwapOptions, hook: StageHook | None = None
             ) -> tuple[object, tuple[StageRun, StageRun]]:
    """Stages 2-3 (cached): the actor's VideoFit (from its landmarks), and the runs of the
    stages "landmarks" and "fit clip"."""
    from fitting.params import VideoFit
    from fitting.video import fit_video, video_landmarks

    if options.target_face.rule == "all":
        raise InputError("a clip fit (a template) holds one face: target face \"all\" is "
                         "for the swap")
    select, ref_digest = face_selection(options)
    key = clip_key(target, options, ref_digest)
    folder = work_directory(options) / f"clip-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    landmarks_path = folder / "landmarks.npz"
    fit_path = folder / f"fit-{model_key(model)}.npz"

    def track() -> dict[str, np.ndarray]:
        found = video_landmarks(target, options.backend, select, options.max_frames,
                                progress=not options.quiet)
        return on_source_timeline(target, {**found.points, "scene_cut": found.scene_cut},
                                  options.max_frames)

    landmarks, landmarks_run = landmarks_stage(landmarks_path, track, hook)
    scene_cut = landmarks.pop("scene_cut", None)

    t = time.perf_counter()
    with stage(hook, "fit clip"):
        fit, note = load_cached(fit_path, VideoFit.load, "clip fit")
        cached = fit is not None
        if not cached:
            fit = fit_video(target, model, landmarks=landmarks, backend=options.backend,
                            max_frames=options.max_frames, progress=not options.quiet,
                            scene_cut=scene_cut)
            fit.save(fit_path, compress=False)
    return fit, (landmarks_run,
                 StageRun("fit clip", time.perf_counter() - t, cached, _notes(note)))


# A person seen in fewer frames than this (or than the clip has) is left alone by target face
# "all": a face found for a frame or two is more often a false detection, and a swapped face
# that flashes in and out looks worse than the original.
MIN_PERSON_FRAMES = 3


def fit_people(target: Path, model, options: SwapOptions, hook: StageHook | None = None
               ) -> tuple[list, tuple[StageRun, StageRun]]:
    """Stages 2-3 (cached) for target face "all": every person of the clip (face tracks
    joined where the tracker split one person, `fitting.people.people`), largest
    first, each fitted as its own clip fit; and the two stages' runs ("fit clip" is cached
    when every person's fit was)."""
    from fitting.params import VideoFit
    from fitting.video import fit_video

    key = clip_key(target, options, None)
    folder = work_directory(options) / f"clip-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    landmarks_path = folder / "people.npz"

    found, landmarks_run = landmarks_stage(landmarks_path, lambda: on_source_timeline(
        target, people_landmarks(target, options), options.max_frames), hook)
    scene_cut = found.pop("scene_cut", None)
    people = sorted({int(k.split("/", 1)[0]) for k in found})

    t = time.perf_counter()
    fits, cached, notes = [], True, []
    with stage(hook, "fit clip"):
        for person in people:
            path = folder / f"fit-{model_key(model)}-{person}.npz"
            fit, note = load_cached(path, VideoFit.load, "clip fit")
            notes.extend(_notes(note))
            if fit is None:
                cached = False
                landmarks = {k.split("/", 1)[1]: v for k, v in found.items()
                             if k.startswith(f"{person}/")}
                fit = fit_video(target, model, landmarks=landmarks, backend=options.backend,
                                max_frames=options.max_frames, progress=not options.quiet,
                                scene_cut=scene_cut)
                fit.save(path, compress=False)
            fits.append(fit)
    return fits, (landmarks_run,
                  StageRun("fit clip", time.perf_counter() - t, cached, tuple(notes)))


def people_landmarks(target: Path, options: SwapOptions) -> dict[str, np.ndarray]:
    """Every person's smoothed landmarks over the clip, as `fitting.video.video_landmarks`
    gives one face's: {"K/scheme": F x L x 2 pixels, NaN where absent} for person K (0 =
    largest), and "scene_cut". Morph3dError when the clip has no face."""
    from tqdm import tqdm

    from fitting.people import joined_trajectory, people
    from fitting.smooth import smooth_tracks
    from fitting.track import track_faces
    from morph3d.io.media import iter_pictures, probe_video

    info = probe_video(target)
    total = (info.frame_count if options.max_frames is None
             else min(info.frame_count, options.max_frames))
    frames = tqdm(iter_pictures(target, stop=options.max_frames), total=total,
                  desc="detecting faces", unit="frame", disable=options.quiet, leave=False)
    tracks = track_faces(frames, options.backend, max_frames=options.max_frames)
    if not len(tracks):
        raise Morph3dError(f"no face found in {target}")
    tracks = smooth_tracks(tracks)
    out: dict[str, np.ndarray] = {}
    person = 0
    for pieces in people(tracks):  # the tracker may split one person at a shot cut
        trajectories = {s: joined_trajectory(tracks, pieces, s) for s in tracks.landmarks}
        seen = int(np.isfinite(next(iter(trajectories.values()))).all(axis=(1, 2)).sum())
        if seen < min(MIN_PERSON_FRAMES, total):
            continue
        out.update({f"{person}/{s}": p for s, p in trajectories.items()})
        person += 1
    if not person:
        raise Morph3dError(f"no face found in {target}")
    out["scene_cut"] = tracks.scene_cut.copy()
    return out


def on_source_timeline(target: Path, landmarks: dict[str, np.ndarray],
                       max_frames: int | None) -> dict[str, np.ndarray]:
    """Landmark rows placed at their frames' indices (NaN rows for undecodable frames).

    `video_landmarks` numbers rows by decoded frame, so after a corrupt frame every later
    row would belong to a later frame than the index the fit and the render give it (the
    face drifts by one frame per lost frame, the last frames lose their face). Only a
    damaged clip (fewer rows than frames) pays for the second decoding pass that finds
    which frames were lost.
    """
    from morph3d.io.media import iter_frames, probe_video

    info = probe_video(target)
    total = info.frame_count if max_frames is None else min(info.frame_count, max_frames)
    rows = len(next(iter(landmarks.values())))
    if rows >= total:
        return landmarks
    indices = np.array([frame.index for frame in iter_frames(target, stop=max_frames)])
    if len(indices) != rows:
        return landmarks  # not the same frames as the landmark pass: leave them as they are
    length = max(total, int(indices[-1]) + 1) if len(indices) else total
    placed = {}
    for scheme, points in landmarks.items():
        empty = False if points.dtype == bool else np.nan  # a lost frame starts no shot
        full = np.full((length, *points.shape[1:]), empty, points.dtype)
        full[indices] = points
        placed[scheme] = full
    return placed


# Below this many pixels between the eye centres (a face under about 100 px wide) a source
# photo holds well under half the detail of the source texture (about 95 texels between the
# eyes on the embedded model's 512 px texture) and of a 720p talking head: the swap says so.
SMALL_SOURCE_EYES_PX = 40


@dataclass
class SourceFaces:
    """The source photos, decoded, and the face chosen in each (`find_source_faces`)."""

    images: list[np.ndarray]
    landmarks: list[dict[str, np.ndarray]]  # per photo {scheme: L x 2 pixels}
    notes: tuple[str, ...]


def find_source_faces(sources: list[Path], options: SwapOptions,
                      first_photo: np.ndarray | None = None) -> SourceFaces:
    """Decode the source photos and choose the face in each (`options.source_face`): the
    part of the source fit that can reject a photo, so the swap runs it before the clip's
    long stages. `first_photo`: sources[0] already decoded by the caller (a large photo's
    decoding costs several times its pixels: once per job)."""
    from fitting.choice import choose_photo_face
    from morph3d.composite.masks import face_geometry
    from morph3d.io.images import read_image

    images = [first_photo if k == 0 and first_photo is not None else read_image(s)
              for k, s in enumerate(sources)]
    landmarks, notes = [], []
    for img, src in zip(images, sources, strict=True):
        # One detector's boxes choose the face, whatever the landmark backend (bounded cost
        # for any size).
        chosen = choose_photo_face(img, options.backend, options.source_face,
                                   f"source photo {src}")
        if chosen.faces_found > 1:
            notes.append(f"{src.name}: {chosen.faces_found} faces found, using "
                         f"{chosen.describe()}")
        if chosen.turns:
            notes.append(f"{src.name}: the photo lies sideways or upside down; its face was "
                         f"measured turned upright ({90 * chosen.turns} deg)")
        eyes_px = face_geometry(chosen.landmarks).iod
        if eyes_px < SMALL_SOURCE_EYES_PX:
            notes.append(f"{src.name}: the face is small ({eyes_px:.0f} px between the eyes): "
                         f"the swapped face will be as blurred; a photo with "
                         f"{SMALL_SOURCE_EYES_PX}+ px between the eyes gives a sharper one")
        landmarks.append(chosen.landmarks)
    return SourceFaces(images, landmarks, tuple(notes))


def fit_source(sources: list[Path], model, options: SwapOptions, faces: SourceFaces,
               actor_identity: np.ndarray | None = None) -> tuple[object, StageRun]:
    """Stage 4 (cached): the user's identity and completed UV albedo, and the stage's run
    ("fit source").

    actor_identity: the clip fit's identity coefficients of the face the source replaces;
    the photo's identity is fitted with its prior about them instead of about the model's
    mean face. One photo's landmarks leave much of the identity to the prior (and split the
    photo's expression from its identity by the prior alone); whatever the photo does not
    decide then stays the actor's, so the identity transfer (source minus actor) moves
    the actor's face only where the photo says the source differs (BENCHMARKS.md, "The
    source photo's identity fitted about the actor's").

    The unseen texels are filled by the learned net (`morph3d.neural.completion`) when refine
    is "neural" and its weights load (the net is closer on hidden texels than the classical
    fill and keeps the swaps' identity: BENCHMARKS.md, Refinement), otherwise by the
    classical completion (mirror + pull-push): an uncompleted texture would have black holes
    wherever the photo did not see the head."""
    from fitting.params import VideoFit
    from fitting.photo import fit_photo
    from fitting.solvers import Priors
    from morph3d.neural.completion import INFERENCE_VERSION, complete_texture, load_completion_net

    t = time.perf_counter()
    notes: list[str] = list(faces.notes)
    completion = "classic"
    if options.refine == "neural":
        net = load_completion_net()  # warns and returns None when the weights are missing
        if net is not None:
            completion = (f"neural-{net.manifest.get('sha256', 'user')[:12]}"
                          f"-v{INFERENCE_VERSION}")
        else:
            notes.append("texture-completion weights missing: used the classical "
                         "completion")
    choice = options.source_face
    face = (f"face={choice}" if choice.reference is None
            else f"face-ref={file_digest(Path(choice.reference))}")
    # To 1e-4 of a standard deviation: a clip fit that differs only in its last bits (another
    # thread count's sums) gives the same source fit and finds the same cache entry.
    prior_mean = (None if actor_identity is None
                  else np.round(np.asarray(actor_identity, np.float64), 4))
    about = ("mean" if prior_mean is None
             else hashlib.sha256(prior_mean.tobytes()).hexdigest()[:16])
    key = hashlib.sha256("|".join([*(file_digest(s) for s in sources), model_key(model),
                                   options.backend, f"w{WORK_FORMAT}", f"s{SOURCE_FORMAT}",
                                   completion, face, f"about={about}"]
                                  ).encode()).hexdigest()[:20]
    path = work_directory(options) / f"source-{key}.npz"
    fit, note = load_cached(path, VideoFit.load, "source fit")
    notes.extend(_notes(note))
    cached = fit is not None
    if not cached:
        # No corrective deformation (`Identity.offset`): the swap carries the identity over
        # by its coefficients, so the texture must come from that same shape.
        fits = fit_photo(faces.images, model, landmarks=faces.landmarks,
                         backend=options.backend, corrective=False,
                         priors=Priors(identity_mean=prior_mean))
        fit = fits[0]  # the identity all photos share, with the first photo's pose
        if fit.identity.texture is not None:
            hide_openings(fits, model, faces.landmarks)
            hide_forehead_occluders(fit, model)
            done, _ = complete_texture(fit.identity.texture, fit.identity.confidence, model,
                                       "neural" if completion != "classic" else "classic")
            fit.identity.texture = done.texture.astype(np.float32)
        fit.save(path, compress=False)
    return fit, StageRun("fit source", time.perf_counter() - t, cached, tuple(notes))


def fit_sources(sources: list[Path], model, options: SwapOptions, faces: SourceFaces,
                clip_fits: list) -> tuple[list, StageRun]:
    """Stage 4 for every face the swap replaces: the source fitted about each actor's
    identity (`fit_source`), one fit per clip fit, and the stage's one run."""
    fits, runs = [], []
    for clip_fit in clip_fits:
        fit, run = fit_source(sources, model, options, faces, clip_fit.identity.coefficients)
        fits.append(fit)
        runs.append(run)
    notes = tuple(dict.fromkeys(n for run in runs for n in run.notes))
    return fits, StageRun("fit source", sum(run.seconds for run in runs),
                          all(run.cached for run in runs), notes)


def hide_openings(fits: list, model, landmarks: list[dict[str, np.ndarray]],
                  min_opening: float = 0.04) -> int:
    """Set the texture confidence to 0 where a photo showed what lies behind the face's
    openings on the skin around them (returns the number of texels hidden).

    `fits`: `fit_photo`'s one-frame fits, one per photo, sharing the Identity whose texture
    is changed; `landmarks`: each photo's points. Every photo is checked: the texture mixes
    them all, so an opening in any of them reached it.

    - Mouth: an open-mouthed photo puts its teeth and mouth darkness on the model's lips
      (the fitted lips part, their inner surfaces look straight at the teeth); rendered with
      the actor's closed mouth the swapped lips showed teeth. Lip and mouth triangles whose
      vertices all project inside the photo's inner-lip outline (iBUG 60-67) are hidden
      when the mouth is open (inner-lip height over mouth width >= `min_opening`).
    - Eyes: where the fitted lids reach into the photo's eye opening (iBUG 36-41, 42-47)
      they took the white of the eye, which drew pale "goggle" rings around the swapped
      eyes. Eye-region triangles other than the eyeballs' inside the opening are hidden.
    The completion then fills them from the visible skin and lip."""
    from fitting.model_arrays import vertex_positions
    from fitting.pose import project

    identity = fits[0].identity
    if identity.texture is None or identity.confidence is None:
        return 0
    mouth = model.region("lips") | model.region("mouth_interior") | model.region("teeth")
    lids = model.region("eyes") & ~model.region("eyeballs")
    triangles = np.asarray(model.data.triangles)
    hidden = np.zeros(identity.confidence.shape[:2], np.uint8)
    for fit, points in zip(fits, landmarks, strict=True):
        ibug = points.get("ibug68")
        if ibug is None or not np.isfinite(ibug).all():
            continue
        outlines = [(ibug[36:42], lids), (ibug[42:48], lids)]
        inner = ibug[60:68]
        width = float(np.linalg.norm(ibug[54] - ibug[48]))
        height = float(np.linalg.norm(inner[[5, 6, 7]] - inner[[3, 2, 1]], axis=1).mean())
        if width > 0 and height / width >= min_opening:
            outlines.append((inner, mouth))
        f = fit.faces
        verts = vertex_positions(model, identity.coefficients.astype(np.float64),
                                 f.expression[0].astype(np.float64))
        pixels = project(verts, f.rotation[0].astype(np.float64),
                         f.translation[0].astype(np.float64), fit.camera)
        for outline, allowed in outlines:
            polygon = outline.astype(np.float32)
            inside = np.zeros(len(verts), bool)
            for v in np.flatnonzero(allowed):
                inside[v] = cv2.pointPolygonTest(
                    polygon, (float(pixels[v, 0]), float(pixels[v, 1])), False) >= 0
            _fill_uv_triangles(hidden, model, np.flatnonzero(inside[triangles].all(1)))
    return _hide_texels(fits[0], hidden.astype(bool))


def _fill_uv_triangles(canvas: np.ndarray, model, triangle_ids: np.ndarray) -> None:
    """Set the texels of the given model triangles to 1 on a T x T uint8 UV canvas."""
    uv_triangles = np.asarray(model.data.uv_triangles)
    uv = np.asarray(model.data.uv_coords)
    size = canvas.shape[0]
    for t in triangle_ids:
        corners = uv[uv_triangles[t]] * [size, -size] + [0, size]  # texel x, row
        cv2.fillConvexPoly(canvas, np.round(corners * 16).astype(np.int32), 1,
                           lineType=cv2.LINE_8, shift=4)


def hide_forehead_occluders(fit, model, margin_mm: float = 4.0, sigmas: float = 6.0) -> int:
    """Set the texture confidence to 0 on forehead texels whose colour is not the photo's
    skin (returns the number hidden): a hat brim, fringe or glasses frame above the brows.

    The forehead texels feed the transfer's tone ratio below the fade above the brows; what
    the photo had there (Grace Hopper's cap in `make demo`) would darken the actor's
    forehead as a stripe. The skin model is fitted on the cheek texels
    the photo saw (`composite.skin_model_from_samples`, albedo, so shading is mostly out),
    the test is the compositor's occluder score (`non_skin_score` above `sigmas`); texels
    above the brows by `margin_mm` on the mean head are tested, and the completion then
    fills the hidden ones from the skin below and beside them.
    """
    from morph3d.composite.occluders import non_skin_score, skin_model_from_samples, ycrcb

    texture, confidence = fit.identity.texture, fit.identity.confidence
    if texture is None or confidence is None:
        return 0
    data = model.data
    mean, triangles = np.asarray(data.mean), np.asarray(data.triangles)
    ibug = data.landmarks["ibug68"].positions(mean, triangles)
    skin = model.region("face_skin") & ~model.region("eyes") & ~model.region("lips")
    brows_top = float(ibug[17:27, 1].max())
    forehead = skin & (mean[:, 1] > brows_top + margin_mm)
    # cheeks: beside the nose, from under the eyes down to the nose base
    eyes_low = float(ibug[[40, 41, 46, 47], 1].min())
    nose_half = 0.5 * float(abs(ibug[35, 0] - ibug[31, 0]))
    outer = 0.5 * float(abs(ibug[45, 0] - ibug[36, 0]))
    cheeks = (skin & (mean[:, 1] < eyes_low - 4.0) & (mean[:, 1] > ibug[33, 1])
              & (np.abs(mean[:, 0]) > nose_half + 4.0) & (np.abs(mean[:, 0]) < outer))
    size = confidence.shape[0]
    masks = []
    for vertices in (forehead, cheeks):
        canvas = np.zeros((size, size), np.uint8)
        _fill_uv_triangles(canvas, model, np.flatnonzero(vertices[triangles].all(1)))
        masks.append(canvas.astype(bool))
    forehead_texels, cheek_texels = masks
    level = confidence.reshape(size, size, -1)[..., 0]
    seen = level >= 0.5
    tex = np.clip(np.asarray(texture, np.float32), 0.0, 1.0)
    skin_model = skin_model_from_samples(ycrcb(tex)[cheek_texels & seen])
    if skin_model is None:
        return 0
    hidden = forehead_texels & (level > 0)
    # dark: 2.5 std below the cheeks' luma (and under 45 % of it), not the compositor's 5:
    # the albedo has its shading divided out, and a dark brim has almost no chroma to tell
    hidden &= non_skin_score(tex, skin_model, dark_sigmas=2.5) > sigmas
    return _hide_texels(fit, hidden)


def _hide_texels(fit, hidden: np.ndarray) -> int:
    """Set the fit's texture confidence to 0 on the T x T bool `hidden`; returns how many."""
    confidence = fit.identity.confidence
    shape = confidence.shape
    flat = confidence.reshape(shape[0], shape[1], -1)
    flat[hidden] = 0.0
    fit.identity.confidence = flat.reshape(shape)
    return int(hidden.sum())
