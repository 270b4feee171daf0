"""Faults of morph3d's own caches: a torn cache entry is a miss (noted, deleted, computed
again), a corrupt user model is a one-line error and left alone, and the default model is
built by one process at a time.

The swap runs go through the real CLI in a subprocess with a private MORPH3D_CACHE that holds
a copy of the built default model, so the shared cache is never damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MORPH3D_CACHE"] = str(cache)
    env.setdefault("GLOG_minloglevel", "2")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _morph3d(cache: Path, *args: object, timeout: float = 300
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "morph3d", *(str(a) for a in args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=_env(cache))


def _tear(path: Path) -> None:
    """Cut a file to half its size: what a full disk or an interrupted copy leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built_model() -> Path:
    """The default model as built in the normal cache (built there first if needed)."""
    from morph3d.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture
def cache(tmp_path: Path, built_model: Path) -> Path:
    """A private MORPH3D_CACHE holding a copy of the built default model."""
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    shutil.copy(built_model, root / "models" / built_model.name)
    return root


# ----------------------------------------------------------------------------- work folder


@pytest.mark.media
@pytest.mark.slow
def test_torn_work_folder_entries_are_recomputed(media_dir: Path, cache: Path,
                                                 tmp_path: Path) -> None:
    """Landmarks, clip fit and source fit torn: the next swap notes each, recomputes each
    and gives the same image as the first run."""
    work = tmp_path / "work"
    args = ["swap", "--source", media_dir / "aligned_source1.png",
            "--target", media_dir / "aligned_target1.png", "--work-dir", work,
            "--refine", "classic", "--quiet"]
    first = _morph3d(cache, *args, "-o", tmp_path / "first.png")
    assert first.returncode == 0, first.stderr
    entries = {"landmarks": next(work.glob("clip-*/landmarks.npz")),
               "clip fit": next(work.glob("clip-*/fit-*.npz")),
               "source fit": next(work.glob("source-*.npz"))}
    for path in entries.values():
        _tear(path)
    summary = tmp_path / "summary.json"
    second = _morph3d(cache, *args, "-o", tmp_path / "second.png", "--summary-json", summary)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    report = json.loads(summary.read_text())
    assert report["cached"] == []
    for what, path in entries.items():
        assert any(note.startswith(f"cached {what} could not be read")
                   for note in report["notes"]), report["notes"]
        assert f"morph3d: note: cached {what} could not be read" in second.stderr
        with np.load(path) as z:  # rewritten whole
            assert z.files
    from morph3d.media import read_image

    assert np.array_equal(read_image(tmp_path / "first.png"),
                          read_image(tmp_path / "second.png"))
    third = _morph3d(cache, *args, "-o", tmp_path / "third.png", "--summary-json", summary)
    assert third.returncode == 0, third.stderr
    assert sorted(json.loads(summary.read_text())["cached"]) == [
        "fit clip", "fit source", "landmarks"]


def test_load_cached_deletes_an_unreadable_entry_and_notes_it(tmp_path: Path) -> None:
    from fitting.params import VideoFit
    from morph3d.swap import SwapSummary, _load_npz, _save_npz, load_cached

    path = tmp_path / "landmarks.npz"
    _save_npz(path, {"ibug68": np.zeros((3, 68, 2), np.float32)})
    summary = SwapSummary(output="x")
    assert set(load_cached(path, _load_npz, "landmarks", summary)) == {"ibug68"}
    _tear(path)
    assert load_cached(path, _load_npz, "landmarks", summary) is None
    assert not path.exists()
    assert len(summary.notes) == 1 and "landmarks" in summary.notes[0]
    assert load_cached(tmp_path / "missing.npz", VideoFit.load, "clip fit", summary) is None
    assert len(summary.notes) == 1  # a plain miss is not noted


# ----------------------------------------------------------------------------- models


def test_torn_default_model_is_deleted_and_built_again(cache: Path, built_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The cache's own model file torn: a warning, the file deleted and rebuilt, loaded.
    The builder is a stand-in for the real build (a copy of its result): the full build
    takes half a minute to two minutes here and runs in the two-process test below."""
    import morph3d.models as models

    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    path = models.default_model_path()
    assert path.parent == cache / "models"
    _tear(path)
    builds: list[Path] = []

    def build(target: Path, log) -> None:
        builds.append(target)
        shutil.copy(built_model, target)

    monkeypatch.setattr(models, "_build_default", build)
    data = models.load_model_data("default")
    assert builds == [path]
    assert data.mean.shape[0] > 1000
    assert _sha(path) == _sha(built_model)
    out = capsys.readouterr().out
    assert "could not be read" in out and "building it again" in out


def test_corrupt_user_model_is_one_line_error_and_left_alone(cache: Path, built_model: Path,
                                                             tmp_path: Path) -> None:
    user = tmp_path / "mine.npz"
    shutil.copy(built_model, user)
    _tear(user)
    before = _sha(user)
    proc = _morph3d(cache, "model", "info", "--model", user)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("morph3d")]
    assert len(lines) == 1 and lines[0].startswith("morph3d: error: "), proc.stderr
    assert str(user) in lines[0]
    assert user.is_file() and _sha(user) == before


# ----------------------------------------------------------------------------- build lock

_BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from morph3d.models import build_once

    target, log, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    Path(sys.argv[4]).touch()  # ready
    while not go.exists():
        time.sleep(0.01)

    def build(path):
        with open(log, "a") as f:
            f.write(f"built {os.getpid()}\\n")
        time.sleep(1.0)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"made by {os.getpid()}")
        os.replace(tmp, path)

    build_once(target, build, "the stand-in", log=lambda m: print(m, flush=True))
    print("result:", target.read_text(), flush=True)
""")


def test_build_once_builds_in_one_process_while_the_other_waits(tmp_path: Path) -> None:
    """Two processes reach the build at the same moment: exactly one builds, the other
    waits for it and uses its result."""
    target, log, go = tmp_path / "models" / "thing.npz", tmp_path / "log.txt", tmp_path / "go"
    target.parent.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(target), str(log), str(go),
                               str(tmp_path / f"ready{k}")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
             for k in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    builds = log.read_text().splitlines()
    assert len(builds) == 1, builds
    made = target.read_text()
    assert made == f"made by {builds[0].split()[1]}"
    assert all(f"result: {made}" in out for out, _ in outs)
    assert sum("waiting for another morph3d process" in out for out, _ in outs) == 1


@pytest.mark.slow
def test_two_processes_with_an_empty_cache_build_the_default_model_once(tmp_path: Path
                                                                        ) -> None:
    """The real build: two `morph3d model info` started together on an empty cache."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "morph3d", "model", "info", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO, env=_env(cache)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("building the default head model into" in out for out, _ in outs) == 1, outs
    assert sum("waiting for another morph3d process" in out for out, _ in outs) == 1, outs
    models = [p for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    assert len(models) == 1 and models[0].suffix == ".npz"
