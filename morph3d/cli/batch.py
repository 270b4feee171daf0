"""`morph3d batch jobs.csv --out-dir DIR`: many swaps, on local workers or a Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="run many swaps listed in a CSV (source,target,output[,options])",
        description="Run every job of a CSV manifest (columns source, target, output and "
                    "optionally options, e.g. 'target_face=1;refine=classic;max_frames=100'; "
                    "several photos of one person separated by ';'; options are swap "
                    "options only, checked before any job starts). Finished outputs are "
                    "skipped when the same manifest runs again. A row whose output would "
                    "replace an input of any row, the manifest, or a file in DIR that the "
                    "batch did not write fails alone before any job starts; the other rows "
                    "run.")
    p.add_argument("manifest", type=Path, help="jobs CSV; paths relative to its folder")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the outputs")
    p.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    p.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run on Ray: 'auto' joins the running cluster, 'local' starts one "
                        "here, or a cluster address (HOST:PORT, ray://HOST:PORT)")
    p.add_argument("--gpus-per-job", type=float, default=0.0,
                   help="Ray: GPUs each job reserves (> 0 renders on cuda)")
    p.add_argument("--retries", type=int, default=2,
                   help="times a job is retried after its worker process died")
    p.add_argument("--work-dir", type=Path,
                   help="fit cache shared by the jobs (default: the user cache; with Ray, "
                        "each node's scratch folder unless this is a shared path)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from morph3d.swap.batch import run_batch
    from morph3d.swap.batch_outputs import REPORT_JSON

    report = run_batch(args.manifest, args.out_dir, workers=args.workers,
                       ray_address=args.ray, work_dir=args.work_dir, retries=args.retries,
                       gpus_per_job=args.gpus_per_job, progress=not args.quiet)
    counts = report.counts
    print(f"{counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped (already "
          f"finished), {counts.get('failed', 0)} failed in {report.seconds:.1f} s on "
          f"{report.executor}; report: {Path(args.out_dir) / REPORT_JSON}")
    for r in report.failed:
        print(f"morph3d: job {r.output} (row {r.row}) failed: {r.error}", file=sys.stderr)
    return 1 if report.failed else 0
