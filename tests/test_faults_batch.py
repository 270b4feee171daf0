"""Hostile or mistaken inputs to the batch, training checkpoints and clip templates: each is
refused in one line before anything is overwritten, written outside its folder or run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from morph3d.errors import InputError, Morph3dError

# ------------------------------------------------------------------ training checkpoints


class _WritesMarker:
    """Unpickling this calls `open(marker, "w")`: stands for any code a crafted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_training(seed: int = 0):
    import torch

    from morph3d.training import Checkpoint

    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    return net, optimizer, Checkpoint


def test_checkpoint_resumes_and_refuses_code(tmp_path):
    import torch

    identity = {"seed": 0, "lr": 0.01, "steps": 10, "holdout": ["a*"], "exclude": []}
    net, optimizer, Checkpoint = _tiny_training(0)
    rng = np.random.default_rng(5)
    rng.random(3)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    saved = Checkpoint(path, identity, {"net": net}, optimizer, rng)
    saved.step, saved.elapsed = 7, 12.5
    saved.save()

    # A normal checkpoint resumes: nets, optimizer, rng, step and time.
    net2, optimizer2, _ = _tiny_training(1)
    rng2 = np.random.default_rng(0)
    resumed = Checkpoint(path, identity, {"net": net2}, optimizer2, rng2)
    messages: list[str] = []
    resumed.resume(messages.append)
    assert (resumed.step, resumed.elapsed) == (7, 12.5)
    assert torch.equal(net2.weight, net.weight) and torch.equal(net2.bias, net.bias)
    assert optimizer2.state_dict()["state"][0]["exp_avg"].equal(
        optimizer.state_dict()["state"][0]["exp_avg"])
    assert rng2.random() == rng.random()
    assert "resumed at step 7" in messages[0]

    # A crafted checkpoint whose unpickling would run code: refused, the code never runs.
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"identity": identity, "step": 1, "elapsed_s": 0.0,
                "payload": _WritesMarker(marker)}, evil)
    with pytest.raises(Morph3dError) as err:
        Checkpoint(evil, identity, {"net": net2}, optimizer2, rng2).resume(messages.append)
    assert "\n" not in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()

    # Not a checkpoint at all, and a checkpoint of other nets: one line each.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(InputError, match="not a readable checkpoint|not a plain") as err:
        Checkpoint(junk, identity, {"net": net2}, optimizer2, rng2).resume(messages.append)
    assert "\n" not in str(err.value)
    other = torch.nn.Linear(5, 1)
    with pytest.raises(InputError, match="does not fit these nets") as err:
        Checkpoint(path, identity, {"net": other}, torch.optim.Adam(other.parameters()),
                   rng2).resume(messages.append)
    assert "\n" not in str(err.value)
