"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_clip_options(p: argparse.ArgumentParser, target_face_help: str) -> None:
    """The options of every command that fits a target clip (swap, template build): which
    face, the model, the landmark backend, the length, the work folder and the progress."""
    from pathlib import Path

    p.add_argument("--target-face", default="largest", help=target_face_help)
    p.add_argument("--target-face-ref", type=Path,
                   help="photo of the person to replace (matched by identity embedding)")
    p.add_argument("--model", default="default", help="default | bfm | path to a .npz")
    p.add_argument("--backend", default="mediapipe", help="landmark backend: mediapipe | dlib")
    p.add_argument("--max-frames", type=positive_int, help="only the first N frames")
    p.add_argument("--work-dir", type=Path, help="where fits are cached (default: the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
