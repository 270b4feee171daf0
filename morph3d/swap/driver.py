"""morph3d swap: put the user's face into a clip (the main job).

Stages, in order (each with its own progress bar; the first three are cached in a work
directory keyed by the inputs' content hashes, so a re-run or `--resume` skips them):
1. probe      check the inputs and the output path before any work.
2. landmarks  detect, track, select and smooth the actor's face (fitting.video).
3. fit clip   one actor identity, per-frame pose, expression and SH lighting.
4. fit source the user's identity and UV albedo from the photo(s), texture completed.
5. render     per frame: the actor's own pixels warped into the source's face shape (source
              identity at the actor's expression and pose) and toned by the source-to-actor
              albedo ratio (morph3d.transfer), composited (morph3d.composite), encoded with
              the audio copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from morph3d.errors import InputError, Morph3dError
from morph3d.paths import cache_dir, sha256_file

if TYPE_CHECKING:  # torch is imported where it is used: bad paths fail in well under 1 s
    import torch

# Cache format of the work folder. 2: landmarks carry the shot cuts, fits are keyed by the
# model build; 3: repeated frames are held.
WORK_FORMAT = 3
# Source fits only. 2: non-skin texels above the brows hidden (`hide_forehead_occluders`);
# 3: highlights toned down in the albedo (`fitting.fit.compress_highlights`).
SOURCE_FORMAT = 3
REGION_CHANNELS = ("face_skin", "eyes", "lips", "mouth_interior", "teeth", "tongue", "eyeballs")
VIDEO_OUTPUT_SUFFIXES = (".mkv", ".m4v", ".mov", ".mp4")  # what media.VideoWriter writes


@dataclass
class SwapOptions:
    target_face: str = "largest"  # "largest" or "index:N" (N-th largest track, 0-based)
    target_face_ref: Path | None = None  # a photo of the person to replace
    model: str = "default"
    backend: str = "mediapipe"  # landmark backend
    device: str = "cpu"
    renderer: str | None = None  # render backend (None: MORPH3D_RENDERER or auto)
    refine: str = "auto"  # neural | classic | none | auto (= neural; each net when it loads)
    work_resolution: int = 256  # rendered face crop size in pixels before upscaling
    # H.264 quality of a video output (x264 CRF, 0 = lossless, 51 = worst). 14 keeps the
    # detail that CRF 18 took from bearded / textured faces (BENCHMARKS.md, swap benchmark):
    # mark.jpg on orig.webm scores identity 0.386 instead of 0.390, at 1.30 MB for the clip
    # whose original is 1.39 MB (CRF 18: 0.81 MB).
    crf: int = 14
    # Kept for the CLI's --resume: finished stages are always reused from the work directory
    # (keyed by content, so a changed input is never mistaken for the old one); the render
    # pass itself starts again.
    resume: bool = False
    quiet: bool = False
    preview: Path | None = None
    max_frames: int | None = None
    work_dir: Path | None = None

    def validate(self) -> SwapOptions:
        """Check every option as the command line does, in one line each (`InputError`),
        without any work: for options built from text that argparse never saw (a batch
        manifest). Returns `self`."""
        from fitting.faces import BACKEND_NAMES

        def whole(name: str, value: object, low: int, high: int | None = None) -> None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number, got {value!r}")
            if value < low or (high is not None and value > high):
                limit = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise InputError(f"{name} must be {limit}, got {value}")

        face = str(self.target_face)
        if face != "largest" and not (face.startswith("index:") and face[6:].isdigit()):
            raise InputError(f"target_face takes 'largest' or a number (0 = largest), "
                             f"not {self.target_face!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"model must be a name or a file, got {self.model!r}")
        backend = str(self.backend).strip().lower().replace("_", "-")
        if backend not in (*BACKEND_NAMES, "fan"):
            raise InputError(f"unknown landmark backend {self.backend!r} "
                             f"(choose one of {', '.join(BACKEND_NAMES)})")
        kind, _, index = str(self.device).strip().lower().partition(":")
        if not ((kind == "cpu" and not index)
                or (kind == "cuda" and (not index or index.isdigit()))):
            raise InputError(f"unknown device {self.device!r} (cpu, cuda or cuda:N)")
        if self.renderer is not None and str(self.renderer).strip().lower() != "auto":
            from render.backends import BACKEND_NAMES as RENDERERS

            if str(self.renderer).strip().lower() not in RENDERERS:
                raise InputError(f"unknown renderer {self.renderer!r} "
                                 f"(choose one of {', '.join(RENDERERS)} or auto)")
        if self.refine not in ("auto", "neural", "classic", "none"):
            raise InputError(f"refine takes auto, neural, classic or none, not {self.refine!r}")
        whole("work_resolution", self.work_resolution, 1)
        whole("crf", self.crf, 0, 51)
        if self.max_frames is not None:
            whole("max_frames", self.max_frames, 1)
        return self


@dataclass
class SwapSummary:
    output: str
    frames: int = 0
    frames_swapped: int = 0
    frames_without_face: int = 0
    frames_skipped_corrupt: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    fps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    refine: str = "classic"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Stage 1: inputs
# ---------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """A short content key for cache folder names (the first 20 hex digits of SHA-256)."""
    return sha256_file(path)[:20]


def check_paths(sources: list[Path], target: Path, output: Path,
                inputs: tuple[Path, ...] = (), outputs: tuple[Path, ...] = ()) -> None:
    """Fail early, in one line, on anything that would fail later (after minutes of fitting).

    `inputs`: other files read (a reference photo); `outputs`: other files written (preview,
    summary). The outputs go through the one guard, `morph3d.outputs.check_outputs`: none
    may be an input (symlinks and hard links included), each folder must exist and be
    writable."""
    from morph3d.outputs import check_outputs

    all_inputs = [*sources, target, *inputs]
    for p in all_inputs:
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            raise InputError(f"input is a folder, not a file: {p}")
    check_outputs(all_inputs, (output, *outputs))


def output_kind(target_is_image: bool, output: Path) -> None:
    from morph3d.media import is_image_path

    if target_is_image and not is_image_path(output):
        raise InputError(f"the target is an image, so the output must be one too: {output}")
    if not target_is_image and is_image_path(output):
        raise InputError(f"the target is a video, so the output must be a video: {output}")
    if not target_is_image and output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        raise InputError(f"unsupported video output extension '{output.suffix}' "
                         f"({', '.join(VIDEO_OUTPUT_SUFFIXES)}): {output}")


# ---------------------------------------------------------------------------------------------
# Stages 2-4: cached fits
# ---------------------------------------------------------------------------------------------


def work_directory(options: SwapOptions) -> Path:
    path = options.work_dir or cache_dir() / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_key(model) -> str:
    """The model a fit was made with (name, build, sizes): fits of another build are stale."""
    from morph3d.template import model_signature

    signature = json.dumps(model_signature(model), sort_keys=True)
    return hashlib.sha256(signature.encode()).hexdigest()[:12]


def clip_key(target: Path, options: SwapOptions, ref_digest: str | None) -> str:
    parts = [file_digest(target), options.model, options.backend, options.target_face,
             ref_digest or "", str(options.max_frames), f"w{WORK_FORMAT}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def face_selection(options: SwapOptions) -> tuple[str | np.ndarray, str | None]:
    """Which of the target's faces to take, as `fitting.video.video_landmarks` wants it (a
    rule, or the reference photo's face embedding), and the reference photo's digest."""
    if options.target_face_ref is None:
        return options.target_face, None
    from fitting.track import reference_embedding
    from morph3d.media import read_image

    reference = read_image(options.target_face_ref)
    try:
        select = reference_embedding(reference, options.backend)
    except InputError as exc:
        raise InputError(f"{exc} {options.target_face_ref}") from None
    return select, file_digest(options.target_face_ref)


def fit_clip(target: Path, model, options: SwapOptions, summary: SwapSummary):
    """Stages 2-3 (cached): the actor's landmarks and VideoFit."""
    from fitting.params import VideoFit
    from fitting.video import fit_video, video_landmarks

    select, ref_digest = face_selection(options)
    key = clip_key(target, options, ref_digest)
    folder = work_directory(options) / f"clip-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    landmarks_path = folder / "landmarks.npz"
    fit_path = folder / f"fit-{model_key(model)}.npz"

    t = time.perf_counter()
    landmarks = load_cached(landmarks_path, _load_npz, "landmarks", summary)
    if landmarks is not None:
        summary.cached.append("landmarks")
    else:
        found = video_landmarks(target, options.backend, select, options.max_frames,
                                progress=not options.quiet)
        landmarks = on_source_timeline(target, {**found.points, "scene_cut": found.scene_cut},
                                       options.max_frames)
        _save_npz(landmarks_path, landmarks)
    scene_cut = landmarks.pop("scene_cut", None)
    summary.seconds["landmarks"] = time.perf_counter() - t

    t = time.perf_counter()
    fit = load_cached(fit_path, VideoFit.load, "clip fit", summary)
    if fit is not None:
        summary.cached.append("fit clip")
    else:
        fit = fit_video(target, model, landmarks=landmarks, backend=options.backend,
                        max_frames=options.max_frames, progress=not options.quiet,
                        scene_cut=scene_cut)
        fit.save(fit_path)
    summary.seconds["fit clip"] = time.perf_counter() - t
    return fit


def on_source_timeline(target: Path, landmarks: dict[str, np.ndarray],
                       max_frames: int | None) -> dict[str, np.ndarray]:
    """Landmark rows placed at their frames' indices (NaN rows for undecodable frames).

    `video_landmarks` numbers rows by decoded frame, so after a corrupt frame every later
    row would belong to a later frame than the index the fit and the render give it (the
    face drifts by one frame per lost frame, the last frames lose their face). Only a
    damaged clip (fewer rows than frames) pays for the second decoding pass that finds
    which frames were lost.
    """
    from morph3d.media import iter_frames, probe_video

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


def fit_source(sources: list[Path], model, options: SwapOptions, summary: SwapSummary,
               first_photo: np.ndarray | None = None):
    """Stage 4 (cached): the user's identity and completed UV albedo.

    The unseen texels are filled by the learned net (`morph3d.completion_net`) when refine
    is "neural" or "auto" and its weights load, otherwise by the classical completion
    (mirror + pull-push). The shipped net (trained with the swap's openings hidden) is
    closer on hidden texels and keeps the swaps' identity (BENCHMARKS.md, Refinement); the
    session-2 net had cost identity, so "auto" used the classical fill then. "none" also
    uses the classical fill: an uncompleted texture has black holes wherever the photo did
    not see the head."""
    from fitting.faces import detect_faces_bounded
    from fitting.fit import fit_photo
    from fitting.params import VideoFit
    from morph3d.completion_net import INFERENCE_VERSION, complete_texture, load_completion_net
    from morph3d.media import read_image

    t = time.perf_counter()
    completion = "classic"
    if options.refine in ("neural", "auto"):
        net = load_completion_net()  # warns and returns None when the weights are missing
        if net is not None:
            completion = (f"neural-{net.manifest.get('sha256', 'user')[:12]}"
                          f"-v{INFERENCE_VERSION}")
        else:
            summary.notes.append("texture-completion weights missing: used the classical "
                                 "completion")
    key = hashlib.sha256("|".join([*(file_digest(s) for s in sources), model_key(model),
                                   options.backend, f"w{WORK_FORMAT}", f"s{SOURCE_FORMAT}",
                                   completion]
                                  ).encode()).hexdigest()[:20]
    path = work_directory(options) / f"source-{key}.npz"
    fit = load_cached(path, VideoFit.load, "source fit", summary)
    if fit is not None:
        summary.cached.append("fit source")
    else:
        # `first_photo`: sources[0] already decoded by the caller (a large photo's decoding
        # costs several times its pixels: once per job).
        images = [first_photo if k == 0 and first_photo is not None else read_image(s)
                  for k, s in enumerate(sources)]
        landmarks = []
        for img, src in zip(images, sources, strict=True):
            faces = detect_faces_bounded(img, options.backend)  # bounded cost for any size
            if not len(faces):
                raise Morph3dError(f"no face found in source photo {src}")
            if len(faces) > 1:
                summary.notes.append(
                    f"{src.name}: {len(faces)} faces found, using the largest")
            best = int(np.argmax(faces.areas()))
            landmarks.append({k: v[best].astype(np.float64) for k, v in faces.landmarks.items()})
        # No corrective deformation (`Identity.offset`): the swap carries the identity over
        # by its coefficients, so the texture must come from that same shape.
        fits = fit_photo(images if len(images) > 1 else images[0], model,
                         landmarks=landmarks if len(images) > 1 else landmarks[0],
                         backend=options.backend, corrective=False)
        fit = fits[0] if isinstance(fits, list) else fits
        if fit.identity.texture is not None:
            hide_openings(fit, model, landmarks[:fit.num_frames])
            hide_forehead_occluders(fit, model)
            done, _ = complete_texture(fit.identity.texture, fit.identity.confidence, model,
                                       "neural" if completion != "classic" else "classic")
            fit.identity.texture = done.texture.astype(np.float32)
        fit.save(path)
    summary.seconds["fit source"] = time.perf_counter() - t
    return fit


def hide_openings(fit, model, landmarks: list[dict[str, np.ndarray]],
                  min_opening: float = 0.04) -> int:
    """Set the texture confidence to 0 where the photo showed what lies behind the face's
    openings on the skin around them (returns the number of texels hidden).

    - Mouth: an open-mouthed photo puts its teeth and mouth darkness on the model's lips
      (the fitted lips part, their inner surfaces look straight at the teeth); rendered with
      the actor's closed mouth the swapped lips showed teeth. Lip and mouth triangles whose
      vertices all project inside the photo's inner-lip outline (iBUG 60-67) are hidden
      when the mouth is open (inner-lip height over mouth width >= `min_opening`).
    - Eyes: where the fitted lids reach into the photo's eye opening (iBUG 36-41, 42-47)
      they took the white of the eye, which drew pale "goggle" rings around the swapped
      eyes. Eye-region triangles other than the eyeballs' inside the opening are hidden.
    The completion then fills them from the visible skin and lip."""
    from fitting.fit import project, vertex_positions

    texture, confidence = fit.identity.texture, fit.identity.confidence
    if texture is None or confidence is None:
        return 0
    mouth = model.region("lips") | model.region("mouth_interior") | model.region("teeth")
    lids = model.region("eyes") & ~model.region("eyeballs")
    triangles = np.asarray(model.data.triangles)
    hidden = np.zeros(confidence.shape[:2], np.uint8)
    for k, points in enumerate(landmarks):
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
        verts = vertex_positions(model, fit.identity.coefficients.astype(np.float64),
                                 f.expression[k].astype(np.float64))
        pixels = project(verts, f.rotation[k].astype(np.float64),
                         f.translation[k].astype(np.float64), fit.camera)
        for outline, allowed in outlines:
            polygon = outline.astype(np.float32)
            inside = np.zeros(len(verts), bool)
            for v in np.flatnonzero(allowed):
                inside[v] = cv2.pointPolygonTest(
                    polygon, (float(pixels[v, 0]), float(pixels[v, 1])), False) >= 0
            _fill_uv_triangles(hidden, model, np.flatnonzero(inside[triangles].all(1)))
    return _hide_texels(fit, hidden.astype(bool))


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

    The swap's face mask takes a band of the source's forehead (`CompositorConfig.
    forehead_margin`); what the photo had there (Grace Hopper's cap in `make demo`) was
    pasted onto the actor as a dark stripe. The skin model is fitted on the cheek texels
    the photo saw (`composite.skin_model_from_samples`, albedo, so shading is mostly out),
    the test is the compositor's occluder score (`non_skin_score` above `sigmas`); texels
    above the brows by `margin_mm` on the mean head are tested, and the completion then
    fills the hidden ones from the skin below and beside them.
    """
    from morph3d.composite import _ycrcb, non_skin_score, skin_model_from_samples

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
    skin_model = skin_model_from_samples(_ycrcb(tex)[cheek_texels & seen])
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


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from morph3d.atomic import atomic_write

    with atomic_write(path) as f:  # a temp file unique per process, renamed when whole
        np.savez(f, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz, read now (numpy reads members lazily: a damaged member would
    fail later, outside the cache's error handling)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is corrupt ({exc})") from None


def load_cached(path: Path, load, what: str, summary: SwapSummary):
    """`load(path)` for a work-folder cache entry, or None when there is none.

    The entries are morph3d's own (written atomically, so normally whole); one that cannot
    be read (torn by a full disk or a copy, damaged on disk) is a cache miss: noted in the
    summary, deleted, and computed again, instead of failing every later run."""
    if not path.is_file():
        return None
    try:
        return load(path)
    except (Morph3dError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        summary.notes.append(f"cached {what} could not be read ({reason}): deleted it and "
                             "computed it again")
        path.unlink(missing_ok=True)
        return None


# ---------------------------------------------------------------------------------------------
# Stage 5: rendering the swapped face
# ---------------------------------------------------------------------------------------------


@dataclass
class FaceRenderer:
    """Renders the source identity with per-frame actor parameters, in a face crop.

    With `transfer` set (what the swap does), the face is not rendered but made from the
    frame's own pixels (`morph3d.transfer`): the frame warped into the source's shape, its
    skin tone carried over by an albedo ratio. Without it the source albedo is rendered
    under the actor's relit SH and upscaled."""

    model: object
    source_identity: np.ndarray
    albedo: torch.Tensor  # T x T x 3
    region_channels: torch.Tensor  # V x len(REGION_CHANNELS) one-hot region membership
    work_resolution: int = 256
    backend: str | None = None
    upscaler: object | None = None
    source_ambient: np.ndarray | None = None  # 3: the source photo's SH DC term per channel
    transfer: object | None = None  # morph3d.transfer.TransferSetup

    @classmethod
    def create(cls, model, source_fit, options: SwapOptions, upscaler=None, clip_fit=None,
               photo: np.ndarray | None = None) -> FaceRenderer:
        """The renderer of a job; with the clip fit and the (first) source photo (uint8 RGB)
        it transfers the identity onto the frame's pixels instead of rendering."""
        import torch

        texture = source_fit.identity.texture
        if texture is None:
            texture = np.full((model.data.texture_size,) * 2 + (3,), 0.7, np.float32)
        channels = np.stack([model.region(n) for n in REGION_CHANNELS], 1).astype(np.float32)
        groups = torch.from_numpy(channels)
        ambient = np.asarray(source_fit.faces.sh[0, 0], np.float32)
        transfer = None
        if clip_fit is not None and photo is not None:
            from morph3d.transfer import prepare_transfer

            transfer = prepare_transfer(model, source_fit, clip_fit, photo)
        return cls(model, source_fit.identity.coefficients, torch.from_numpy(texture), groups,
                   options.work_resolution, options.renderer, upscaler, ambient, transfer)

    def relight(self, actor_sh: np.ndarray) -> np.ndarray:
        """The actor's lighting pattern at the source photo's overall level.

        The actor's SH were estimated against the actor's own (unknown) albedo, so their
        scale means nothing for the source's albedo: keep the actor's directional terms
        relative to its ambient term and put the source's ambient level under them. The
        compositor's colour matching then adapts the tint to the scene.
        """
        sh = np.asarray(actor_sh, np.float32)
        dc = np.where(np.abs(sh[0]) > 1e-3, sh[0], 1.0)
        ambient = self.source_ambient if self.source_ambient is not None else np.ones(3)
        return sh / dc[None, :] * ambient[None, :]

    def vertices(self, expression: np.ndarray) -> torch.Tensor:
        import torch

        ident = torch.from_numpy(self.source_identity[None].astype(np.float32))
        expr = torch.from_numpy(np.asarray(expression, np.float32)[None])
        return self.model.vertices(ident, expr)

    def render(self, camera_params, rotation, translation, expression, sh,
               frame_shape: tuple[int, int], frame: np.ndarray | None = None,
               actor_landmarks=None) -> dict[str, np.ndarray]:
        """The face resampled into its frame window: image (h x w x 3 float), coverage
        (h x w), regions (h x w bool each), window (x, y of its top-left frame pixel), and
        the projected landmarks in frame pixels. With `transfer` set, `frame` (uint8 RGB)
        and the actor's detected landmarks of it are what the face is made from."""
        import torch

        from render import interpolate, render_mesh

        if self.transfer is not None and frame is not None and actor_landmarks is not None:
            from morph3d.transfer import transfer_face

            t = self.transfer
            return transfer_face(
                self.model, self.source_identity, t.actor_identity, t.textures,
                self.region_channels, camera_params, rotation, translation, expression, sh,
                frame, actor_landmarks, source_factor=t.source_factor,
                alignment=t.alignment, light_reference=t.light_reference,
                size=self.work_resolution, backend=self.backend)

        verts = self.vertices(expression)
        cam = camera_params.to_camera(rotation, translation)
        lm68 = cam.project(self.model.landmarks(verts, "ibug68"))[0].numpy()
        lm478 = cam.project(self.model.landmarks(verts, "mediapipe478"))[0].numpy()
        box = face_crop_box(lm478, frame_shape)
        size = self.work_resolution
        crop_cam = crop_camera(cam, box, size)
        with torch.no_grad():
            out = render_mesh(verts, self.model.triangles, crop_cam, texture_image=self.albedo,
                              uv_coords=self.model.uv_coords,
                              uv_triangles=self.model.uv_triangles,
                              sh_coeffs=torch.from_numpy(self.relight(sh)[None]),
                              backend=self.backend)
            # Region masks reuse the same raster: one rasterization per frame.
            regions = interpolate(self.region_channels, out.raster)[0].numpy()
        image = out.image[0].numpy().clip(0, 1)
        mask = out.mask[0, ..., 0].numpy()
        if self.upscaler is not None:
            x0, y0, side = box
            points = (lm478 - [x0, y0] + 0.5) * (size / side) - 0.5  # crop pixels
            image = self.upscale_face(image, points)
        # image + coverage in one cubic resampling (OpenCV's cubic takes <= 4 channels),
        # the region masks in one linear one (they are thresholded).
        if mask.shape != image.shape[:2]:  # the image was upscaled
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        window, origin = paste_window(np.concatenate([image, mask[..., None]], 2), box,
                                      frame_shape)
        region_window, _ = paste_window(regions, box, frame_shape, cv2.INTER_LINEAR)
        return {
            "image": window[..., :3], "coverage": window[..., 3].clip(0, 1),
            "regions": {n: region_window[..., i] > 0.5 for i, n in enumerate(REGION_CHANNELS)},
            "window": origin, "ibug68": lm68, "mediapipe478": lm478,
        }


    def upscale_face(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """x2 the crop: the super-resolver on the face's window (its landmarks' box grown by
        what the compositor's mask can reach: forehead, feather, width adaptation; plus the
        net's receptive field), bicubic elsewhere (the mask never takes those pixels). The
        face is about half the crop's area, so this halves the net's cost."""
        size = image.shape[0]
        lo, hi = points.min(0), points.max(0)
        pad = 0.1 * float((hi - lo).max()) + 8.0
        x0, y0 = (np.clip(np.floor(lo - pad), 0, size)).astype(int)
        x1, y1 = (np.clip(np.ceil(hi + pad), 0, size)).astype(int)
        full = cv2.resize(image, (2 * size, 2 * size), interpolation=cv2.INTER_CUBIC)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            full[2 * y0:2 * y1, 2 * x0:2 * x1] = self.upscaler(image[y0:y1, x0:x1])
        return full


def face_crop_box(points: np.ndarray, frame_shape: tuple[int, int], scale: float = 1.7
                  ) -> tuple[float, float, float]:
    """A square (x0, y0, side) in continuous pixel coordinates around the face."""
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    side = float(max(hi - lo) * scale)
    return float(centre[0] - side / 2), float(centre[1] - side / 2), max(side, 8.0)


def crop_camera(camera, box: tuple[float, float, float], size: int):
    """The camera seeing only the crop `box`, at `size` x `size` pixels.

    A crop pixel j has its centre at frame position x0 + (j + 0.5) * side / size - 0.5
    (pixel centres at integers), hence fx' = fx * s and cx' = (cx - x0 + 0.5) * s - 0.5.
    """
    from dataclasses import replace

    x0, y0, side = box
    s = size / side
    return replace(camera, fx=camera.fx * s, fy=camera.fy * s,
                   cx=(camera.cx - x0 + 0.5) * s - 0.5, cy=(camera.cy - y0 + 0.5) * s - 0.5,
                   width=size, height=size)


def paste_window(crop: np.ndarray, box: tuple[float, float, float],
                 frame_shape: tuple[int, int], interpolation: int = cv2.INTER_CUBIC
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Resample a square crop (H x W x C) back to frame pixels: the frame window the box
    covers (clipped to the frame) and the window's top-left frame pixel (x, y)."""
    x0, y0, side = box
    size = crop.shape[0]
    s = size / side
    h, w = frame_shape
    channels = crop.shape[2] if crop.ndim == 3 else 1
    left, top = min(max(int(np.floor(x0)), 0), w), min(max(int(np.floor(y0)), 0), h)
    right, bottom = min(int(np.ceil(x0 + side)) + 1, w), min(int(np.ceil(y0 + side)) + 1, h)
    if right <= left or bottom <= top:
        return np.zeros((0, 0, channels), np.float32), (left, top)
    # ROI pixel (q + left) -> crop j = (q + left - x0 + 0.5) * s - 0.5
    m = np.array([[s, 0, (left - x0 + 0.5) * s - 0.5], [0, s, (top - y0 + 0.5) * s - 0.5]],
                 np.float64)
    roi = cv2.warpAffine(crop.astype(np.float32), m, (right - left, bottom - top),
                         flags=interpolation | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return roi.reshape(bottom - top, right - left, channels), (left, top)


def make_upscaler(options: SwapOptions, summary: SwapSummary):
    """The neural super-resolver when wanted and available; else None (bicubic)."""
    if options.refine in ("none", "classic"):
        summary.refine = options.refine
        return None
    try:
        from morph3d.refine import load_super_resolver
    except ImportError:
        summary.refine = "classic"
        return None
    resolver = load_super_resolver()
    if resolver is None:
        if options.refine == "neural":
            summary.notes.append("neural refinement weights missing: fell back to bicubic")
        summary.refine = "classic"
        return None
    summary.refine = "neural"
    return lambda img: resolver.upscale(img, 2)


# ---------------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------------


def swap(sources: list[Path], target: Path, output: Path, options: SwapOptions | None = None
         ) -> SwapSummary:
    """Run every stage; returns the summary (also written by the CLI as JSON)."""
    from morph3d.devices import check_device
    from morph3d.media import probe_video
    from morph3d.outputs import check_creatable_dir
    from morph3d.template import is_template, template_for_swap

    options = options or SwapOptions()
    sources, target, output = [Path(s) for s in sources], Path(target), Path(output)
    summary = SwapSummary(output=str(output))
    t0 = time.perf_counter()
    check_paths(sources, target, output,
                inputs=(Path(options.target_face_ref),) if options.target_face_ref else (),
                outputs=(Path(options.preview),) if options.preview else ())
    if not 0 <= int(options.crf) <= 51:
        raise InputError(f"crf must be between 0 and 51, got {options.crf}")
    check_device(options.device)
    check_creatable_dir(options.work_dir or cache_dir() / "work", "work folder")
    template = None
    if is_template(target):  # a prebuilt clip template: stages 2-3 are already done
        template, options, notes = template_for_swap(target, options)
        summary.notes.extend(notes)
        summary.cached.append("template")
        target = template.clip
    info = probe_video(target)
    output_kind(info.is_image, output)
    summary.seconds["probe"] = time.perf_counter() - t0
    import torch

    torch.set_grad_enabled(False)
    # Rendering works on small tensors where thread start-up and contention cost more than
    # they give: one thread is steadier (and on a busy 2-core machine many times faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _swap(sources, target, output, options, summary, info, t0, template)
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(True)


def _swap(sources, target, output, options, summary, info, t0, template=None) -> SwapSummary:
    from fitting.faces import DETECT_MAX_SIDE
    from morph3d.limits import check_image_pixels

    refs = [options.target_face_ref] if options.target_face_ref is not None else []
    for path in (*sources, *refs, *([target] if info.is_image else [])):
        check_image_pixels(path)  # before the model loads and the photos are fitted
    if template is None and info.is_image and max(info.width, info.height) > DETECT_MAX_SIDE:
        return _swap_large_image(sources, target, output, options, summary, t0)
    return _swap_frames(sources, target, output, options, summary, info, t0, template)


def _swap_large_image(sources, target, output, options, summary, t0) -> SwapSummary:
    """A still target larger than `fitting.faces.DETECT_MAX_SIDE`: the whole swap runs on a
    crop around the chosen face (the face at most `FACE_MAX_WIDTH` wide; the face is found
    on a scaled-down copy), then only the pixels the swap changed are pasted back into the
    full image. Fitting, rendering and compositing cost what they cost for a normal photo;
    the full image is held as uint8 only, to be read and written."""
    from dataclasses import replace

    from fitting.faces import DETECT_MAX_SIDE, face_crop, scaled_copy
    from fitting.video import video_landmarks
    from morph3d.media import probe_video, read_image, synthetic_metadata, write_image

    folder = work_directory(options) / f"image-{file_digest(target)}"
    folder.mkdir(parents=True, exist_ok=True)
    # Read once and kept (uint8) for the paste: a second decoding at the end would cost more
    # memory, with the model and the detectors loaded, than holding these bytes.
    full = np.array(read_image(target))  # writable (the reader's array may not be)
    height, width = full.shape[:2]
    small = scaled_copy(full, DETECT_MAX_SIDE)
    small_path = folder / "scaled.png"
    write_image(small_path, small.image)
    select, _ = face_selection(options)
    try:
        found = video_landmarks(small_path, options.backend, select, 1, progress=False)
    except Morph3dError:
        raise Morph3dError(f"no face found in any frame of {target}") from None
    points = np.concatenate([p[0].reshape(-1, 2) for p in found.points.values()])
    points = points[np.isfinite(points).all(1)]
    if not len(points):
        raise Morph3dError(f"no face found in any frame of {target}")
    # The compositor reaches past the face (forehead band, feathering, colour statistics of
    # the surroundings): a wider context than the fit's crops.
    crop = face_crop(full, small.to_full(points), context=2.6)
    del small
    ch, cw = crop.image.shape[:2]
    crop_path = folder / f"face-{crop.x0}-{crop.y0}-{cw}x{ch}.png"
    write_image(crop_path, crop.image)
    summary.notes.append(f"target image {width}x{height}: swapped on a {cw}x{ch} crop around "
                         "the face, pasted back into the full image")
    # The crop holds the chosen face; an index among the full image's faces means nothing
    # there (a reference photo still does).
    inner = replace(options, target_face="largest")
    swapped_path = folder / f".swapped-{os.getpid()}.png"
    try:
        _swap_frames(sources, crop_path, swapped_path, inner, summary, probe_video(crop_path),
                     t0)
        swapped = read_image(swapped_path)
    finally:
        swapped_path.unlink(missing_ok=True)
    paste_back(full, crop, swapped)
    write_image(output, full, metadata=synthetic_metadata())
    summary.seconds["total"] = time.perf_counter() - t0
    return summary


def paste_back(full: np.ndarray, crop, swapped: np.ndarray, band: int = 256) -> None:
    """Write the swapped crop back into `full` (uint8, in place) where the swap changed it:
    `crop` (a `fitting.faces.FaceCrop`) says where the crop came from and at what scale.
    The changed pixels' mask is grown by a pixel and softened, both resampled to full
    resolution a band of rows at a time (the float copies stay a band's size); every pixel
    outside it keeps its value bit for bit."""
    changed = np.any(swapped != crop.image, axis=2).astype(np.uint8)
    if not changed.any():
        return
    mask = cv2.GaussianBlur(cv2.dilate(changed, np.ones((3, 3), np.uint8)).astype(np.float32),
                            (0, 0), 0.7)
    ys, xs = np.nonzero(mask > 1.0 / 512)
    h, w = full.shape[:2]
    # crop pixel j covers full positions x0 + (j + 0.5) / s - 0.5 +- 0.5 / s
    left = max(int(np.floor(crop.x0 + xs.min() / crop.sx)) - 2, 0)
    right = min(int(np.ceil(crop.x0 + (xs.max() + 1) / crop.sx)) + 2, w)
    top = max(int(np.floor(crop.y0 + ys.min() / crop.sy)) - 2, 0)
    bottom = min(int(np.ceil(crop.y0 + (ys.max() + 1) / crop.sy)) + 2, h)
    flags = cv2.WARP_INVERSE_MAP
    for y in range(top, bottom, band):
        rows = min(band, bottom - y)
        # full pixel (q + left, r + y) -> crop ((q + left - x0 + 0.5) * sx - 0.5, ...)
        m = np.array([[crop.sx, 0, (left - crop.x0 + 0.5) * crop.sx - 0.5],
                      [0, crop.sy, (y - crop.y0 + 0.5) * crop.sy - 0.5]], np.float64)
        size = (right - left, rows)
        alpha = cv2.warpAffine(mask, m, size, flags=cv2.INTER_LINEAR | flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        take = alpha > 0
        if not take.any():
            continue
        image = cv2.warpAffine(swapped, m, size, flags=cv2.INTER_CUBIC | flags,
                               borderMode=cv2.BORDER_REPLICATE)
        region = full[y:y + rows, left:right]
        a = np.clip(alpha[take], 0.0, 1.0)[:, None]
        region[take] = np.rint(region[take] * (1.0 - a) + image[take] * a).astype(np.uint8)


def _swap_frames(sources, target, output, options, summary, info, t0, template=None
                 ) -> SwapSummary:
    import torch
    from tqdm import tqdm

    from morph3d.composite import FaceCompositor, FrameInputs
    from morph3d.media import (
        DecodeReport,
        VideoWriter,
        iter_frames,
        read_image,
        synthetic_metadata,
        write_image,
    )
    from morph3d.models import load_model
    from morph3d.transfer import compositor_config as transfer_compositor

    model = load_model(options.model).to(options.device)
    if template is not None:
        template.check_model(model)

    # Decoded once, here, where little else is in memory: the source fit and the transfer
    # below both use it.
    photo = read_image(sources[0])
    with torch.enable_grad():
        source_fit = fit_source(sources, model, options, summary, first_photo=photo)
        clip_fit = template.fit if template else fit_clip(target, model, options, summary)

    t = time.perf_counter()
    # The face is made from the actor's own pixels (morph3d.transfer); the first source
    # photo gives the source's colours as seen (the texture's shading model is the fit's).
    renderer = FaceRenderer.create(model, source_fit, options, make_upscaler(options, summary),
                                   clip_fit=clip_fit, photo=photo)
    compositor = FaceCompositor(transfer_compositor() if renderer.transfer else None)
    faces = clip_fit.faces
    valid = faces.valid.copy()
    valid[clip_fit.faceless[clip_fit.faceless < len(valid)]] = False
    actor_lms = clip_fit.landmarks
    cuts = clip_fit.scene_cut
    report = DecodeReport()
    total = info.frame_count if options.max_frames is None else min(info.frame_count,
                                                                     options.max_frames)
    # The writer adds the synthetic-media tags itself (an extra "comment" would repeat the
    # marker); still images get them here.
    metadata = synthetic_metadata()
    preview_written = False
    writer = None if info.is_image else VideoWriter(
        output, like=info, audio_from=target if info.has_audio else None,
        inputs=[*sources, target], crf=int(options.crf))
    if writer is not None and writer.audio_note:
        summary.notes.append(writer.audio_note)  # audio re-encoded (or left out), not copied
    try:
        if writer is not None:
            writer.__enter__()
        def render_frame(frame):
            """The part of a frame's work that needs no state: runs ahead in a thread."""
            i = frame.index
            have_face = bool(i < len(valid) and valid[i] and all(
                np.isfinite(actor_lms[s][i]).all() for s in ("ibug68", "mediapipe478")
                if s in actor_lms))
            if not have_face:
                return frame, None
            with torch.inference_mode():
                rendered = renderer.render(clip_fit.camera, faces.rotation[i],
                                           faces.translation[i], faces.expression[i],
                                           faces.sh[i], frame.rgb.shape[:2], frame=frame.rgb,
                                           actor_landmarks={s: actor_lms[s][i]
                                                            for s in actor_lms})
            return frame, rendered

        frames = iter_frames(target, stop=options.max_frames, report=report)
        for frame, rendered in tqdm(map_ahead(render_frame, frames), total=total,
                                    desc="rendering", unit="frame", disable=options.quiet):
            i = frame.index
            have_face = rendered is not None
            out_u8 = frame.rgb  # untouched, bit for bit, where there is no face
            if not have_face or (i < len(cuts) and cuts[i]):
                compositor.reset()  # its moving averages belong to the last shot
            if have_face:
                inputs = FrameInputs(
                    frame=frame.rgb, render=rendered["image"], coverage=rendered["coverage"],
                    actor_landmarks={s: actor_lms[s][i] for s in actor_lms},
                    swapped_landmarks={"ibug68": rendered["ibug68"],
                                       "mediapipe478": rendered["mediapipe478"]},
                    regions=rendered["regions"], window=rendered["window"])
                out_u8, _ = compositor.process(inputs)
                summary.frames_swapped += 1
            else:
                summary.frames_without_face += 1
            if options.preview is not None and have_face and not preview_written:
                write_preview(options.preview, sources[0], frame.rgb, out_u8)
                preview_written = True
            if writer is not None:
                writer.write(out_u8, index=i)
            else:
                write_image(output, out_u8, metadata=metadata)
            summary.frames += 1
        if writer is not None:
            writer.__exit__(None, None, None)
            writer = None
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    summary.frames_skipped_corrupt = list(report.skipped_indices)
    if summary.frames_swapped == 0 and summary.frames:
        output.unlink(missing_ok=True)
        raise Morph3dError(f"no face found in any frame of {target}")
    summary.seconds["render"] = time.perf_counter() - t
    summary.seconds["total"] = time.perf_counter() - t0
    for stage in ("landmarks", "fit clip", "render"):
        if summary.seconds.get(stage) and stage not in summary.cached:
            summary.fps[stage] = round(summary.frames / summary.seconds[stage], 2)
    return summary


def map_ahead(function, items, depth: int = 2):
    """`map(function, items)` with up to `depth` items computed ahead in one worker thread,
    results in order. The swap renders frame i + 1 (torch, which releases the GIL) while
    frame i is composited and encoded: the two cores overlap. Memory stays bounded."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="morph3d-render") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def write_preview(path: Path, source: Path, original: np.ndarray, swapped: np.ndarray) -> None:
    """A side-by-side strip: source | original frame | swapped frame (same height)."""
    from morph3d.media import read_image, write_image

    h = original.shape[0]
    src = read_image(source)
    src = cv2.resize(src, (max(1, round(src.shape[1] * h / src.shape[0])), h),
                     interpolation=cv2.INTER_AREA)
    write_image(path, np.concatenate([src, original, swapped], axis=1))


def write_summary(path: Path, summary: SwapSummary) -> None:
    from morph3d.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(summary.to_dict(), indent=2))
