"""Every writing command's outputs: never over an input, checked before any work, in
writable folders that exist; system errors and SIGTERM end in one line; temporary files of
killed runs are removed by the next run; an unusable --device is refused up front.

Most checks happen before any fitting, so the commands run in-process (`morph3d.cli.main`)
on tiny synthetic files; the swap that is terminated while rendering runs on real media.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_clip, one_line_error
from PIL import Image

from morph3d.cli import main
from morph3d.errors import InputError
from morph3d.io.outputs import check_outputs, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """`morph3d ARGS` in this process: (exit status, stderr)."""
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def age(path: Path, seconds: float = 600) -> Path:
    """Set `path`'s modification time `seconds` into the past."""
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A grey photo (no face: a command that fits it fails) and a short synthetic clip."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((120, 100, 3), 128, np.uint8)).save(photo)
    return {"photo": photo, "clip": grey_clip(tmp_path / "clip.mp4")}


# ----------------------------------------------------------------------------- outputs over inputs


@pytest.mark.parametrize("option", ["--preview", "--json", "--save"])
def test_fit_refuses_an_output_that_is_its_input_photo(capsys, files, option: str) -> None:
    photo = files["photo"]
    before = sha256(photo)
    rc, err = run_cli(capsys, "fit", photo, option, photo, "--quiet")
    one_line_error(rc, err, "one of the inputs")
    assert sha256(photo) == before


def test_fit_export_refuses_an_obj_whose_texture_is_the_input(capsys, tmp_path: Path) -> None:
    photo = tmp_path / "head_texture.png"  # what `--export head.obj` writes beside the .obj
    Image.fromarray(np.full((80, 80, 3), 90, np.uint8)).save(photo)
    before = sha256(photo)
    rc, err = run_cli(capsys, "fit", photo, "--export", tmp_path / "head.obj", "--quiet")
    one_line_error(rc, err, "one of the inputs", "head_texture.png")
    assert sha256(photo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head_texture.png"]


def test_fit_refuses_two_outputs_with_one_name(capsys, files, tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    rc, err = run_cli(capsys, "fit", files["photo"], "--json", out, "--save", out)
    one_line_error(rc, err, "two outputs name the same file")


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_eval_json_refuses_the_source_photo(capsys, files, tmp_path: Path, how: str) -> None:
    photo = files["photo"]
    json_path = photo
    if how == "symlink":
        json_path = tmp_path / "scores.json"
        json_path.symlink_to(photo)
    elif how == "hard link":
        json_path = tmp_path / "scores.json"
        os.link(photo, json_path)
    before = sha256(photo)
    rc, err = run_cli(capsys, "eval", "--source", photo, "--target", files["clip"],
                      "--output", files["clip"], "--json", json_path)
    one_line_error(rc, err, "one of the inputs")
    assert sha256(photo) == before


def test_eval_plots_folder_must_not_hold_an_input_under_a_plot_name(capsys, files,
                                                                    tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    source = plots / "identity.png"  # the name of the identity plot
    source.write_bytes(files["photo"].read_bytes())
    before = sha256(source)
    rc, err = run_cli(capsys, "eval", "--source", source, "--target", files["clip"],
                      "--output", files["clip"], "--plots", plots)
    one_line_error(rc, err, "one of the inputs", "identity.png")
    assert sha256(source) == before


def test_swap_refuses_a_summary_that_is_the_source(capsys, files, tmp_path: Path) -> None:
    photo = files["photo"]
    before = sha256(photo)
    rc, err = run_cli(capsys, "swap", "--source", photo, "--target", files["clip"],
                      "-o", tmp_path / "out.mp4", "--summary-json", photo, "--quiet")
    one_line_error(rc, err, "one of the inputs")
    assert sha256(photo) == before


def test_swap_refuses_preview_and_summary_with_one_name(capsys, files, tmp_path: Path) -> None:
    side = tmp_path / "side.png"
    rc, err = run_cli(capsys, "swap", "--source", files["photo"], "--target", files["clip"],
                      "-o", tmp_path / "out.mp4", "--preview", side, "--summary-json", side)
    one_line_error(rc, err, "two outputs name the same file")


@pytest.mark.parametrize("over", ["clip", "reference photo"])
def test_template_build_refuses_an_output_that_is_an_input(capsys, files, tmp_path: Path,
                                                          over: str) -> None:
    victim = files["clip"] if over == "clip" else files["photo"]
    output = tmp_path / "clip.m3dt"
    os.link(victim, output)  # another name for the same file
    before = sha256(victim)
    rc, err = run_cli(capsys, "template", "build", files["clip"], "-o", output,
                      "--target-face-ref", files["photo"], "--quiet")
    one_line_error(rc, err, "one of the inputs")
    assert sha256(victim) == before


def test_model_convert_bfm_refuses_to_write_over_its_input(capsys, tmp_path: Path) -> None:
    shape = tmp_path / "shape.npz"  # any file: the guard runs before it is read
    shape.write_bytes(b"not read")
    rc, err = run_cli(capsys, "model", "convert-bfm", shape, "-o", shape)
    one_line_error(rc, err, "one of the inputs")
    assert shape.read_bytes() == b"not read"


def test_model_build_refuses_a_missing_folder_before_building(capsys, tmp_path: Path) -> None:
    rc, err = run_cli(capsys, "model", "build", "-o", tmp_path / "missing" / "head.npz")
    one_line_error(rc, err, "output folder does not exist", "missing")
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_weights_over_a_data_file(capsys, files, tmp_path: Path) -> None:
    data = files["photo"].parent
    before = sha256(files["photo"])
    rc, err = run_cli(capsys, "train", "sr", "--data", data, "--out", files["photo"],
                      "--checkpoint", tmp_path / "ck.pt")
    one_line_error(rc, err, "one of the inputs")
    assert sha256(files["photo"]) == before


def test_train_refuses_weights_and_checkpoint_with_one_name(capsys, files,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(files["photo"].read_bytes())
    out = tmp_path / "both.npz"
    rc, err = run_cli(capsys, "train", "completion", "--data", data, "--out", out,
                      "--checkpoint", out)
    one_line_error(rc, err, "two outputs name the same file")


def test_demo_refuses_an_output_it_cannot_write_before_any_work(capsys, tmp_path: Path
                                                                 ) -> None:
    """`morph3d demo` checks all its files first: a folder where its summary goes is
    refused before the model loads or anything is fitted (nothing else is written)."""
    out_dir = tmp_path / "demo"
    (out_dir / "demo_summary.json").mkdir(parents=True)
    rc, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--quiet")
    one_line_error(rc, err, "output path is a folder", "demo_summary.json")
    assert [p.name for p in out_dir.iterdir()] == ["demo_summary.json"]


def test_demo_never_writes_over_its_input(capsys, tmp_path: Path) -> None:
    """A demo output that is another name of the photo the demo reads is refused."""
    from morph3d.io.paths import bundled_source

    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "demo.glb").symlink_to(bundled_source())
    rc, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--quiet")
    one_line_error(rc, err, "one of the inputs", "demo.glb")


def test_demo_out_dir_that_is_a_file_or_cannot_be_created(capsys, tmp_path: Path,
                                                          unwritable_dir: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    rc, err = run_cli(capsys, "demo", "--out-dir", mine, "--quiet")
    one_line_error(rc, err, "demo output folder is not a folder", str(mine))
    assert mine.read_text() == "mine"
    rc, err = run_cli(capsys, "demo", "--out-dir", unwritable_dir / "demo", "--quiet")
    one_line_error(rc, err, "demo output folder cannot be created", str(unwritable_dir))
    # The folder is still made when it can be: the demo's own files are checked inside it.
    made = tmp_path / "new" / "demo"
    (tmp_path / "new").mkdir()
    from morph3d.cli.demo_run import check_demo_paths

    check_demo_paths(made)
    assert made.is_dir()


def test_a_killed_demos_temporary_clip_is_removed_by_the_next_demo(tmp_path: Path) -> None:
    """The clip the demo makes is written through the outputs' temporary name
    (`temp_path_beside`), so the next demo's guard removes what a killed one left."""
    from morph3d.cli import demo_run as demo

    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    stale = _plant(out_dir, ".demo_target.0123456789.part.mp4")
    demo.check_demo_paths(out_dir)
    assert not stale.exists()


# ----------------------------------------------------------------------------- unwritable places


def test_swap_into_an_unwritable_folder_fails_before_any_work(capsys, files,
                                                             unwritable_dir: Path) -> None:
    rc, err = run_cli(capsys, "swap", "--source", files["photo"], "--target", files["clip"],
                      "-o", unwritable_dir / "out.mp4", "--quiet")
    one_line_error(rc, err, "not writable", str(unwritable_dir))


def test_unwritable_summary_folder_fails_before_any_work(capsys, files, tmp_path: Path,
                                                         unwritable_dir: Path) -> None:
    rc, err = run_cli(capsys, "swap", "--source", files["photo"], "--target", files["clip"],
                      "-o", tmp_path / "out.mp4", "--summary-json",
                      unwritable_dir / "summary.json", "--quiet")
    one_line_error(rc, err, "not writable")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("command", ["swap", "template"])
def test_unwritable_work_folder_fails_before_any_work(capsys, files, tmp_path: Path,
                                                      unwritable_dir: Path,
                                                      command: str) -> None:
    work = unwritable_dir / "morph3d-work"
    if command == "swap":
        args = ["swap", "--source", files["photo"], "--target", files["clip"],
                "-o", tmp_path / "out.mp4"]
    else:
        args = ["template", "build", files["clip"], "-o", tmp_path / "clip.m3dt"]
    rc, err = run_cli(capsys, *args, "--work-dir", work, "--quiet")
    one_line_error(rc, err, "work folder cannot be created", str(unwritable_dir))


def test_fit_json_into_an_unwritable_folder(capsys, files, unwritable_dir: Path) -> None:
    rc, err = run_cli(capsys, "fit", files["photo"], "--json", unwritable_dir / "f.json")
    one_line_error(rc, err, "not writable")


def test_a_system_error_during_a_command_is_one_line(capsys, monkeypatch,
                                                     unwritable_dir: Path) -> None:
    # The model cache cannot be created: an OSError from deep inside, not a user error.
    cache = unwritable_dir / "morph3d-cache"
    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    rc, err = run_cli(capsys, "model", "info")
    one_line_error(rc, err, str(cache))


def test_pyav_errors_are_os_errors() -> None:
    """What lets the CLI report an FFmpeg write failure as a system error in one line."""
    import av.error

    assert issubclass(av.error.PermissionError, OSError)
    assert issubclass(av.error.FFmpegError, Exception)
    from morph3d.cli import os_error_line

    exc = av.error.PermissionError(13, "Permission denied", "/x/out.part.mp4")
    assert os_error_line(exc) == "Permission denied: /x/out.part.mp4"


# ----------------------------------------------------------------------------- late failures first


def test_fit_export_extension_is_refused_before_fitting(capsys, files, tmp_path: Path) -> None:
    # The grey photo has no face: a fit would fail with "no face" first.
    rc, err = run_cli(capsys, "fit", files["photo"], "--export", tmp_path / "head.stl")
    one_line_error(rc, err, "head.stl", ".glb")


@pytest.mark.parametrize("option,name", [("--json", "f.json"), ("--preview", "p.png"),
                                         ("--save", "fit.npz"), ("--export", "h.glb")])
def test_fit_output_in_a_missing_folder_is_refused_and_not_created(capsys, files,
                                                                   tmp_path: Path,
                                                                   option: str,
                                                                   name: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, err = run_cli(capsys, "fit", files["photo"], option, out_dir / "missing" / name)
    one_line_error(rc, err, "output folder does not exist", "missing")
    assert list(out_dir.iterdir()) == []


def test_fit_preview_must_be_an_image_name(capsys, files, tmp_path: Path) -> None:
    rc, err = run_cli(capsys, "fit", files["photo"], "--preview", tmp_path / "p.txt")
    one_line_error(rc, err, "--preview", "p.txt")


def test_atomic_write_of_a_user_output_creates_no_folder(tmp_path: Path) -> None:
    from morph3d.io.atomic import atomic_write_text

    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x", parents=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- devices


def _unusable_cuda() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "cuda:99", "no such CUDA device"
    if torch.backends.cuda.is_built():
        return "cuda", "no CUDA device is visible"
    return "cuda", "this install of torch has no CUDA"


def test_swap_on_an_unusable_device_fails_before_any_work(capsys, files,
                                                          tmp_path: Path) -> None:
    device, message = _unusable_cuda()
    if device != "cuda":
        pytest.skip("swap --device takes cpu or cuda; this machine has CUDA")
    rc, err = run_cli(capsys, "swap", "--source", files["photo"], "--target", files["clip"],
                      "-o", tmp_path / "out.mp4", "--device", device, "--quiet")
    one_line_error(rc, err, "--device cuda", message, "available: cpu")
    assert not (tmp_path / "out.mp4").exists()


def test_swap_api_refuses_an_unusable_device_before_any_work(files, tmp_path: Path) -> None:
    """What a batch job with the option device=cuda runs."""
    from morph3d.swap.driver import swap
    from morph3d.swap.options import SwapOptions

    device, message = _unusable_cuda()
    with pytest.raises(InputError, match=message):
        swap([files["photo"]], files["clip"], tmp_path / "out.mp4",
             SwapOptions(device=device, quiet=True))


def test_check_device_accepts_cpu_and_names_bad_devices() -> None:
    from morph3d.devices import check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(InputError, match="cpu, cuda, cuda:N"):
        check_device("tpu")


# ----------------------------------------------------------------------------- temporary files


def _plant(folder: Path, name: str, old: bool = True) -> Path:
    path = folder / name
    path.write_bytes(b"half a video")
    return age(path) if old else path


def test_stale_temporary_files_of_the_output_are_removed_by_the_next_run(capsys, files,
                                                                         tmp_path: Path
                                                                         ) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stale = [_plant(out_dir, ".out.0123456789.part.mp4"),  # VideoWriter's temp name
             _plant(out_dir, ".out.mp4.ab_3x9zq.tmp"),  # atomic_write's temp name
             _plant(out_dir, ".summary.json.k2m4n6p8.tmp")]
    kept = [_plant(out_dir, ".other.0123456789.part.mp4"),  # another output's
            _plant(out_dir, ".out.0123456789.part.mkv"),  # another extension: another file
            _plant(out_dir, ".out.mp4.notatemp"),
            _plant(out_dir, ".out.fedcba9876.part.mp4", old=False),  # too young
            _plant(out_dir, "out.0123456789.part.mp4")]  # not hidden: the user's
    # The next run: the guard runs first, then the bad --crf ends it before any fitting.
    rc, err = run_cli(capsys, "swap", "--source", files["photo"], "--target", files["clip"],
                      "-o", out_dir / "out.mp4", "--summary-json", out_dir / "summary.json",
                      "--crf", 99, "--quiet")
    one_line_error(rc, err, "crf")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


_HOLD_WRITER = textwrap.dedent("""
    import sys, time
    from fractions import Fraction
    from pathlib import Path
    import numpy as np
    from morph3d.io.media import VideoInfo
    from morph3d.io.video_writer import VideoWriter
    like = VideoInfo(path=Path("synthetic"), width=32, height=32, fps=Fraction(25),
                     frame_count=50, duration_s=2.0, video_codec="h264", has_audio=False)
    writer = VideoWriter(sys.argv[1], like=like)
    writer.write(np.zeros((32, 32, 3), np.uint8), 0)
    print("writing", flush=True)
    time.sleep(120)
""")


def _writer_child(out: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _HOLD_WRITER, str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    return child


def test_temp_file_of_a_killed_writer_goes_and_a_live_writers_stays(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    live = _writer_child(out)
    try:
        (part,) = [p for p in tmp_path.iterdir() if p.name.endswith(".part.mp4")]
        age(part)
        assert remove_stale_temps(out) == []  # its writer is alive: kept, however old
        assert part.exists()
        live.send_signal(signal.SIGKILL)  # no cleanup of its own can run
        live.wait(timeout=30)
        assert part.exists()
        age(part)
        check_outputs([], [out])  # what the next run does first
        assert not part.exists()
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()


_DYING_PLOT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import PIL.PngImagePlugin  # registered first, so the stand-in below replaces it
    from matplotlib.figure import Figure
    from PIL import Image
    from morph3d.evaluate.plots import _save_figure

    def dies_half_way(im, fp, filename):  # the process killed while the PNG is written
        fp.write(b"\\x89PNG and half a plot")
        fp.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    Image.register_save("PNG", dies_half_way)
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    _save_figure(fig, Path(sys.argv[1]))
""")


def test_a_killed_plot_save_leaves_a_temporary_file_the_next_run_removes(tmp_path: Path
                                                                         ) -> None:
    """eval's plots are written through the known temporary names: what a run killed while
    writing one leaves is found and removed by the next run's guard."""
    plot = tmp_path / "identity.png"
    child = subprocess.run([sys.executable, "-c", _DYING_PLOT, str(plot)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left and not plot.exists(), left
    assert sorted(p.name for p in remove_stale_temps(plot, min_age_s=0)) == left
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.media
@pytest.mark.slow
def test_sigterm_while_rendering_removes_the_temporary_file(media_dir: Path,
                                                            tmp_path: Path) -> None:
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir()
    log = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "morph3d", "swap", "--source", str(media_dir / "mark.jpg"),
               "--target", str(media_dir / "orig.webm"), "-o", str(out_dir / "out.mp4"),
               "--max-frames", "10", "--work-dir", str(work)]
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                                env=env)
        try:
            deadline = time.monotonic() + 300
            # The rendering bar appears once the output's temporary file is open.
            while "rendering" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the swap never reached rendering"
                time.sleep(0.02)
            during = [p.name for p in out_dir.iterdir()]
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = log.read_text(errors="replace")
    assert any(name.endswith(".part.mp4") for name in during), during
    assert rc == 143, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("morph3d")]
    assert lines == ["morph3d: terminated"], stderr
    assert list(out_dir.iterdir()) == []
