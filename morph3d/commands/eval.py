"""`morph3d eval`: score a face-swap output (ours or another tool's) against its inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from morph3d.errors import Morph3dError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    from morph3d.evaluate import evaluate, summary_lines, write_json

    # Check the output paths before minutes of analysis, not after.
    if args.json:
        json_path = Path(args.json)
        if json_path.is_dir():
            raise Morph3dError(f"--json path is a directory: {json_path}")
        if not json_path.resolve().parent.is_dir():
            raise Morph3dError(f"output folder does not exist: {json_path.parent}")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise Morph3dError(f"--plots path is a file, not a folder: {args.plots}")
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
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="worker processes for the per-frame analysis (default 1)")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="score only the first N frames")
    parser.add_argument("--target-face", default="largest",
                        help="which face of the original: largest (default), center, or X,Y")
    parser.add_argument("--no-noise-floor", action="store_true",
                        help="skip scoring an H.264 CRF-23 re-encode of the original")
    parser.set_defaults(func=cmd_eval)
