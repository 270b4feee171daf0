"""Peak memory of `morph3d swap` against clip length.

    python tools/bench_memory.py --repeat-jobs 8 --frames 8
    python tools/bench_memory.py --landmark-growth 600 1200 [--clips-dir DIR] [--json FILE]
    python tools/bench_memory.py [--frames 150 600] [--size 1920x1080] [--skip-growth]
                                 [--clips-dir /tmp/morph3d_bench_memory]
                                 [--json FILE] [--plot docs/bench_memory_rss.png]

`--repeat-jobs N` instead runs one batch worker's life: the same template job (the first
`--frames` frames of nggyup.mp4, mark.jpg, `refine=classic`, one torch thread) N times in one
process, and reports RSS, VmHWM and the live mediapipe graphs after each job: what a job
leaves behind accumulates in a worker that runs hundreds.

`--landmark-growth A B` instead measures only the landmark stage's heap growth per frame
(tracemalloc, as the default run's first step does for all fitting stages) between the first
A and B frames of a 1280x720 ping-pong clip of nggyup.mp4 (made under --clips-dir), for
lengths past the 289 frames of nggyup.mp4 itself.

`--large-images` instead swaps 8000 x 8000 stills (mark.jpg upscaled, under --clips-dir): one
as the source photo (target mark.jpg), one as the target image (source mark.jpg), each in a
fresh work directory, and reports their peak RSS and wall time.

Makes test clips of the given lengths and `--size` from nggyup.mp4 (1280x720, re-encoded at
`--size`; played forwards then backwards past its 289 frames so the motion has no cut; no
audio) under --clips-dir (never in the repository), runs the instrumented
`morph3d swap` of tools/bench_swap.py on each with mark.jpg and a fresh work directory, and
reports the peak RSS (VmHWM) overall and at the end of each stage, each stage's own peak RSS
(the kernel's high-water mark reset at every stage boundary: a stage whose peak stays below an
earlier stage's is seen too), the size per frame of the per-frame arrays the pipeline keeps
(the cached landmarks and clip fit), and a projection for a 10-minute 1080p clip. Unless
`--skip-growth`, the fitting stages' heap growth per frame is measured first (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MEDIA, ROOT, machine, machine_line, run_swap, write_json  # noqa: E402

from morph3d.io.atomic import atomic_write  # noqa: E402
from morph3d.io.outputs import temp_path_beside  # noqa: E402

SIZE = (1920, 1080)
TEN_MINUTES_FRAMES = 10 * 60 * 30


def make_clip(path: Path, frames: int, size: tuple[int, int] = SIZE) -> Path:
    """nggyup.mp4 resized to `size`, ping-ponged to `frames` frames, H.264 CRF 18, 30 fps."""
    import av
    import cv2

    from morph3d.io.media import iter_frames

    if path.is_file():
        with av.open(str(path)) as c:
            if c.streams.video[0].frames == frames:
                return path
    source = list(f.rgb for f in iter_frames(MEDIA / "nggyup.mp4", 0, frames))  # 720p
    order = list(range(len(source))) + list(range(len(source) - 2, 0, -1))
    tmp = temp_path_beside(path, "tmp")  # PyAV writes it by name
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for k in range(frames):
            rgb = cv2.resize(source[order[k % len(order)]], size, interpolation=cv2.INTER_LINEAR)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def per_frame_bytes(work_dir: Path, frames: int) -> dict[str, Any]:
    """Bytes per frame of the arrays with a leading frame axis in the clip's cached npz files
    (landmarks.npz, fit.npz), and the size of the rest."""
    per_frame: dict[str, int] = {}
    fixed = 0
    for npz in sorted(work_dir.glob("clip-*/*.npz")):
        with np.load(npz) as z:
            for key in z.files:
                a = z[key]
                if a.ndim and a.shape[0] == frames:
                    per_frame[f"{npz.stem}/{key}"] = a.nbytes // frames
                else:
                    fixed += a.nbytes
    return {"arrays": per_frame, "total_per_frame": sum(per_frame.values()),
            "fixed_bytes": fixed}


def rss_plot(runs: dict[int, dict], path: Path) -> None:
    """RSS over time, one panel per clip length, stage starts marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.6 * len(runs)))
    FigureCanvasAgg(fig)
    top = max(max(s[1] for s in run["rss_samples"]) for run in runs.values()) / 1024 * 1.25
    for k, (frames, run) in enumerate(sorted(runs.items())):
        ax = fig.add_subplot(len(runs), 1, k + 1)
        t = np.array([s[0] for s in run["rss_samples"]])
        rss = np.array([s[1] for s in run["rss_samples"]]) / 1024
        ax.plot(t, rss, lw=1)
        starts = {"fit source start": "fit source", "landmarks start": "landmarks",
                  "fit clip start": "fit clip", "prepare start": "render", "exit": "exit"}
        for label, wall, _, _ in run["marks"]:
            if label in starts:
                ax.axvline(wall, color="grey", lw=0.6, ls=":")
                ax.text(wall, top * 0.97, " " + starts[label], fontsize=7, va="top",
                        color="dimgrey")
        ax.set(ylabel="RSS (MiB)", ylim=(0, top),
               title=f"{frames} frames: peak {run['peak_rss_mib']:.0f} MiB")
    fig.axes[-1].set_xlabel("seconds since the process started (RSS sampled every 0.2 s)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=80)


GROWTH_FRAMES = (120, 289)  # both past the shot cuts at frames 22 and 93


def growth_child(frames: int, clip: Path | None = None) -> dict[str, int]:
    """Python/numpy heap (tracemalloc) of the clip-fitting stages on the first `frames` frames
    of nggyup.mp4: the peak during landmark detection, the landmarks kept, the peak during the
    clip fit and the fit kept. Run in a fresh process; deterministic, unlike RSS. Both lengths
    must include the same shot cuts: a cut makes a second track, whose identity check loads
    the dlib models once (a constant that would otherwise look like growth). With `clip`,
    only the landmark detection, on that clip."""
    import gc
    import tracemalloc

    from fitting.video import fit_video, video_landmarks
    from morph3d.model.registry import load_model

    model = load_model("default") if clip is None else None
    source = MEDIA / "nggyup.mp4" if clip is None else clip
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    landmarks = video_landmarks(source, "mediapipe", "largest", frames, progress=False).points
    peak_landmarks = tracemalloc.get_traced_memory()[1]
    gc.collect()  # what is still referenced, not garbage in cycles
    kept_landmarks = tracemalloc.get_traced_memory()[0]
    found = {"frames": frames, "peak_landmarks": peak_landmarks - base,
             "kept_landmarks": kept_landmarks - base}
    if model is None:
        return found
    tracemalloc.reset_peak()
    fit = fit_video(source, model, landmarks=landmarks, max_frames=frames, progress=False)
    del landmarks
    peak_fit = tracemalloc.get_traced_memory()[1]
    gc.collect()
    kept_fit = tracemalloc.get_traced_memory()[0]
    assert fit.faces.valid.any()
    return {**found, "peak_fit": peak_fit - base, "kept_fit": kept_fit - base}


def measure_growth(lengths: tuple[int, int] = GROWTH_FRAMES, clip: Path | None = None
                   ) -> dict[str, Any]:
    """Bytes per frame that each fitting stage's heap peak and kept state grow by (with
    `clip`: the landmark stage's only, on that clip)."""
    import subprocess

    rows = []
    for frames in lengths:
        extra = [] if clip is None else [str(clip)]
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--growth-child",
                               str(frames), *extra], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"bench_memory: the growth measurement failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    a, b = rows
    span = b["frames"] - a["frames"]
    slopes = {k: (b[k] - a[k]) / span for k in a if k != "frames"}
    return {"rows": rows, "bytes_per_frame": slopes}


def landmark_growth(lengths: tuple[int, int], clips_dir: Path) -> dict[str, Any]:
    """`measure_growth` of the landmark stage alone on the first frames of a 1280x720
    ping-pong clip of nggyup.mp4 (`make_clip`), for lengths past its 289 frames: the stage's
    peak is the tracking pass's (the detector's buffers) on short clips and what follows it
    on long ones, so only lengths past that crossover give the growth a long clip sees."""
    clip = make_clip(clips_dir / f"nggyup_1280x720_{max(lengths)}.mp4", max(lengths),
                     (1280, 720))
    return {"clip": str(clip), **measure_growth(lengths, clip)}


def projection_text(runs: dict[int, dict], results: dict[str, Any]) -> str:
    """Growth with length: the measured change of each stage's peak between the shortest and
    the longest clip, and the projection for a 10-minute 1080p30 clip from the per-frame
    arrays (the only state that grows with length; RSS noise of a few tens of MiB hides their
    growth over a few hundred frames)."""
    lengths = sorted(runs)
    longest = runs[lengths[-1]]
    arrays = longest["arrays"]["arrays"]
    per_frame = longest["arrays"]["total_per_frame"]
    kept = sum(v for k, v in arrays.items() if k.startswith("fit"))  # fit-<key>: the VideoFit
    extra = TEN_MINUTES_FRAMES - lengths[-1]
    projection: dict[str, Any] = {
        "frames": TEN_MINUTES_FRAMES, "cached_arrays_mib": per_frame * TEN_MINUTES_FRAMES / 2**20,
        "kept_while_rendering_bytes_per_frame": kept,
        "peak_rss_mib": longest["peak_rss_mib"] + kept * extra / 2**20}
    growth = results.get("growth")
    if growth is not None:
        # Each fitting stage's peak grows by its heap growth per frame; the stage's RSS high
        # water mark at its end bounds where it started from.
        slope = growth["bytes_per_frame"]
        costs = longest["costs"]
        projection["landmarks_peak_rss_mib"] = (costs["landmarks"]["hwm_mib_at_end"]
                                                + slope["peak_landmarks"] * extra / 2**20)
        projection["fitting_peak_rss_mib"] = (costs["fit video"]["hwm_mib_at_end"]
                                              + slope["peak_fit"] * extra / 2**20)
        projection["peak_rss_mib"] = max(projection["peak_rss_mib"],
                                         projection["landmarks_peak_rss_mib"],
                                         projection["fitting_peak_rss_mib"])
    lines = [f"per-frame arrays in the work directory, {per_frame} bytes/frame: "
             + ", ".join(f"{k} {v}" for k, v in arrays.items()),
             f"{TEN_MINUTES_FRAMES} frames (10 min at 30 fps): "
             f"{projection['cached_arrays_mib']:.0f} MiB of cached arrays; the clip fit held while "
             f"rendering ({kept} bytes/frame) adds {kept * extra / 2**20:.0f} MiB to the "
             f"{lengths[-1]}-frame render peak: {projection['peak_rss_mib']:.0f} MiB"]
    if growth is not None:
        lines.append(
            "heap growth of the fitting stages (tracemalloc, nggyup.mp4 first "
            f"{GROWTH_FRAMES[0]} vs {GROWTH_FRAMES[1]} frames), bytes/frame: "
            + ", ".join(f"{k} {v:.0f}" for k, v in slope.items())
            + f"; projected peaks: landmarks {projection['landmarks_peak_rss_mib']:.0f} MiB, "
            f"clip fit {projection['fitting_peak_rss_mib']:.0f} MiB"
            f"; projected peak RSS {projection['peak_rss_mib']:.0f} MiB")
    if len(lengths) > 1:
        a, b = runs[lengths[0]], runs[lengths[-1]]
        change = {}
        for stage in ("landmarks", "fit video", "render"):
            if stage in a["costs"] and stage in b["costs"]:
                change[stage] = (b["costs"][stage]["hwm_mib_at_end"]
                                 - a["costs"][stage]["hwm_mib_at_end"])
        change["peak"] = b["peak_rss_mib"] - a["peak_rss_mib"]
        projection["measured_change_mib"] = change
        lines.append(f"change of the high-water mark at each stage's end from {lengths[0]} to "
                     f"{lengths[-1]} frames (MiB): "
                     + ", ".join(f"{k} {v:+.0f}" for k, v in change.items()))
        own = {k: b["stage_peaks_mib"][k] - a["stage_peaks_mib"][k]
               for k in STAGE_PEAKS if k in a["stage_peaks_mib"] and k in b["stage_peaks_mib"]}
        projection["stage_peak_change_mib"] = own
        lines.append(f"change of each stage's own peak from {lengths[0]} to {lengths[-1]} "
                     "frames (MiB): " + ", ".join(f"{k} {v:+.0f}" for k, v in own.items()))
    results["projection_10min_1080p"] = projection
    return "\n".join(lines)


LARGE_SIDE = 8000
# The stretches of a swap with their own peak (benchlib.StageRecorder's labels, in order):
# "swap" is the driver's work between its stages, "render" the frame loop, "finish" the
# encoder's flush, the output checks and the summary.
STAGE_PEAKS = ("imports", "landmarks", "fit clip", "fit source", "prepare", "render", "finish",
               "swap")


def render_tail_change(run: dict[str, Any]) -> float | None:
    """RSS change (MiB) over the second half of the render stage, by the RSS samples taken
    in it (about the second half of the frames): what a frame loop that keeps something
    per frame would show, whatever the content; None for a render too short to sample."""
    rss = [kb for _, kb, stage in run["rss_samples"] if stage == "render"]
    if len(rss) < 10:
        return None
    tail = rss[len(rss) // 2:]
    return (tail[-1] - tail[0]) / 1024


def stage_peak_table(runs: dict[int, dict], size: tuple[int, int]) -> str:
    """Each stage's own peak RSS and, after "+", its rise above the RSS it started from
    (MiB), and the RSS change over the render's second half, against clip length, one row
    per length."""
    lines = [f"| frames ({size[0]}x{size[1]}) | " + " | ".join(STAGE_PEAKS)
             + " | process peak | render's 2nd half | wall s | CPU s |",
             "| --- " * (len(STAGE_PEAKS) + 5) + "|"]
    for frames, run in sorted(runs.items()):
        own, rise = run["stage_peaks_mib"], run["stage_rises_mib"]
        change = render_tail_change(run)
        tail = "n/a" if change is None else f"{change:+.0f}"
        lines.append(f"| {frames} | " + " | ".join(f"{own[k]:.0f} +{rise[k]:.0f}" if k in own
                                                    else "n/a" for k in STAGE_PEAKS)
                     + f" | {run['peak_rss_mib']:.0f} | {tail} | {run['process_wall_s']:.0f} | "
                     f"{run['costs']['process']['cpu_s']:.0f} |")
    return "\n".join(lines)


def large_image_runs(clips_dir: Path) -> dict[str, dict[str, Any]]:
    """mark.jpg upscaled to 8000 x 8000 swapped as the source photo and as the target image:
    peak RSS and wall time of each (fresh work directories)."""
    import shutil

    import cv2

    from morph3d.io.images import read_image, write_image

    big = clips_dir / f"mark_{LARGE_SIDE}.png"
    if not big.is_file():
        write_image(big, cv2.resize(read_image(MEDIA / "mark.jpg"), (LARGE_SIDE, LARGE_SIDE),
                                    interpolation=cv2.INTER_CUBIC))
    runs = {}
    for role, source, target in (("source", big, MEDIA / "mark.jpg"),
                                 ("target", MEDIA / "mark.jpg", big)):
        work = clips_dir / f"work_large_{role}"
        if work.exists():
            shutil.rmtree(work)
        print(f"[bench_memory] {LARGE_SIDE}x{LARGE_SIDE} {role}", flush=True)
        run = run_swap(source, target, clips_dir / f"swapped_large_{role}.png", work, None)
        runs[role] = {"peak_rss_mib": run["peak_rss_mib"], "wall_s": run["process_wall_s"],
                      "seconds": run["summary"]["seconds"], "notes": run["summary"]["notes"]}
    return runs


def large_image_text(runs: dict[str, dict[str, Any]]) -> str:
    lines = [f"| {LARGE_SIDE}x{LARGE_SIDE} still as | peak RSS MiB | wall s | fit source s | "
             "render s |", "| --- | --- | --- | --- | --- |"]
    for role, run in runs.items():
        sec = run["seconds"]
        lines.append(f"| {role} | {run['peak_rss_mib']:.0f} | {run['wall_s']:.0f} | "
                     f"{sec.get('fit source', 0):.1f} | {sec.get('render', 0):.1f} |")
    return "\n".join(lines)


def repeat_child(folder: Path, frames: int, jobs: int) -> None:
    """`jobs` template swaps in this process (a batch worker's life); one JSON line per job."""
    import gc
    import time

    import torch

    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    def status_mib(field: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field))

    torch.set_num_threads(1)
    try:
        from mediapipe.python.solution_base import SolutionBase
    except ImportError:
        SolutionBase = None  # noqa: N806

    for i in range(jobs):
        cpu = time.process_time()
        swap([MEDIA / "mark.jpg"], folder / "clip.m3dt", folder / f"out{i}.mp4",
             SwapOptions(max_frames=frames, refine="classic", work_dir=folder / "work",
                         quiet=True))
        gc.collect()  # what is still referenced, not garbage in cycles
        graphs = (sum(isinstance(o, SolutionBase) for o in gc.get_objects())
                  if SolutionBase is not None else 0)
        print(json.dumps({"job": i, "cpu_s": time.process_time() - cpu,
                          "rss_mib": status_mib("VmRSS:"), "hwm_mib": status_mib("VmHWM:"),
                          "mediapipe_graphs": graphs}), flush=True)


def repeat_jobs(clips_dir: Path, frames: int, jobs: int) -> dict[str, Any]:
    """The template (built here, outside the measured process) and the worker's jobs."""
    import shutil
    import subprocess

    from morph3d.swap.options import SwapOptions
    from morph3d.swap.template import build_template

    folder = clips_dir / f"repeat_{frames}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    build_template(MEDIA / "nggyup.mp4", folder / "clip.m3dt",
                   SwapOptions(max_frames=frames, work_dir=folder / "work", quiet=True))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--repeat-child",
                           str(folder), str(frames), str(jobs)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f"bench_memory: the repeated jobs failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    half = rows[len(rows) // 2:]
    per_job = ((half[-1]["rss_mib"] - half[0]["rss_mib"]) / max(len(half) - 1, 1)
               if len(half) > 1 else 0.0)
    return {"frames": frames, "jobs": rows, "rss_mib_per_job_second_half": per_job}


def repeat_text(result: dict[str, Any]) -> str:
    lines = ["| job | CPU s | RSS MiB | VmHWM MiB | live mediapipe graphs |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["jobs"]:
        lines.append(f"| {r['job']} | {r['cpu_s']:.1f} | {r['rss_mib']:.0f} | "
                     f"{r['hwm_mib']:.0f} | {r['mediapipe_graphs']} |")
    lines.append(f"RSS growth per job over the second half: "
                 f"{result['rss_mib_per_job_second_half']:+.1f} MiB")
    return "\n".join(lines)


def keep_outside(folder: Path, what: str) -> None:
    """Stop when the benchmark's scratch `folder` lies inside the repository."""
    if folder.resolve().is_relative_to(ROOT):
        sys.exit(f"bench_memory: keep the test {what} out of the repository (--clips-dir)")


def run_mode(key: str, compute, text, json_path: Path | None) -> int:
    """One of the single-purpose modes: its result under `key` beside the machine (load at
    both ends), printed by `text` and written to `json_path` when given."""
    result: dict[str, Any] = {"machine": machine()}
    result[key] = compute()
    result["machine"]["loadavg_end"] = os.getloadavg()
    print(text(result[key]) + f"\n{machine_line(result['machine'])}")
    if json_path:
        write_json(json_path, result)
    return 0


def landmark_growth_text(found: dict[str, Any]) -> str:
    rows, slope = found["rows"], found["bytes_per_frame"]
    return ("\n".join(f"{r['frames']} frames: landmark stage peak {r['peak_landmarks']} "
                      f"bytes, kept {r['kept_landmarks']} bytes" for r in rows)
            + f"\nper frame: peak {slope['peak_landmarks']:.0f} bytes, kept "
            f"{slope['kept_landmarks']:.0f} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[150, 600])
    parser.add_argument("--size", default="1920x1080", help="the clips' WIDTHxHEIGHT, pixels")
    parser.add_argument("--skip-growth", action="store_true",
                        help="skip the tracemalloc heap growth of the fitting stages")
    parser.add_argument("--clips-dir", type=Path, default=Path("/tmp/morph3d_bench_memory"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench_memory_rss.png")
    parser.add_argument("--large-images", action="store_true",
                        help="swap 8000x8000 stills (as source, as target) instead of clips")
    parser.add_argument("--landmark-growth", type=int, nargs=2, metavar=("A", "B"),
                        help="only the landmark stage's heap growth (tracemalloc) between "
                        "the first A and B frames of a 1280x720 ping-pong clip")
    parser.add_argument("--repeat-jobs", type=int, metavar="N",
                        help="one worker's N template jobs of the first --frames frames")
    args = parser.parse_args()
    if args.repeat_jobs:
        keep_outside(args.clips_dir, "files")
        return run_mode("repeat_jobs", lambda: repeat_jobs(
            args.clips_dir, args.frames[0], args.repeat_jobs), repeat_text, args.json)
    if args.landmark_growth:
        keep_outside(args.clips_dir, "clips")
        args.clips_dir.mkdir(parents=True, exist_ok=True)
        return run_mode("landmark_growth", lambda: landmark_growth(
            tuple(args.landmark_growth), args.clips_dir), landmark_growth_text, args.json)
    if args.large_images:
        keep_outside(args.clips_dir, "images")
        args.clips_dir.mkdir(parents=True, exist_ok=True)
        return run_mode("large_images", lambda: large_image_runs(args.clips_dir),
                        large_image_text, args.json)
    if not (MEDIA / "nggyup.mp4").is_file():
        sys.exit(f"bench_memory: {MEDIA / 'nggyup.mp4'} is missing (needs ../shared/media)")
    keep_outside(args.clips_dir, "clips")
    args.clips_dir.mkdir(parents=True, exist_ok=True)

    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        sys.exit(f"bench_memory: --size takes WIDTHxHEIGHT in pixels, not {args.size!r}")

    results: dict[str, Any] = {"machine": machine(), "size": size, "runs": {}}
    if not args.skip_growth:
        print("[bench_memory] heap growth of the fitting stages", flush=True)
        results["growth"] = measure_growth()
    runs: dict[int, dict] = {}
    for frames in args.frames:
        clip = make_clip(args.clips_dir / f"nggyup_{size[0]}x{size[1]}_{frames}.mp4", frames,
                         size)
        work = args.clips_dir / f"work_{frames}"
        if work.exists():
            import shutil

            shutil.rmtree(work)
        print(f"[bench_memory] swap {frames} frames", flush=True)
        run = run_swap(MEDIA / "mark.jpg", clip, args.clips_dir / f"swapped_{frames}.mp4",
                       work, None, stage_peaks=True)
        run["arrays"] = per_frame_bytes(work, frames)
        run["render_second_half_change_mib"] = render_tail_change(run)
        runs[frames] = run
        results["runs"][frames] = {k: v for k, v in run.items() if k != "rss_samples"}

    lines = [f"| frames ({size[0]}x{size[1]}) | peak RSS MiB | at end of: imports / landmarks / "
             "fit video / fit source / render (MiB) | per-frame arrays, bytes/frame | wall s "
             "| CPU s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for frames, run in sorted(runs.items()):
        c = run["costs"]
        hwm = " / ".join(f"{c[s]['hwm_mib_at_end']:.0f}" if s in c else "n/a"
                         for s in ("imports", "landmarks", "fit video", "fit source", "render"))
        lines.append(f"| {frames} | {run['peak_rss_mib']:.0f} | {hwm} | "
                     f"{run['arrays']['total_per_frame']} | {run['process_wall_s']:.0f} | "
                     f"{c['process']['cpu_s']:.0f} |")
    results["machine"]["loadavg_end"] = os.getloadavg()
    text = ("\n".join(lines) + "\n\neach stage's own peak RSS +its rise above its start "
            "(MiB):\n"
            + stage_peak_table(runs, size) + "\n\n" + projection_text(runs, results)
            + f"\n{machine_line(results['machine'])}\n")
    print(text)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        rss_plot(runs, args.plot)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--growth-child":
        # mediapipe 0.10.14 keeps the exception of its failed optional `import sounddevice`
        # (audio_record.sd_error), whose traceback pins every frame on the stack at the
        # first `import mediapipe`: import it here, where no frame holds anything large.
        import mediapipe  # noqa: F401

        print(json.dumps(growth_child(int(sys.argv[2]),
                                      Path(sys.argv[3]) if len(sys.argv) == 4 else None)))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--repeat-child":
        import mediapipe  # noqa: F401  (as above)

        repeat_child(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
