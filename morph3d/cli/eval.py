"""`morph3d eval`: score a face-swap output (ours or another tool's) against its inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from morph3d.cli.arguments import positive_int
from morph3d.errors import InputError

# The files `morph3d.evaluate.plots.write_plots` writes into the --plots folder.
PLOT_FILES = ("identity.png", "expression.png", "pose.png", "trajectory.png",
              "contact_sheet.png")


def check_eval_paths(args: argparse.Namespace) -> None:
    """Check every output before minutes of analysis, not after: --json and the plot files
    must be writable and must not be any of the three inputs."""
    from morph3d.io.outputs import check_outputs, check_writable_dir

    inputs = [Path(p) for p in (args.source, args.target, args.output)]
    for p in inputs:
        if not p.exists():
            raise InputError(f"input not found: {p}")
    outputs: list[Path] = [Path(args.json)] if args.json else []
    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise InputError(f"--plots path is a file, not a folder: {plots}")
        if plots.is_dir():
            outputs += [plots / name for name in PLOT_FILES]
        else:  # the plots folder itself is created, in an existing folder only
            check_writable_dir(plots.parent)
    check_outputs(inputs, outputs)


def cmd_eval(args: argparse.Namespace) -> int:
    from morph3d.evaluate.metrics import summary_lines, write_json
    from morph3d.evaluate.runner import evaluate

    check_eval_paths(args)
    result = evaluate(args.source, args.target, args.output, workers=args.workers,
                      plots_dir=args.plots, target_face=args.target_face,
                      max_frames=args.max_frames, noise_floor=not args.no_noise_floor)
    for line in summary_lines(result):
        print(line)
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plots:
        print(f"plots in {args.plots}")
    return 0


def register(subparsers: argparse._SubParsersAction, name: str = "eval") -> None:
    """Add the `eval` subcommand to the main parser's subparsers."""
    parser = subparsers.add_parser(
        name, help="score a swap output: identity, pose, expression, gaze, jitter",
        description="Score any face-swap output (video or image) against the source photo "
                    "and the original; frames are paired by index.")
    parser.add_argument("--source", required=True, help="the identity photo")
    parser.add_argument("--target", required=True, help="the original video or image")
    parser.add_argument("--output", required=True, help="the swapped video or image")
    parser.add_argument("--json", help="write all metrics and per-frame values here")
    parser.add_argument("--plots", help="folder for PNG plots and a contact sheet")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="worker processes for the per-frame analysis (default 1)")
    parser.add_argument("--max-frames", type=positive_int, default=None,
                        help="score only the first N frames")
    parser.add_argument("--target-face", default="largest",
                        help="which face of the original: largest (default), N (0 = largest), "
                        "center, or the face nearest pixel X,Y")
    parser.add_argument("--no-noise-floor", action="store_true",
                        help="skip scoring an H.264 CRF-23 re-encode of the original")
    parser.set_defaults(func=cmd_eval)
