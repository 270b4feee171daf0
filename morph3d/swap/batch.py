"""Batch renders: many swaps from a CSV manifest, on local worker processes or a Ray cluster.

Manifest (`jobs.csv`, paths relative to the manifest's folder):

    source,target,output,options
    me.jpg,clips/dance.m3dt,me_dance.mp4,
    a.jpg;b.jpg,clips/talk.mp4,ab_talk.mp4,target_face=1;refine=classic;max_frames=100

`source` is one photo or several of the same person separated by `;`; `target` a clip,
image or template (`.m3dt`); `output` a file name inside the output folder; `options`
(optional) `key=value` pairs separated by `;`: the swap options of `JOB_OPTIONS` only, each
checked by `SwapOptions.validate` as the command line checks it. A manifest may come from
someone else, so it can name nothing but inputs, an output name and swap options: where fits
are cached is the batch's `--work-dir`, not a row's.

Reliability: every job runs alone and reports its own failure (a bad photo fails that job,
the others finish). Each finished output gets a sidecar (`.morph3d-batch/<output>.json`) with
its SHA-256 and the job's key (inputs' content hashes and options), so re-running the same
manifest skips outputs whose file still matches, and redoes the others. Outputs appear
atomically. A worker process that dies (killed, out of memory) costs its job one attempt; the
job is retried up to `retries` times.

Outputs never cost data. Before any job starts, a row fails alone (its reason in the report,
the other rows run) when its output would replace any row's input (a source, a target, a
reference photo) or the manifest, or a file already in the output folder that this batch did
not write (no sidecar of that name: a batch claims an output's name with its sidecar before
the job runs, and keeps the claim while its file exists). Two rows naming one output, an
input inside the batch's own files (reports, `logs/`, `.morph3d-batch/`), or a report name
taken by another file refuse the whole batch in one line, before anything is written.

Executors:
- local (default): `concurrent.futures.ProcessPoolExecutor` with spawned workers, one torch
  thread each. A dead worker breaks the pool; the pool is rebuilt and every job that was in
  flight is retried (the executor cannot tell whose process died, so each of them is charged
  an attempt).
- Ray (`ray_address`): each job is a Ray task (`num_cpus=1`, `num_gpus=gpus_per_job`,
  `max_retries=retries`, Ray retrying tasks whose worker died). Input files (photos,
  templates, clips) go through Ray's object store once each (`ray.put`), outputs come back
  to the driver as bytes, so nodes need no shared file system; fits are cached in each
  node's scratch folder unless the batch's `work_dir` names a shared path.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from morph3d.io.outputs import check_creatable_dir, check_outputs, check_writable_dir, same_file
from morph3d.io.paths import sha256_file

STATE_DIR = ".morph3d-batch"  # per-output sidecars (checksum + job key) inside out_dir
LOG_DIR = "logs"
REPORT_JSON = "batch-report.json"
REPORT_CSV = "batch-report.csv"
COLUMNS = ("source", "target", "output")
_REPORT_FIELDS = ["row", "output", "status", "seconds", "attempts", "error", "sha256", "log"]

# SwapOptions fields a manifest row may not set: nothing a row names may be a place to write
# or steer the batch itself (the batch sets these).
_NOT_JOB_OPTIONS = ("quiet", "preview", "work_dir")


def _job_options() -> dict[str, Callable[[str], Any]]:
    """The `SwapOptions` fields a row may set -> the parser of their text, from each field's
    type (a `FaceChoice` by its grammar, an optional value by its inner type)."""
    import typing

    from fitting.choice import FaceChoice, parse_face_choice
    from morph3d.swap.options import FACE_FORMS, SwapOptions

    parsers: dict[Any, Callable[[str], Any]] = {Path: Path, str: str, int: int}
    hints = typing.get_type_hints(SwapOptions)
    table = {}
    for f in fields(SwapOptions):
        if f.name in _NOT_JOB_OPTIONS:
            continue
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],)
                 if t is not type(None)]
        if kinds == [FaceChoice]:  # the forms that option takes
            table[f.name] = functools.partial(parse_face_choice, what=f.name.replace("_", " "),
                                              allow=FACE_FORMS[f.name])
            continue
        if len(kinds) != 1 or kinds[0] not in parsers:
            raise TypeError(f"SwapOptions.{f.name}: no manifest parser for {hints[f.name]}")
        table[f.name] = parsers[kinds[0]]
    return table


# Job options: the `SwapOptions` field of that name -> the parser of its text.
JOB_OPTIONS: dict[str, Callable[[str], Any]] = _job_options()
_PATH_OPTIONS = tuple(k for k, parse in JOB_OPTIONS.items() if parse is Path)
_FACE_OPTIONS = tuple(k for k, parse in JOB_OPTIONS.items() if isinstance(parse, functools.partial))


@dataclass
class Job:
    """One row of the manifest. `problem` is why it cannot run (reported as its failure)."""

    row: int
    sources: list[Path]
    target: Path
    output: str
    options: dict[str, str] = field(default_factory=dict)
    problem: str = ""


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


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Parse a manifest; structural problems (columns, duplicate outputs) raise InputError,
    a bad row becomes a job with a `problem`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"job manifest not found: {path}")
    base = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read job manifest {path}: {exc}") from None
    reader = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"job manifest {path} lacks the column(s) {', '.join(missing)} "
                         f"(it needs source,target,output[,options])")
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for row_number, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue
        job = Job(row=row_number, sources=[], target=Path(), output=row["output"])
        job.sources = [_resolve(base, s) for s in row["source"].split(";") if s.strip()]
        job.target = _resolve(base, row["target"]) if row["target"] else Path()
        try:
            job.options = parse_options(row.get("options", ""), base)
            swap_options(job, None).validate()
            _check_row(job)
        except InputError as exc:
            job.problem = str(exc)
        if job.output in seen:
            raise InputError(f"job manifest {path}: rows {seen[job.output]} and {row_number} "
                             f"both write {job.output}")
        seen[job.output] = row_number
        jobs.append(job)
    if not jobs:
        raise InputError(f"job manifest {path} has no jobs")
    return jobs


def _resolve(base: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text.strip()))
    return p if p.is_absolute() else base / p


def parse_options(text: str, base: Path) -> dict[str, str]:
    """`key=value;key=value` -> {key: value}, every key and value checked."""
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(";"))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in JOB_OPTIONS:
            raise InputError(f"bad job option {item!r} (known: {', '.join(JOB_OPTIONS)})")
        try:
            parsed = JOB_OPTIONS[key](value)
        except (ValueError, InputError) as exc:
            raise InputError(f"bad value for job option {key}: {value!r} ({exc})") from None
        reference = getattr(parsed, "reference", None)  # a face option's reference photo
        if key in _PATH_OPTIONS or reference is not None:
            value = str(_resolve(base, reference or value))
        options[key] = value
    return options


def _check_row(job: Job) -> None:
    from morph3d.io.images import is_image_path

    name = job.output
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in ("..",):
        raise InputError(f"output {name!r} must be a plain file name inside the output folder")
    if Path(name).suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv") and not \
            is_image_path(name):
        raise InputError(f"output {name!r} must end in .mp4, .mov, .mkv or an image suffix")
    if not job.sources:
        raise InputError("no source photo given")
    if job.target == Path():
        raise InputError("no target given")


def swap_options(job: Job, work_dir: Path | None, device: str | None = None):
    """The job's `SwapOptions` (quiet; fits cached in the batch's work dir)."""
    from morph3d.swap.options import SwapOptions

    kwargs: dict[str, Any] = {"quiet": True, "work_dir": work_dir}
    if device:
        kwargs["device"] = device
    for key, value in job.options.items():
        kwargs[key] = JOB_OPTIONS[key](value)
    return SwapOptions(**kwargs)


# ---------------------------------------------------------------------------------------------
# Resumability: job keys and sidecars
# ---------------------------------------------------------------------------------------------


class _Digests:
    """Content hashes of input files, each file hashed once per batch."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        if path not in self._cache:
            if not path.is_file():
                raise InputError(f"input not found: {path}")
            self._cache[path] = sha256_file(path)
        return self._cache[path]


def job_key(job: Job, digest: Callable[[Path], str]) -> str:
    """What the output depends on: input contents, options, morph3d version."""
    from morph3d import __version__

    options = dict(sorted(job.options.items()))
    for key, path in reference_options(job).items():
        options[key] = digest(path)
    body = {"sources": [digest(s) for s in job.sources], "target": digest(job.target),
            "options": options, "morph3d": __version__}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def reference_options(job: Job) -> dict[str, Path]:
    """The row's options that name a reference photo (target_face_ref, or a face option
    given as a photo) -> that photo."""
    refs = {}
    for key, value in job.options.items():
        if key == "target_face_ref":
            refs[key] = Path(value)
        elif key in _FACE_OPTIONS:
            reference = JOB_OPTIONS[key](value).reference
            if reference is not None:
                refs[key] = Path(reference)
    return refs


def log_path(out_dir: Path, output: str) -> Path:
    """The job's log, `logs/<output>.log` (odd characters of a bad name replaced)."""
    return out_dir / LOG_DIR / (re.sub(r"[^\w.-]", "_", output).lstrip(".") + ".log")


def _sidecar(out_dir: Path, output: str) -> Path:
    return out_dir / STATE_DIR / f"{output}.json"


def finished_sha(out_dir: Path, output: str, key: str) -> str | None:
    """The output's checksum when it is finished for this key and unchanged since; else None."""
    sidecar, out = _sidecar(out_dir, output), out_dir / output
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


def _record_finished(out_dir: Path, output: str, key: str, seconds: float) -> str:
    out = out_dir / output
    sha = sha256_file(out)
    atomic_write_text(_sidecar(out_dir, output), json.dumps(
        {"output": output, "key": key, "sha256": sha, "size": out.stat().st_size,
         "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        indent=1))
    return sha


def _claim(out_dir: Path, output: str, key: str) -> None:
    """Mark `output` as this batch's before its job runs: a sidecar without a checksum (never
    taken for a finished output), so the name stays the batch's while its file exists."""
    atomic_write_text(_sidecar(out_dir, output), json.dumps(
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


def _check_outputs(jobs: list[Job], manifest: Path, out: Path) -> None:
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
        if os.path.lexists(path) and not _sidecar(out, job.output).is_file():
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


def _remove_partial(out_dir: Path, output: str) -> None:
    """Temporary files a killed job may have left beside its output (media.py and atomic.py
    name them `.{stem}.{10 hex}.{tag}{suffix}` and `.{name}.{random}.tmp`)."""
    out = Path(output)
    patterns = [re.compile(rf"^\.{re.escape(out.stem)}\.[0-9a-f]{{10}}\.\w+"
                           rf"{re.escape(out.suffix)}$"),
                re.compile(rf"^\.{re.escape(out.name)}\.\w+\.tmp$")]
    for p in out_dir.glob(f".{out.stem}*"):
        if any(pat.match(p.name) for pat in patterns):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# One job, inside a worker
# ---------------------------------------------------------------------------------------------


def _init_worker() -> None:
    """Worker start: one torch thread per worker (the workers are the parallelism)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    import morph3d.swap.driver  # noqa: F401  (the heavy imports, once per worker, not per job)

    torch.set_num_threads(1)


def run_job(job: dict[str, Any], output: Path, log_path: Path, work_dir: Path | None,
            attempt: int = 1) -> dict[str, Any]:
    """Run one swap; never raises for a failed job (returns status and error instead)."""
    import contextlib

    from morph3d.swap.driver import swap

    job_obj = Job(row=job["row"], sources=[Path(s) for s in job["sources"]],
                  target=Path(job["target"]), output=job["output"], options=job["options"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt} "
                  f"host {socket.gethostname()} pid {os.getpid()}\n"
                  f"sources: {'; '.join(map(str, job_obj.sources))}\n"
                  f"target:  {job_obj.target}\noutput:  {output}\n"
                  f"options: {json.dumps(job_obj.options)}\n")
        log.flush()
        # Test-only fault injection (`run_batch(_kill_worker_once=...)`, never a manifest's):
        # this worker SIGKILLs itself at the start of the job unless the marker file exists
        # (it creates it first), i.e. exactly once.
        marker = job.get("kill_worker_once")
        if marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            log.write("fault injection: killing this worker\n")
            log.flush()
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        handler = logging.StreamHandler(log)
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        root.addHandler(handler)
        # Native libraries (mediapipe, FFmpeg) write to fd 2: into the log with the rest.
        sys.stderr.flush()
        saved_fd2 = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stderr(log):
                options = swap_options(job_obj, work_dir, job.get("device"))
                summary = swap(job_obj.sources, job_obj.target, output, options)
            seconds = time.perf_counter() - start
            log.write(json.dumps(summary.to_dict(), indent=1) + f"\ndone in {seconds:.2f} s\n")
            return {"status": "done", "seconds": seconds, "error": ""}
        except Morph3dError as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug, but it must not take the batch down
            log.write(traceback.format_exc())
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd2, 2)
            os.close(saved_fd2)
            root.removeHandler(handler)
        seconds = time.perf_counter() - start
        log.write(f"failed after {seconds:.2f} s: {error}\n")
        return {"status": "failed", "seconds": seconds, "error": error}


def _local_task(job: dict[str, Any], out_dir: str, work_dir: str | None, attempt: int
                ) -> dict[str, Any]:
    out = Path(out_dir)
    return run_job(job, out / job["output"], log_path(out, job["output"]),
                   Path(work_dir) if work_dir else None, attempt)


def _ray_task(job: dict[str, Any], target_data: bytes, *source_data: bytes) -> dict[str, Any]:
    """A job on a Ray node: inputs arrive as bytes, the output goes back as bytes."""
    import shutil
    import tempfile

    _init_worker()
    scratch = Path(tempfile.gettempdir()) / "morph3d-ray"

    def materialise(data: bytes, name: str) -> Path:
        path = scratch / "inputs" / hashlib.sha256(data).hexdigest()[:24] / Path(name).name
        if not (path.is_file() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
        return path

    local = dict(job)
    local["target"] = str(materialise(target_data, job["target"]))
    local["sources"] = [str(materialise(d, n)) for d, n in zip(source_data, job["sources"],
                                                               strict=True)]
    # Ray does not tell a task its attempt number: count the starts on this node.
    attempts_file = scratch / "attempts" / f"{job.get('batch_id', '')}-{job['key']}"
    attempts_file.parent.mkdir(parents=True, exist_ok=True)
    with open(attempts_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len(attempts_file.read_text().split())
    folder = scratch / "jobs" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        work_dir = Path(job["work_dir"]) if job.get("work_dir") else scratch / "work"
        result = run_job(local, folder / job["output"], folder / "job.log", work_dir, attempt)
        result["attempts"] = attempt
        for original, copy in [(job["target"], local["target"]),
                               *zip(job["sources"], local["sources"], strict=True)]:
            result["error"] = result["error"].replace(copy, original)  # the user's names
        result["log"] = (folder / "job.log").read_text(encoding="utf-8", errors="replace")
        if result["status"] == "done":
            result["output_bytes"] = (folder / job["output"]).read_bytes()
        attempts_file.unlink(missing_ok=True)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------------------------


def run_batch(manifest: str | os.PathLike, out_dir: str | os.PathLike, *,
              workers: int | None = None, ray_address: str | None = None,
              work_dir: str | os.PathLike | None = None, retries: int = 2,
              gpus_per_job: float = 0.0, progress: bool = True,
              _kill_worker_once: tuple[str, str | os.PathLike] | None = None) -> BatchReport:
    """Run every job of `manifest` into `out_dir`; writes and returns the report.

    ray_address: None runs local worker processes (`workers`, default: one per CPU);
    "local" starts a Ray runtime on this machine; "auto" or "HOST:PORT" / "ray://..."
    joins a running cluster. A Ray runtime already initialised in this process is used as
    it is. `_kill_worker_once` (tests only): (output, marker file): the worker that starts
    that output's job kills itself unless the marker exists, which it creates first.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    manifest = Path(manifest)
    jobs = read_jobs(manifest)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror}") from None
    check_writable_dir(out)
    _check_outputs(jobs, manifest, out)
    for folder in (out / LOG_DIR, out / STATE_DIR):
        if os.path.lexists(folder) and not folder.is_dir():
            raise InputError(f"{folder} is not a folder: the batch keeps its own files there")
        if folder.is_dir():  # left by an earlier run (or another user): every job writes here
            check_writable_dir(folder, "the batch's own folder")
    work = Path(work_dir).resolve() if work_dir is not None else None
    if work is not None and ray_address is None:
        # Local workers share it; a Ray cluster's nodes may mount it where this machine has
        # nothing, so there each job's swap checks it on its node.
        check_creatable_dir(work, "work folder")
    (out / LOG_DIR).mkdir(exist_ok=True)
    workers = max(1, int(workers or os.cpu_count() or 1))
    digest = _Digests()
    results: dict[str, JobResult] = {}
    pending: list[tuple[Job, str]] = []
    for job in jobs:
        log = str(log_path(out, job.output))
        key = ""
        if not job.problem:
            try:
                key = job_key(job, digest)
            except InputError as exc:
                job.problem = str(exc)
        if job.problem:
            atomic_write_text(log, f"row {job.row}: {job.problem}\n")
            results[job.output] = JobResult(job.row, job.output, "failed", error=job.problem,
                                            log=log)
            continue
        sha = finished_sha(out, job.output, key)
        if sha is not None:
            results[job.output] = JobResult(job.row, job.output, "skipped", sha256=sha, log=log)
            continue
        _claim(out, job.output, key)
        _remove_partial(out, job.output)
        pending.append((job, key))
    kill_once = ({_kill_worker_once[0]: str(_kill_worker_once[1])} if _kill_worker_once
                 else {})

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="job", desc="batch",
               disable=not progress)

    def finish(job: Job, key: str, status: str, seconds: float, attempts: int,
               error: str = "") -> None:
        sha = ""
        if status == "done":
            sha = _record_finished(out, job.output, key, seconds)
        elif not os.path.lexists(out / job.output):
            _sidecar(out, job.output).unlink(missing_ok=True)  # nothing left to claim
        results[job.output] = JobResult(job.row, job.output, status, round(seconds, 3),
                                        attempts, error, sha,
                                        str(log_path(out, job.output)))
        bar.update(1)
        bar.set_postfix(failed=sum(r.status == "failed" for r in results.values()))

    executor = "none (all finished)" if not pending else "interrupted"
    try:
        if pending and ray_address is None:
            executor = f"local processes x{workers}"
            _run_local(pending, out, work, workers, retries, finish, kill_once)
        elif pending:
            executor = _run_ray(pending, out, ray_address, work, workers, retries,
                                gpus_per_job, finish, kill_once)
    finally:
        bar.close()
        # Written even when interrupted: the jobs finished so far (their sidecars are final).
        report = BatchReport(str(manifest), str(out), executor, time.perf_counter() - t0,
                             [results[j.output] for j in jobs if j.output in results])
        write_report(report, out)
    return report


def _payload(job: Job, key: str, kill_once: dict[str, str]) -> dict[str, Any]:
    payload = {"row": job.row, "sources": [str(s) for s in job.sources],
               "target": str(job.target), "output": job.output, "options": job.options,
               "key": key}
    if job.output in kill_once:
        payload["kill_worker_once"] = kill_once[job.output]
    return payload


def _run_local(pending: list[tuple[Job, str]], out: Path, work: Path | None, workers: int,
               retries: int, finish: Callable[..., None], kill_once: dict[str, str]) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from render.raster import kernels_available

    kernels_available()  # compiles the renderer's kernels into numba's disk cache once, here,
    # rather than in every spawned worker at the same time (6-9 s each with a cold cache)
    queue = deque(pending)
    attempts: Counter[str] = Counter()
    context = multiprocessing.get_context("spawn")
    while queue:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(queue)), mp_context=context,
                                   initializer=_init_worker)
        in_flight: dict[Any, tuple[Job, str]] = {}
        broken = False
        try:
            while queue or in_flight:
                # Only as many jobs in flight as workers: each one is running, so a dead
                # worker is charged to the jobs that could have been on it.
                while queue and not broken and len(in_flight) < workers:
                    job, key = queue.popleft()
                    attempts[job.output] += 1
                    _remove_partial(out, job.output)
                    future = pool.submit(_local_task, _payload(job, key, kill_once), str(out),
                                         str(work) if work else None, attempts[job.output])
                    in_flight[future] = (job, key)
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    job, key = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        _remove_partial(out, job.output)
                        if attempts[job.output] <= retries:
                            queue.appendleft((job, key))
                        else:
                            finish(job, key, "failed", 0.0, attempts[job.output],
                                   f"worker process died (killed or out of memory) on all "
                                   f"{attempts[job.output]} attempts")
                        continue
                    finish(job, key, result["status"], result["seconds"],
                           attempts[job.output], result["error"])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(pending: list[tuple[Job, str]], out: Path, address: str, work: Path | None,
             workers: int, retries: int, gpus_per_job: float,
             finish: Callable[..., None], kill_once: dict[str, str]) -> str:
    try:
        import ray
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        raise Morph3dError("Ray is not installed: pip install 'morph3d[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING}
        try:
            if address == "local":
                ray.init(num_cpus=workers, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise Morph3dError(f"cannot join the Ray cluster at {address!r}: "
                               f"{str(exc).splitlines()[0]} (start one with `ray start "
                               "--head`, or use --ray local)") from None
        started = True
    try:
        resources = ray.cluster_resources()
        executor = (f"ray ({address}; {int(resources.get('CPU', 0))} CPUs, "
                    f"{resources.get('GPU', 0):g} GPUs)")
        task = ray.remote(_ray_task).options(num_cpus=1, num_gpus=gpus_per_job,
                                             max_retries=retries, retry_exceptions=False)
        blobs: dict[Path, Any] = {}

        def blob(path: Path):
            if path not in blobs:  # each input crosses to the object store once
                blobs[path] = ray.put(path.read_bytes())
            return blobs[path]

        refs: dict[Any, tuple[Job, str]] = {}
        batch_id = uuid.uuid4().hex[:12]
        queue = deque(pending)
        # Back-pressure: a few tasks per CPU in flight keeps every worker busy while the
        # driver's memory and each ray.wait stay bounded however long the manifest is.
        window = max(16, 4 * int(resources.get("CPU", 1)))
        while queue or refs:
            while queue and len(refs) < window:
                job, key = queue.popleft()
                payload = _payload(job, key, kill_once)
                payload["batch_id"] = batch_id
                if work is not None:
                    payload["work_dir"] = str(work)
                if gpus_per_job > 0 and "device" not in job.options:
                    payload["device"] = "cuda"
                ref = task.remote(payload, blob(job.target), *(blob(s) for s in job.sources))
                refs[ref] = (job, key)
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                job, key = refs.pop(ref)
                log = log_path(out, job.output)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:  # raised inside the task, outside the swap
                    error = f"{type(exc.cause).__name__}: {exc.cause}".splitlines()[0]
                    with open(log, "a", encoding="utf-8") as f:
                        f.write(f"{exc}\n")
                    finish(job, key, "failed", 0.0, 1, error)
                    continue
                except RayError as exc:
                    error = (f"worker died or the task was lost on all {retries + 1} attempts "
                             f"({type(exc).__name__})")
                    with open(log, "a", encoding="utf-8") as f:
                        f.write(f"{error}\n{exc}\n")
                    finish(job, key, "failed", 0.0, retries + 1, error)
                    continue
                with open(log, "a", encoding="utf-8") as f:
                    f.write(result["log"])
                if result["status"] == "done":
                    atomic_write_bytes(out / job.output, result["output_bytes"])
                finish(job, key, result["status"], result["seconds"], result["attempts"],
                       result["error"])
        return executor
    finally:
        if started:
            ray.shutdown()


def write_report(report: BatchReport, out_dir: Path) -> None:
    """`batch-report.json` (everything) and `batch-report.csv` (one row per job)."""
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report.to_dict(), indent=1))
    with atomic_write(out_dir / REPORT_CSV, "w") as f:
        writer = csv.DictWriter(f, fieldnames=_REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in report.results:
            writer.writerow(asdict(r))
