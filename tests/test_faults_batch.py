"""Hostile or mistaken inputs to the batch, training checkpoints and clip templates: each is
refused in one line before anything is overwritten, written outside its folder or run."""

from __future__ import annotations

import hashlib
import json
import zipfile
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


# --------------------------------------------------------------------------- clip templates


def _crafted_template(path: Path, *, clip_sha: str | None = None,
                      members: dict[str, str] | None = None) -> Path:
    """A template whose manifest is self-consistent (its id matches) but whose names and
    digests are whatever the attacker chose; the fit member's digest is right."""
    from morph3d.template import MANIFEST, TEMPLATE_FORMAT, TEMPLATE_VERSION, _template_id

    fit_data, clip_data = b"not really a fit", b"not really a clip"
    fit_sha = hashlib.sha256(fit_data).hexdigest()
    clip_sha = clip_sha if clip_sha is not None else hashlib.sha256(clip_data).hexdigest()
    manifest = {
        "format": TEMPLATE_FORMAT, "format_version": TEMPLATE_VERSION, "morph3d_version": "0",
        "model": {"name": "default", "build": "x", "vertices": 1, "identity_components": 1,
                  "expression_components": 1},
        "fit": {"member": "fit.npz", "frames": 2, "backend": "mediapipe",
                "target_face": "largest", "target_face_ref_sha256": None, "max_frames": 2,
                "seconds": {}},
        "video": {"width": 8, "height": 8},
        "clip": {"name": "clip.mp4", "size": len(clip_data), "sha256": clip_sha,
                 "embedded": True, "member": "clip.mp4", "path": None},
        "members": members if members is not None else {"fit.npz": fit_sha,
                                                         "clip.mp4": clip_sha},
    }
    manifest["template_id"] = _template_id(manifest)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        z.writestr("fit.npz", fit_data)
        z.writestr("clip.mp4", clip_data)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_crafted_template_cannot_write_outside_the_cache(tmp_path):
    from morph3d.template import open_template, read_manifest

    templates = tmp_path / "templates"
    templates.mkdir()
    work = tmp_path / "cache" / "morph3d" / "work"  # 4 levels below tmp_path
    fit_sha = hashlib.sha256(b"not really a fit").hexdigest()
    escape = "../../../../elsewhere/"
    cases = {
        "escape.m3dt": dict(clip_sha=escape),
        "member.m3dt": dict(members={"fit.npz": fit_sha, "../../evil.npz": "0" * 64}),
        "upper.m3dt": dict(clip_sha="A" * 64),
        "extra.m3dt": dict(members={"fit.npz": fit_sha, "clip.mp4": hashlib.sha256(
            b"not really a clip").hexdigest(), "notes.txt": "1" * 64}),
    }
    for name, kwargs in cases.items():
        crafted = _crafted_template(templates / name, **kwargs)
        with pytest.raises(InputError, match="corrupt or crafted") as err:
            open_template(crafted, work)
        assert "\n" not in str(err.value)
        with pytest.raises(InputError, match="corrupt or crafted"):
            read_manifest(crafted)
    # Nothing was created: not the escape target, not even the cache folder.
    assert _tree(tmp_path) == ["templates", *(f"templates/{n}" for n in sorted(cases))]

    # Well-formed names but a clip that is not what its digest says: refused after hashing,
    # and only the cache folder holds anything (no partial clip left behind).
    wrong = _crafted_template(templates / "wrong.m3dt", clip_sha="ab" * 32,
                              members={"fit.npz": fit_sha, "clip.mp4": "ab" * 32})
    with pytest.raises(InputError, match="corrupt"):
        open_template(wrong, work)
    assert not (tmp_path / "elsewhere").exists()
    assert all(p.is_dir() for p in (tmp_path / "cache").rglob("*"))
