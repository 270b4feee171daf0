"""Score any face-swap output (ours or another tool's) against its source photo and original.

`evaluate(source, target, output)` pairs the frames of the original (`target`) and the swap
(`output`) by frame index, finds the chosen face in each original frame (mediapipe, static
per-frame detection), matches the output face to it by box overlap, and measures:

identity   dlib 128-D embedding distances: output vs source photo (`id_dist_source`, lower is
           better; under 0.6 is dlib's "same person", `id_swap_rate` is the share of matched
           frames under it), output vs original face (`id_dist_target`, higher means the
           identity really changed) and the baseline source vs original
           (`id_dist_source_vs_original`).
pose       yaw/pitch/roll (degrees) from 13 rigid iBUG points with `cv2.solvePnP` and a generic
           3D template; output vs original: per-angle mean absolute error and signed mean
           (`bias`: a constant offset from a different face shape is not motion error), and
           `pose_mae_deg_offset_removed`, the mean absolute error after removing each angle's
           bias. Signs: yaw > 0 turns the nose toward the image's right, pitch > 0 tilts the
           face up, roll > 0 turns it counter-clockwise in the image.
expression mouth (MAR) and eye (EAR, mean of both eyes) opening ratios from the 478-point mesh:
           Pearson correlation over time (`mar_corr`, `ear_corr`: blinks show up in the
           latter) and mean absolute difference (`mar_mad`, `ear_mad`).
gaze       iris centre (mesh points 468, 473) relative to the midpoint of its eye's corners, in
           eye widths, along and across the corner-to-corner axis, averaged over both eyes;
           `gaze_err` is the mean L2 difference output vs original (eye widths).
stability  `jitter_added`: the mean over consecutive frame pairs (t, t+1) with the face in both
           of the mean over the 68 iBUG points of
           ``|(out[t+1] - out[t]) - (orig[t+1] - orig[t])|``, divided by the original's
           inter-ocular distance (eye centres) averaged over t, t+1. It is the frame-to-frame
           motion the swap adds on top of the original's own motion: exactly 0 for the original
           against itself, and a constant or slowly drifting landmark offset adds almost
           nothing. `jitter_noise_floor` is the same number for the original re-encoded with
           H.264 at CRF 23 (what detector noise alone gives on an honest copy), and
           `jitter_original` the original's own motion ``|orig[t+1] - orig[t]|`` for scale.
           `jitter_added_regions` / `jitter_noise_floor_regions` split both by face region
           (jaw outline, brows, nose, eyes, mouth: the iBUG points of each alone).
appearance pixel agreement inside the original's face: the convex hull of its 68 iBUG points
           of the jaw and brows (0-26; the evaluator's points, derived from the mediapipe mesh),
           the output resampled to the original's size when they differ. `face_ssim`: grey
           SSIM (scikit-image, 7 x 7 window, full map) averaged over the hull; `face_psnr`: PSNR
           of the RGB pixels inside the hull (dB, 8-bit peak; identical pixels give
           `PSNR_CAP_DB`); `detail_ratio`: the standard deviation of the grey 3 x 3 Laplacian
           inside the hull, output over original (1: as sharp, < 1: smoother, waxy);
           `detail_ratio_relative`: the same with each side's over its mean grey level in
           the hull (a lighter face's texture is proportionally stronger: this one reads
           sharpness apart from lightness);
           `face_lab_delta`: the Euclidean distance of the mean CIELAB colour inside the hull
           (D65; about 1 is a just-noticeable difference, 0 the same mean colour). Only
           meaningful where the output should equal the original pixel for pixel (a round
           trip: the clip's own frame as the source) or as a measure of how much a swap
           changes. Computed on every frame with a face in the original, matched or not.
           Clip values are means over those frames.
coverage   frames analysed, frames with a face in the original, frames with a matched face in
           the output (`coverage` = matched / original faces), seconds taken.

Every per-frame number is a pure function of that frame's pixels (no tracking state), so the
frames can be analysed in chunks by several worker processes with bit-identical results. Only
the noise floor can move slightly from run to run: the libx264 in PyAV's wheel does not give
bit-identical streams from one process to the next.
Frames are streamed; only small per-frame measurements are kept.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitting.choice import choose_box, parse_face_choice
from morph3d.errors import InputError, Morph3dError
from morph3d.evaluate.measures import (
    FrameRecord,
    PathLike,
    _dist,
    _scale_points,
    face_appearance,
    measure_face,
)
from morph3d.evaluate.metrics import SAME_PERSON_THRESHOLD, aggregate, per_frame_json
from morph3d.evaluate.plots import write_plots

log = logging.getLogger(__name__)
MATCH_IOU = 0.3  # least box overlap for an output face to count as the original's face
NOISE_FLOOR_CRF = 23  # "typical quality" H.264 re-encode for the jitter noise floor
LANDMARK_BACKEND = "mediapipe"


@dataclass
class ChunkJob:
    """Everything a worker needs to analyse frames [start, stop) (picklable)."""

    target: str
    output: str
    reencoded: str | None
    start: int
    stop: int | None
    source_embedding: np.ndarray
    target_face: str
    target_size: tuple[int, int]  # (H, W)


# --------------------------------------------------------------------------------------------
# Frame streaming and the per-chunk worker
# --------------------------------------------------------------------------------------------


class _Cursor:
    """Forward-only access by frame index to a stream of `morph3d.io.media.Frame`s."""

    def __init__(self, frames: Iterator[Any]) -> None:
        self._frames = frames
        self._peek: Any = None
        self._done = False

    def get(self, index: int) -> Any:
        """The frame with `index`, or None if the stream skips it (or has ended)."""
        while not self._done:
            if self._peek is None:
                self._peek = next(self._frames, None)
                if self._peek is None:
                    self._done = True
                    break
            if self._peek.index >= index:
                break
            self._peek = None
        if self._peek is not None and self._peek.index == index:
            return self._peek
        return None


def _match(candidates: Any, reference_box: np.ndarray) -> tuple[int, float]:
    """(index, IoU) of the candidate face whose mesh box overlaps `reference_box` most, or
    (-1, best IoU) when none reaches MATCH_IOU."""
    from fitting.faces import MEDIAPIPE478, box_iou, landmark_box

    if not len(candidates["boxes"]):
        return -1, 0.0
    overlaps = box_iou(reference_box[None], landmark_box(candidates[MEDIAPIPE478]))[0]
    best = int(np.argmax(overlaps))
    iou = float(overlaps[best])
    return (best if iou >= MATCH_IOU else -1), iou


def _faces_in(detector: Any, rgb: np.ndarray, to_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Detected faces with their landmarks mapped into the original frame's coordinates."""
    from fitting.faces import IBUG68, MEDIAPIPE478

    found = detector.detect(rgb)
    size = rgb.shape[:2]
    return {
        "boxes": _scale_points(found.boxes.reshape(-1, 2), size, to_size).reshape(-1, 4),
        MEDIAPIPE478: _scale_points(found.landmarks[MEDIAPIPE478], size, to_size),
        IBUG68: _scale_points(found.landmarks[IBUG68], size, to_size),
        "ibug68_native": np.asarray(found.landmarks[IBUG68], np.float64),
    }


def analyse_chunk(job: ChunkJob) -> list[FrameRecord]:
    """Analyse the paired frames with index in [job.start, job.stop). Runs in a worker."""
    from fitting.detection import get_landmark_backend
    from fitting.embedding import face_embedding
    from fitting.faces import IBUG68, MEDIAPIPE478
    from morph3d.io.media import iter_frames

    choice = parse_face_choice(job.target_face)
    size = job.target_size
    records: list[FrameRecord] = []
    with get_landmark_backend(LANDMARK_BACKEND) as detector:
        output = _Cursor(iter_frames(job.output, job.start, job.stop))
        reencoded = (_Cursor(iter_frames(job.reencoded, job.start, job.stop))
                     if job.reencoded else None)
        for frame in iter_frames(job.target, job.start, job.stop):
            out_frame = output.get(frame.index)
            if out_frame is None:
                continue
            ren_frame = reencoded.get(frame.index) if reencoded is not None else None
            original = _faces_in(detector, frame.rgb, size)
            identical = (out_frame.rgb.shape == frame.rgb.shape
                         and np.array_equal(out_frame.rgb, frame.rgb))
            # Same pixels give the same detections and embeddings: skip the work.
            swapped = original if identical else _faces_in(detector, out_frame.rgb, size)
            record = FrameRecord(index=frame.index, original_faces=len(original["boxes"]),
                                 output_faces=len(swapped["boxes"]))
            records.append(record)
            k = choose_box(original["boxes"], size, choice) if record.original_faces else -1
            if k < 0:  # no face, or fewer than the N-th largest asks for
                continue
            record.original = measure_face(original[MEDIAPIPE478][k], original[IBUG68][k], size)
            record.appearance = face_appearance(frame.rgb, out_frame.rgb,
                                                original["ibug68_native"][k])
            orig_embedding = face_embedding(frame.rgb, original["ibug68_native"][k])
            record.id_dist_source_vs_original = _dist(orig_embedding, job.source_embedding)
            j, record.output_iou = _match(swapped, record.original.box)
            if j >= 0:
                record.output = measure_face(swapped[MEDIAPIPE478][j], swapped[IBUG68][j], size)
                out_embedding = (orig_embedding if identical and j == k else
                                 face_embedding(out_frame.rgb, swapped["ibug68_native"][j]))
                record.output_embedding = out_embedding
                record.id_dist_source = _dist(out_embedding, job.source_embedding)
                record.id_dist_target = _dist(out_embedding, orig_embedding)
            if ren_frame is not None:
                record.reencoded_appearance = face_appearance(frame.rgb, ren_frame.rgb,
                                                              original["ibug68_native"][k])
                copy = _faces_in(detector, ren_frame.rgb, size)
                r, _ = _match(copy, record.original.box)
                if r >= 0:
                    record.reencoded = measure_face(copy[MEDIAPIPE478][r], copy[IBUG68][r], size)
    return records


# --------------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------------


def source_face_embedding(source: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding, mesh box, first frame) of the largest face in the source photo (or the
    first frame of a source video)."""
    from fitting.detection import detect_faces
    from fitting.embedding import face_embedding
    from fitting.faces import IBUG68, MEDIAPIPE478, landmark_box
    from morph3d.io.media import iter_frames

    first = next(iter(iter_frames(source, 0, 1)), None)
    if first is None:
        raise InputError(f"no frame could be read from the source {source}")
    faces = detect_faces(first.rgb, LANDMARK_BACKEND)
    if not len(faces):
        raise Morph3dError(f"no face found in the source photo {source}")
    k = int(np.argmax(faces.areas()))
    embedding = face_embedding(first.rgb, faces.landmarks[IBUG68][k])
    return embedding, landmark_box(faces.landmarks[MEDIAPIPE478][k]), first.rgb


def _reencode(target: Path, stop: int | None, folder: Path) -> tuple[Path, str] | None:
    """(path, codec description) of the target's first frames re-encoded with H.264 at
    CRF 23 (or FFmpeg's fallback encoder without libx264); None for a still image."""
    from morph3d.io.images import is_image_path
    from morph3d.io.media import iter_frames, probe_video
    from morph3d.io.video_writer import VideoWriter

    if is_image_path(target):
        return None
    info = probe_video(target)
    out = folder / "reencoded.mkv"
    with VideoWriter(out, info, crf=NOISE_FLOOR_CRF, preset="medium") as writer:
        for frame in iter_frames(target, 0, stop):
            writer.write(frame.rgb, frame.index)
    codec = (f"libx264 crf {NOISE_FLOOR_CRF} preset medium" if writer.codec == "libx264"
             else writer.codec)
    return out, f"{codec} {writer.pix_fmt}"


def _chunks(count: int, parts: int, stop: int | None) -> list[tuple[int, int | None]]:
    """[start, stop) ranges splitting `count` frames into `parts`; the last one runs to
    `stop` (None: to the end) so frames beyond an estimated count are not lost."""
    parts = max(1, min(parts, count))
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    ranges: list[tuple[int, int | None]] = [(bounds[i], bounds[i + 1]) for i in range(parts)]
    ranges[-1] = (ranges[-1][0], stop)
    return ranges


def _run_chunks(jobs: list[ChunkJob], workers: int) -> list[FrameRecord]:
    if workers <= 1 or len(jobs) == 1:
        results = [analyse_chunk(job) for job in jobs]
    else:
        import multiprocessing

        # spawn, not fork: the parent may hold mediapipe/dlib threads and graphs.
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(analyse_chunk, jobs))
        except BrokenProcessPool:
            raise Morph3dError(
                "an evaluation worker process died (out of memory, or started from code "
                "without an `if __name__ == \"__main__\":` guard); try --workers 1") from None
    records: dict[int, FrameRecord] = {}
    for chunk in results:
        for record in chunk:
            records.setdefault(record.index, record)
    return [records[i] for i in sorted(records)]


def evaluate(source: PathLike, target: PathLike, output: PathLike, *, workers: int = 1,
             plots_dir: PathLike | None = None, target_face: str = "largest",
             max_frames: int | None = None, noise_floor: bool = True) -> dict[str, Any]:
    """Score the swap `output` of `target` (original video or image) with the `source` photo.

    Frames are paired by index; `max_frames` keeps the first N. `workers` > 1 analyses frame
    chunks in that many spawned processes (same numbers as 1 worker; call this from under
    ``if __name__ == "__main__":`` in scripts). `target_face`: ``largest``, ``N`` (0 =
    largest), ``center`` or a pixel ``X,Y`` of the original (`fitting.choice`).
    `noise_floor`: also score an H.264 CRF-23 re-encode of the original (videos only) for
    `jitter_noise_floor`. `plots_dir`: write PNG plots and a contact sheet there.

    Returns the aggregated metrics at the top level (see the module docstring), `noise_floor`
    (the same metrics for the re-encode, or None), `inputs`, `settings`, `seconds`, and
    `per_frame`: one dict per analysed frame. Raises Morph3dError (one line) for unreadable
    inputs, no face in the source, no face in the original, or no matching face anywhere in
    the output (a blank or faceless output).
    """
    from morph3d.io.media import probe_video

    started = time.perf_counter()
    source, target, output = Path(source), Path(target), Path(output)
    target_face = str(parse_face_choice(target_face))
    if int(workers) < 1:
        raise Morph3dError(f"workers must be at least 1, got {workers}")
    if max_frames is not None and int(max_frames) < 1:
        raise Morph3dError(f"max frames must be at least 1, got {max_frames}")
    workers = int(workers)
    stop = int(max_frames) if max_frames is not None else None
    target_info = probe_video(target)
    output_info = probe_video(output)
    source_embedding, source_box, source_rgb = source_face_embedding(source)
    count = min(target_info.frame_count, output_info.frame_count)
    count = max(1, min(count, stop) if stop is not None else count)

    with tempfile.TemporaryDirectory(prefix="morph3d-eval-") as tmp:
        reencoded, reencode_codec = None, None
        if noise_floor and count >= 3:
            made = _reencode(target, stop, Path(tmp))
            if made is not None:
                reencoded, reencode_codec = made
        jobs = [ChunkJob(target=str(target), output=str(output),
                         reencoded=str(reencoded) if reencoded else None, start=a, stop=b,
                         source_embedding=source_embedding, target_face=target_face,
                         target_size=(target_info.height, target_info.width))
                for a, b in _chunks(count, workers, stop)]
        records = _run_chunks(jobs, workers)

    if not records:
        raise Morph3dError(f"{output} and {target} have no frame index in common")
    metrics = aggregate(records)
    if metrics["frames_original_face"] == 0:
        raise Morph3dError(f"no face found in any of the {len(records)} analysed frames of "
                           f"the original {target}")
    if metrics["frames_matched"] == 0:
        raise Morph3dError(
            f"no face matching the original's found in any of the {len(records)} analysed "
            f"frames of the output {output} (blank or faceless output?)")
    result: dict[str, Any] = dict(metrics)
    result["inputs"] = {
        "source": str(source), "target": str(target), "output": str(output),
        "target_size": [target_info.width, target_info.height],
        "output_size": [output_info.width, output_info.height],
        "target_frames": target_info.frame_count, "output_frames": output_info.frame_count,
        "fps": float(target_info.fps),
    }
    result["settings"] = {
        "workers": workers, "target_face": target_face, "max_frames": stop,
        "landmark_backend": LANDMARK_BACKEND, "match_iou": MATCH_IOU,
        "same_person_threshold": SAME_PERSON_THRESHOLD,
        "noise_floor": reencode_codec,
    }
    result["per_frame"] = per_frame_json(records)
    if plots_dir is not None:
        result["plots"] = [str(p) for p in write_plots(
            records, Path(plots_dir), source_rgb=source_rgb, source_box=source_box,
            target=target, output=output)]
    result["seconds"] = time.perf_counter() - started
    result["seconds_per_frame"] = result["seconds"] / len(records)
    return result
