"""Batch renders: many swaps from a CSV manifest, on local worker processes or a Ray cluster.

The manifest (`jobs.csv`: source, target, output, options) and its checks are
`batch_manifest`; the batch's own files (sidecars, logs, reports) and the guards on outputs
are `batch_outputs`; one job inside a worker is `batch_worker`; this module runs the jobs.

Reliability: every job runs alone and reports its own failure (a bad photo fails that job,
the others finish). Each finished output gets a sidecar (`.morph3d-batch/<output>.json`) with
its SHA-256 and the job's key (inputs' content hashes and options), so re-running the same
manifest skips outputs whose file still matches, and redoes the others. Outputs appear
atomically. A worker process that dies (killed, out of memory) costs its job one attempt; the
job is retried up to `retries` times.

Outputs never cost data: no output may replace an input or a file the batch did not write
(`batch_outputs.check_batch_outputs`, before any job starts).

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

import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import atomic_write_bytes, atomic_write_text
from morph3d.io.outputs import check_creatable_dir, check_writable_dir
from morph3d.swap.batch_manifest import Digests, Job, job_key, read_jobs
from morph3d.swap.batch_outputs import (
    LOG_DIR,
    STATE_DIR,
    BatchReport,
    JobResult,
    check_batch_outputs,
    claim_output,
    finished_sha,
    log_path,
    record_finished,
    remove_partial,
    sidecar_path,
    write_report,
)
from morph3d.swap.batch_worker import init_worker, local_task, ray_task


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
    check_batch_outputs(jobs, manifest, out)
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
    digest = Digests()
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
        claim_output(out, job.output, key)
        remove_partial(out, job.output)
        pending.append((job, key))
    kill_once = ({_kill_worker_once[0]: str(_kill_worker_once[1])} if _kill_worker_once
                 else {})

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="job", desc="batch",
               disable=not progress)

    def finish(job: Job, key: str, status: str, seconds: float, attempts: int,
               error: str = "") -> None:
        sha = ""
        if status == "done":
            sha = record_finished(out, job.output, key, seconds)
        elif not os.path.lexists(out / job.output):
            sidecar_path(out, job.output).unlink(missing_ok=True)  # nothing left to claim
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
                                   initializer=init_worker)
        in_flight: dict[Any, tuple[Job, str]] = {}
        broken = False
        try:
            while queue or in_flight:
                # Only as many jobs in flight as workers: each one is running, so a dead
                # worker is charged to the jobs that could have been on it.
                while queue and not broken and len(in_flight) < workers:
                    job, key = queue.popleft()
                    attempts[job.output] += 1
                    remove_partial(out, job.output)
                    future = pool.submit(local_task, _payload(job, key, kill_once), str(out),
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
                        remove_partial(out, job.output)
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
        task = ray.remote(ray_task).options(num_cpus=1, num_gpus=gpus_per_job,
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
