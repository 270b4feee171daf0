"""Clip templates and batch renders (local worker processes and a real local Ray runtime).

The media tests use tiny jobs (the first 8 frames of orig.webm); the template and the source
fits are built once per module (a shared work directory caches the fits).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from morph3d.errors import InputError
from morph3d.swap.batch import run_batch
from morph3d.swap.batch_manifest import read_jobs
from morph3d.swap.batch_outputs import REPORT_CSV, REPORT_JSON, STATE_DIR, log_path, remove_partial
from morph3d.swap.template import _template_id, build_template, open_template, read_manifest

FRAMES = 8
JOB_OPTIONS = f"max_frames={FRAMES};refine=classic;work_resolution=128"
REPO = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target", "output", "options"])
        writer.writerows(rows)
    return path


def decoded_frames(path: Path) -> np.ndarray:
    from morph3d.io.media import iter_frames

    return np.stack([f.rgb for f in iter_frames(path)])


# ------------------------------------------------------------------------- manifests (no media)


def test_read_jobs_rows_options_and_problems(tmp_path):
    (tmp_path / "me.jpg").write_bytes(b"x")
    manifest = write_csv(tmp_path / "jobs.csv", [
        ("me.jpg;other/me2.jpg", "clip.m3dt", "a.mp4", "target_face=1; refine=classic"),
        ("me.jpg", "clip.mp4", "../escape.mp4", ""),
        ("me.jpg", "clip.mp4", "b.mp4", "colour=red"),
        ("me.jpg", "clip.mp4", "c.mp4", "max_frames=ten"),
        ("me.jpg", "clip.mp4", "d.txt", ""),
        ("", "", "", ""),
    ])
    jobs = read_jobs(manifest)
    assert [j.output for j in jobs] == ["a.mp4", "../escape.mp4", "b.mp4", "c.mp4", "d.txt"]
    a = jobs[0]
    assert a.row == 2 and not a.problem
    assert a.sources == [tmp_path / "me.jpg", tmp_path / "other" / "me2.jpg"]
    assert a.target == tmp_path / "clip.m3dt"
    assert a.options == {"target_face": "1", "refine": "classic"}
    assert "plain file name" in jobs[1].problem
    assert "colour=red" in jobs[2].problem
    assert "max_frames" in jobs[3].problem
    assert "must end in" in jobs[4].problem
    assert log_path(tmp_path, "../escape.mp4").parent == tmp_path / "logs"

    write_csv(tmp_path / "dup.csv", [("me.jpg", "c.mp4", "x.mp4", ""),
                                     ("me.jpg", "c.mp4", "x.mp4", "")])
    with pytest.raises(InputError, match="both write x.mp4"):
        read_jobs(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("photo,clip\nme.jpg,c.mp4\n")
    with pytest.raises(InputError, match="lacks the column"):
        read_jobs(tmp_path / "cols.csv")


def test_job_options_are_the_user_settable_swap_options(tmp_path):
    """The manifest's options are SwapOptions' fields less the batch's own; options are
    frozen and checked when made; every target-face form of the grammar reads from a row."""
    import dataclasses

    from fitting.choice import FaceChoice
    from morph3d.swap.batch_manifest import JOB_OPTIONS
    from morph3d.swap.options import SwapOptions

    names = [f.name for f in dataclasses.fields(SwapOptions)]
    assert list(JOB_OPTIONS) == [n for n in names if n not in ("quiet", "preview", "work_dir")]
    assert "resume" not in names
    assert JOB_OPTIONS["crf"] is int
    assert JOB_OPTIONS["target_face"]("all") == FaceChoice("all")
    assert JOB_OPTIONS["source_face"]("1") == FaceChoice("index", 1)
    options = SwapOptions(target_face="2")
    assert options.target_face == FaceChoice("index", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.crf = 3  # type: ignore[misc]
    assert dataclasses.replace(options, target_face="center").target_face == FaceChoice("center")
    with pytest.raises(InputError, match="crf must be between"):
        dataclasses.replace(options, crf=99)
    with pytest.raises(InputError, match="target face takes"):
        SwapOptions(target_face="biggest")
    (tmp_path / "me.jpg").write_bytes(b"x")
    faces = ("largest", "1", "center", "10,20", "two")
    manifest = write_csv(tmp_path / "jobs.csv", [("me.jpg", "clip.mp4", f"{k}.mp4",
                                                  f"target_face={face}")
                                                 for k, face in enumerate(faces)])
    problems = [job.problem for job in read_jobs(manifest)]
    assert problems[:4] == ["", "", "", ""]
    assert "target face takes largest, N (0 = largest), center" in problems[4]


@pytest.mark.parametrize("command", ["swap", "template"])
def test_cli_target_face_grammar(tmp_path, capsys, command):
    """`swap` and `template build` read --target-face with the one grammar: a bad one fails
    in one line before any work, a good one (center) goes on to the inputs."""
    from morph3d.cli import main

    for name in ("me.jpg", "clip.mp4"):
        (tmp_path / name).write_bytes(b"not media")
    args = (["swap", "-s", str(tmp_path / "me.jpg"), "-t", str(tmp_path / "clip.mp4"),
             "-o", str(tmp_path / "out.mp4"), "--quiet"] if command == "swap" else
            ["template", "build", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "c.m3dt"),
             "--quiet", "--work-dir", str(tmp_path / "work")])
    assert main([*args, "--target-face", "biggest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("morph3d: error: target face takes largest, N (0 = largest), center, a "
                   "pixel X,Y, a reference photo REF.jpg or all, not 'biggest'")
    assert main([*args, "--target-face", "center"]) == 2  # the clip is not media
    err = capsys.readouterr().err.strip()
    assert err.startswith("morph3d: error:") and "target face" not in err
    assert "\n" not in err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "c.m3dt").exists()


def test_failing_rows_are_reported_without_running_anything(tmp_path):
    manifest = write_csv(tmp_path / "jobs.csv", [
        ("missing.jpg", "missing.mp4", "a.mp4", ""),
        ("missing.jpg", "missing.mp4", "b.mp4", "bogus=1"),
    ])
    report = run_batch(manifest, tmp_path / "out", workers=1, progress=False)
    assert [(r.output, r.status) for r in report.results] == [("a.mp4", "failed"),
                                                              ("b.mp4", "failed")]
    assert "input not found" in report.results[0].error
    saved = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert saved["counts"] == {"failed": 2}
    assert "bogus" in Path(saved["jobs"][1]["log"]).read_text()


def test_partial_outputs_are_removed(tmp_path):
    leftovers = [".a.0123456789.part.mp4", ".a.mp4.k2j3h4.tmp"]
    keep = ["a.mp4", ".ab.0123456789.part.mp4", "b.mp4"]
    for name in leftovers + keep:
        (tmp_path / name).write_bytes(b"x")
    remove_partial(tmp_path, "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# ------------------------------------------------------------------------ real media fixtures


@pytest.fixture(scope="module")
def media(media_dir) -> dict[str, Path]:
    return {"clip": media_dir / "orig.webm", "mark": media_dir / "mark.jpg",
            "khab": media_dir / "khabenskii.jpg"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Fit cache shared by the module: the template's clip fit and the two source fits."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def template(media, work, tmp_path_factory) -> Path:
    from morph3d.swap.options import SwapOptions

    path = tmp_path_factory.mktemp("tpl") / "orig.m3dt"
    build_template(media["clip"], path, SwapOptions(max_frames=FRAMES, work_dir=work,
                                                    quiet=True))
    return path


# ---------------------------------------------------------------------------------- templates


@pytest.mark.media
def test_template_contents_and_checksums(template, media, work, tmp_path):
    m = read_manifest(template)
    assert m["format_version"] == 1 and m["template_id"] == _template_id(m)
    assert (m["video"]["width"], m["video"]["height"]) == (464, 560)
    assert m["video"]["frame_count"] == 66 and m["video"]["has_audio"] is False
    assert m["clip"]["embedded"] and m["clip"]["sha256"] == sha256(media["clip"])
    assert m["fit"]["frames"] == FRAMES and m["model"]["name"] == "default"
    opened = open_template(template, work)
    assert sha256(opened.clip) == m["clip"]["sha256"]
    assert opened.fit.num_frames == FRAMES and opened.fit.faces.valid.all()
    assert np.isfinite(opened.fit.landmarks["ibug68"]).all()
    assert opened.fit.landmarks["mediapipe478"].shape == (FRAMES, 478, 2)

    # One flipped byte inside the fit member: caught by the member's checksum.
    data = bytearray(template.read_bytes())
    with zipfile.ZipFile(template) as z:
        info = z.getinfo("fit.npz")
    data[info.header_offset + 30 + len(info.filename) + 1000] ^= 0xFF
    bad = tmp_path / "flipped.m3dt"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt") as err:
        open_template(bad, work)
    assert "\n" not in str(err.value)
    truncated = tmp_path / "truncated.m3dt"
    truncated.write_bytes(template.read_bytes()[:5000])
    with pytest.raises(InputError, match="corrupt"):
        open_template(truncated, work)
    not_zip = tmp_path / "text.m3dt"
    not_zip.write_text("hello")
    with pytest.raises(InputError, match="corrupt"):
        open_template(not_zip, work)

    # A template from a future format is refused, by version.
    future = tmp_path / "future.m3dt"
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(future, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(payload)
                manifest["format_version"] = 99
                payload = json.dumps(manifest).encode()
            dst.writestr(item, payload)
    with pytest.raises(InputError, match="format version 99"):
        open_template(future, work)


@pytest.mark.media
def test_referenced_clip_must_be_unchanged(media, work, tmp_path):
    from morph3d.swap.options import SwapOptions

    clip = tmp_path / "clip.webm"
    clip.write_bytes(media["clip"].read_bytes())
    path = tmp_path / "ref.m3dt"
    manifest = build_template(clip, path, SwapOptions(max_frames=FRAMES, work_dir=work,
                                                      quiet=True), embed_clip=False)
    assert not manifest["clip"]["embedded"]
    assert zipfile.ZipFile(path).namelist() == ["manifest.json", "fit.npz"]
    assert open_template(path, work).clip == clip
    with open(clip, "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="different clip.webm"):
        open_template(path, work)
    clip.unlink()
    with pytest.raises(InputError, match="needs its clip"):
        open_template(path, work)


@pytest.mark.media
def test_swap_with_template_skips_clip_fitting_and_matches(template, media, work, tmp_path,
                                                          capsys):
    from morph3d.cli import main
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    options = SwapOptions(max_frames=FRAMES, work_dir=work, quiet=True, refine="classic",
                          work_resolution=128)
    via_template = swap([media["mark"]], template, tmp_path / "t.mp4", options)
    via_clip = swap([media["mark"]], media["clip"], tmp_path / "c.mp4", options)
    assert "template" in via_template.cached
    assert "landmarks" not in via_template.seconds and "fit clip" not in via_template.seconds
    assert via_template.frames == via_template.frames_swapped == FRAMES
    # The clip path found the same fit in the cache the template was built from.
    assert {"landmarks", "fit clip"} <= set(via_clip.cached)
    a, b = decoded_frames(tmp_path / "t.mp4"), decoded_frames(tmp_path / "c.mp4")
    assert a.shape == b.shape == (FRAMES, 560, 464, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0

    # A model other than the template's is refused, in one line, before any fitting.
    other = tmp_path / "other-model.m3dt"
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "manifest.json":
                manifest = json.loads(payload)
                manifest["model"]["build"] = "some-other-build"
                manifest["template_id"] = _template_id(manifest)
                payload = json.dumps(manifest).encode()
            dst.writestr(item, payload)
    code = main(["swap", "-s", str(media["mark"]), "-t", str(other), "-o",
                 str(tmp_path / "x.mp4"), "--work-dir", str(work), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fitted with model" in err[0], err
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------------------ batches


def _jobs(folder: Path, template: Path, media: dict[str, Path]) -> Path:
    bad = folder / "notes.txt"
    bad.write_text("this is not a photo\n")
    return write_csv(folder / "jobs.csv", [
        (str(media["mark"]), str(template), "mark.mp4", JOB_OPTIONS),
        (str(media["khab"]), str(template), "khab.mp4", JOB_OPTIONS),
        ("notes.txt", str(template), "bad.mp4", JOB_OPTIONS),
        (str(media["mark"]), str(media["clip"]), "mark_clip.mp4", JOB_OPTIONS),
    ])


def _outputs(out: Path) -> list[str]:
    """Everything in the output folder but the bookkeeping (no stray temporary files)."""
    return sorted(p.name for p in out.iterdir() if p.name not in (STATE_DIR, "logs"))


EXPECTED_FILES = sorted([REPORT_CSV, REPORT_JSON, "khab.mp4", "mark.mp4", "mark_clip.mp4"])


@pytest.mark.media
@pytest.mark.slow
def test_batch_local_workers_bad_job_fails_alone_and_resume(template, media, work, tmp_path):
    from morph3d.io.media import probe_video

    manifest = _jobs(tmp_path, template, media)
    out = tmp_path / "out"
    report = run_batch(manifest, out, workers=2, work_dir=work, progress=False)
    status = {r.output: r for r in report.results}
    assert {k: r.status for k, r in status.items()} == {
        "mark.mp4": "done", "khab.mp4": "done", "bad.mp4": "failed", "mark_clip.mp4": "done"}
    assert "notes.txt" in status["bad.mp4"].error
    assert _outputs(out) == EXPECTED_FILES
    for name in ("mark.mp4", "khab.mp4", "mark_clip.mp4"):
        assert probe_video(out / name).frame_count == FRAMES
        assert status[name].sha256 == sha256(out / name)
        assert "done in" in log_path(out, name).read_text()
    assert "notes.txt" in log_path(out, "bad.mp4").read_text()
    rows = list(csv.DictReader(open(out / REPORT_CSV)))
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
    assert json.loads((out / REPORT_JSON).read_text())["counts"] == {"done": 3, "failed": 1}

    # Resume: finished outputs are skipped (files untouched), the failed job runs again.
    before = {n: ((out / n).stat().st_mtime_ns, sha256(out / n)) for n in
              ("mark.mp4", "khab.mp4", "mark_clip.mp4")}
    again = run_batch(manifest, out, workers=2, work_dir=work, progress=False)
    assert [r.status for r in again.results] == ["skipped", "skipped", "failed", "skipped"]
    assert before == {n: ((out / n).stat().st_mtime_ns, sha256(out / n)) for n in before}

    # A damaged output no longer matches its recorded checksum: only that job is redone.
    (out / "khab.mp4").write_bytes((out / "khab.mp4").read_bytes()[:2000])
    third = run_batch(manifest, out, workers=2, work_dir=work, progress=False)
    assert [r.status for r in third.results] == ["skipped", "done", "failed", "skipped"]
    assert probe_video(out / "khab.mp4").frame_count == FRAMES
    assert _outputs(out) == EXPECTED_FILES


@pytest.mark.media
@pytest.mark.slow
def test_batch_local_worker_killed_mid_job_is_retried(template, media, work, tmp_path):
    """SIGKILL the worker process running a job (from outside, as an OOM killer would)."""
    manifest = write_csv(tmp_path / "jobs.csv", [
        (str(media["mark"]), str(template), "mark.mp4", JOB_OPTIONS),
        (str(media["khab"]), str(template), "khab.mp4", JOB_OPTIONS)])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "morph3d", "batch", str(manifest), "--out-dir", str(out),
         "--workers", "1", "--work-dir", str(work), "--quiet"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = log_path(out, "mark.mp4")
    pid = None
    deadline = time.monotonic() + 120
    while pid is None and time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and " pid " in (text := log.read_text()):
            pid = int(text.split(" pid ")[1].split()[0])
        time.sleep(0.05)
    assert pid is not None, proc.communicate()
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    report = {r["output"]: r for r in json.loads((out / REPORT_JSON).read_text())["jobs"]}
    assert report["mark.mp4"]["status"] == "done" and report["mark.mp4"]["attempts"] == 2
    assert report["khab.mp4"]["status"] == "done" and report["khab.mp4"]["attempts"] == 1
    assert log.read_text().count("=== ") == 2
    assert _outputs(out) == sorted([REPORT_CSV, REPORT_JSON, "khab.mp4", "mark.mp4"])


@pytest.mark.media
@pytest.mark.slow
def test_batch_on_ray(template, media, work, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'morph3d[ray]')")
    from morph3d.io.media import probe_video

    marker = tmp_path / "killed-once"
    manifest = _jobs(tmp_path, template, media)
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_batch(manifest, out, ray_address="auto", work_dir=work, progress=False,
                           _kill_worker_once=("mark.mp4", marker))
    finally:
        ray.shutdown()
    status = {r.output: r for r in report.results}
    assert {k: r.status for k, r in status.items()} == {
        "mark.mp4": "done", "khab.mp4": "done", "bad.mp4": "failed", "mark_clip.mp4": "done"}
    assert report.executor.startswith("ray")
    # The worker running mark.mp4 killed itself once; Ray ran the task again.
    assert marker.is_file() and status["mark.mp4"].attempts == 2
    assert "notes.txt" in status["bad.mp4"].error
    assert _outputs(out) == EXPECTED_FILES
    for name in ("mark.mp4", "khab.mp4", "mark_clip.mp4"):
        assert probe_video(out / name).frame_count == FRAMES
        assert status[name].sha256 == sha256(out / name)
