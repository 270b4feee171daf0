"""Benchmark the clip fit (`fitting.video.fit_video`) on cached landmarks, across source trees.

    python tools/bench_clip_fit.py [--clip ../shared/media/nggyup.mp4] [--landmarks FILE.npz]
                                   [--tree NAME=DIR ...] [--rounds 2] [--with-landmarks]
                                   [--profile DIR] [--save-dir DIR] [--json FILE]

The clip's landmarks are computed once as the swap computes them (`video_landmarks`, then
`morph3d.swap.fits.on_source_timeline`, mediapipe backend, largest face) and kept in
`--landmarks` (default out/bench_clip_fit/<clip>_landmarks.npz); every run fits those.

Each `--tree NAME=DIR` (default: this checkout as "here") is a source tree, e.g. a
`git archive` of an earlier commit: each run is a child process that imports the fit from
DIR (first on `sys.path`; the child checks where `fitting` came from); the runs alternate
between the trees (`--rounds` times each), so a changing machine load hits them alike. A
child loads the model, fits the clip twice (the first fit is what the swap's "fit clip"
stage pays in a fresh process, numba's kernels loaded from their cache included; the
second is warm) and reports wall seconds, process CPU seconds (steadier than wall on a
shared machine) and frames per second of each.
`--with-landmarks` also runs the landmark stage in the child first (decode + detect +
track + smooth), for the landmarks + fit CPU and wall seconds per frame. `--profile DIR` writes each
tree's cProfile of its first round's cold fit (DIR/NAME.prof) and prints its top functions.

`--save-dir` (default out/bench_clip_fit) keeps each tree's first fit (NAME.npz, a
`VideoFit`); the report gives the largest differences of every fitted parameter between
the first tree and each other one (identity, per-frame rotation, translation, expression,
SH, camera, validity).
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

OUT = ROOT / "out" / "bench_clip_fit"


# --------------------------------------------------------------------------------------------
# The child: one tree's fit
# --------------------------------------------------------------------------------------------


def compute_landmarks(clip: Path) -> tuple[dict[str, np.ndarray], float, float]:
    """The swap's landmark stage on `clip`: ({scheme: F x L x 2, "scene_cut": F}, wall s,
    process CPU s)."""
    from fitting.video import video_landmarks
    from morph3d.swap.fits import on_source_timeline

    wall, cpu = time.perf_counter(), time.process_time()
    found = video_landmarks(clip, "mediapipe", "largest", None, progress=False)
    landmarks = on_source_timeline(clip, {**found.points, "scene_cut": found.scene_cut}, None)
    return landmarks, time.perf_counter() - wall, time.process_time() - cpu


def child(args: argparse.Namespace) -> int:
    # benchlib put this checkout first on sys.path: the tree under test goes before it.
    sys.path.insert(0, str(args.tree_dir))
    import fitting
    from fitting.video import fit_video
    from morph3d.model.registry import load_model

    if not Path(fitting.__file__).resolve().is_relative_to(Path(args.tree_dir).resolve()):
        raise SystemExit(f"fitting imported from {fitting.__file__}, not {args.tree_dir}")
    record: dict[str, Any] = {"fitting": fitting.__file__}
    if args.with_landmarks:
        _, wall, cpu = compute_landmarks(args.clip)
        record["landmarks"] = {"wall_s": wall, "cpu_s": cpu}
    saved = dict(np.load(args.landmarks))
    scene_cut = saved.pop("scene_cut", None)
    model = load_model("default")
    runs = []
    for k in range(2):
        profiler = None
        if k == 0 and args.profile_out:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        fit = fit_video(args.clip, model, landmarks=saved, progress=False, scene_cut=scene_cut)
        runs.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile_out)
        if k == 0 and args.save_fit:
            fit.save(args.save_fit)
    record["fit"] = runs
    record["frames"] = int(len(saved["ibug68"]))
    Path(args.child).write_text(json.dumps(record))
    return 0


# --------------------------------------------------------------------------------------------
# The parent: alternate the trees, compare their fits
# --------------------------------------------------------------------------------------------


def run_child(tree: Path, args: argparse.Namespace, name: str, first: bool) -> dict[str, Any]:
    argv = ["--clip", str(args.clip), "--landmarks", str(args.landmarks)]
    if args.with_landmarks:
        argv.append("--with-landmarks")
    if first:
        argv += ["--save-fit", str(args.save_dir / f"{name}.npz")]
        if args.profile:
            argv += ["--profile-out", str(args.profile / f"{name}.prof")]
    return run_tree_child(__file__, tree, args.save_dir / f"{name}.child.json", argv, name)


def fit_differences(a_path: Path, b_path: Path) -> dict[str, float]:
    """Largest absolute difference of each fitted parameter between two saved fits."""
    from fitting.params import VideoFit

    a, b = VideoFit.load(a_path), VideoFit.load(b_path)
    out = {"identity": float(np.abs(a.identity.coefficients - b.identity.coefficients).max())}
    for name in ("rotation", "translation", "expression", "sh"):
        x, y = getattr(a.faces, name), getattr(b.faces, name)
        out[name] = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
    out["camera_fx"] = abs(a.camera.fx - b.camera.fx)
    out["valid_differs"] = float((a.faces.valid != b.faces.valid).sum())
    if a.identity.texture is not None and b.identity.texture is not None:
        out["texture"] = float(np.abs(a.identity.texture.astype(np.float64)
                                      - b.identity.texture.astype(np.float64)).max())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tree_arguments(parser, OUT, rounds=2)
    parser.add_argument("--landmarks", type=Path, default=None)
    parser.add_argument("--with-landmarks", action="store_true")
    parser.add_argument("--save-fit", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.landmarks is None:
        args.landmarks = OUT / f"{args.clip.stem}_landmarks.npz"
    if args.child:
        return child(args)
    if not args.clip.is_file():
        sys.exit(f"bench_clip_fit: {args.clip} not found (the shared media)")
    args.save_dir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if not args.landmarks.is_file():
        landmarks, wall, cpu = compute_landmarks(args.clip)
        args.landmarks.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.landmarks, **landmarks)
        print(f"landmarks of {args.clip.name}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    trees = tree_folders(args.tree)
    info = machine()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(run_child(tree, args, name, r == 0))
            fit = results[name][-1]["fit"]
            print(f"round {r} {name}: cold {fit[0]['cpu_s']:.2f} CPU-s, warm "
                  f"{fit[1]['cpu_s']:.2f} CPU-s", flush=True)
    info["loadavg_end"] = os.getloadavg()
    names = list(trees)
    diffs = {n: fit_differences(args.save_dir / f"{names[0]}.npz", args.save_dir / f"{n}.npz")
             for n in names[1:]}

    print("\n| tree | round | load (1 min) | frames | cold fit: wall s (fps) | cold fit: CPU s "
          "(ms/frame) | warm fit: CPU s (ms/frame) | landmarks: CPU ms/frame | landmarks + "
          "cold fit: CPU ms/frame (fps) | landmarks: wall ms/frame | landmarks + cold fit: "
          "wall ms/frame (fps) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        for r, rec in enumerate(results[name]):
            n = rec["frames"]
            cold, warm = rec["fit"]
            lm = rec.get("landmarks")
            lm_ms = f"{lm['cpu_s'] / n * 1000:.1f}" if lm else "-"
            both = (f"{(lm['cpu_s'] + cold['cpu_s']) / n * 1000:.1f} "
                    f"({n / (lm['cpu_s'] + cold['cpu_s']):.1f})" if lm else "-")
            lm_wall = f"{lm['wall_s'] / n * 1000:.1f}" if lm else "-"
            both_wall = (f"{(lm['wall_s'] + cold['wall_s']) / n * 1000:.1f} "
                         f"({n / (lm['wall_s'] + cold['wall_s']):.1f})" if lm else "-")
            print(f"| {name} | {r} | {rec['load_1min']:.1f} | {n} | {cold['wall_s']:.2f} "
                  f"({n / cold['wall_s']:.1f}) | {cold['cpu_s']:.2f} "
                  f"({cold['cpu_s'] / n * 1000:.1f}) | {warm['cpu_s']:.2f} "
                  f"({warm['cpu_s'] / n * 1000:.1f}) | {lm_ms} | {both} | {lm_wall} | "
                  f"{both_wall} |")
    for n, d in diffs.items():
        print(f"\nlargest |{n} - {names[0]}|: " + ", ".join(f"{k} {v:.3g}" for k, v in d.items()))
    print("\n" + machine_line(info))
    if args.profile:
        for name in names:
            print_profile(args.profile / f"{name}.prof", "the cold fit")
    if args.json:
        write_json(args.json, {"machine": info, "clip": str(args.clip), "trees":
                               {k: str(v) for k, v in trees.items()}, "runs": results,
                               "differences": diffs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
