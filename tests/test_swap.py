"""`morph3d swap` end to end on real media: output geometry, audio, identity,
untouched background, metadata, and one test per kind of bad input.

Every run goes through the real CLI in a subprocess (`python -m morph3d swap ...`). Fits are
cached in one work directory per module (the source photo is fitted once), and one full
run on orig.webm (interrupted during rendering, then resumed) is shared by several tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from morph3d.io.images import read_image, write_image
from morph3d.io.media import VideoInfo, iter_frames, probe_video
from morph3d.io.video_writer import VideoWriter
from morph3d.swap.options import SwapOptions

pytestmark = [pytest.mark.media, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_MARKER = "synthetic media: face swapped by morph3d"
# x264 changes this clip by a few grey levels on average per frame even where nothing was
# edited, so "unchanged" is measured against a round trip at the CRF the swap writes.
CODEC_SLACK = 0.3  # grey levels of mean difference allowed beyond the plain round trip


# ----------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _command(args: list[object]) -> list[str]:
    return [sys.executable, "-m", "morph3d", "swap", *(str(a) for a in args)]


def run_swap(*args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, quiet; returns the finished process (any exit code)."""
    return subprocess.run(_command([*args, "--quiet"]), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env())


def morph3d_lines(stderr: str) -> list[str]:
    """Our own stderr lines (mediapipe and TensorFlow print their own noise)."""
    return [line for line in stderr.splitlines() if line.startswith("morph3d")]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = morph3d_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("morph3d: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def assert_succeeded(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frames_of(path: Path) -> list[np.ndarray]:
    return [frame.rgb for frame in iter_frames(path)]


def pixel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel largest channel difference in grey levels (H x W)."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)


def mean_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean channel difference in grey levels (H x W)."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)


def largest_face(image: np.ndarray) -> dict[str, np.ndarray]:
    from fitting.detection import detect_faces

    faces = detect_faces(image, "mediapipe")
    assert len(faces), "no face detected"
    best = int(np.argmax(faces.areas()))
    return {scheme: points[best] for scheme, points in faces.landmarks.items()}


def face_points(image: np.ndarray) -> np.ndarray:
    return largest_face(image)["mediapipe478"]


def box_mask(shape: tuple[int, ...], points: np.ndarray, scale: float) -> np.ndarray:
    """Square mask `scale` times the points' extent, centred on them."""
    lo, hi = points.min(0), points.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * scale / 2
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (np.abs(xs - centre[0]) <= half) & (np.abs(ys - centre[1]) <= half)


def write_clip(path: Path, frames: list[np.ndarray], like: VideoInfo) -> None:
    with VideoWriter(path, like=like, crf=SwapOptions().crf) as writer:
        for index, rgb in enumerate(frames):
            writer.write(rgb, index)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fit cache for the module: the source photo is fitted once."""
    return tmp_path_factory.mktemp("swap-work")


@pytest.fixture(scope="module")
def orig_frames(media_dir: Path) -> list[np.ndarray]:
    return frames_of(media_dir / "orig.webm")


@dataclass
class FullRun:
    """orig.webm swapped whole: first interrupted while rendering, then resumed."""

    interrupted_rc: int
    interrupted_stderr: str
    left_after_interrupt: list[str]
    output: Path
    preview: Path
    summary: dict
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def full_run(media_dir: Path, work_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> FullRun:
    out_dir = tmp_path_factory.mktemp("full")
    logs = tmp_path_factory.mktemp("full-logs")
    output = out_dir / "swapped.mp4"
    args = ["--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
            "-o", output, "--work-dir", work_dir]
    # 1. Interrupt deterministically: Ctrl-C as soon as the rendering bar appears, i.e.
    #    after the landmarks and both fits were computed and cached.
    log = logs / "stderr.txt"
    with open(log, "w") as err:
        # SIGINT back to its default in the child: a shell runs background jobs with it
        # ignored, and a Python started with SIGINT ignored never raises KeyboardInterrupt.
        proc = subprocess.Popen(_command(args), stdout=subprocess.DEVNULL, stderr=err,
                                cwd=REPO, env=_env(),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 500
        while "rendering" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"the swap never reached rendering:\n{log.read_text()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    left = sorted(p.name for p in out_dir.iterdir())
    # 2. Resume.
    summary_path, preview = out_dir / "summary.json", out_dir / "preview.png"
    done = run_swap(*args, "--resume", "--summary-json", summary_path, "--preview", preview)
    assert_succeeded(done)
    return FullRun(rc, log.read_text(errors="replace"), left, output, preview,
                   json.loads(summary_path.read_text()), done)


@pytest.fixture(scope="module")
def full_output_frames(full_run: FullRun) -> list[np.ndarray]:
    return frames_of(full_run.output)


@pytest.fixture(scope="module")
def orig_round_trip(media_dir: Path, orig_frames: list[np.ndarray],
                    tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """orig.webm re-encoded by the same writer with nothing changed: the codec's own noise."""
    path = tmp_path_factory.mktemp("roundtrip") / "orig.mp4"
    write_clip(path, orig_frames, probe_video(media_dir / "orig.webm"))
    return frames_of(path)


# ----------------------------------------------------------------------------- full clip


def test_interrupted_run_leaves_no_output_and_resumes_from_cached_fits(full_run: FullRun
                                                                       ) -> None:
    assert full_run.interrupted_rc == 130, full_run.interrupted_stderr
    assert "Traceback" not in full_run.interrupted_stderr
    assert "morph3d: interrupted" in full_run.interrupted_stderr
    assert full_run.left_after_interrupt == []  # neither the output nor its temp file
    cached = full_run.summary["cached"]
    assert {"landmarks", "fit clip", "fit source"} <= set(cached)
    assert full_run.summary["frames"] == 66 and full_run.summary["frames_swapped"] == 66


def test_full_clip_keeps_frame_count_size_rate_and_duration(media_dir: Path, full_run: FullRun,
                                                            full_output_frames) -> None:
    src, out = probe_video(media_dir / "orig.webm"), probe_video(full_run.output)
    assert (out.width, out.height) == (src.width, src.height) == (464, 560)
    assert out.fps == src.fps
    assert out.frame_count == src.frame_count == 66
    assert len(full_output_frames) == 66
    assert out.duration_s == pytest.approx(src.duration_s, abs=0.5 / float(src.fps))
    assert not out.has_audio  # the input has none
    assert full_run.summary["frames_without_face"] == 0


def test_output_is_marked_as_synthetic_media(full_run: FullRun) -> None:
    tags = probe_video(full_run.output).metadata
    assert tags["synthetic_media"] == "true"
    assert tags["comment"].count(SYNTHETIC_MARKER) == 1
    assert tags["software"].startswith("morph3d")


def test_swapped_face_is_closer_to_the_source_identity(media_dir: Path, orig_frames,
                                                       full_output_frames) -> None:
    from fitting.embedding import embedding_distance, face_embedding

    source = read_image(media_dir / "mark.jpg")
    source_embedding = face_embedding(source, largest_face(source)["ibug68"])
    for i in (0, 22, 44, 65):
        original = orig_frames[i]
        swapped = full_output_frames[i]
        before = embedding_distance(
            face_embedding(original, largest_face(original)["ibug68"]), source_embedding)
        after = embedding_distance(
            face_embedding(swapped, largest_face(swapped)["ibug68"]), source_embedding)
        assert after < before - 0.05, (i, before, after)


def test_pixels_away_from_the_face_are_unchanged(orig_frames, full_output_frames,
                                                 orig_round_trip) -> None:
    for i in (0, 22, 44, 65):
        original = orig_frames[i]
        face = largest_face(original)["mediapipe478"]
        around = box_mask(original.shape, face, 2.0)  # generously dilated face box
        inner = box_mask(original.shape, face, 1.0)
        swapped_outside = mean_diff(full_output_frames[i], original)[~around].mean()
        codec_outside = mean_diff(orig_round_trip[i], original)[~around].mean()
        swapped_face = mean_diff(full_output_frames[i], original)[inner].mean()
        assert swapped_outside <= codec_outside + CODEC_SLACK, (i, swapped_outside)
        assert swapped_outside <= 3.0  # 1.2 % of the range, all of it the codec's
        assert swapped_face > 2.5 * swapped_outside, (i, swapped_face, swapped_outside)


def test_preview_is_a_source_original_swapped_strip(media_dir: Path, full_run: FullRun,
                                                    orig_frames) -> None:
    strip = read_image(full_run.preview)
    source = read_image(media_dir / "mark.jpg")
    height, width = orig_frames[0].shape[:2]
    source_width = round(source.shape[1] * height / source.shape[0])
    assert strip.shape == (height, source_width + 2 * width, 3)
    original = strip[:, source_width:source_width + width]
    swapped = strip[:, source_width + width:]
    assert np.array_equal(original, orig_frames[0])  # the first frame, lossless
    points = face_points(original)
    assert mean_diff(swapped, original)[box_mask(original.shape, points, 1.0)].mean() > 4.0
    # The compositor leaves everything outside the face's surroundings bit for bit.
    assert pixel_diff(swapped, original)[~box_mask(original.shape, points, 2.0)].max() == 0


# ----------------------------------------------------------------------------- audio + summary


def test_audio_and_summary_on_a_prefix_of_a_clip_with_sound(media_dir: Path, work_dir: Path,
                                                            tmp_path: Path) -> None:
    frames = 8
    output, summary_path = tmp_path / "out.mp4", tmp_path / "summary.json"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "nggyup.mp4",
                    "-o", output, "--max-frames", frames, "--work-dir", work_dir,
                    "--summary-json", summary_path)
    assert_succeeded(proc)
    src, out = probe_video(media_dir / "nggyup.mp4"), probe_video(output)
    assert (out.width, out.height, out.fps) == (src.width, src.height, src.fps)
    assert out.frame_count == frames and len(frames_of(output)) == frames
    assert out.duration_s == pytest.approx(frames / float(src.fps), abs=0.5 / float(src.fps))
    assert out.has_audio
    assert (out.audio_codec, out.audio_sample_rate, out.audio_channels) == (
        src.audio_codec, src.audio_sample_rate, src.audio_channels)
    import av

    with av.open(str(output)) as container:
        audio = container.streams.audio[0]
        audio_seconds = float(audio.duration * audio.time_base)
    assert audio_seconds == pytest.approx(frames / float(src.fps), abs=0.05)  # ~2 AAC frames

    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == summary["frames_swapped"] == frames
    assert summary["frames_without_face"] == 0
    for stage in ("probe", "fit source", "landmarks", "fit clip", "render", "total"):
        assert summary["seconds"][stage] >= 0
    assert {"landmarks", "fit clip", "render"} <= set(summary["fps"])
    assert all(fps > 0 for fps in summary["fps"].values())


def test_crf_sets_the_video_quality(media_dir: Path, work_dir: Path, tmp_path: Path) -> None:
    sizes = {}
    for crf in (8, 30):
        output = tmp_path / f"crf{crf}.mp4"
        assert_succeeded(run_swap("--source", media_dir / "mark.jpg", "--target",
                                  media_dir / "orig.webm", "-o", output, "--max-frames", 6,
                                  "--work-dir", work_dir, "--crf", crf, "--quiet"))
        assert len(frames_of(output)) == 6
        sizes[crf] = output.stat().st_size
    assert sizes[8] > 2 * sizes[30]


def test_crf_out_of_range_fails_before_any_work(media_dir: Path, tmp_path: Path) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", "--crf", 52)
    assert_one_line_error(proc, "crf", "52")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- images


def test_image_target_gives_an_image_of_the_same_size(media_dir: Path, work_dir: Path,
                                                      tmp_path: Path) -> None:
    target = media_dir / "aligned_target1.png"
    output = tmp_path / "swapped.png"
    proc = run_swap("--source", media_dir / "aligned_source1.png", "--target", target,
                    "-o", output, "--work-dir", work_dir)
    assert_succeeded(proc)
    original, swapped = read_image(target), read_image(output)
    assert swapped.shape == original.shape == (224, 224, 3)
    face = box_mask(original.shape, face_points(original), 1.0)
    assert mean_diff(swapped, original)[face].mean() > 4.0
    with Image.open(output) as img:
        assert img.format == "PNG"
        assert SYNTHETIC_MARKER in img.info.get("comment", "")
        assert img.info.get("synthetic_media") == "true"


def test_sideways_and_upside_down_photos_are_swapped_upright(media_dir: Path, work_dir: Path,
                                                             tmp_path: Path) -> None:
    """A source photo and a target photo lying upside down or sideways (a lost orientation
    tag) give the upright swap, turned as the target lies, to a grey level; mediapipe
    alone read the upside-down faces as upright ones and pasted a scrambled face."""
    source, target = read_image(media_dir / "aligned_source1.png"), read_image(
        media_dir / "aligned_target1.png")
    upright = tmp_path / "upright.png"
    proc = run_swap("--source", media_dir / "aligned_source1.png", "--target",
                    media_dir / "aligned_target1.png", "-o", upright, "--work-dir", work_dir)
    assert_succeeded(proc)
    for source_turns, target_turns in ((2, 2), (1, 0)):
        turned_source, turned_target = tmp_path / "source.png", tmp_path / "target.png"
        write_image(turned_source, np.ascontiguousarray(np.rot90(source, source_turns)))
        write_image(turned_target, np.ascontiguousarray(np.rot90(target, target_turns)))
        output = tmp_path / f"swapped_{source_turns}_{target_turns}.png"
        summary = tmp_path / "summary.json"
        proc = run_swap("--source", turned_source, "--target", turned_target, "-o", output,
                        "--work-dir", work_dir, "--summary-json", summary)
        assert_succeeded(proc)
        diff = pixel_diff(np.rot90(read_image(output), -target_turns), read_image(upright))
        # the turned photo's fit sums in another order: a grey level here and there
        assert diff.max() <= 2 and (diff > 0).mean() < 0.001, (diff.max(), (diff > 0).mean())
        notes = " ".join(json.loads(summary.read_text())["notes"])
        assert "source.png: the photo lies sideways or upside down" in notes
        assert ("target image lies sideways or upside down" in notes) == bool(target_turns)


def test_a_small_source_face_is_noted(media_dir: Path, work_dir: Path, tmp_path: Path) -> None:
    """A source photo whose eyes are under `SMALL_SOURCE_EYES_PX` apart still swaps, and the
    summary says the face will be as blurred; the photo at full size says nothing of it."""
    from morph3d.swap.fits import SMALL_SOURCE_EYES_PX

    photo = read_image(media_dir / "aligned_source1.png")  # eyes ~60 px apart
    small = tmp_path / "small.png"
    write_image(small, cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    for source, noted in ((small, True), (media_dir / "aligned_source1.png", False)):
        summary = tmp_path / "summary.json"
        proc = run_swap("--source", source, "--target", media_dir / "aligned_target1.png",
                        "-o", tmp_path / f"out_{noted}.png", "--work-dir", work_dir,
                        "--summary-json", summary)
        assert_succeeded(proc)
        notes = " ".join(json.loads(summary.read_text())["notes"])
        assert ("the face is small" in notes) == noted, notes
        assert (f"{SMALL_SOURCE_EYES_PX}+ px between the eyes" in notes) == noted


@pytest.fixture(scope="module")
def three_people(media_dir: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image and its faces' mediapipe points, largest face first."""
    from fitting.detection import detect_faces

    image = read_image(media_dir / "three_people.png")
    faces = detect_faces(image, "mediapipe")
    order = np.argsort(-faces.areas())
    assert len(order) == 3
    return image, [faces.landmarks["mediapipe478"][i] for i in order]


def assert_only_face_changed(original: np.ndarray, swapped: np.ndarray,
                             faces: list[np.ndarray], chosen: int) -> None:
    """The chosen face changed; nothing outside its dilated box did (a PNG is lossless)."""
    diff = pixel_diff(swapped, original)
    chosen_box = box_mask(original.shape, faces[chosen], 1.0)
    assert mean_diff(swapped, original)[chosen_box].mean() > 4.0
    assert diff[~box_mask(original.shape, faces[chosen], 1.8)].max() == 0
    for k, points in enumerate(faces):
        if k != chosen:
            assert diff[box_mask(original.shape, points, 1.5)].max() == 0, k


def test_target_face_index_swaps_only_that_face(media_dir: Path, work_dir: Path,
                                                tmp_path: Path, three_people) -> None:
    image, faces = three_people
    output = tmp_path / "second.png"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target",
                    media_dir / "three_people.png", "-o", output, "--target-face", 1,
                    "--work-dir", work_dir)
    assert_succeeded(proc)
    assert_only_face_changed(image, read_image(output), faces, chosen=1)


def test_target_face_ref_swaps_the_person_in_the_reference(media_dir: Path, work_dir: Path,
                                                           tmp_path: Path, three_people
                                                           ) -> None:
    image, faces = three_people
    chosen = 2  # the smallest face: neither default nor index 0
    lo, hi = faces[chosen].min(0).astype(int), faces[chosen].max(0).astype(int)
    pad = (hi - lo) // 2
    crop = image[lo[1] - pad[1]:hi[1] + pad[1], lo[0] - pad[0]:hi[0] + pad[0]]
    reference = tmp_path / "person.png"
    Image.fromarray(crop).resize((crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3)).save(reference)
    output = tmp_path / "by_reference.png"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target",
                    media_dir / "three_people.png", "-o", output, "--target-face-ref",
                    reference, "--work-dir", work_dir)
    assert_succeeded(proc)
    assert_only_face_changed(image, read_image(output), faces, chosen=chosen)


def test_several_faces_in_the_source_uses_the_largest_and_says_so(media_dir: Path,
                                                                 work_dir: Path,
                                                                 tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    proc = run_swap("--source", media_dir / "three_people.png", "--target",
                    media_dir / "aligned_target1.png", "-o", output, "--work-dir", work_dir)
    assert_succeeded(proc)
    notes = [line for line in morph3d_lines(proc.stderr) if line.startswith("morph3d: note:")]
    assert len(notes) == 1 and "3 faces" in notes[0] and "largest" in notes[0]
    assert "three_people.png" in notes[0]
    assert read_image(output).shape == (224, 224, 3)


# ----------------------------------------------------------------------------- damaged clips


def test_faceless_frames_are_passed_through_and_counted(media_dir: Path, work_dir: Path,
                                                        tmp_path: Path, orig_frames) -> None:
    from fitting.detection import detect_faces

    faceless = (4, 5, 6)
    frames = [rgb.copy() for rgb in orig_frames[:10]]
    for i in faceless:
        frames[i][:300] = 128  # the head and shoulders painted over: no face, real picture
        assert not len(detect_faces(frames[i], "mediapipe"))
    clip, output = tmp_path / "gaps.mp4", tmp_path / "out.mp4"
    write_clip(clip, frames, probe_video(media_dir / "orig.webm"))
    summary_path = tmp_path / "summary.json"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", clip, "-o", output,
                    "--work-dir", work_dir, "--summary-json", summary_path)
    assert_succeeded(proc)
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 10
    assert summary["frames_without_face"] == len(faceless)
    assert summary["frames_swapped"] == 10 - len(faceless)
    inputs, outputs = frames_of(clip), frames_of(output)
    assert len(outputs) == 10
    for i in range(10):
        # Only re-encoding noise where nothing was swapped; the swapped face stands out.
        worst = np.percentile(pixel_diff(outputs[i], inputs[i]), 99.9)
        if i in faceless:
            assert worst <= 16, (i, worst)
        else:
            assert worst >= 25, (i, worst)


def yuv420_bytes(rgb: np.ndarray) -> np.ndarray:
    """Limited-range BT.601 I420 planes (H * 3 / 2 x W uint8) of an even-sized RGB frame, in
    integer arithmetic: the same bytes on every machine (swscale's SIMD paths differ)."""
    r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape
    half = [(c.reshape(h // 2, 2, w // 2, 2).sum((1, 3)) + 2) >> 2 for c in (u, v)]
    return np.concatenate([y.ravel(), half[0].ravel(), half[1].ravel()]).astype(
        np.uint8).reshape(h * 3 // 2, w)


def write_intra_clip(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    """Every frame a keyframe, one encoder thread, the colour conversion done here: damage
    to one frame's bytes stays in that frame, and the file's bytes do not depend on the
    machine."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps,
                                      options={"crf": "18", "g": "1", "threads": "1"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for pts, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(yuv420_bytes(rgb), format="yuv420p")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_corrupt_frames_are_skipped_and_reported(media_dir: Path, work_dir: Path,
                                                 tmp_path: Path, orig_frames) -> None:
    clip = tmp_path / "broken.mp4"
    write_intra_clip(clip, orig_frames[:16])
    intact_decode = {frame.index: frame.rgb for frame in iter_frames(clip)}
    garbage = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with open(clip, "r+b") as f:  # as tests/test_media.py does
        f.seek(clip.stat().st_size // 2)
        f.write(garbage)
    output, summary_path = tmp_path / "out.mp4", tmp_path / "summary.json"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", clip, "-o", output,
                    "--work-dir", work_dir, "--summary-json", summary_path)
    assert_succeeded(proc)
    summary = json.loads(summary_path.read_text())
    skipped = summary["frames_skipped_corrupt"]
    assert skipped and all(0 < i < 15 for i in skipped)
    assert summary["frames"] == 16 - len(skipped)
    assert summary["frames_swapped"] + summary["frames_without_face"] == summary["frames"]
    assert probe_video(output).frame_count == 16  # lost frames repeat the previous one
    # A frame decoded with damage may have lost its face; every intact frame, before the
    # lost ones and after, has its face swapped: the fit stays on the clip's timeline.
    decoded = {frame.index: frame.rgb for frame in iter_frames(clip)}
    intact = [i for i, rgb in decoded.items() if np.array_equal(rgb, intact_decode[i])]
    assert any(i > max(skipped) for i in intact), (skipped, intact)
    outputs = frames_of(output)
    for i in intact:
        assert np.percentile(pixel_diff(outputs[i], decoded[i]), 99.9) >= 25, i


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import av

    folder = tmp_path_factory.mktemp("bad")
    files = {"text.jpg": folder / "text.jpg", "text.mp4": folder / "text.mp4",
             "grey.png": folder / "grey.png", "tone.wav": folder / "tone.wav"}
    files["text.jpg"].write_text("this is not a photo\n")
    files["text.mp4"].write_text("this is not a video\n")
    Image.fromarray(np.full((400, 400, 3), 128, np.uint8)).save(files["grey.png"])
    with av.open(str(files["tone.wav"]), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        t = np.arange(16000) / 16000
        samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return files


def test_missing_source(media_dir: Path, tmp_path: Path) -> None:
    proc = run_swap("--source", tmp_path / "nobody.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4")
    assert_one_line_error(proc, "not found", "nobody.jpg")
    assert not (tmp_path / "out.mp4").exists()


def test_unreadable_source(media_dir: Path, work_dir: Path, tmp_path: Path, bad_files) -> None:
    proc = run_swap("--source", bad_files["text.jpg"], "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", "--work-dir", work_dir)
    assert_one_line_error(proc, "text.jpg")
    assert list(tmp_path.iterdir()) == []


def test_source_without_a_face_names_the_file(media_dir: Path, work_dir: Path, tmp_path: Path,
                                              bad_files) -> None:
    proc = run_swap("--source", bad_files["grey.png"], "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", "--work-dir", work_dir)
    assert_one_line_error(proc, "no face", "grey.png")
    assert list(tmp_path.iterdir()) == []


def test_target_without_any_face(media_dir: Path, work_dir: Path, tmp_path: Path) -> None:
    clip = tmp_path / "grey.mp4"
    grey = [np.full((560, 464, 3), 90 + 10 * i, np.uint8) for i in range(6)]
    write_clip(clip, grey, probe_video(media_dir / "orig.webm"))
    output = tmp_path / "out.mp4"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", clip, "-o", output,
                    "--work-dir", work_dir)
    assert_one_line_error(proc, "no face", "grey.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.mp4"]


@pytest.mark.parametrize("name", ["tone.wav", "text.mp4"])
def test_target_without_a_video_stream(media_dir: Path, tmp_path: Path, bad_files,
                                       name: str) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", bad_files[name],
                    "-o", tmp_path / "out.mp4")
    assert_one_line_error(proc, name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["same path", "hard link"])
def test_output_equal_to_an_input_is_refused(media_dir: Path, tmp_path: Path, how: str) -> None:
    target = tmp_path / "clip.webm"
    shutil.copy(media_dir / "orig.webm", target)
    before = sha256(target)
    output = target
    if how == "hard link":
        output = tmp_path / "clip-link.mp4"
        os.link(target, output)
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", target, "-o", output)
    assert_one_line_error(proc, "one of the inputs")
    assert sha256(target) == before
    assert len(list(tmp_path.iterdir())) == (1 if how == "same path" else 2)


def test_output_in_a_missing_folder(media_dir: Path, tmp_path: Path) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "missing" / "out.mp4")
    assert_one_line_error(proc, "output folder does not exist", "missing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--summary-json", "--preview"])
def test_side_output_in_a_missing_folder_fails_before_any_work(
        media_dir: Path, tmp_path: Path, option: str) -> None:
    name = "s.json" if option == "--summary-json" else "p.png"
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", option, tmp_path / "missing" / name)
    assert_one_line_error(proc, "output folder does not exist")
    assert list(tmp_path.iterdir()) == []


def test_missing_reference_photo(media_dir: Path, tmp_path: Path) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", "--target-face-ref", tmp_path / "who.jpg")
    assert_one_line_error(proc, "not found", "who.jpg")


def test_reference_photo_without_a_face_names_the_file(media_dir: Path, work_dir: Path,
                                                       tmp_path: Path, bad_files) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.mp4", "--target-face-ref", bad_files["grey.png"],
                    "--max-frames", 2, "--work-dir", work_dir)
    assert_one_line_error(proc, "no face", "grey.png")
    assert list(tmp_path.iterdir()) == []


def test_target_face_index_beyond_the_faces_found(media_dir: Path, work_dir: Path,
                                                  tmp_path: Path) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target",
                    media_dir / "aligned_target1.png", "-o", tmp_path / "out.png",
                    "--target-face", 2, "--work-dir", work_dir)
    assert_one_line_error(proc, "face index 2", "1 face track")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_output_extension_fails_before_any_work(media_dir: Path,
                                                            tmp_path: Path) -> None:
    proc = run_swap("--source", media_dir / "mark.jpg", "--target", media_dir / "orig.webm",
                    "-o", tmp_path / "out.avi")
    assert_one_line_error(proc, ".avi")
    assert list(tmp_path.iterdir()) == []
