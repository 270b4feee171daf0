"""Benchmark the landmark stage (`fitting.video.video_landmarks`: decode, detect, track,
smooth) across source trees, and check that the trees give the same landmarks.

    python tools/bench_landmarks.py [--clip ../shared/media/nggyup.mp4] [--frames 150]
                                    [--tree NAME=DIR ...] [--rounds 3] [--profile DIR]
                                    [--save-dir DIR] [--json FILE]

Each `--tree NAME=DIR` (default: this checkout as "here") is a source tree, e.g. a
`git archive` of an earlier commit: each run is a child process that imports the stage from
DIR (first on `sys.path`; the child checks where `fitting` came from); the runs alternate
between the trees (`--rounds` times each), so a changing machine load hits them alike. A
child first runs the stage on the clip's first 5 frames (imports, the models' loading, the
graphs' start: what every process pays once), then on `--frames` frames, and reports wall
seconds, process CPU seconds (every thread: decoding, mediapipe's graph threads; steadier
than wall on a shared machine) and the main thread's CPU seconds.
`--profile DIR` writes each tree's cProfile of its first round (DIR/NAME.prof) and prints its
top functions.

Each tree's first-round landmarks (the selected face's trajectories of every scheme, the
scene cuts, the people found) are saved in `--save-dir` (default out/bench_landmarks) as
NAME.npz; the report says whether every other tree's are the same bit for bit as the first
tree's, or their largest difference in pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    ROOT,
    add_tree_arguments,
    machine,
    machine_line,
    print_profile,
    run_tree_child,
    tree_folders,
    write_json,
)

OUT = ROOT / "out" / "bench_landmarks"
WARM_FRAMES = 5


def child(args: argparse.Namespace) -> int:
    # benchlib put this checkout first on sys.path: the tree under test goes before it.
    sys.path.insert(0, str(args.tree_dir))
    import fitting
    from fitting.video import video_landmarks

    if not Path(fitting.__file__).resolve().is_relative_to(Path(args.tree_dir).resolve()):
        raise SystemExit(f"fitting imported from {fitting.__file__}, not {args.tree_dir}")
    video_landmarks(args.clip, "mediapipe", max_frames=WARM_FRAMES, progress=False)
    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    found = video_landmarks(args.clip, "mediapipe", max_frames=args.frames, progress=False)
    record: dict[str, Any] = {
        "fitting": fitting.__file__, "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu, "main_thread_cpu_s": time.thread_time() - main,
        "frames": int(len(found.scene_cut))}
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile_out)
    if args.save:
        np.savez(args.save, scene_cut=found.scene_cut, found=found.faces_found, **found.points)
    Path(args.child).write_text(json.dumps(record))
    return 0


def run_child(tree: Path, args: argparse.Namespace, name: str, first: bool) -> dict[str, Any]:
    argv = ["--clip", str(args.clip), "--frames", str(args.frames)]
    if first:
        argv += ["--save", str(args.save_dir / f"{name}.npz")]
        if args.profile:
            argv += ["--profile-out", str(args.profile / f"{name}.prof")]
    return run_tree_child(__file__, tree, args.save_dir / f"{name}.child.json", argv, name)


def landmark_differences(a_path: Path, b_path: Path) -> str:
    """'identical' or the arrays that differ, with their largest difference."""
    with np.load(a_path) as a, np.load(b_path) as b:
        if sorted(a.files) != sorted(b.files):
            return f"different arrays: {sorted(a.files)} vs {sorted(b.files)}"
        differ = []
        for key in a.files:
            x, y = a[key], b[key]
            if x.shape != y.shape:
                differ.append(f"{key} shape {x.shape} vs {y.shape}")
            elif not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                differ.append(f"{key} up to {np.nanmax(diff):.3g}")
    return "identical" if not differ else "; ".join(differ)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_arguments(parser, OUT, rounds=3)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.clip.is_file():
        sys.exit(f"bench_landmarks: {args.clip} not found (the shared media)")
    args.save_dir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    trees = tree_folders(args.tree)
    info = machine()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            rec = run_child(tree, args, name, r == 0)
            results[name].append(rec)
            print(f"round {r} {name}: {rec['cpu_s']:.2f} CPU-s, {rec['wall_s']:.2f} s wall",
                  flush=True)
    info["loadavg_end"] = os.getloadavg()
    names = list(trees)
    same = {n: landmark_differences(args.save_dir / f"{names[0]}.npz",
                                    args.save_dir / f"{n}.npz") for n in names[1:]}

    print("\n| tree | round | load (1 min) | frames | wall s (fps) | CPU s (ms/frame) | "
          "main thread CPU s (ms/frame) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        for r, rec in enumerate(results[name]):
            n = rec["frames"]
            print(f"| {name} | {r} | {rec['load_1min']:.1f} | {n} | {rec['wall_s']:.2f} "
                  f"({n / rec['wall_s']:.1f}) | {rec['cpu_s']:.2f} "
                  f"({rec['cpu_s'] / n * 1000:.1f}) | {rec['main_thread_cpu_s']:.2f} "
                  f"({rec['main_thread_cpu_s'] / n * 1000:.1f}) |")
    for name in names:
        cpu = sorted(rec["cpu_s"] / rec["frames"] * 1000 for rec in results[name])
        print(f"{name}: CPU ms/frame median {float(np.median(cpu)):.1f} "
              f"(min {cpu[0]:.1f}, max {cpu[-1]:.1f})")
    for n, d in same.items():
        print(f"landmarks {n} vs {names[0]}: {d}")
    print("\n" + machine_line(info))
    if args.profile:
        for name in names:
            print_profile(args.profile / f"{name}.prof", "the landmark stage")
    if args.json:
        write_json(args.json, {"machine": info, "clip": str(args.clip), "frames": args.frames,
                               "trees": {k: str(v) for k, v in trees.items()},
                               "runs": results, "landmarks": same})
    return 0


if __name__ == "__main__":
    sys.exit(main())
