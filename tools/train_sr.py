"""Train the face super-resolver (same options as `morph3d train sr`).

Usage: python tools/train_sr.py --data ../shared/media --steps 4000 --minutes 30 \
           --out morph3d/weights/sr.npz [--resume]

Faces are detected in every photo and every 3rd video frame under --data; square crops
around them are cached in the user cache (never in the repository); training pairs are made
with random blur / resampling / noise / JPEG degradations. Files matching --holdout
(default: the development media's held-out people) are kept out of training and used for
the metrics written into the manifest. CPU only; checkpoints every --checkpoint-every steps
and continues with --resume; with --steps alone (no --minutes cap hit) the run is
reproducible for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import sys

from morph3d.commands.train import add_train_sr_arguments, options_from_args
from morph3d.errors import Morph3dError
from morph3d.refine import train_super_resolver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_sr_arguments(parser)
    args = parser.parse_args(argv)
    try:
        train_super_resolver(options_from_args(args))
    except Morph3dError as exc:
        print(f"train_sr: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
