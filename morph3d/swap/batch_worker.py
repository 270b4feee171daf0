"""One batch job inside a worker (a local process or a Ray task): the swap, its log, and its
failure as a result rather than an exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from morph3d.errors import Morph3dError
from morph3d.io.atomic import atomic_write_bytes
from morph3d.swap.batch_manifest import Job, swap_options
from morph3d.swap.batch_outputs import log_path


def init_worker() -> None:
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


def local_task(job: dict[str, Any], out_dir: str, work_dir: str | None, attempt: int
                ) -> dict[str, Any]:
    out = Path(out_dir)
    return run_job(job, out / job["output"], log_path(out, job["output"]),
                   Path(work_dir) if work_dir else None, attempt)


def ray_task(job: dict[str, Any], target_data: bytes, *source_data: bytes) -> dict[str, Any]:
    """A job on a Ray node: inputs arrive as bytes, the output goes back as bytes."""
    import shutil
    import tempfile

    init_worker()
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
