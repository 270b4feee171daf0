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

import sys

from morph3d.cli.train import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("sr", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
