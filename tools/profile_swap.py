"""Per-stage profile of the swap's render loop (stage 5): decode, render, composite, encode.

    python tools/profile_swap.py make-clips out/perf
    python tools/profile_swap.py run CLIP --source PHOTO --work-dir DIR [--max-frames N]
                                 [--output OUT.mp4] [--cprofile] [--json FILE] [--root TREE]
    python tools/profile_swap.py codec CLIP N
    python tools/profile_swap.py composite INPUTS.pkl [--root TREE] [--save OUT.npy]
    python tools/profile_swap.py compare A.mp4 B.mp4

`make-clips` writes two clips made from ../shared/media (never into the repository):
`orig_big720.mp4`, orig.webm scaled x3.5 and cropped to 1280x720 around the face (a face
about 400 px wide, 66 frames), and `nggyup_1080.mp4`, nggyup.mp4 scaled to 1920x1080
(its first 90 frames).

`run` runs `morph3d.swap.driver.swap` in this process with a stage hook
(`morph3d.swap.stages`) that times the loop's four per-frame stages: decode (in the main
thread, where `map_ahead` pulls the frames; once more than the frames, the last call finds the
end), render (every face of the frame, in map_ahead's worker thread), composite and encode
(with the encoder's flush, the "finish" stage, as one more call). Each call records its wall
time and its thread's CPU time (`time.thread_time`; FFmpeg's own decode/encode threads are
not in it, the process CPU total is). Run it once to
fill the work folder's fits, then again: the second run's stages 2-4 are cached.
`--cprofile` adds one cProfile per stage, enabled inside the wrapped call of that stage's
thread, and prints each stage's top functions (cumulative time). `--root TREE` imports the
project from another tree (e.g. an exported older commit, one with the stage hook) to compare
before and after in one shell loop on one machine.

`codec CLIP N` times the swap's decode and encode alone on the first N frames, in process CPU
(FFmpeg's threads included): decoding, the YUV -> RGB conversion (`io.media`'s accurate
swscale flags), and `io.video_writer.VideoWriter` (RGB -> YUV conversion plus x264), each part
of the writer timed as well.

`run --record-composite FILE` also pickles every `FaceCompositor.process` input (about 14 MB
per 720p frame: keep FILE out of the repository); `composite FILE [--root TREE]` replays them
through a fresh compositor and prints its thread CPU per frame, and with `--save OUT.npy` keeps
the composited frames, to compare trees bit for bit without the rest of the swap.

`compare` prints the largest and mean absolute difference of the decoded frames of two clips.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MEDIA, ROOT, machine, machine_line, write_json  # noqa: E402

STAGES = ("decode", "render", "composite", "encode")


def make_clips(folder: Path) -> None:
    """The 720p big-face clip and the 1080p clip (see the module docstring)."""
    from dataclasses import replace

    import cv2

    from morph3d.io.media import iter_frames, probe_video
    from morph3d.io.video_writer import VideoWriter

    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "orig_big720.mp4": (MEDIA / "orig.webm", None,
                            lambda rgb: cv2.resize(rgb, None, fx=3.5, fy=3.5,
                                                   interpolation=cv2.INTER_CUBIC)
                            [200:920, 250:1530]),
        "nggyup_1080.mp4": (MEDIA / "nggyup.mp4", 90,
                            lambda rgb: cv2.resize(rgb, (1920, 1080),
                                                   interpolation=cv2.INTER_CUBIC)),
    }
    for name, (clip, stop, convert) in specs.items():
        info = probe_video(clip)
        first = convert(next(iter_frames(clip, stop=1)).rgb)
        like = replace(info, width=int(first.shape[1]), height=int(first.shape[0]))
        with VideoWriter(folder / name, like=like, crf=14) as writer:
            for frame in iter_frames(clip, stop=stop):
                writer.write(convert(frame.rgb), index=frame.index)
        print(f"{folder / name}: {first.shape[1]}x{first.shape[0]}")


class StageClock:
    """A swap stage hook (`morph3d.swap.stages.StageHook`): wall and thread-CPU seconds per
    call of each per-frame stage, and optionally a cProfile each, enabled on the stage's own
    thread. The encoder's flush ("finish") counts as one more encode call."""

    def __init__(self, cprofile: bool) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.threads: dict[str, str] = {}
        self.profiles = {s: cProfile.Profile() for s in STAGES} if cprofile else {}
        self._lock = threading.Lock()
        self._running = threading.local()  # a stage's start, on the thread that runs it
        self.started_cpu = 0.0

    def start(self, stage: str) -> None:
        stage = "encode" if stage == "finish" else stage
        if stage not in STAGES:
            return
        self._running.start = (time.perf_counter(), time.thread_time())
        profile = self.profiles.get(stage)
        if profile is not None:
            profile.enable()

    def end(self, stage: str) -> None:
        if stage == "prepare":
            self.started_cpu = time.process_time()  # the frame loop starts
        stage = "encode" if stage == "finish" else stage
        if stage not in STAGES:
            return
        profile = self.profiles.get(stage)
        if profile is not None:
            profile.disable()
        w0, c0 = self._running.start
        with self._lock:
            self.calls[stage].append((time.perf_counter() - w0, time.thread_time() - c0))
            self.threads[stage] = threading.current_thread().name


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root).resolve() if args.root else ROOT
    sys.path.insert(0, str(root))
    host = machine()
    import morph3d
    from morph3d.composite.compositor import FaceCompositor
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    assert Path(morph3d.__file__).resolve().is_relative_to(root), morph3d.__file__
    clock = StageClock(args.cprofile)
    recorded: list = []
    if args.record_composite:
        # The compositor's inputs are data, not a stage's time: the one thing the hook does
        # not carry, so the recording wraps the compositor's method.
        process = FaceCompositor.process

        def record(self, inputs):
            recorded.append(inputs)
            return process(self, inputs)

        FaceCompositor.process = record
    output = Path(args.output or Path(args.work_dir) / "profile_out.mp4")
    options = SwapOptions(work_dir=Path(args.work_dir), max_frames=args.max_frames, quiet=True)
    summary = swap([Path(args.source)], Path(args.clip), output, options, hook=clock)
    if args.record_composite:
        import pickle

        with open(args.record_composite, "wb") as f:
            pickle.dump(recorded, f)
    loop_cpu = time.process_time() - clock.started_cpu
    frames = summary.frames
    render_s = summary.seconds["render"]
    rows = {}
    for stage in STAGES:
        calls = clock.calls[stage]
        wall = sum(c[0] for c in calls)
        cpu = sum(c[1] for c in calls)
        rows[stage] = {"thread": "worker" if "render" in clock.threads.get(stage, "") else "main",
                       "calls": len(calls), "wall_ms_per_frame": 1000 * wall / frames,
                       "thread_cpu_ms_per_frame": 1000 * cpu / frames}
    result = {"clip": str(args.clip), "frames": frames, "cached": summary.cached,
              "loop_ms_per_frame": 1000 * render_s / frames, "stage": rows,
              "loop_process_cpu_ms_per_frame": 1000 * loop_cpu / frames,
              "seconds": summary.seconds, "root": str(root),
              "machine": {**host, "loadavg_end": os.getloadavg()}}
    print(table(result) + "\n" + machine_line(result["machine"]))
    if args.cprofile:
        for stage, profile in clock.profiles.items():
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.top)
            print(f"\n## cProfile: {stage}\n" + _trim(text.getvalue()))
    if args.json:
        write_json(Path(args.json), result)
    return result


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.replace(str(ROOT) + "/", "") for line in lines[start:] if line)


def table(result: dict[str, Any]) -> str:
    rows = result["stage"]
    total = sum(r["wall_ms_per_frame"] for r in rows.values())
    lines = [f"{result['clip']}: {result['frames']} frames, cached {result['cached']}, "
             f"loop {result['loop_ms_per_frame']:.1f} ms/frame "
             f"({1000 / result['loop_ms_per_frame']:.1f} fps), process CPU "
             f"{result['loop_process_cpu_ms_per_frame']:.1f} ms/frame (all threads)",
             "| stage | thread | wall ms/frame | thread CPU ms/frame | share of the stages' wall |",
             "| --- | --- | --- | --- | --- |"]
    for stage, r in rows.items():
        lines.append(f"| {stage} | {r['thread']} | {r['wall_ms_per_frame']:.1f} | "
                     f"{r['thread_cpu_ms_per_frame']:.1f} | "
                     f"{100 * r['wall_ms_per_frame'] / total:.0f} % |")
    return "\n".join(lines)


def codec(clip: Path, count: int) -> None:
    import resource
    from dataclasses import replace

    import av
    from av.video.reformatter import ColorRange, Colorspace

    from morph3d.io.media import _SWS_ACCURATE, probe_video
    from morph3d.io.video_writer import VideoWriter

    def cpu_ms() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return 1000 * (usage.ru_utime + usage.ru_stime)

    c0 = cpu_ms()
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as io.media decodes
        raw = []
        for frame in container.decode(stream):
            raw.append(frame)
            if len(raw) >= count:
                break
    c1 = cpu_ms()
    rgb = [f.to_ndarray(format="rgb24", interpolation=_SWS_ACCURATE) for f in raw]
    c2 = cpu_ms()
    for image in rgb:
        av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
            interpolation=_SWS_ACCURATE)
    c3 = cpu_ms()
    out = ROOT / "out" / "profile_codec.mp4"
    out.parent.mkdir(exist_ok=True)
    like = replace(probe_video(clip), has_audio=False)
    with VideoWriter(out, like=like, crf=14) as writer:  # the swap's CRF
        for i, image in enumerate(rgb):
            writer.write(image, index=i)
    c4 = cpu_ms()
    n = len(rgb)
    print(f"{clip.name}, {n} frames, process CPU ms/frame: decode {(c1 - c0) / n:.1f}, "
          f"YUV->RGB {(c2 - c1) / n:.1f}, RGB->YUV {(c3 - c2) / n:.1f}, "
          f"VideoWriter (RGB->YUV + x264) {(c4 - c3) / n:.1f}")


def composite(args: argparse.Namespace) -> None:
    import pickle

    sys.path.insert(0, str(Path(args.root).resolve() if args.root else ROOT))
    import numpy as np

    from morph3d.composite.compositor import FaceCompositor
    from morph3d.swap.transfer import compositor_config

    with open(args.inputs, "rb") as f:
        inputs = pickle.load(f)
    compositor = FaceCompositor(compositor_config())
    outputs = []
    c0, w0 = time.thread_time(), time.perf_counter()
    for frame_inputs in inputs:
        outputs.append(compositor.process(frame_inputs)[0])
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    print(f"{args.root or ROOT}: {len(inputs)} frames, composite {1000 * cpu / len(inputs):.1f} "
          f"ms thread CPU per frame ({1000 * wall / len(inputs):.1f} wall)")
    if args.save:
        np.save(args.save, np.stack(outputs))


def compare(a: Path, b: Path) -> None:
    import numpy as np

    from morph3d.io.media import iter_frames

    worst, total, count, frames = 0, 0.0, 0, 0
    for fa, fb in zip(iter_frames(a), iter_frames(b), strict=True):
        d = np.abs(fa.rgb.astype(np.int16) - fb.rgb.astype(np.int16))
        worst = max(worst, int(d.max()))
        total += float(d.sum())
        count += d.size
        frames += 1
    print(f"{a} vs {b}: {frames} frames, max |difference| {worst}, "
          f"mean {total / max(count, 1):.4f} (0-255)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-clips")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("run")
    p.add_argument("clip")
    p.add_argument("--source", default=str(MEDIA / "mark.jpg"))
    p.add_argument("--work-dir", required=True)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--output")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json")
    p.add_argument("--root", help="import the project from this tree")
    p.add_argument("--record-composite", help="pickle the compositor's inputs here")
    p = sub.add_parser("composite")
    p.add_argument("inputs", type=Path)
    p.add_argument("--root", help="import the project from this tree")
    p.add_argument("--save", type=Path, help="keep the composited frames (npy)")
    p = sub.add_parser("codec")
    p.add_argument("clip", type=Path)
    p.add_argument("count", type=int)
    p = sub.add_parser("compare")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "make-clips":
        make_clips(args.folder)
    elif args.command == "run":
        run(args)
    elif args.command == "composite":
        composite(args)
    elif args.command == "codec":
        codec(args.clip, args.count)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
