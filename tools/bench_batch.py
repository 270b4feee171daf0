"""Benchmark batch renders: templates vs none, local worker processes vs Ray.

    python tools/bench_batch.py --json out/bench_batch.json [--case all|orig|720p]
                                [--jobs 20] [--frames 16] [--jobs-720p 4] [--frames-720p 48]
                                [--workers 2] [--skip-cold] [--skip-ray]

Two cases: "orig" (below) and "720p" (`--case 720p` runs it alone): `--jobs-720p` swaps into
the first `--frames-720p` frames of nggyup.mp4 (1280x720, 30 fps), warm, with and without a
template of those frames (built once), local workers only (keys `720p_...`).

Every set of jobs also reports its CPU time and memory, from the kernel's accounting rather
than the wall clock, so that they hold on a machine shared with other work: CPU seconds =
the driver's (`getrusage(RUSAGE_SELF)`) plus its reaped children's, i.e. every worker's
(`getrusage(RUSAGE_CHILDREN)`; the pool's workers are joined before `run_batch` returns),
over the set; frames per CPU-second = output frames (counted in the outputs) / those CPU
seconds; peak RSS per worker = each worker process's VmHWM, read from /proc every
MONITOR_S seconds until it exits (Ray's workers are not this process's children, so the Ray
set has no worker figures); the driver's own peak over the set (its VmHWM reset at the start).

Case "orig": `--jobs` swaps into the first `--frames` frames of orig.webm, sources alternating
mark.jpg / khabenskii.jpg, `refine=classic`. A manifest row may not name a work folder, so
each set of jobs runs with one fresh batch work folder (`run_batch(work_dir=...)`, the fit
cache its jobs share, as on one node). So that nothing one job computed helps another, a job
that must fit its clip gets its own copy of the clip (remuxed with a distinct comment tag:
the same packets and frames, other bytes, hence another cache key), and a job that must fit
its photo its own copy of the photo (a JPEG comment segment added: the same pixels). What the
work folder starts with defines the scenario:
- warm (headline): seeded with the two source photos' fits about the clip's actor (as when a
  returning user's photo was fitted for that clip before), so the difference between the
  runs is exactly the clip's detection and fitting, which the template saves.
  jobs_per_min_no_template: every job detects, tracks and fits its copy of the clip;
  jobs_per_min_template: target the template (built once, timed separately; its embedded
  clip is extracted into the work folder once, by the first job that opens it);
  jobs_per_min_ray: the template jobs on a local Ray runtime with `--workers` CPUs (started
  before the clock starts, as a cluster would be).
- cold (unless --skip-cold): an empty work folder and a copy of the photo per job, so every
  job also fits its source photo (a new user per job): jobs_per_min_template_cold /
  jobs_per_min_no_template_cold.
Throughput is jobs / wall seconds of `run_batch` (worker start-up included); per-job seconds
are the mean of the jobs' own times (the report's `seconds`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MEDIA, machine, machine_line, reset_hwm, write_json  # noqa: E402

MONITOR_S = 0.5


def _children(pid: int) -> list[int]:
    """The direct children of process `pid` (a scan of /proc: the kernel's own children
    lists need CONFIG_PROC_CHILDREN)."""
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _worker_stats(pid: int) -> dict[str, Any] | None:
    """A child process's command line, VmHWM (KiB) and CPU seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/status") as f:
            hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    return {"cmd": cmd, "hwm_kb": hwm, "cpu_s": cpu}


class ChildMonitor:
    """Polls this process's children every MONITOR_S seconds and keeps each one's highest
    reading: VmHWM only rises, so the last reading before a worker exits is its peak up to
    then (an allocation in its last MONITOR_S seconds could be missed)."""

    def __init__(self) -> None:
        self.last: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in _children(os.getpid()):
                stats = _worker_stats(pid)
                if stats is None:
                    continue
                # An exited, not yet reaped child (a zombie) has no command line or memory
                # left to read: keep what was read before.
                seen = self.last.setdefault(pid, {"cmd": "", "hwm_kb": 0, "cpu_s": 0.0})
                seen["cmd"] = seen["cmd"] or stats["cmd"]
                seen["hwm_kb"] = max(seen["hwm_kb"], stats["hwm_kb"])
                seen["cpu_s"] = max(seen["cpu_s"], stats["cpu_s"])
            self._stop.wait(MONITOR_S)

    def stop(self) -> dict[int, dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        # The pool's workers (spawned: `multiprocessing.spawn`), not its resource tracker.
        return {pid: s for pid, s in self.last.items()
                if "spawn_main" in s["cmd"] and "resource_tracker" not in s["cmd"]}


def output_frames(folder: Path) -> int:
    """Video frames in the batch's outputs (from the containers' headers)."""
    import av

    total = 0
    for path in sorted(folder.glob("out*.mp4")):
        with av.open(str(path)) as container:
            total += container.streams.video[0].frames
    return total


def distinct_clip(src: Path, dst: Path, tag: str) -> Path:
    """`src` remuxed into `dst` with the comment `tag`: the same packets (so the same frames
    and audio), other bytes, so the swap's fit cache (keyed by content) sees a new clip."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w",
                                            format=inp.format.name.split(",")[0]) as out:
        out.metadata["comment"] = tag
        streams = [st for st in inp.streams if st.type in ("video", "audio")]
        mapping = {st.index: out.add_stream_from_template(st) for st in streams}
        for packet in inp.demux(streams):
            if packet.dts is None:  # the demuxer's flush packets
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    return dst


def distinct_photo(src: Path, dst: Path, tag: str) -> Path:
    """A JPEG with a comment segment (COM) `tag` after its start marker: the same pixels,
    other bytes, so the photo's fit cache sees a new photo."""
    data = src.read_bytes()
    if data[:2] != b"\xff\xd8":
        raise SystemExit(f"{src} is not a JPEG")
    comment = tag.encode()
    dst.write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
                    + data[2:])
    return dst


def write_jobs(path: Path, target: Path, jobs: int, frames: int, inputs: Path,
               copy_clip: bool, copy_photo: bool) -> Path:
    """The manifest; with `copy_clip` / `copy_photo` every job gets its own copy of the clip
    / photo under `inputs`, so no job finds another's fit in the shared work folder."""
    sources = [MEDIA / "mark.jpg", MEDIA / "khabenskii.jpg"]
    inputs.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target", "output", "options"])
        for i in range(jobs):
            source, clip = sources[i % 2], target
            if copy_photo:
                source = distinct_photo(source, inputs / f"photo{i:03d}{source.suffix}",
                                        f"bench_batch job {i}")
            if copy_clip:
                clip = distinct_clip(target, inputs / f"clip{i:03d}{target.suffix}",
                                     f"bench_batch job {i}")
            writer.writerow([str(source), str(clip), f"out{i:03d}.mp4",
                             f"max_frames={frames};refine=classic"])
    return path


def run_set(name: str, root: Path, target: Path, args, seed: Path | None,
            ray_address: str | None = None, jobs: int | None = None,
            frames: int | None = None) -> dict:
    from morph3d.swap.batch import run_batch

    jobs = args.jobs if jobs is None else jobs
    frames = args.frames if frames is None else frames
    folder = root / name
    folder.mkdir()
    is_template = target.suffix == ".m3dt"
    manifest = write_jobs(folder / "jobs.csv", target, jobs, frames, folder / "inputs",
                          copy_clip=not is_template, copy_photo=seed is None)
    work = folder / "work"
    work.mkdir()
    for fit in (seed.glob("source-*.npz") if seed is not None else ()):
        shutil.copy(fit, work / fit.name)
    load = os.getloadavg()
    reset_hwm()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    monitor = ChildMonitor()
    t = time.perf_counter()
    report = run_batch(manifest, folder / "out", workers=args.workers, ray_address=ray_address,
                       work_dir=work, progress=not args.quiet)
    wall = time.perf_counter() - t
    workers = monitor.stop()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    failed = [r for r in report.results if r.status != "done"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} jobs failed, e.g. {failed[0].error}")
    if seed is not None and len(list(work.glob("source-*.npz"))) != len(list(
            seed.glob("source-*.npz"))):
        raise SystemExit(f"{name}: a job fitted its photo again: the seeded fits were not "
                         "found (their cache key differs from the jobs')")
    per_job = sum(r.seconds for r in report.results) / len(report.results)
    driver_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    workers_cpu = ((children1.ru_utime + children1.ru_stime)
                   - (children0.ru_utime + children0.ru_stime))
    n_frames = output_frames(folder / "out")
    with open("/proc/self/status") as f:
        driver_hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    result = {"wall_seconds": round(wall, 2), "jobs_per_min": round(jobs / wall * 60, 2),
              "seconds_per_job": round(per_job, 2), "executor": report.executor,
              "jobs": jobs, "frames_per_job": frames, "output_frames": n_frames,
              "cpu_seconds_driver": round(driver_cpu, 2),
              "cpu_seconds_workers": round(workers_cpu, 2),
              "frames_per_cpu_second": round(n_frames / (driver_cpu + workers_cpu), 2),
              "cpu_seconds_per_job": round((driver_cpu + workers_cpu) / jobs, 2),
              "worker_peak_rss_mib": sorted(round(w["hwm_kb"] / 1024) for w in workers.values()),
              "largest_child_peak_rss_mib": round(children1.ru_maxrss / 1024),
              "driver_peak_rss_mib": round(driver_hwm / 1024),
              "loadavg_start": load, "loadavg_end": os.getloadavg()}
    if ray_address is not None:
        # Ray's workers are the raylet's children, reaped only at `ray.shutdown`.
        for key in ("cpu_seconds_workers", "frames_per_cpu_second", "cpu_seconds_per_job"):
            result[key] = None
    if n_frames != jobs * frames:
        raise SystemExit(f"{name}: {n_frames} frames in the outputs, not {jobs} x {frames}")
    print(f"{name}: {result}", flush=True)
    return result


def set_table(sets: dict[str, dict]) -> str:
    """One row per set of jobs: throughput, CPU and memory."""
    lines = ["| set | jobs x frames | jobs/min | s/job | frames per CPU-s | CPU-s/job "
             "(driver + workers) | peak RSS per worker MiB | driver peak MiB | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in sets.items():
        rss = ", ".join(str(v) for v in r["worker_peak_rss_mib"]) or "n/a"
        if r["frames_per_cpu_second"] is None:
            lines.append(f"| {name} | {r['jobs']} x {r['frames_per_job']} | {r['jobs_per_min']} "
                         f"| {r['seconds_per_job']} | n/a | n/a | n/a | "
                         f"{r['driver_peak_rss_mib']} | {r['loadavg_start'][0]:.1f}-"
                         f"{r['loadavg_end'][0]:.1f} |")
            continue
        lines.append(
            f"| {name} | {r['jobs']} x {r['frames_per_job']} | {r['jobs_per_min']} | "
            f"{r['seconds_per_job']} | {r['frames_per_cpu_second']} | "
            f"{r['cpu_seconds_per_job']} ({r['cpu_seconds_driver']} + "
            f"{r['cpu_seconds_workers']}) | {rss} | {r['driver_peak_rss_mib']} | "
            f"{r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f} |")
    return "\n".join(lines)


def seed_source_fits(seed: Path, clip: Path, options, results: dict[str, Any],
                     prefix: str) -> None:
    """Both photos fitted about the clip's actor into `seed` (a returning user's fits for
    that clip: the source fit's cache key holds the actor's identity); `options`: the
    template's, whose work folder holds the clip fit."""
    from morph3d.model.registry import load_model
    from morph3d.swap.fits import find_source_faces, fit_clip, fit_source
    from morph3d.swap.options import SwapOptions

    model = load_model()
    clip_fit, _ = fit_clip(clip, model, options)
    for photo in ("mark.jpg", "khabenskii.jpg"):
        t = time.perf_counter()
        # The jobs' own options: the photo's cache key includes the texture completion.
        job = SwapOptions(work_dir=seed, refine="classic", quiet=True)
        fit_source([MEDIA / photo], model, job, find_source_faces([MEDIA / photo], job),
                   clip_fit.identity.coefficients)
        results[f"{prefix}source_fit_seconds_{photo}"] = round(time.perf_counter() - t, 2)
    print({k: v for k, v in results.items()}, flush=True)


def case_720p(root: Path, args, seed: Path, results: dict[str, Any]) -> dict[str, dict]:
    """Warm jobs into the first `--frames-720p` frames of nggyup.mp4, without and with a
    template of those frames."""
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.template import build_template

    clip = MEDIA / "nggyup.mp4"
    template = root / "nggyup.m3dt"
    t, cpu = time.perf_counter(), time.process_time()
    options = SwapOptions(max_frames=args.frames_720p, work_dir=root / "tpl-work-720p",
                          quiet=True)
    build_template(clip, template, options)
    results["720p_template_build_seconds"] = round(time.perf_counter() - t, 2)
    results["720p_template_build_cpu_seconds"] = round(time.process_time() - cpu, 2)
    results["720p_template_bytes"] = template.stat().st_size
    seed_source_fits(seed, clip, options, results, "720p_")
    sets = {}
    for name, target in (("720p_no_template", clip), ("720p_template", template)):
        sets[name] = run_set(name, root, target, args, seed, jobs=args.jobs_720p,
                             frames=args.frames_720p)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--case", choices=("all", "orig", "720p"), default="all",
                        help="orig.webm's sets, nggyup.mp4's 720p sets, or both")
    parser.add_argument("--jobs-720p", type=int, default=4)
    parser.add_argument("--frames-720p", type=int, default=48)
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

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "case": args.case, "workers": args.workers,
                     "refine": "classic"}
    if args.case != "720p":
        results.update({"jobs": args.jobs, "frames": args.frames,
                        "clip": "orig.webm (464x560, 25 fps)"})
    if args.case != "orig":
        results.update({"jobs_720p": args.jobs_720p, "frames_720p": args.frames_720p,
                        "clip_720p": "nggyup.mp4 (1280x720, 30 fps)"})
    sets: dict[str, dict] = {}
    try:
        seed = root / "seed"
        if args.case != "orig":
            sets.update(case_720p(root, args, seed, results))
        if args.case != "720p":
            sets.update(orig_case(root, args, seed, results))
        for name, r in sets.items():
            results[f"jobs_per_min_{name}"] = r["jobs_per_min"]
            results[f"seconds_per_job_{name}"] = r["seconds_per_job"]
            results[f"frames_per_cpu_second_{name}"] = r["frames_per_cpu_second"]
        results["sets"] = sets
        for prefix in ("", "720p_"):
            if f"{prefix}template" in sets:
                a, b = sets[f"{prefix}no_template"], sets[f"{prefix}template"]
                results[f"{prefix}template_speedup_per_job"] = round(
                    a["seconds_per_job"] / b["seconds_per_job"], 2)
                results[f"{prefix}template_speedup_throughput"] = round(
                    b["jobs_per_min"] / a["jobs_per_min"], 2)
                results[f"{prefix}template_speedup_cpu"] = round(
                    b["frames_per_cpu_second"] / a["frames_per_cpu_second"], 2)
        if "template_cold" in sets:
            results["template_speedup_per_job_cold"] = round(
                sets["no_template_cold"]["seconds_per_job"]
                / sets["template_cold"]["seconds_per_job"], 2)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    print(set_table(sets) + "\n" + machine_line(results["machine"]))
    if args.json:
        write_json(args.json, results)


def orig_case(root: Path, args, seed: Path, results: dict[str, Any]) -> dict[str, dict]:
    """orig.webm's sets: warm without and with the template, on Ray, and cold."""
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.template import build_template

    t = time.perf_counter()
    template = root / "orig.m3dt"
    options = SwapOptions(max_frames=args.frames, work_dir=root / "tpl-work", quiet=True)
    build_template(MEDIA / "orig.webm", template, options)
    results["template_build_seconds"] = round(time.perf_counter() - t, 2)
    results["template_bytes"] = template.stat().st_size
    seed_source_fits(seed, MEDIA / "orig.webm", options, results, "")
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
    return sets


if __name__ == "__main__":
    main()
