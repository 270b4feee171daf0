"""`renderer.keep_freed_memory`: the arrays a frame frees are reused by the next frame,
not page-faulted afresh (the render stage's and the compositor's window-sized arrays)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# three 8 MB arrays made, written and freed per round, as a frame's temporaries are;
# prints the page faults per round before and after the setting, then whether it was taken
SCRIPT = """
import resource
import numpy as np
from morph3d.swap.renderer import keep_freed_memory

def faults(rounds=5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        arrays = [np.ones(2 << 20, np.float32) for _ in range(3)]
        del arrays
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / rounds

faults(1)
before = faults()
taken = keep_freed_memory()
faults(1)
print(before, faults(), int(taken))
"""


def test_freed_arrays_are_reused_without_page_faults():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc settings")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True,
                         text=True, check=True).stdout.split()
    before, after, taken = float(out[0]), float(out[1]), int(out[2])
    if not taken:
        pytest.skip("not glibc's malloc")
    # 24 MB a round is 6144 pages: glibc's defaults fault a good share of them each round
    assert after <= 50, (before, after)
