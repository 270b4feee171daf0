"""The `morph3d` command line: one argparse parser, one function per subcommand.

Every user-facing failure is a `Morph3dError`: it prints one line `morph3d: error: ...`
and exits with status 2. So does an `OSError` from the system (a full disk, a folder made
read-only during the run; PyAV's errors subclass it): what failed and on which path. Ctrl-C
(SIGINT) and SIGTERM unwind the same way, so temporary files are removed, and exit with 130
and 143. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from morph3d import __version__
from morph3d.errors import Morph3dError


def cmd_model_info(args: argparse.Namespace) -> int:
    from morph3d.model.registry import load_model

    model = load_model(args.model)
    info = model.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"model:                 {info['name']}")
        print(f"vertices:              {info['vertices']}")
        print(f"triangles:             {info['triangles']}")
        print(f"identity components:   {info['identity_components']}")
        print(f"expression components: {info['expression_components']}")
        print(f"landmark schemes:      {', '.join(info['landmark_schemes'])}")
        print(f"regions:               {', '.join(info['regions'])}")
    return 0


def cmd_model_build(args: argparse.Namespace) -> int:
    from morph3d.builders.head import build_head_model
    from morph3d.io.outputs import check_outputs
    from morph3d.model.registry import default_model_path

    out = Path(args.output) if args.output else default_model_path()
    check_outputs((), (out,))
    build_head_model(samples=args.samples, seed=args.seed).save(out)
    print(f"wrote {out}")
    return 0


def cmd_model_convert_bfm(args: argparse.Namespace) -> int:
    from morph3d.builders.bfm import convert_bfm_from_args, default_bfm_path
    from morph3d.io.outputs import check_outputs

    out = Path(args.output).expanduser() if args.output else default_bfm_path()
    check_outputs((args.shape, args.expression, args.landmarks), (out,))
    out = convert_bfm_from_args(args)
    print(f"wrote {out}; use it with --model bfm")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morph3d",
        description="Open 3D-morphable-model face swap: one photo in, a swapped clip out.",
    )
    parser.add_argument("--version", action="version", version=f"morph3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    model = sub.add_parser("model", help="inspect, build or convert morphable models")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    info = model_sub.add_parser("info", help="print the active model's sizes")
    info.add_argument("--model", default="default", help="default | bfm | path to a .npz")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_model_info)
    build = model_sub.add_parser("build", help="(re)build the embedded MakeHuman head model")
    build.add_argument("-o", "--output", help="output .npz (default: the cache)")
    build.add_argument("--samples", type=int, default=1500, help="prior samples for the PCA")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=cmd_model_build)
    bfm = model_sub.add_parser("convert-bfm", help="convert a Basel Face Model you have")
    from morph3d.builders.bfm import add_convert_bfm_arguments

    add_convert_bfm_arguments(bfm)
    bfm.set_defaults(func=cmd_model_convert_bfm)

    for name, register in _optional_commands():
        register(sub, name)
    return parser


def _optional_commands():
    """Subcommands whose modules register themselves (fit, swap, eval, ...)."""
    import importlib

    for name, module in (("fit", "morph3d.cli.fit"), ("swap", "morph3d.cli.swap"),
                         ("eval", "morph3d.cli.eval"), ("demo", "morph3d.cli.demo"),
                         ("template", "morph3d.cli.template"),
                         ("batch", "morph3d.cli.batch"),
                         ("train", "morph3d.cli.train")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        yield name, mod.register


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C: every cleanup that runs for an
    interrupt (temporary files removed, writers aborted) runs for it too."""


_HANDLER_PID: int | None = None  # the process whose main() installed the SIGTERM handler


def _raise_terminated(signum: int, frame: object) -> None:
    if os.getpid() != _HANDLER_PID:  # a forked child inherited the handler: die as usual
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # Once: a second SIGTERM must not cut the cleanup short (SIGKILL still ends it).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def os_error_line(exc: OSError) -> str:
    """'<what failed>: <path>' for an OSError (PyAV's included)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{what}: {' -> '.join(paths)}" if paths else what


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    global _HANDLER_PID
    previous = None
    if threading.current_thread() is threading.main_thread():
        _HANDLER_PID = os.getpid()
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:  # the parser too: building it may create the cache (for default paths in --help)
        return _run(argv)
    except Morph3dError as exc:
        print(f"morph3d: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"morph3d: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print("morph3d: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("morph3d: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
