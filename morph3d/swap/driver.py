"""morph3d swap: put the user's face into a clip (the main job).

Stages, in order (each with its own progress bar; the first three are cached in a work
directory keyed by the inputs' content hashes, so a re-run or `--resume` skips them):
1. probe      check the inputs and the output path before any work.
2. landmarks  detect, track, select and smooth the actor's face (fitting.video); with target
              face "all", every person's.
3. fit clip   one actor identity, per-frame pose, expression and SH lighting (per person).
4. fit source the user's identity and UV albedo from the photo(s), texture completed.
5. render     per frame: the actor's own pixels warped into the source's face shape (source
              identity at the actor's expression and pose) and toned by the source-to-actor
              albedo ratio (morph3d.swap.transfer), composited (morph3d.composite), encoded with
              the audio copied.

Every stage returns what it did and the summary is built here from that: the fits
(`morph3d.swap.fits`) return a `StageRun` each (seconds, cache hit, notes), the render pass
(`render_clip`) a `FrameTally`. A tool that measures the stages passes a
`morph3d.swap.stages.StageHook` to `swap`.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from morph3d.errors import InputError, Morph3dError
from morph3d.io.paths import cache_dir
from morph3d.swap.cache import work_directory
from morph3d.swap.fits import (
    StageRun,
    face_selection,
    find_source_faces,
    fit_clips,
    fit_sources,
)
from morph3d.swap.options import SwapOptions, SwapSummary, check_paths, file_digest, output_kind
from morph3d.swap.renderer import FaceRenderer
from morph3d.swap.stages import StageHook, each, stage


def reference_photos(options: SwapOptions) -> tuple[Path, ...]:
    """The reference photos the options name (the target's person, the source's face)."""
    refs = (options.target_face_ref, options.source_face.reference)
    return tuple(Path(r) for r in refs if r is not None)


def completion_used(options: SwapOptions) -> str:
    """What filled the source texture's unseen texels (`fit_source`): "neural" when the
    completion net was asked for and its weights are there (`fit_source` fails on weights
    that do not load), else "classic"."""
    if options.refine not in ("neural", "auto"):
        return "classic"
    from morph3d.neural.completion import DEFAULT_WEIGHTS

    return "neural" if DEFAULT_WEIGHTS.is_file() else "classic"


# ---------------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------------


def swap(sources: list[Path], target: Path, output: Path, options: SwapOptions | None = None,
         hook: StageHook | None = None) -> SwapSummary:
    """Run every stage; returns the summary (also written by the CLI as JSON). `hook` sees
    each stage start and end (`morph3d.swap.stages`)."""
    from morph3d.devices import check_device
    from morph3d.io.media import probe_video
    from morph3d.io.outputs import check_creatable_dir
    from morph3d.swap.template import is_template, template_for_swap

    options = options or SwapOptions()
    sources, target, output = [Path(s) for s in sources], Path(target), Path(output)
    summary = SwapSummary(output=str(output))
    t0 = time.perf_counter()
    check_paths(sources, target, output, inputs=reference_photos(options),
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

    from fitting.solvers import single_threaded

    torch.set_grad_enabled(False)
    # torch, numpy's BLAS and OpenCV each keep a pool of worker threads. The swap works on
    # small arrays (a face crop, a solve of a few hundred unknowns) where thread start-up and
    # contention cost more than they give, and its own two threads (the frame loop and the
    # render-ahead thread) already fill two cores: the pools' workers would mostly spin,
    # waiting for work. One thread each is steadier, and the pictures are the same.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with single_threaded():
            return _swap(sources, target, output, options, summary, info, t0, template, hook)
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_grad_enabled(True)


def _swap(sources, target, output, options, summary, info, t0, template=None, hook=None
          ) -> SwapSummary:
    from morph3d.io.limits import check_image_pixels

    for path in (*sources, *reference_photos(options), *([target] if info.is_image else [])):
        check_image_pixels(path)  # before the model loads and the photos are fitted
    if template is not None or not info.is_image:
        return _swap_frames(sources, target, output, options, summary, info, t0, template,
                            hook)
    from fitting.choice import upright_turns
    from morph3d.io.images import read_image, write_image

    # Read once: a large target is pasted into these bytes (writable: the reader's array may
    # not be)
    image = np.array(read_image(target))
    turns = upright_turns(image)
    if not turns:
        return _swap_upright(sources, target, output, options, summary, info, t0, hook, image)
    folder = image_folder(options, target)
    upright = folder / f"upright-{90 * turns}.png"
    write_image(upright, np.ascontiguousarray(np.rot90(image, turns)))
    shape = image.shape
    del image  # the swap reads the upright copy
    return _swap_turned_image(sources, upright, shape, turns, output, options, summary, t0,
                              hook)


def image_folder(options: SwapOptions, target: Path) -> Path:
    """The work folder of a still target (its upright copy, a large one's face crop),
    named by its content; created."""
    folder = work_directory(options) / f"image-{file_digest(target)}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _swap_upright(sources, target, output, options, summary, info, t0, hook=None,
                  image: np.ndarray | None = None) -> SwapSummary:
    """A still target that stands upright; `image`: its pixels when read already."""
    from fitting.detection import DETECT_MAX_SIDE

    if max(info.width, info.height) > DETECT_MAX_SIDE:
        return _swap_large_image(sources, target, output, options, summary, t0, hook, image)
    return _swap_frames(sources, target, output, options, summary, info, t0, hook=hook)


def _swap_turned_image(sources, upright: Path, shape: tuple[int, ...], turns: int, output,
                       options, summary, t0, hook=None) -> SwapSummary:
    """A still target lying sideways or upside down (`fitting.choice.upright_turns`: a phone
    photo whose orientation tag was lost; the landmark backends read an upside-down face as
    an upright one): its copy turned upright (`upright`, `turns` quarter turns of the
    target, whose shape is `shape`) is swapped, and the result turned back."""
    from dataclasses import replace

    from fitting.choice import FaceChoice, points_after_turns
    from morph3d.io.images import read_image, synthetic_metadata, write_image
    from morph3d.io.media import probe_video

    choice = options.target_face
    if choice.rule == "point" and choice.point is not None:  # given in the target's pixels
        x, y = points_after_turns(np.array(choice.point), turns, shape)
        options = replace(options, target_face=FaceChoice("point", point=(float(x), float(y))))
    summary.notes.append(f"target image lies sideways or upside down: swapped turned upright "
                         f"({90 * turns} deg) and turned back")
    swapped_path = upright.parent / f".swapped-{os.getpid()}.png"
    try:
        _swap_upright(sources, upright, swapped_path, options, summary, probe_video(upright),
                      t0, hook)
        swapped = read_image(swapped_path)
    finally:
        swapped_path.unlink(missing_ok=True)
    write_image(output, np.ascontiguousarray(np.rot90(swapped, -turns)),
                metadata=synthetic_metadata())
    summary.seconds["total"] = time.perf_counter() - t0
    return summary


def _swap_large_image(sources, target, output, options, summary, t0, hook=None,
                      full: np.ndarray | None = None) -> SwapSummary:
    """A still target larger than `fitting.detection.DETECT_MAX_SIDE`: the whole swap runs on a
    crop around the chosen face (the face at most `FACE_MAX_WIDTH` wide; the face is found
    on a scaled-down copy), then only the pixels the swap changed are pasted back into the
    full image. Fitting, rendering and compositing cost what they cost for a normal photo;
    the full image is held as uint8 only, to be read and written."""
    from dataclasses import replace

    from fitting.detection import DETECT_MAX_SIDE
    from fitting.faces import face_crop, scaled_copy
    from fitting.video import video_landmarks
    from morph3d.io.images import read_image, synthetic_metadata, write_image
    from morph3d.io.media import probe_video

    if options.target_face.rule == "all":
        raise InputError(f"target face \"all\" takes images up to {DETECT_MAX_SIDE} pixels "
                         f"on the longer side; {target} is larger: choose one face")
    folder = image_folder(options, target)
    # Read once and kept (uint8) for the paste: a second decoding at the end would cost more
    # memory, with the model and the detectors loaded, than holding these bytes.
    if full is None:  # writable (the reader's array may not be)
        full = np.array(read_image(target))
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
                     t0, hook=hook)
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


def _swap_frames(sources, target, output, options, summary, info, t0, template=None, hook=None
                 ) -> SwapSummary:
    import torch

    from morph3d.io.images import read_image
    from morph3d.model.registry import load_model

    model = load_model(options.model).to(options.device)
    if template is not None:
        template.check_model(model)

    # Decoded once, here, where little else is in memory: the source fit and the transfer
    # below both use it. Its face is found before the clip's stages, so a photo without one
    # fails at once; it is fitted after them, about the actor's identity (`fit_source`).
    photo = read_image(sources[0])
    source_faces = find_source_faces(sources, options, first_photo=photo)
    with torch.enable_grad():
        clip_fits, clip_runs = (([template.fit], ()) if template
                                else fit_clips(target, model, options, hook=hook))
        with stage(hook, "fit source"):
            source_fits, source_run = fit_sources(sources, model, options, source_faces,
                                                  clip_fits)
    del source_faces
    record_runs(summary, (*clip_runs, source_run))

    summary.refine = completion_used(options)
    t = time.perf_counter()
    with stage(hook, "prepare"):
        people = prepare_people(model, source_fits, clip_fits, photo, options, target)
    summary.faces = len(people)
    tally = render_clip(people, sources, target, output, options, info, hook)
    summary.frames = tally.frames
    summary.frames_swapped = tally.frames_swapped
    summary.frames_without_face = tally.frames - tally.frames_swapped
    summary.frames_kept_original = tally.frames_kept_original
    summary.frames_skipped_corrupt = tally.frames_skipped_corrupt
    summary.notes.extend(tally.notes)
    if summary.frames_swapped == 0 and summary.frames:
        output.unlink(missing_ok=True)
        raise Morph3dError(f"no face found in any frame of {target}")
    summary.seconds["render"] = time.perf_counter() - t
    summary.seconds["total"] = time.perf_counter() - t0
    for name in ("landmarks", "fit clip", "render"):
        if summary.seconds.get(name) and name not in summary.cached:
            summary.fps[name] = round(summary.frames / summary.seconds[name], 2)
    return summary


def record_runs(summary: SwapSummary, runs: tuple[StageRun, ...]) -> None:
    """The fitting stages' runs, in the order they ran, into the summary: their notes,
    seconds and cache hits."""
    for run in runs:
        summary.notes.extend(run.notes)
        summary.seconds[run.name] = run.seconds
        if run.cached:
            summary.cached.append(run.name)


def prepare_people(model, source_fits, clip_fits, photo, options, target) -> list[Person]:
    """One renderer and compositor per face replaced (target face "all": every person), each
    with the source fitted about that person's identity (`fit_sources`)."""
    from dataclasses import replace

    from morph3d.composite.compositor import FaceCompositor
    from morph3d.swap.transfer import compositor_config as transfer_compositor

    people = []
    for source_fit, clip_fit in zip(source_fits, clip_fits, strict=True):
        # The face is made from the actor's own pixels (morph3d.swap.transfer); the first
        # source photo gives the source's colours as seen (the texture's shading model is the
        # fit's).
        renderer = FaceRenderer.create(model, source_fit, clip_fit, photo, options, target)
        config = replace(transfer_compositor(), hands=options.occluders == "hands")
        people.append(Person(clip_fit, renderer, FaceCompositor(config)))
    return people


@dataclass
class FrameTally:
    """What the render pass did with the clip's frames (`render_clip`)."""

    frames: int = 0
    frames_swapped: int = 0
    # Frames that kept the original face, by why (`SwapSummary.frames_kept_original`).
    frames_kept_original: dict[str, int] = field(default_factory=dict)
    frames_skipped_corrupt: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_clip(people: list[Person], sources, target, output, options, info,
                hook: StageHook | None = None) -> FrameTally:
    """Stage 5: every frame decoded, its faces rendered (ahead, in a thread), composited over
    the frame and encoded (a still target: written as an image). A failure removes the
    partial output (`VideoWriter` discards it when its block fails)."""
    from tqdm import tqdm

    from morph3d.io.images import synthetic_metadata, write_image
    from morph3d.io.media import DecodeReport, iter_frames
    from morph3d.io.video_writer import VideoWriter

    tally = FrameTally()
    report = DecodeReport()
    total = info.frame_count if options.max_frames is None else min(info.frame_count,
                                                                     options.max_frames)
    # The writer adds the synthetic-media tags itself (an extra "comment" would repeat the
    # marker); still images get them here.
    metadata = synthetic_metadata()
    preview_written = False

    def render_frame(frame):
        """The part of a frame's work that needs no state: runs ahead in a thread. Every
        face is made from the frame's own pixels."""
        with stage(hook, "render"):
            return frame, [person.render(frame) for person in people]

    with ExitStack() as stack:
        for person in people:  # the hand tracker's graph is not freed with its compositor
            stack.callback(person.compositor.close)
        writer = None if info.is_image else stack.enter_context(VideoWriter(
            output, like=info, audio_from=target if info.has_audio else None,
            inputs=[*sources, target], crf=int(options.crf)))
        if writer is not None and writer.audio_note:
            tally.notes.append(writer.audio_note)  # audio re-encoded (or left out), not copied
        frames = each(hook, "decode", iter_frames(target, stop=options.max_frames,
                                                  report=report))
        for frame, renders in tqdm(map_ahead(render_frame, frames), total=total,
                                   desc="rendering", unit="frame", disable=options.quiet):
            i = frame.index
            with stage(hook, "composite"):
                out_u8 = composite_frame(people, frame, renders)
            if any(rendered is not None for rendered in renders):
                tally.frames_swapped += 1
                if options.preview is not None and not preview_written:
                    write_preview(options.preview, sources[0], frame.rgb, out_u8)
                    preview_written = True
            else:
                reason = ("face not fitted" if any(p.found(i) for p in people) else "no face")
                kept = tally.frames_kept_original
                kept[reason] = kept.get(reason, 0) + 1
            with stage(hook, "encode"):
                if writer is not None:
                    writer.write(out_u8, index=i)
                else:
                    write_image(output, out_u8, metadata=metadata)
            tally.frames += 1
        if writer is not None:
            with stage(hook, "finish"):
                stack.close()  # the encoder's flush, the audio, the move into place
    tally.frames_skipped_corrupt = list(report.skipped_indices)
    if tally.frames_kept_original:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(tally.frames_kept_original.items()))
        tally.notes.append(f"{tally.frames - tally.frames_swapped} of {tally.frames} frame(s) "
                           f"kept the original face ({reasons})")
    return tally


def composite_frame(people: list[Person], frame, renders: list) -> np.ndarray:
    """`frame` with each rendered face composited over the faces before it (uint8 RGB)."""
    from morph3d.composite.compositor import FrameInputs

    i = frame.index
    out_u8 = frame.rgb  # untouched, bit for bit, where there is no face
    for person, rendered in zip(people, renders, strict=True):
        if rendered is None or person.cut(i):
            person.compositor.reset()  # its moving averages belong to the last shot
        if rendered is not None:
            inputs = FrameInputs(
                frame=out_u8, render=rendered["image"], coverage=rendered["coverage"],
                actor_landmarks=person.landmarks_at(i),
                swapped_landmarks={"ibug68": rendered["ibug68"],
                                   "mediapipe478": rendered["mediapipe478"]},
                regions=rendered["regions"], window=rendered["window"])
            out_u8, _ = person.compositor.process(inputs)
    return out_u8


class Person:
    """One face the swap replaces over the clip: its clip fit, renderer and compositor (each
    face keeps its own moving averages), and which frames have it to replace."""

    def __init__(self, fit, renderer: FaceRenderer, compositor) -> None:
        self.fit, self.renderer, self.compositor = fit, renderer, compositor
        self.valid = fit.faces.valid.copy()
        self.valid[fit.faceless[fit.faceless < len(self.valid)]] = False

    def found(self, i: int) -> bool:
        """Frame `i` has this face's landmarks (the tracker found it)."""
        lms = self.fit.landmarks
        return bool(i < len(self.valid) and all(
            np.isfinite(lms[s][i]).all() for s in ("ibug68", "mediapipe478") if s in lms))

    def cut(self, i: int) -> bool:
        """Frame `i` starts a new shot."""
        return bool(i < len(self.fit.scene_cut) and self.fit.scene_cut[i])

    def landmarks_at(self, i: int) -> dict[str, np.ndarray]:
        return {s: points[i] for s, points in self.fit.landmarks.items()}

    def render(self, frame) -> dict[str, np.ndarray] | None:
        """The face made from `frame` (`FaceRenderer.render`), or None where the frame has
        no fitted face of this person."""
        import torch

        i = frame.index
        if not (self.found(i) and self.valid[i]):
            return None
        f = self.fit.faces
        with torch.inference_mode():
            return self.renderer.render(self.fit.camera, f.rotation[i], f.translation[i],
                                        f.expression[i], frame.rgb,
                                        self.landmarks_at(i))


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
    from morph3d.io.images import read_image, write_image

    h = original.shape[0]
    src = read_image(source)
    src = cv2.resize(src, (max(1, round(src.shape[1] * h / src.shape[0])), h),
                     interpolation=cv2.INTER_AREA)
    write_image(path, np.concatenate([src, original, swapped], axis=1))


def write_summary(path: Path, summary: SwapSummary) -> None:
    from morph3d.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(summary.to_dict(), indent=2))
