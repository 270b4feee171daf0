"""A batch's own files and its guards on outputs: per-output sidecars, logs, the reports, and
the check that no output replaces an input or a file the batch did not write.

Each finished output gets a sidecar (`.morph3d-batch/<output>.json`) with its SHA-256 and the
job's key (inputs' content hashes and options), so re-running the same manifest skips outputs
whose file still matches, and redoes the others.

Outputs never cost data. Before any job starts, a row fails alone (its reason in the report,
the other rows run) when its output would replace any row's input (a source, a target, a
reference photo) or the manifest, or a file already in the output folder that this batch did
not write (no sidecar of that name: a batch claims an output's name with its sidecar before
the job runs, and keeps the claim while its file exists). Two rows naming one output, an
input inside the batch's own files (reports, `logs/`, `.morph3d-batch/`), or a report name
taken by another file refuse the whole batch in one line, before anything is written.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write, atomic_write_text
from morph3d.io.outputs import check_outputs, same_file
from morph3d.io.paths import sha256_file
from morph3d.swap.batch_manifest import Job, reference_options

STATE_DIR = ".morph3d-batch"  # per-output sidecars (checksum + job key) inside out_dir
LOG_DIR = "logs"
REPORT_JSON = "batch-report.json"
REPORT_CSV = "batch-report.csv"
_REPORT_FIELDS = ["row", "output", "status", "seconds", "attempts", "error", "sha256", "log"]


@dataclass
class JobResult:
    row: int
    output: str
    status: str  # done | skipped | failed
    seconds: float = 0.0
    attempts: int = 0
    error: str = ""
    sha256: str = ""
    log: str = ""


@dataclass
class BatchReport:
    manifest: str
    out_dir: str
    executor: str
    seconds: float
    results: list[JobResult]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.results))

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "out_dir": self.out_dir, "executor": self.executor,
                "seconds": round(self.seconds, 3), "counts": self.counts,
                "jobs": [asdict(r) for r in self.results]}


def log_path(out_dir: Path, output: str) -> Path:
    """The job's log, `logs/<output>.log` (odd characters of a bad name replaced)."""
    return out_dir / LOG_DIR / (re.sub(r"[^\w.-]", "_", output).lstrip(".") + ".log")


def sidecar_path(out_dir: Path, output: str) -> Path:
    return out_dir / STATE_DIR / f"{output}.json"


def finished_sha(out_dir: Path, output: str, key: str) -> str | None:
    """The output's checksum when it is finished for this key and unchanged since; else None."""
    sidecar, out = sidecar_path(out_dir, output), out_dir / output
    if not (sidecar.is_file() and out.is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("size") != out.stat().st_size:
        return None
    sha = sha256_file(out)
    return sha if sha == record.get("sha256") else None


def record_finished(out_dir: Path, output: str, key: str, seconds: float) -> str:
    out = out_dir / output
    sha = sha256_file(out)
    atomic_write_text(sidecar_path(out_dir, output), json.dumps(
        {"output": output, "key": key, "sha256": sha, "size": out.stat().st_size,
         "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        indent=1))
    return sha


def claim_output(out_dir: Path, output: str, key: str) -> None:
    """Mark `output` as this batch's before its job runs: a sidecar without a checksum (never
    taken for a finished output), so the name stays the batch's while its file exists."""
    atomic_write_text(sidecar_path(out_dir, output), json.dumps(
        {"output": output, "key": key, "state": "running",
         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))


class _Inputs:
    """Every file the batch reads, with who reads it, indexed by what `same_file` compares
    (resolved path; device and inode of an existing file) so that each output is compared
    with the few inputs it could be rather than with all of them."""

    def __init__(self, entries: list[tuple[Path, str]]) -> None:
        self.entries = entries
        self._by_path: dict[Path, list[int]] = {}
        self._by_inode: dict[tuple[int, int], list[int]] = {}
        for i, (path, _) in enumerate(entries):
            self._by_path.setdefault(path.resolve(), []).append(i)
            if (inode := _inode(path)) is not None:
                self._by_inode.setdefault(inode, []).append(i)

    def candidates(self, path: Path) -> list[tuple[Path, str]]:
        found = set(self._by_path.get(path.resolve(), []))
        if (inode := _inode(path)) is not None:
            found.update(self._by_inode.get(inode, []))
        return [self.entries[i] for i in sorted(found)]


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_batch_outputs(jobs: list[Job], manifest: Path, out: Path) -> None:
    """Before any job starts: no output may replace an input or a file the batch did not write.

    A row whose output would replace any row's source, target or reference photo, the
    manifest, or an existing file without this batch's sidecar gets that as its `problem`
    (it fails alone; the others run). An input among the batch's own files (reports, logs,
    sidecars) or a report name taken by a file that is not a report refuses the whole batch,
    since every row would write there."""
    entries: list[tuple[Path, str]] = [(manifest, "the manifest")]
    for job in jobs:
        entries += [(s, f"a source of row {job.row}") for s in job.sources]
        if job.target != Path():
            entries.append((job.target, f"the target of row {job.row}"))
        entries += [(path, f"the {key} of row {job.row}")
                    for key, path in reference_options(job).items()]
    inputs = _Inputs(entries)

    reports = [out / REPORT_JSON, out / REPORT_CSV]
    for report in reports:
        hits = inputs.candidates(report)
        try:
            check_outputs([p for p, _ in hits], [report])
        except InputError as exc:
            if not hits:
                raise
            raise InputError(f"the batch report {report} would replace {hits[0][1]} "
                             f"({hits[0][0]}): choose another --out-dir") from exc
        if os.path.lexists(report) and not _is_report(report):
            raise InputError(f"{report} exists and is not a batch report: move it away or "
                             "choose another --out-dir")
    for folder in (out / LOG_DIR, out / STATE_DIR):
        for path, who in entries:
            if same_file(path.parent, folder):
                raise InputError(f"{who} ({path}) lies in the batch's own folder {folder}: "
                                 "move it or choose another --out-dir")

    for job in jobs:
        if job.problem:
            continue  # never runs, so never writes its output
        path = out / job.output
        hits = inputs.candidates(path)
        try:
            check_outputs([p for p, _ in hits], [path])
        except InputError as exc:
            job.problem = (f"output {job.output} would replace {hits[0][1]} ({hits[0][0]}); "
                           "choose another output name" if hits else str(exc))
            continue
        if os.path.lexists(path) and not sidecar_path(out, job.output).is_file():
            job.problem = (f"output {path} already exists and this batch did not write it "
                           f"(no {STATE_DIR}/{job.output}.json): move it away or choose "
                           "another output name")


def _is_report(path: Path) -> bool:
    """Whether `path` holds a batch report (what `write_report` writes there)."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and {"manifest", "out_dir", "jobs"} <= set(data)
        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader(f), None) == _REPORT_FIELDS
    except (OSError, ValueError):
        return False


def remove_partial(out_dir: Path, output: str) -> None:
    """Temporary files a killed job may have left beside its output (media.py and atomic.py
    name them `.{stem}.{10 hex}.{tag}{suffix}` and `.{name}.{random}.tmp`)."""
    out = Path(output)
    patterns = [re.compile(rf"^\.{re.escape(out.stem)}\.[0-9a-f]{{10}}\.\w+"
                           rf"{re.escape(out.suffix)}$"),
                re.compile(rf"^\.{re.escape(out.name)}\.\w+\.tmp$")]
    for p in out_dir.glob(f".{out.stem}*"):
        if any(pat.match(p.name) for pat in patterns):
            p.unlink(missing_ok=True)


def write_report(report: BatchReport, out_dir: Path) -> None:
    """`batch-report.json` (everything) and `batch-report.csv` (one row per job)."""
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report.to_dict(), indent=1))
    with atomic_write(out_dir / REPORT_CSV, "w") as f:
        writer = csv.DictWriter(f, fieldnames=_REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in report.results:
            writer.writerow(asdict(r))
