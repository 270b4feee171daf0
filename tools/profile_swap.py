"""Per-stage profile of the swap's render loop (stage 5): decode, render, composite, encode.

    python tools/profile_swap.py make-clips out/perf
    python tools/profile_swap.py run CLIP --source PHOTO --work-dir DIR [--max-frames N]
                                 [--output OUT.mp4] [--cprofile] [--json FILE] [--root TREE]
    python tools/profile_swap.py codec CLIP N
    python tools/profile_swap.py composite INPUTS.pkl [--root TREE] [--save OUT.npy]
    python tools/profile_swap.py compare A.mp4 B.mp4
    python tools/profile_swap.py scratch CLIP --source PHOTO --work-dir EMPTY --output OUT.mp4
                                 [--root TREE] [--json FILE]

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

`scratch` runs a whole swap from scratch through the CLI's own path (`morph3d swap ...
--quiet`; give it an empty work folder) in this process and prints each stage's process CPU
(every thread, from `getrusage`): start-up to the project's import, the imports and the
parser, the probe, the model and the source photo's face, "landmarks", "fit clip", "fit
source", "prepare" (the renderer: both albedos), the frame loop split into its per-frame
stages' own thread CPU (decode, render, composite, encode) and the rest of the loop
(FFmpeg's decoder threads, x264's threads, swscale), and "finish". Linux only (the thread
table reads /proc).
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


class ScratchClock:
    """A swap stage hook: process CPU at every start and end of the once-per-job stages
    (they run on the calling thread), each per-frame stage's thread CPU summed over its
    calls, and every thread's CPU (from /proc) when the encoder's flush starts."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[float, float]] = {}
        self.frame_cpu: dict[str, float] = defaultdict(float)
        self.threads_at_finish: dict[str, float] = {}
        self._running = threading.local()
        self._lock = threading.Lock()

    def start(self, stage: str) -> None:
        if stage in STAGES:
            self._running.start = time.thread_time()
            return
        if stage == "finish":
            self.threads_at_finish = _thread_cpu()
        self.marks[("start", stage)] = (_process_cpu(), time.thread_time())

    def end(self, stage: str) -> None:
        if stage in STAGES:
            with self._lock:
                self.frame_cpu[stage] += time.thread_time() - self._running.start
            return
        self.marks[("end", stage)] = (_process_cpu(), time.thread_time())


def _process_cpu() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of every live thread of this process, summed by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rindex(")")
        fields = stat[close + 2:].split()
        out[stat[stat.index("(") + 1:close]] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def scratch(args: argparse.Namespace) -> dict[str, Any]:
    started = _process_cpu()  # the interpreter and this tool's own imports
    root = Path(args.root).resolve() if args.root else ROOT
    sys.path.insert(0, str(root))
    import morph3d
    from morph3d.cli import build_parser

    assert Path(morph3d.__file__).resolve().is_relative_to(root), morph3d.__file__
    host = machine()
    clock = ScratchClock()
    cli = build_parser().parse_args(
        ["swap", "--source", str(args.source), "--target", str(args.clip), "--output",
         str(args.output), "--work-dir", str(args.work_dir), "--quiet"])
    parsed = _process_cpu()
    wall = time.perf_counter()
    cli.func(cli, hook=clock)
    wall = time.perf_counter() - wall
    end = _process_cpu()
    import resource

    m = clock.marks
    main_loop = m[("start", "finish")][1] - m[("end", "prepare")][1]
    loop = m[("end", "finish")][0] - m[("end", "prepare")][0]
    frame_cpu = dict(clock.frame_cpu)
    main_rest = main_loop - sum(frame_cpu.get(s, 0.0) for s in ("decode", "composite", "encode"))
    rows = {
        "start-up (interpreter, the tool's imports)": started,
        "imports and the CLI's parser": parsed - started,
        "probe, model, imports up to the first stage":
            min(m[("start", name)][0] for name in ("landmarks", "fit source")
                if ("start", name) in m) - parsed,
        **{name: m[("end", name)][0] - m[("start", name)][0]
           for name in ("landmarks", "fit clip", "fit source", "prepare")},
        "frame loop (all threads)": loop,
        **{f"- {name} (its thread's CPU)": frame_cpu.get(name, 0.0) for name in STAGES},
        "- main thread between the stages": main_rest,
        "- other threads (FFmpeg, x264, swscale) and finish":
            loop - sum(frame_cpu.values()) - main_rest,
        "after the swap": end - m[("end", "finish")][0],
        "total": end,
    }
    frames = probe_frames(Path(args.output))
    result = {"clip": str(args.clip), "frames": frames, "root": str(root), "wall_s": wall,
              "cpu_s": rows, "cpu_s_per_frame": end / frames,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads_at_finish": clock.threads_at_finish,
              "machine": {**host, "loadavg_end": os.getloadavg()}}
    print(f"{args.clip}: {frames} frames from scratch, {end:.1f} CPU-s "
          f"({end / frames:.3f} per frame), wall {wall:.1f} s (swap only), peak RSS "
          f"{result['peak_rss_mib']:.0f} MiB; tree {root}")
    print("| stage | CPU s | CPU ms per frame |\n| --- | --- | --- |")
    for name, cpu in rows.items():
        print(f"| {name} | {cpu:.2f} | {1000 * cpu / frames:.1f} |")
    print(machine_line(result["machine"]))
    if args.json:
        write_json(Path(args.json), result)
    return result


def probe_frames(path: Path) -> int:
    from morph3d.io.media import probe_video

    return int(probe_video(path).frame_count)


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
    p = sub.add_parser("scratch")
    p.add_argument("clip", type=Path)
    p.add_argument("--source", type=Path, default=MEDIA / "mark.jpg")
    p.add_argument("--work-dir", type=Path, required=True, help="an empty folder")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--json")
    p.add_argument("--root", help="import the project from this tree")
    args = parser.parse_args()
    if args.command == "scratch":
        scratch(args)
    elif args.command == "make-clips":
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
