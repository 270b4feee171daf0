"""Train the UV-texture completion net (same options as `morph3d train completion`).

Usage: python tools/train_completion.py --data ../shared/media --steps 2000 \
           --out morph3d/weights/completion.npz [--resume]

Every photo and every --frame-step-th video frame under --data is fitted (fitting.photo.fit_photo)
and its UV texture and visibility extracted; --masks synthetic visibility maps per texture
(the head turned to other poses, random occluding blobs) hide texels the photo saw, which
become the targets. Fitted textures are cached in the user cache (never in the repository).
Files matching --holdout (default: the development media's held-out people) are used only
for the metrics written into the manifest. Checkpoints every --checkpoint-every steps and
continues with --resume; with --steps alone the run is reproducible for a given seed and
thread count. Runs on the CPU.
"""

from __future__ import annotations

import sys

from morph3d.cli.train import tool_main


def main(argv: list[str] | None = None) -> int:
    return tool_main("completion", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
