"""Benchmark batch renders: templates vs none, local worker processes vs Ray.

    python tools/bench_batch.py --json out/bench_batch.json [--jobs 20] [--frames 16]
                                [--workers 2] [--skip-cold] [--skip-ray]

Jobs: `--jobs` swaps into the first `--frames` frames of orig.webm, sources alternating
mark.jpg / khabenskii.jpg, `refine=classic`. Every job gets its own fresh work directory
(fit cache), so nothing one job computed helps another; what the work directory starts with
defines the scenario:
- warm (headline): each job's work directory is seeded with the two source photos' fits (as
  when a returning user's photo was fitted before), so the difference between the runs is
  exactly the clip's detection and fitting, which the template saves.
  jobs_per_min_no_template: target orig.webm, every job detects, tracks and fits the clip;
  jobs_per_min_template: target the template (built once, timed separately);
  jobs_per_min_ray: the template jobs on a local Ray runtime with `--workers` CPUs (started
  before the clock starts, as a cluster would be).
- cold (unless --skip-cold): empty work directories, so every job also fits its source photo
  (a new user per job): jobs_per_min_template_cold / jobs_per_min_no_template_cold.
Throughput is jobs / wall seconds of `run_batch` (worker start-up included); per-job seconds
are the mean of the jobs' own times (the report's `seconds`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MEDIA, machine, write_json  # noqa: E402


def write_jobs(path: Path, target: Path, jobs: int, frames: int, work_root: Path,
               seed: Path | None) -> Path:
    sources = [MEDIA / "mark.jpg", MEDIA / "khabenskii.jpg"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target", "output", "options"])
        for i in range(jobs):
            work = work_root / f"job{i:03d}"
            work.mkdir(parents=True)
            if seed is not None:
                for fit in seed.glob("source-*.npz"):
                    shutil.copy(fit, work / fit.name)
            writer.writerow([str(sources[i % 2]), str(target), f"out{i:03d}.mp4",
                             f"max_frames={frames};refine=classic;work_dir={work}"])
    return path


def run_set(name: str, root: Path, target: Path, args, seed: Path | None,
            ray_address: str | None = None) -> dict:
    from morph3d.swap.batch import run_batch

    folder = root / name
    folder.mkdir()
    manifest = write_jobs(folder / "jobs.csv", target, args.jobs, args.frames,
                          folder / "work", seed)
    t = time.perf_counter()
    report = run_batch(manifest, folder / "out", workers=args.workers, ray_address=ray_address,
                       progress=not args.quiet)
    wall = time.perf_counter() - t
    failed = [r for r in report.results if r.status != "done"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} jobs failed, e.g. {failed[0].error}")
    per_job = sum(r.seconds for r in report.results) / len(report.results)
    result = {"wall_seconds": round(wall, 2), "jobs_per_min": round(args.jobs / wall * 60, 2),
              "seconds_per_job": round(per_job, 2), "executor": report.executor}
    print(f"{name}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-cold", action="store_true", help="only the warm scenario")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--keep", type=Path, help="work here and keep everything")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if not MEDIA.is_dir():
        raise SystemExit(f"needs the real test media at {MEDIA}")

    from morph3d.model.registry import load_model
    from morph3d.swap.fits import fit_source
    from morph3d.swap.options import SwapOptions, SwapSummary
    from morph3d.swap.template import build_template

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(),
                     "jobs": args.jobs, "frames": args.frames, "workers": args.workers,
                     "clip": "orig.webm (464x560, 25 fps)", "refine": "classic"}
    try:
        t = time.perf_counter()
        template = root / "orig.m3dt"
        build_template(MEDIA / "orig.webm", template,
                       SwapOptions(max_frames=args.frames, work_dir=root / "tpl-work",
                                   quiet=True))
        results["template_build_seconds"] = round(time.perf_counter() - t, 2)
        results["template_bytes"] = template.stat().st_size
        seed = root / "seed"
        model = load_model()
        for photo in ("mark.jpg", "khabenskii.jpg"):
            t = time.perf_counter()
            fit_source([MEDIA / photo], model, SwapOptions(work_dir=seed, quiet=True),
                       SwapSummary(output=""))
            results[f"source_fit_seconds_{photo}"] = round(time.perf_counter() - t, 2)
        print({k: v for k, v in results.items()}, flush=True)

        sets = {"no_template": run_set("no_template", root, MEDIA / "orig.webm", args, seed),
                "template": run_set("template", root, template, args, seed)}
        if not args.skip_ray:
            import ray

            t = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            results["ray_start_seconds"] = round(time.perf_counter() - t, 2)
            try:
                sets["ray"] = run_set("ray", root, template, args, seed, ray_address="auto")
            finally:
                ray.shutdown()
        if not args.skip_cold:
            sets["no_template_cold"] = run_set("no_template_cold", root, MEDIA / "orig.webm",
                                               args, None)
            sets["template_cold"] = run_set("template_cold", root, template, args, None)
        for name, r in sets.items():
            results[f"jobs_per_min_{name}"] = r["jobs_per_min"]
            results[f"seconds_per_job_{name}"] = r["seconds_per_job"]
        results["sets"] = sets
        results["template_speedup_per_job"] = round(
            sets["no_template"]["seconds_per_job"] / sets["template"]["seconds_per_job"], 2)
        results["template_speedup_throughput"] = round(
            sets["template"]["jobs_per_min"] / sets["no_template"]["jobs_per_min"], 2)
        if not args.skip_cold:
            results["template_speedup_per_job_cold"] = round(
                sets["no_template_cold"]["seconds_per_job"]
                / sets["template_cold"]["seconds_per_job"], 2)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
