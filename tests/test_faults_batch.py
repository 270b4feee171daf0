"""Hostile or mistaken inputs to the batch, training checkpoints and clip templates: each is
refused in one line before anything is overwritten, written outside its folder or run."""

from __future__ import annotations

import csv
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

    from morph3d.neural.training.common import Checkpoint

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
    from morph3d.swap.template import MANIFEST, TEMPLATE_FORMAT, TEMPLATE_VERSION, _template_id

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
    from morph3d.swap.template import open_template, read_manifest

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


# --------------------------------------------------------------------------------- batches


def _manifest(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target", "output", "options"])
        writer.writerows([(*row, "")[:4] for row in rows])
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_batch_output_never_replaces_an_input_or_a_foreign_file(tmp_path):
    """The issue's manifest with `--out-dir` its own folder: row 2's output is row 3's
    source. Row 2 fails alone before any job starts; row 3 runs on the untouched photo (its
    worker is killed once through the test-only hook and the job retried: fault injection
    reaches a worker without any manifest option)."""
    from morph3d.swap.batch import run_batch
    from morph3d.swap.batch_outputs import REPORT_JSON

    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("mark.jpg", "three_people.png", "khabenskii.jpg", "ref.jpg",
                 "holiday.png"):
        (folder / name).write_bytes(f"not really {name}".encode())
    manifest = _manifest(folder / "jobs.csv", [
        ("mark.jpg", "three_people.png", "khabenskii.jpg"),
        ("khabenskii.jpg", "mark.jpg", "k_on_m.png"),
        ("mark.jpg", "three_people.png", "ref.jpg"),  # another row's target_face_ref
        ("mark.jpg", "three_people.png", "holiday.png"),  # a file the batch did not write
        ("mark.jpg", "three_people.png", "three.png", "target_face_ref=ref.jpg"),
    ])
    before = _snapshot(folder)
    marker = tmp_path / "killed-once"
    report = run_batch(manifest, folder, workers=1, progress=False,
                       _kill_worker_once=("k_on_m.png", marker))
    result = {r.output: r for r in report.results}
    assert {k: r.status for k, r in result.items()} == dict.fromkeys(result, "failed")
    assert "would replace a source of row 3" in result["khabenskii.jpg"].error
    assert "would replace the target_face_ref of row 6" in result["ref.jpg"].error
    assert "already exists and this batch did not write it" in result["holiday.png"].error
    # Row 3 ran (twice: its first worker was killed) and failed on its fake photo alone.
    assert marker.is_file() and result["k_on_m.png"].attempts == 2
    assert "not a readable image" in result["k_on_m.png"].error
    assert "not a readable image" in result["three.png"].error
    after = _snapshot(folder)
    assert {k: after[k] for k in before} == before  # every input and foreign file intact
    assert set(after) - set(before) == {"batch-report.csv", REPORT_JSON}
    assert not list((folder / ".morph3d-batch").iterdir())  # no claim left without a file


def test_batch_outputs_it_wrote_stay_its_own(tmp_path):
    """An existing output with the batch's sidecar is the batch's to redo or skip; without
    one it is refused; a claim written before a job runs keeps the name the batch's."""
    from morph3d.swap.batch_manifest import read_jobs
    from morph3d.swap.batch_outputs import STATE_DIR, check_batch_outputs, claim_output

    for name in ("me.jpg", "clip.mp4"):
        (tmp_path / name).write_bytes(b"x")
    manifest = _manifest(tmp_path / "jobs.csv", [("me.jpg", "clip.mp4", "a.mp4"),
                                                 ("me.jpg", "clip.mp4", "b.mp4"),
                                                 ("me.jpg", "clip.mp4", "c.mp4")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"an earlier output of this batch")
    claim_output(out, "a.mp4", "key")
    (out / "b.mp4").write_bytes(b"somebody's own video")
    (out / "c.mp4").symlink_to(tmp_path / "clip.mp4")  # a link to an input
    jobs = read_jobs(manifest)
    check_batch_outputs(jobs, manifest, out)
    assert jobs[0].problem == ""
    assert "already exists and this batch did not write it" in jobs[1].problem
    assert f"no {STATE_DIR}/b.mp4.json" in jobs[1].problem
    assert "would replace the target of row 2" in jobs[2].problem


def test_batch_refuses_in_one_line_when_every_row_would_write_over_an_input(tmp_path,
                                                                           capsys):
    from morph3d.cli import main

    (tmp_path / "me.jpg").write_bytes(b"x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    rows = [("me.jpg", "clip.mp4", "a.mp4")]

    def batch(manifest: Path, out: Path) -> tuple[int, list[str]]:
        code = main(["batch", str(manifest), "--out-dir", str(out), "--workers", "1",
                     "--quiet"])
        return code, capsys.readouterr().err.strip().splitlines()

    # The manifest itself is where the batch's CSV report goes.
    manifest = _manifest(tmp_path / "batch-report.csv", rows)
    text = manifest.read_text()
    code, err = batch(manifest, tmp_path)
    assert code == 2 and len(err) == 1 and "would replace the manifest" in err[0], err
    assert manifest.read_text() == text

    # A file of the user's where the JSON report goes.
    manifest = _manifest(tmp_path / "jobs.csv", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch-report.json").write_text('{"mine": 1}')
    code, err = batch(manifest, out)
    assert code == 2 and len(err) == 1 and "is not a batch report" in err[0], err
    assert (out / "batch-report.json").read_text() == '{"mine": 1}'

    # An input inside the batch's log folder.
    (out / "batch-report.json").unlink()
    (out / "logs").mkdir()
    (out / "logs" / "me.jpg").write_bytes(b"x")
    _manifest(manifest, [("out/logs/me.jpg", "clip.mp4", "a.mp4")])
    code, err = batch(manifest, out)
    assert code == 2 and len(err) == 1 and "lies in the batch's own folder" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["logs"]
    assert (out / "logs" / "me.jpg").read_bytes() == b"x"

    # An --out-dir that is a file.
    code, err = batch(manifest, tmp_path / "me.jpg")
    assert code == 2 and len(err) == 1 and "not a folder" in err[0], err


def test_batch_folders_are_checked_writable_before_any_job(tmp_path, capsys,
                                                            unwritable_dir):
    """The output folder, the batch's own folders an earlier run left there, and a local
    --work-dir: each refused in one line before any job runs (no worker, no file)."""
    from morph3d.cli import main

    (tmp_path / "me.jpg").write_bytes(b"x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    manifest = _manifest(tmp_path / "jobs.csv", [("me.jpg", "clip.mp4", "a.mp4")])

    def batch(out: Path, *extra: object) -> list[str]:
        code = main(["batch", str(manifest), "--out-dir", str(out), "--workers", "1",
                     "--quiet", *map(str, extra)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("morph3d: error: "), err
        return err

    assert "not writable" in batch(unwritable_dir)[0]
    assert "cannot create the output folder" in batch(unwritable_dir / "out")[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs").symlink_to(unwritable_dir, target_is_directory=True)
    err = batch(out)
    assert "batch's own folder is not writable" in err[0] and "logs" in err[0], err
    assert [p.name for p in out.iterdir()] == ["logs"]
    (out / "logs").unlink()
    err = batch(out, "--work-dir", unwritable_dir / "work")
    assert "work folder cannot be created" in err[0], err
    assert list(out.iterdir()) == []


def test_manifest_options_are_swap_options_only_and_checked(tmp_path):
    """A manifest cannot reach the fault-injection hook or choose where files are written,
    and every option is checked as the command line checks it, before any job starts."""
    from morph3d.swap.batch import run_batch

    (tmp_path / "me.jpg").write_bytes(b"x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    marker = tmp_path / "elsewhere" / "killed"
    elsewhere = tmp_path / "elsewhere" / "work"
    bad = {
        "kill.mp4": (f"kill_worker_once={marker}", "bad job option"),
        "work.mp4": (f"work_dir={elsewhere}", "bad job option"),
        "frames.mp4": ("max_frames=0", "max_frames must be at least 1"),
        "refine.mp4": ("refine=bogus", "refine takes neural or classic"),
        "crf.mp4": ("crf=99", "crf must be between 0 and 51"),
        "res.mp4": ("work_resolution=0", "work_resolution must be at least 1"),
        "device.mp4": ("device=tpu", "unknown device"),
        "backend.mp4": ("backend=nope", "unknown landmark backend"),
        "renderer.mp4": ("renderer=nope", "unknown renderer"),
        "face.mp4": ("target_face=two", "target face takes"),
    }
    manifest = _manifest(tmp_path / "jobs.csv", [("me.jpg", "clip.mp4", out, options)
                                                 for out, (options, _) in bad.items()])
    report = run_batch(manifest, tmp_path / "out", workers=1, progress=False)
    for result in report.results:
        assert result.status == "failed" and result.attempts == 0, result
        assert bad[result.output][1] in result.error, result
    assert not (tmp_path / "elsewhere").exists()
    assert report.executor.startswith("none")  # nothing was started


def test_swap_options_validate_matches_the_command_line():
    from morph3d.swap.options import SwapOptions

    assert SwapOptions().validate() == SwapOptions()
    SwapOptions(target_face="index:2", device="cuda:1", backend="dlib", renderer="torch",
                refine="classic", crf=0, max_frames=1, work_resolution=1).validate()
    for bad in [dict(max_frames=0), dict(max_frames=-3), dict(refine="bogus"), dict(crf=52),
                dict(crf=-1), dict(work_resolution=0), dict(device="gpu"),
                dict(device="cuda:x"), dict(backend="dlib+mediapipe"), dict(crf="14"),
                dict(target_face="index:"), dict(model="")]:
        with pytest.raises(InputError) as err:
            SwapOptions(**bad).validate()
        assert "\n" not in str(err.value)
