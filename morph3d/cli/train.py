"""`morph3d train sr|completion`: train the learned refinement nets on your own photos and
videos (the face super-resolver and the UV-texture completion net)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from morph3d.errors import Morph3dError


def add_common_train_arguments(parser: argparse.ArgumentParser, *, name: str, steps: int,
                               checkpoint_every: int, threads: int, threads_help: str,
                               holdout: Sequence[str], exclude: Sequence[str]) -> None:
    """The options every `morph3d train NET` has; `name` names the default weights
    (``<cache>/models/<name>.npz``) and checkpoint (``<cache>/train/<name>_checkpoint.pt``)."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of face photos and/or videos (searched recursively)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this many minutes of training in all (across resumes)")
    parser.add_argument("--steps", type=int, default=steps,
                        help="training steps; the learning-rate schedule spans them")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (same settings required)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help=f"weights file to write (default: <cache>/models/{name}.npz); "
                             "its manifest goes beside it as .json")
    parser.add_argument("--checkpoint", metavar="FILE", default=None,
                        help=f"checkpoint file (default: <cache>/train/{name}_checkpoint.pt)")
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    parser.add_argument("--holdout", action="append", metavar="PATTERN", default=None,
                        help="held-out file pattern (repeatable; default: "
                             f"{' '.join(holdout)}; if none matches, every 7th file)")
    parser.add_argument("--exclude", action="append", metavar="PATTERN", default=None,
                        help=f"skipped file pattern (repeatable; default: {' '.join(exclude)})")
    parser.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")


def common_options(args: argparse.Namespace, module: Any) -> dict[str, Any]:
    """The keyword arguments of the common options for `module`'s train-options class
    (`module` gives DEFAULT_HOLDOUT / DEFAULT_EXCLUDE and the default paths)."""
    if args.steps < 1:
        raise Morph3dError("--steps must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        raise Morph3dError("--minutes must be positive")
    out = Path(args.out) if args.out else module.default_trained_weights()
    checkpoint = Path(args.checkpoint) if args.checkpoint else module.default_checkpoint()
    check_train_outputs(Path(args.data), out, checkpoint, given=(args.out, args.checkpoint))
    return dict(
        data_dir=Path(args.data),
        out=out,
        checkpoint=checkpoint,
        steps=args.steps, minutes=args.minutes, resume=args.resume, seed=args.seed,
        checkpoint_every=max(1, args.checkpoint_every), threads=args.threads,
        holdout=tuple(args.holdout) if args.holdout else module.DEFAULT_HOLDOUT,
        exclude=tuple(args.exclude) if args.exclude else module.DEFAULT_EXCLUDE,
        progress=not args.no_progress,
    )


def check_train_outputs(data: Path, out: Path, checkpoint: Path,
                        given: Sequence[str | None]) -> None:
    """Before any training: the weights, their manifest and the checkpoint are three
    different files, none of them a file of --data, each in a writable folder (the cache's
    folders, used by default, are created on first use)."""
    from morph3d.io.outputs import check_creatable_dir, check_outputs

    if not data.is_dir():
        raise Morph3dError(f"--data is not a folder: {data}")
    outputs = []
    for paths, user_given in (((out, out.with_suffix(".json")), given[0]),
                              ((checkpoint,), given[1])):
        if not user_given:
            check_creatable_dir(paths[0].parent, "cache folder")
        if user_given or paths[0].parent.is_dir():
            outputs += paths
    check_outputs([p for p in data.rglob("*") if p.is_file()], outputs)


def add_train_sr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `morph3d train sr` (shared with tools/train_sr.py)."""
    from morph3d.neural.training.refine import DEFAULT_EXCLUDE, DEFAULT_HOLDOUT

    add_common_train_arguments(parser, name="sr", steps=6000, checkpoint_every=200, threads=2,
                               threads_help="torch CPU threads", holdout=DEFAULT_HOLDOUT,
                               exclude=DEFAULT_EXCLUDE)
    parser.add_argument("--channels", type=int, default=32, help="features per conv layer")
    parser.add_argument("--layers", type=int, default=5, help="conv layers per net")
    parser.add_argument("--scales", default="2,4", help="comma-separated: 2, 4 or 2,4")


def options_from_args(args: argparse.Namespace):
    """argparse namespace -> `morph3d.neural.training.refine.TrainOptions`."""
    from morph3d.neural.training import refine

    try:
        scales = tuple(sorted({int(s) for s in str(args.scales).split(",") if s.strip()}))
    except ValueError:
        raise Morph3dError(f"--scales must be a comma-separated list of 2 and 4, "
                           f"got {args.scales!r}") from None
    return refine.TrainOptions(**common_options(args, refine), scales=scales,
                               channels=args.channels, layers=args.layers)


def cmd_train_sr(args: argparse.Namespace) -> int:
    from morph3d.neural.training.refine import train_super_resolver

    train_super_resolver(options_from_args(args))
    return 0


def add_train_completion_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `morph3d train completion` (shared with tools/train_completion.py)."""
    from morph3d.neural.training.completion import DEFAULT_EXCLUDE, DEFAULT_HOLDOUT

    add_common_train_arguments(
        parser, name="completion", steps=2000, checkpoint_every=100, threads=1,
        threads_help="torch CPU threads (1 is fastest on a loaded 2-core machine)",
        holdout=DEFAULT_HOLDOUT, exclude=DEFAULT_EXCLUDE)
    parser.add_argument("--batch", type=int, default=8, help="textures per step")
    parser.add_argument("--crop", type=int, default=96, metavar="TEXELS",
                        help="random training window of the 128-texel UV grid")
    parser.add_argument("--frame-step", type=int, default=6, metavar="N",
                        help="fit every N-th video frame")
    parser.add_argument("--masks", type=int, default=4,
                        help="synthetic visibility masks per fitted texture")


def completion_options_from_args(args: argparse.Namespace):
    """argparse namespace -> `morph3d.neural.training.completion.CompletionTrainOptions`."""
    from morph3d.neural.training import completion as completion_net

    common = common_options(args, completion_net)
    if args.batch < 1 or args.masks < 1 or args.frame_step < 1:
        raise Morph3dError("--batch, --masks and --frame-step must be at least 1")
    if not 16 <= args.crop <= 128:
        raise Morph3dError(f"--crop must be 16 to 128 texels, got {args.crop}")
    return completion_net.CompletionTrainOptions(
        **common, batch=args.batch, crop=args.crop, masks=args.masks,
        frame_step=args.frame_step)


def cmd_train_completion(args: argparse.Namespace) -> int:
    from morph3d.neural.training.completion import train_completion

    if not Path(args.data).is_dir():
        raise Morph3dError(f"--data is not a folder: {args.data}")
    train_completion(completion_options_from_args(args))
    return 0


NETS = {"sr": (add_train_sr_arguments, cmd_train_sr),
        "completion": (add_train_completion_arguments, cmd_train_completion)}


def tool_main(net: str, description: str, argv: list[str] | None = None) -> int:
    """A standalone script's main for `morph3d train NET` (tools/train_NET.py): the same
    options; errors as one line on stderr, exit status 2."""
    add_arguments, command = NETS[net]
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command(args)
    except Morph3dError as exc:
        print(f"train_{net}: error: {exc}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    train = subparsers.add_parser(name, help="train the learned refinement nets")
    train_sub = train.add_subparsers(dest="train_command", metavar="NET")
    sr = train_sub.add_parser("sr", help="the face super-resolver (x2, x4)")
    add_train_sr_arguments(sr)
    sr.set_defaults(func=cmd_train_sr)
    completion = train_sub.add_parser("completion", help="the UV-texture completion net")
    add_train_completion_arguments(completion)
    completion.set_defaults(func=cmd_train_completion)
