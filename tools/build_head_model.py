"""Build the embedded MakeHuman head model (the same build `load_model("default")` runs on
first use) and write it to the cache or to -o FILE.

Usage: python tools/build_head_model.py [-o FILE.npz] [--samples 1500] [--seed 0]
"""

from __future__ import annotations

import sys

from morph3d.cli import main

if __name__ == "__main__":
    sys.exit(main(["model", "build", *sys.argv[1:]]))
