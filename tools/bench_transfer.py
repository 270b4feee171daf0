"""The render stage alone: `transfer_face` replayed on recorded frames, a baseline and the
working tree's code interleaved in one process.

    python tools/bench_transfer.py record CLIP --source PHOTO --work-dir DIR --max-frames N
                                   --out FILE.pkl
    python tools/bench_transfer.py replay FILE.pkl [--baseline COMMIT] [--repeat R]
                                   [--cprofile] [--top K] [--json OUT]
                                   [--through-compositor INPUTS.pkl]

`record` runs `morph3d.swap.driver.swap` in this process (fill DIR's fits first: a second
run then has them cached) and pickles the face renderer and every `FaceRenderer.render`
call's arguments (about 3 MB a 720p frame: keep FILE out of the repository).

`replay` calls `transfer_face` on every recorded frame, the baseline's and the working tree's,
alternating frame by frame and repeated R times (after one untimed call each), with one torch
thread, one OpenCV thread, no autograd and the swap's malloc settings
(`renderer.keep_freed_memory`; `--malloc-defaults`: glibc's own) as the swap runs it, so a
shared machine's load falls on both alike. It prints each side's thread CPU per frame
(`time.thread_time`), the render-stage fps that gives, its process CPU (`time.process_time`:
OpenCV's worker threads included, where a caller gives it any), and the largest and mean
absolute difference of the rendered images (0-255 grey levels, over the window both cover) and
of the region masks and coverage. `--cprofile` prints both sides' top functions (own and
cumulative thread CPU) over the replay (`--steps transfer_face,...`: the direct calls of those
functions instead, the stage's per-step table). `--through-compositor`: also each side's render
composited into its frame by the working tree's compositor (one per side; the other inputs from
a `composite` recording of the same clip's first frames), and how far the final frames differ
before encoding.

    python tools/bench_transfer.py composite FILE.pkl --baseline COMMIT [--repeat R]
                                   [--cprofile] [--top K] [--json OUT]

`composite` does the same for the compositor (`FaceCompositor.process`) on the inputs that
`tools/profile_swap.py run CLIP --record-composite FILE.pkl` pickles: a baseline compositor
and the working tree's, each with its own per-clip state, fed the recorded frames in turn;
it prints each side's thread CPU per frame and the largest and mean absolute difference of
the composited frames (over the whole frames, and the mean, 99.9th percentile and largest
over the pixels either side changed, each pixel's largest channel); `--cprofile` both
sides' top functions.

The baseline is a snapshot of COMMIT in the same process: the modules the render stage runs
through (`SNAPSHOT_MODULES`, plus any other module of `morph3d/swap`, `morph3d/composite` or
`render` that differs from the working tree) are imported from `git show COMMIT:PATH` under
their own names into a separate set, and that set stands in `sys.modules` while the baseline
runs, so its imports inside functions find the baseline's modules too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pickle
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, machine_line, write_json  # noqa: E402


def record(args: argparse.Namespace) -> None:
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.renderer import FaceRenderer

    calls: list = []
    renderers: list = []
    render = FaceRenderer.render

    def recording(self, *a, **k):  # the inputs are data, not a stage: wrap the method
        if not renderers:
            renderers.append(self)
        calls.append((a, k))
        return render(self, *a, **k)

    FaceRenderer.render = recording
    output = Path(args.work_dir) / "bench_transfer_out.mp4"
    options = SwapOptions(work_dir=Path(args.work_dir), max_frames=args.max_frames, quiet=True)
    swap([Path(args.source)], Path(args.clip), output, options)
    FaceRenderer.render = render
    with open(args.out, "wb") as f:
        pickle.dump({"renderer": renderers[0], "calls": calls, "clip": str(args.clip)}, f)
    print(f"{args.out}: {len(calls)} render calls")


# what `transfer_face` and the compositor run through, taken whole from the baseline commit
# (with every module of morph3d/composite)
SNAPSHOT_MODULES = ("morph3d/swap/transfer.py", "morph3d/swap/tone.py",
                    "morph3d/swap/sharpness.py", "morph3d/swap/window.py")


class Snapshot:
    """Modules of a commit imported under their own names beside the working tree's."""

    def __init__(self, commit: str) -> None:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                                  text=True).stdout

        changed = [p for p in git("diff", "--name-only", commit, "--", "morph3d/swap",
                                  "morph3d/composite", "render").split()
                   if p.endswith(".py") and not p.endswith("__init__.py")
                   and (ROOT / p).exists()]
        composite = [p for p in git("ls-tree", "--name-only", f"{commit}:morph3d/composite")
                     .split() if p.endswith(".py") and p != "__init__.py"]
        # a changed renderer module is taken with the whole package: its modules bind each
        # other's names at import and at call time, so one side must not mix both commits
        render = ([p for p in git("ls-tree", "--name-only", f"{commit}:render").split()
                   if p.endswith(".py") and p != "__init__.py"]
                  if any(p.startswith("render/") for p in changed) else [])
        self.paths = sorted(set(SNAPSHOT_MODULES) | set(changed)
                            | {f"morph3d/composite/{p}" for p in composite}
                            | {f"render/{p}" for p in render})
        # a fresh folder per commit: numba's on-disk cache of the snapshot's kernels must
        # not outlive the files it was compiled from
        sha = git("rev-parse", commit).strip()
        folder = Path("/tmp") / f"bench_transfer_{sha[:12]}"
        shutil.rmtree(folder, ignore_errors=True)
        self.files = {}
        for path in self.paths:
            name = path[:-3].replace("/", ".")
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(git("show", f"{commit}:{path}"))
            self.files[name] = target
        self.modules: dict[str, Any] = {}

    def load(self) -> Any:
        """Import the snapshot (after the working tree's modules are loaded) and return its
        `morph3d.swap.transfer`."""
        import importlib
        import importlib.abc
        import importlib.util

        files = self.files

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                return (importlib.util.spec_from_file_location(name, files[name])
                        if name in files else None)

        saved = {n: sys.modules.pop(n) for n in files if n in sys.modules}
        finder = Finder()
        sys.meta_path.insert(0, finder)
        try:
            for name in files:
                importlib.import_module(name)
            self.modules = {n: sys.modules[n] for n in files}
        finally:
            sys.meta_path.remove(finder)
            for name in files:
                sys.modules.pop(name, None)
            self.restore(saved)
        return self.modules["morph3d.swap.transfer"]

    @staticmethod
    def restore(modules: dict[str, Any]) -> None:
        """Put `modules` in `sys.modules` and as their packages' attributes."""
        for name, module in modules.items():
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)

    def active(self):
        """Context: the snapshot's modules stand in `sys.modules` meanwhile."""
        from contextlib import contextmanager

        @contextmanager
        def swapped():
            saved = {n: sys.modules[n] for n in self.modules if n in sys.modules}
            self.restore(self.modules)
            try:
                yield
            finally:
                self.restore(saved)
        return swapped()


def call(module, renderer, a: tuple, k: dict) -> dict:
    """What `FaceRenderer.render` does, with `module`'s `transfer_face` (the eyes' usual
    opening passed where that `transfer_face` takes it and the recording holds it)."""
    import inspect

    camera_params, rotation, translation, expression, frame, landmarks = a
    t = renderer.transfer
    extra = ({"eye_openness": getattr(t, "eye_openness", None)}
             if "eye_openness" in inspect.signature(module.transfer_face).parameters else {})
    return module.transfer_face(
        renderer.model, renderer.source_identity, t.actor_identity, t.textures,
        renderer.region_channels, camera_params, rotation, translation, expression,
        frame, landmarks, source_factor=t.source_factor, alignment=t.alignment,
        size=renderer.work_resolution, backend=renderer.backend, **extra)


def difference(old: dict, new: dict) -> dict[str, float]:
    import numpy as np

    assert old["window"] == new["window"], (old["window"], new["window"])
    a = np.asarray(old["image"], np.float64) * 255
    b = np.asarray(new["image"], np.float64) * 255
    d = np.abs(a - b)
    regions = [np.mean(old["regions"][n] != new["regions"].get(n, old["regions"][n]))
               for n in old["regions"]]
    return {"image_max": float(d.max()), "image_mean": float(d.mean()),
            "pixels_over_1": float(np.mean(d.max(-1) > 1.0)),
            "region_mismatch": float(max(regions)),
            "coverage_max": float(np.abs(old["coverage"] - new["coverage"]).max())}


def composited(compositors: dict, recorded, frame, outs: dict):
    """|old - new| of one frame composited from each side's render (uint8 H x W x 3)."""
    import dataclasses

    import numpy as np

    final = {}
    for side, render in outs.items():
        inputs = dataclasses.replace(
            recorded, frame=frame, render=render["image"], coverage=render["coverage"],
            swapped_landmarks={"ibug68": render["ibug68"],
                               "mediapipe478": render["mediapipe478"]},
            regions=render["regions"], window=render["window"])
        final[side] = compositors[side].process(inputs)[0].astype(np.int16)
    return np.abs(final["old"] - final["new"]).max(-1)


def profile_table(profile: cProfile.Profile, top: int, order: str = "tottime") -> str:
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats(order).print_stats(top)
    return "\n".join(line for line in text.getvalue().splitlines()
                     if line.strip() and "Ordered by" not in line)


def step_table(profile: cProfile.Profile, frames: int, function: str = "transfer_face",
               least_ms: float = 0.1) -> str:
    """The calls `function` makes itself, each with its cumulative and own thread CPU (ms
    per frame) and calls per frame, largest first: the stage's steps, one level down."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    target = next((key for key in stats if key[2] == function), None)
    if target is None:
        return f"({function} not called)"
    rows = []
    for key, (_, _, _, _, callers) in stats.items():
        if target in callers:
            calls, _, own, cumulative = callers[target]
            rows.append((1000 * cumulative / frames, 1000 * own / frames, calls / frames,
                         f"{Path(key[0]).name}:{key[2]}"))
    rows.sort(reverse=True)
    total = 1000 * stats[target][3] / frames
    lines = [f"{function}: {total:.2f} ms/frame (own lines {1000 * stats[target][2] / frames:.2f})",
             "| step | cumulative ms/frame | own | calls/frame |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {cum:.2f} | {own:.2f} | {n:.1f} |" for cum, own, n, name in rows
              if cum >= least_ms]
    return "\n".join(lines)


def replay(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from morph3d.swap import transfer

    torch.set_grad_enabled(False)  # as the swap driver runs the render stage
    torch.set_num_threads(1)
    with open(args.recording, "rb") as f:
        data = pickle.load(f)
    renderer, calls = data["renderer"], data["calls"]
    from contextlib import nullcontext

    sides = {"new": transfer}
    contexts = {"new": nullcontext}
    snapshot = Snapshot(args.baseline) if args.baseline else None
    if snapshot is not None:
        call(transfer, renderer, *calls[0])  # every module the working tree's side imports
        sides = {"old": snapshot.load(), "new": transfer}
        contexts["old"] = snapshot.active
        print(f"baseline {args.baseline}: " + ", ".join(snapshot.paths))
    cpu = {s: [] for s in sides}
    # OpenCV runs some calls (warpAffine, remap, resize) on its own worker threads as well:
    # the process CPU counts them, the thread CPU does not (one side runs at a time)
    process: dict[str, list[float]] = {s: [] for s in sides}
    # thread CPU, not wall: on a shared machine the wall clock mostly measures the others
    profiles = ({s: cProfile.Profile(time.thread_time) for s in sides} if args.cprofile
                else {})
    diffs = []
    finals: list[np.ndarray] = []
    through = None
    if args.through_compositor and snapshot is not None:
        from morph3d.composite.compositor import FaceCompositor

        with open(args.through_compositor, "rb") as f:
            recorded = pickle.load(f)
        through = {side: FaceCompositor(transfer.compositor_config()) for side in sides}
    for side, module in sides.items():  # imports and compiled kernels load outside the timing
        with contexts[side]():
            call(module, renderer, *calls[0])
    for r in range(args.repeat):
        for a, k in calls:
            outs = {}
            for side, module in sides.items():
                profile = profiles.get(side)
                if profile is not None:
                    profile.enable()
                with contexts[side]():
                    c0, p0 = time.thread_time(), time.process_time()
                    outs[side] = call(module, renderer, a, k)
                    cpu[side].append(time.thread_time() - c0)
                    process[side].append(time.process_time() - p0)
                if profile is not None:
                    profile.disable()
            if r == 0 and "old" in outs:
                diffs.append(difference(outs["old"], outs["new"]))
                if through is not None and len(finals) < len(recorded):
                    finals.append(composited(through, recorded[len(finals)], a[4], outs))
    result: dict[str, Any] = {"recording": str(args.recording), "clip": data["clip"],
                              "frames": len(calls), "repeat": args.repeat,
                              "baseline": args.baseline, "machine": machine()}
    lines = [f"{data['clip']}: {len(calls)} frames x {args.repeat}, window "
             f"{calls and call_window(renderer, calls[0])}"]
    for side, values in cpu.items():
        ms = 1000 * float(np.mean(values))
        median = 1000 * float(np.median(values))
        process_ms = 1000 * float(np.mean(process[side]))
        result[side] = {"thread_cpu_ms_per_frame": ms, "median_ms": median,
                        "fps_cpu": 1000 / ms, "process_cpu_ms_per_frame": process_ms}
        lines.append(f"{side}: {ms:.1f} ms thread CPU per frame (median {median:.1f}), "
                     f"{1000 / ms:.1f} fps; process CPU {process_ms:.1f} ms "
                     f"(OpenCV's worker threads included)")
    if diffs:
        worst = {key: max(d[key] for d in diffs) for key in diffs[0]}
        mean = float(np.mean([d["image_mean"] for d in diffs]))
        result["difference"] = {"worst": worst, "image_mean_over_frames": mean}
        lines.append(f"old vs new over {len(diffs)} frames: image max {worst['image_max']:.2f}, "
                     f"mean {mean:.4f} grey levels, pixels > 1 level {worst['pixels_over_1']:.4%}"
                     f", region masks differ {worst['region_mismatch']:.4%}, coverage max "
                     f"{worst['coverage_max']:.3f}")
        speedup = (result["old"]["thread_cpu_ms_per_frame"]
                   / result["new"]["thread_cpu_ms_per_frame"])
        by_process = (result["old"]["process_cpu_ms_per_frame"]
                      / result["new"]["process_cpu_ms_per_frame"])
        lines.append(f"old / new thread CPU: {speedup:.2f}, process CPU: {by_process:.2f}")
    if finals:
        d = np.stack(finals)
        result["composited"] = {"frames": len(finals), "max": int(d.max()),
                                "mean": float(d.mean()), "over_1": float((d > 1).mean())}
        lines.append(f"composited frames (before encoding), {len(finals)}: max {d.max()}, mean "
                     f"{d.mean():.4f}, pixels > 1 level {(d > 1).mean():.4%}")
    import resource

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"peak RSS of the process (both sides and the recording): "
                 f"{result['peak_rss_mb']:.0f} MB")
    print("\n".join(lines) + "\n" + machine_line(result["machine"]))
    for side, profile in profiles.items():
        if args.steps:
            for function in args.steps.split(","):
                print(f"\n## steps ({side}, cProfile)\n"
                      + step_table(profile, len(cpu[side]), function))
            continue
        for order in ("tottime", "cumulative"):
            print(f"\n## cProfile ({side}, {len(cpu[side])} calls, by {order})\n"
                  + profile_table(profile, args.top, order))
    if args.json:
        write_json(Path(args.json), result)
    return result


def composite(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from morph3d.composite.compositor import FaceCompositor
    from morph3d.swap import transfer

    with open(args.recording, "rb") as f:
        inputs = pickle.load(f)
    FaceCompositor(transfer.compositor_config()).process(inputs[0])  # imports, untimed
    snapshot = Snapshot(args.baseline)
    old = snapshot.load()
    print(f"baseline {args.baseline}: " + ", ".join(snapshot.paths))
    with snapshot.active():
        FaceCompositor_old = sys.modules["morph3d.composite.compositor"].FaceCompositor
        FaceCompositor_old(old.compositor_config()).process(inputs[0])
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    process: dict[str, list[float]] = {"old": [], "new": []}  # OpenCV's workers included
    profiles = ({s: cProfile.Profile(time.thread_time) for s in cpu} if args.cprofile
                else {})
    worst, total, count = 0.0, 0.0, 0
    changed_hist = np.zeros(256, np.int64)  # |old - new| over the pixels either side changed
    for _ in range(args.repeat):
        with snapshot.active():
            sides = {"old": FaceCompositor_old(old.compositor_config())}
        sides["new"] = FaceCompositor(transfer.compositor_config())
        for frame_inputs in inputs:
            outs = {}
            for side, compositor in sides.items():
                with snapshot.active() if side == "old" else _nothing():
                    if side in profiles:
                        profiles[side].enable()
                    c0, p0 = time.thread_time(), time.process_time()
                    outs[side] = compositor.process(frame_inputs)[0]
                    cpu[side].append(time.thread_time() - c0)
                    process[side].append(time.process_time() - p0)
                    if side in profiles:
                        profiles[side].disable()
            d = np.abs(outs["old"].astype(np.float64) - outs["new"].astype(np.float64))
            worst, total, count = max(worst, float(d.max())), total + float(d.sum()), count + d.size
            frame = np.asarray(frame_inputs.frame)
            if outs["old"].dtype == np.uint8 and frame.dtype == np.uint8:
                changed = (outs["old"] != frame).any(-1) | (outs["new"] != frame).any(-1)
                changed_hist += np.bincount(d.max(-1)[changed].astype(np.int64),
                                            minlength=256)[:256]
    result: dict[str, Any] = {"recording": str(args.recording), "frames": len(inputs),
                              "repeat": args.repeat, "baseline": args.baseline,
                              "machine": machine(), "frame_max": worst,
                              "frame_mean": total / max(count, 1)}
    lines = []
    if changed_hist.sum():
        levels = np.arange(256)
        cumulative = np.cumsum(changed_hist) / changed_hist.sum()
        result["changed"] = {
            "pixels": int(changed_hist.sum()),
            "mean": float((levels * changed_hist).sum() / changed_hist.sum()),
            "p99_9": int(np.searchsorted(cumulative, 0.999)),
            "max": int(levels[changed_hist > 0].max())}
        c = result["changed"]
        lines.append(f"over the {c['pixels']} pixels either side changed: mean "
                     f"{c['mean']:.4f}, 99.9th percentile {c['p99_9']}, max {c['max']} "
                     "grey levels")
    for side, values in cpu.items():
        ms = 1000 * float(np.mean(values))
        process_ms = 1000 * float(np.mean(process[side]))
        result[side] = {"thread_cpu_ms_per_frame": ms, "process_cpu_ms_per_frame": process_ms}
        lines.append(f"{side}: {ms:.1f} ms thread CPU per frame (composite), process CPU "
                     f"{process_ms:.1f} ms")
    speedup = (result["old"]["thread_cpu_ms_per_frame"]
               / result["new"]["thread_cpu_ms_per_frame"])
    lines.append(f"old vs new: frames differ by max {worst:.2f}, mean {result['frame_mean']:.5f}"
                 f"; old / new thread CPU {speedup:.2f}")
    print("\n".join(lines) + "\n" + machine_line(result["machine"]))
    for side, profile in profiles.items():
        print(f"\n{side} (thread CPU, {len(cpu[side])} calls):\n"
              + profile_table(profile, args.top)
              + "\n" + profile_table(profile, args.top, "cumulative"))
    if args.json:
        write_json(Path(args.json), result)
    return result


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def call_window(renderer, recorded) -> str:
    frame = recorded[0][4]  # render(camera_params, rotation, translation, expression, frame, ..)
    return f"frame {frame.shape[1]}x{frame.shape[0]}, crop {renderer.work_resolution} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record")
    p.add_argument("clip")
    p.add_argument("--source", required=True)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--max-frames", type=int, default=12)
    p.add_argument("--out", required=True)
    p = sub.add_parser("replay")
    p.add_argument("recording")
    p.add_argument("--baseline")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json")
    p.add_argument("--through-compositor")
    p.add_argument("--steps", help="with --cprofile: instead of the top functions, the "
                   "steps (direct calls) of these functions, comma-separated "
                   "(transfer_face, match_blur, ...)")
    p = sub.add_parser("composite")
    p.add_argument("recording")
    p.add_argument("--baseline", required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json")
    for p in sub.choices["replay"], sub.choices["composite"]:
        p.add_argument("--malloc-defaults", action="store_true",
                       help="glibc's own malloc settings, not the swap's "
                       "(`renderer.keep_freed_memory`)")
    args = parser.parse_args()
    if args.command != "record":
        import cv2

        cv2.setNumThreads(1)  # as the swap driver runs every stage
        if not args.malloc_defaults:
            from morph3d.swap.renderer import keep_freed_memory

            keep_freed_memory()  # as `FaceRenderer.create` sets it for the swap's process
    {"record": record, "replay": replay, "composite": composite}[args.command](args)


if __name__ == "__main__":
    main()
