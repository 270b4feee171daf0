"""`morph3d demo [--real] [--out-dir out]`: the main job on an embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="swap a bundled photo into a clip made from a bundled photo (no downloads)")
    p.add_argument("--out-dir", type=Path, default=Path("out"),
                   help="folder for the outputs (created if missing)")
    p.add_argument("--real", action="store_true",
                   help="run mark.jpg into nggyup.mp4 from ../shared/media instead")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from morph3d.cli.demo_run import run_demo

    run_demo(args.out_dir, real=args.real, quiet=args.quiet)
    return 0
