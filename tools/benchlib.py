"""What every benchmark in tools/ repeats: where the project and the shared media are, the
machine's description, JSON writing, and `morph3d swap` run in a child process under light
instrumentation (per-stage wall and CPU seconds, peak RSS, an RSS profile), through the swap's
stage hook (`morph3d.swap.stages`).

    from benchlib import MEDIA, ROOT, machine, machine_line, run_swap, write_json

Tools put `tools/` on `sys.path` (they run as scripts: `python tools/bench_x.py`). The child
swap runs as `python tools/benchlib.py --child REPORT [--stage-peaks] -- SWAP-ARGS`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RSS_SAMPLE_S = 0.2


# --------------------------------------------------------------------------------------------
# The machine and the results
# --------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (lscpu), else what `platform` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU, cores, Python, torch, the commit (``-dirty`` with local changes) and the load
    average at the start; a benchmark adds ``loadavg_end`` when it is done."""
    import torch

    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "git": git, "loadavg_start": os.getloadavg()}


def fmt_load(load: tuple[float, ...] | list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in load)


def machine_line(m: dict[str, Any]) -> str:
    """One line for a table's footer, from `machine()` (with ``loadavg_end`` when set)."""
    end = m.get("loadavg_end")
    return (f"commit {m['git']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}; load "
            f"average (1, 5, 15 min) {fmt_load(m['loadavg_start'])} at the start"
            + (f", {fmt_load(end)} at the end" if end is not None else ""))


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON, written atomically (folders made; numpy scalars as floats)."""
    from morph3d.io.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, default=float))


# --------------------------------------------------------------------------------------------
# The instrumented swap process
# --------------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int:
    """A `/proc/self/status` memory field (VmRSS, VmHWM) in KiB; 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: "5" to /proc/self/clear_refs);
    False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageRecorder:
    """A swap stage hook (`morph3d.swap.stages.StageHook`): records (label, wall s, process
    CPU s, VmHWM KiB) at the once-per-swap stages' boundaries ("<stage> start", "<stage>
    end") and samples VmRSS every RSS_SAMPLE_S seconds with the stage running at the time
    ("render" for the frame loop: its per-frame stages are not marked, they would be
    thousands of marks and run on two threads at once).

    With `stage_peaks`, each stretch between two boundaries gets its own exact peak RSS: the
    kernel's VmHWM is read and reset at every boundary, and the stretch's peak is credited to
    the stage running in it (`peaks`, KiB; "render" is the frame loop, "swap" the driver's
    own work between its stages), with the most it climbed above the RSS it started from
    (`rises`: what the stage itself allocated, not what earlier stages left). VmHWM alone is
    the process's high-water mark, so a stage whose peak stays below an earlier stage's
    cannot be seen growing. The marks keep the process's high-water mark either way (the
    maximum over the resets)."""

    def __init__(self, stage_peaks: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.stage = "start-up"
        self._outer: list[str] = []
        self.per_frame: tuple[str, ...] = ()  # morph3d.swap.stages.PER_FRAME, once imported
        self.marks: list[tuple[str, float, float, int]] = []
        self.samples: list[tuple[float, int, str]] = []
        self.peaks: dict[str, int] = {}
        self.rises: dict[str, int] = {}
        self._process_hwm = 0
        self._stage_peaks = stage_peaks and reset_hwm()
        self._stretch_rss = _proc_status_kb("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self.t0, _proc_status_kb("VmRSS"),
                                 self.stage))
            self._stop.wait(RSS_SAMPLE_S)

    def hwm_kb(self) -> int:
        """The process's peak RSS so far (KiB), across the resets of `stage_peaks`."""
        return max(self._process_hwm, _proc_status_kb("VmHWM"))

    def _close_stretch(self) -> None:
        """Credit the peak since the last boundary to the running stage, and reset it."""
        if not self._stage_peaks:
            return
        hwm = _proc_status_kb("VmHWM")
        self._process_hwm = max(self._process_hwm, hwm)
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), hwm)
        self.rises[self.stage] = max(self.rises.get(self.stage, 0), hwm - self._stretch_rss)
        reset_hwm()
        self._stretch_rss = _proc_status_kb("VmRSS")

    def mark(self, label: str) -> None:
        self.marks.append((label, time.perf_counter() - self.t0,
                           time.process_time() - self.cpu0, self.hwm_kb()))

    def start(self, stage: str) -> None:
        if stage in self.per_frame:
            return
        self._close_stretch()
        self._outer.append(self.stage)
        self.stage = stage
        self.mark(f"{stage} start")

    def end(self, stage: str) -> None:
        if stage in self.per_frame:
            return
        self._close_stretch()
        self.mark(f"{stage} end")
        outer = self._outer.pop()
        self.stage = {"prepare": "render", "swap": "finish"}.get(stage, outer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._close_stretch()
        self.mark("exit")


def child_main(report: Path, argv: list[str], stage_peaks: bool = False) -> int:
    """Run `morph3d swap ARGV` in this process, instrumented; write the record to `report`."""
    recorder = StageRecorder(stage_peaks)
    # The swap's heavy modules imported here: their import time is the "imports" stage's,
    # not the first stage's.
    import fitting.video  # noqa: F401
    import morph3d.swap.driver  # noqa: F401
    from morph3d.cli import build_parser
    from morph3d.cli.swap import run
    from morph3d.swap.stages import PER_FRAME

    recorder.per_frame = PER_FRAME
    recorder.stage = "imports"
    recorder._close_stretch()
    recorder.mark("imports end")
    args = build_parser().parse_args(["swap", *argv])
    recorder.start("swap")
    try:
        rc = run(args, hook=recorder)
    finally:
        recorder.end("swap")
        recorder.stop()
    report.write_text(json.dumps({"rc": rc, "marks": recorder.marks,
                                  "rss_samples": recorder.samples,
                                  "stage_peaks_kb": recorder.peaks,
                                  "stage_rises_kb": recorder.rises,
                                  "vmhwm_kb": recorder.hwm_kb()}))
    return rc


def stage_costs(marks: list[list]) -> dict[str, dict[str, float]]:
    """Per-stage wall and CPU seconds and the VmHWM at each stage's end (MiB), from the marks.
    "fit clip" = landmarks and the clip's fit together, "fit video" = the clip's fit alone,
    "render" = from the renderers' preparation to the end of `swap`."""
    at = {m[0]: m for m in marks}
    out: dict[str, dict[str, float]] = {}

    def span(name: str, start: str, end: str) -> None:
        if start in at and end in at:
            out[name] = {"wall_s": at[end][1] - at[start][1], "cpu_s": at[end][2] - at[start][2],
                         "hwm_mib_at_end": at[end][3] / 1024}

    out["imports"] = {"wall_s": at["imports end"][1], "cpu_s": at["imports end"][2],
                      "hwm_mib_at_end": at["imports end"][3] / 1024}
    for stage in ("fit source", "landmarks", "swap"):
        span(stage, f"{stage} start", f"{stage} end")
    span("fit clip", "landmarks start", "fit clip end")
    span("fit video", "fit clip start", "fit clip end")
    span("render", "prepare start", "swap end")
    span("process", "imports end", "exit")
    out["process"]["wall_s"] = at["exit"][1]
    out["process"]["cpu_s"] = at["exit"][2]
    return out


def run_swap(source: Path, target: Path, output: Path, work_dir: Path,
             max_frames: int | None, extra: list[str] | None = None,
             stage_peaks: bool = False) -> dict[str, Any]:
    """`morph3d swap` in a child process; its summary plus CPU seconds and memory
    (`stage_peaks`: also each stage's own peak RSS, `stage_peaks_mib`)."""
    summary_path = output.with_suffix(".summary.json")
    report_path = output.with_suffix(".child.json")
    argv = ["-s", str(source), "-t", str(target), "-o", str(output), "--work-dir", str(work_dir),
            "--summary-json", str(summary_path), "--quiet", *(extra or [])]
    if max_frames is not None:
        argv += ["--max-frames", str(max_frames)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           str(report_path), *(["--stage-peaks"] if stage_peaks else []),
                           "--", *argv], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"benchmark: morph3d swap failed on {target.name} with {source.name}:\n"
                 f"{proc.stderr[-3000:]}")
    child = json.loads(report_path.read_text())
    summary = json.loads(summary_path.read_text())
    costs = stage_costs(child["marks"])
    return {"command": "morph3d swap " + " ".join(argv), "summary": summary, "costs": costs,
            "process_wall_s": wall, "peak_rss_mib": child["vmhwm_kb"] / 1024,
            "output_mb": output.stat().st_size / 1e6, "target_mb": target.stat().st_size / 1e6,
            "marks": child["marks"],
            "stage_peaks_mib": {k: v / 1024 for k, v in child.get("stage_peaks_kb", {}).items()},
            "stage_rises_mib": {k: v / 1024 for k, v in child.get("stage_rises_kb", {}).items()},
            "rss_samples": child["rss_samples"], "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sep = sys.argv.index("--")
        sys.exit(child_main(Path(sys.argv[2]), sys.argv[sep + 1:],
                            "--stage-peaks" in sys.argv[3:sep]))
    sys.exit("benchlib: a module for the benchmarks "
             "(run as --child REPORT [--stage-peaks] -- SWAP-ARGS)")


def add_tree_arguments(parser: argparse.ArgumentParser, save_dir: Path, rounds: int
                       ) -> None:
    """The options every tree-alternating benchmark shares: the clip, the trees (NAME=DIR,
    repeatable), the rounds, the profile, save and JSON outputs, and the hidden ones its
    child gets from `run_tree_child`."""
    parser.add_argument("--clip", type=Path, default=MEDIA / "nggyup.mp4")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--save-dir", type=Path, default=save_dir)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tree-dir", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)


def tree_folders(items: list[str]) -> dict[str, Path]:
    """`--tree NAME=DIR` items as {name: resolved folder}; this checkout alone by default."""
    trees = {}
    for item in items or [f"here={ROOT}"]:
        name, _, folder = item.partition("=")
        trees[name] = Path(folder).resolve()
    return trees


def run_tree_child(script: str, tree: Path, report: Path, argv: list[str], label: str
                   ) -> dict[str, Any]:
    """`script --child REPORT --tree-dir TREE ARGV...` in a fresh process (`script`: the
    calling tool's file) with TREE first on the path, for benchmarks that alternate source
    trees in one run; its JSON report with the 1-minute load average at its start."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", str(report),
           "--tree-dir", str(tree), *argv]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # for any subprocess of the child
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{Path(script).stem}: the child for {label} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(report.read_text())
    out["load_1min"] = load
    return out


def print_profile(path: Path, what: str, top: int = 25) -> None:
    """The `top` functions by own time of a cProfile dump."""
    import pstats

    print(f"\n### cProfile of {what}: {path.name}")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)

