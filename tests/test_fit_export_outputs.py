"""`fit VIDEO --export x.ply` writes x_0000.ply, x_0001.ply, ...: those numbered names are
checked with every other output before any work (`morph3d.io.outputs.check_outputs`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import grey_clip, one_line_error

from morph3d.cli import main
from morph3d.cli.fit import export_outputs


def fails_in_one_line(capsys: pytest.CaptureFixture[str], args: list[object],
                      *fragments: str) -> None:
    rc = main([str(a) for a in args])
    one_line_error(rc, capsys.readouterr().err, *fragments)


def test_export_outputs_name_the_ply_sequence(tmp_path: Path) -> None:
    assert export_outputs(tmp_path / "x.ply") == [tmp_path / "x.ply"]
    assert [p.name for p in export_outputs(tmp_path / "x.ply", 3)] == [
        "x_0000.ply", "x_0001.ply", "x_0002.ply"]
    assert export_outputs(tmp_path / "x.glb", 3) == [tmp_path / "x.glb"]


def test_fit_refuses_a_ply_sequence_member_that_is_the_input(capsys, tmp_path: Path) -> None:
    # The video itself is named like the third file of the sequence `--export x.ply` writes.
    clip = grey_clip(tmp_path / "clip.mp4").rename(tmp_path / "x_0002.ply")
    before = hashlib.sha256(clip.read_bytes()).hexdigest()
    fails_in_one_line(capsys, ["fit", clip, "--export", tmp_path / "x.ply", "--quiet"],
                   "one of the inputs", "x_0002.ply")
    assert hashlib.sha256(clip.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_0002.ply"]


def test_fit_refuses_a_ply_sequence_member_that_is_a_folder(capsys, tmp_path: Path) -> None:
    clip = grey_clip(tmp_path / "clip.mp4")
    (tmp_path / "x_0003.ply").mkdir()
    fails_in_one_line(capsys, ["fit", clip, "--export", tmp_path / "x.ply", "--quiet"],
                   "output path is a folder", "x_0003.ply")


def test_fit_checks_only_the_frames_it_fits(capsys, tmp_path: Path) -> None:
    # With --max-frames 2 the sequence is x_0000.ply, x_0001.ply: a folder named x_0003.ply
    # is no output, so the run goes on to the fit (which finds no face in the grey clip).
    clip = grey_clip(tmp_path / "clip.mp4")
    (tmp_path / "x_0003.ply").mkdir()
    rc = main([str(a) for a in ("fit", clip, "--export", tmp_path / "x.ply",
                                "--max-frames", "2", "--quiet")])
    err = capsys.readouterr().err
    assert rc == 2 and "x_0003.ply" not in err, err
