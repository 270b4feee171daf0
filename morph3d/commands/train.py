"""`morph3d train sr`: train the face super-resolver on your own photos and videos.

`morph3d train completion` is reserved for the texture-completion net (issue 7, second
part) and says so with a non-zero exit until it exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from morph3d.errors import Morph3dError


def add_train_sr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `morph3d train sr` (shared with tools/train_sr.py)."""
    from morph3d.refine import DEFAULT_EXCLUDE, DEFAULT_HOLDOUT

    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of face photos and/or videos (searched recursively)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this many minutes of training in all (across resumes)")
    parser.add_argument("--steps", type=int, default=6000,
                        help="training steps; the learning-rate schedule spans them")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (same settings required)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="weights file to write (default: <cache>/models/sr.npz); its "
                             "manifest goes beside it as .json")
    parser.add_argument("--checkpoint", metavar="FILE", default=None,
                        help="checkpoint file (default: <cache>/train/sr_checkpoint.pt)")
    parser.add_argument("--checkpoint-every", type=int, default=200, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--holdout", action="append", metavar="PATTERN", default=None,
                        help="held-out file pattern (repeatable; default: "
                             f"{' '.join(DEFAULT_HOLDOUT)}; if none matches, every 7th file)")
    parser.add_argument("--exclude", action="append", metavar="PATTERN", default=None,
                        help=f"skipped file pattern (repeatable; default: "
                             f"{' '.join(DEFAULT_EXCLUDE)})")
    parser.add_argument("--channels", type=int, default=32, help="features per conv layer")
    parser.add_argument("--layers", type=int, default=5, help="conv layers per net")
    parser.add_argument("--scales", default="2,4", help="comma-separated: 2, 4 or 2,4")
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")


def options_from_args(args: argparse.Namespace):
    """argparse namespace -> `morph3d.refine.TrainOptions`."""
    from morph3d.refine import (
        DEFAULT_EXCLUDE,
        DEFAULT_HOLDOUT,
        TrainOptions,
        default_checkpoint,
        default_trained_weights,
    )

    try:
        scales = tuple(sorted({int(s) for s in str(args.scales).split(",") if s.strip()}))
    except ValueError:
        raise Morph3dError(f"--scales must be a comma-separated list of 2 and 4, "
                           f"got {args.scales!r}") from None
    if args.steps < 1:
        raise Morph3dError("--steps must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        raise Morph3dError("--minutes must be positive")
    return TrainOptions(
        data_dir=Path(args.data),
        out=Path(args.out) if args.out else default_trained_weights(),
        checkpoint=Path(args.checkpoint) if args.checkpoint else default_checkpoint(),
        steps=args.steps, minutes=args.minutes, resume=args.resume, seed=args.seed,
        scales=scales, channels=args.channels, layers=args.layers,
        checkpoint_every=max(1, args.checkpoint_every), threads=args.threads,
        holdout=tuple(args.holdout) if args.holdout else DEFAULT_HOLDOUT,
        exclude=tuple(args.exclude) if args.exclude else DEFAULT_EXCLUDE,
        progress=not args.no_progress,
    )


def cmd_train_sr(args: argparse.Namespace) -> int:
    from morph3d.refine import train_super_resolver

    train_super_resolver(options_from_args(args))
    return 0


def cmd_train_completion(args: argparse.Namespace) -> int:
    raise Morph3dError("training the texture-completion net is not available yet "
                       "(only `morph3d train sr` is)")


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    train = subparsers.add_parser(name, help="train the learned refinement nets")
    train_sub = train.add_subparsers(dest="train_command", metavar="NET")
    sr = train_sub.add_parser("sr", help="the face super-resolver (x2, x4)")
    add_train_sr_arguments(sr)
    sr.set_defaults(func=cmd_train_sr)
    completion = train_sub.add_parser("completion", help="texture completion (not yet)")
    completion.add_argument("--data", metavar="DIR")
    completion.set_defaults(func=cmd_train_completion)
