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
    from morph3d.model.registry import ensure_default_model

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
                                                 tmp_path: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Landmarks, clip fit and source fit torn: the next swap (a new process) notes each,
    recomputes each into the same place and gives the same image as the first run (run in
    this process: it only fills the work folder)."""
    work = tmp_path / "work"
    args = ["swap", "--source", media_dir / "aligned_source1.png",
            "--target", media_dir / "aligned_target1.png", "--work-dir", work,
            "--refine", "classic", "--quiet"]
    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    rc, err = _main(capsys, *args, "-o", tmp_path / "first.png")
    assert rc == 0, err
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
    from morph3d.io.images import read_image

    assert np.array_equal(read_image(tmp_path / "first.png"),
                          read_image(tmp_path / "second.png"))
    # Each entry was rewritten whole where a run looks it up: the swap's own loaders hit it.
    from fitting.params import VideoFit
    from morph3d.swap.cache import _load_npz, load_cached

    loaders = {"landmarks": _load_npz, "clip fit": VideoFit.load, "source fit": VideoFit.load}
    for what, path in entries.items():
        value, note = load_cached(path, loaders[what], what)
        assert value is not None and note is None, what


def test_load_cached_deletes_an_unreadable_entry_and_notes_it(tmp_path: Path) -> None:
    from fitting.params import VideoFit
    from morph3d.swap.cache import _load_npz, _save_npz, load_cached

    path = tmp_path / "landmarks.npz"
    _save_npz(path, {"ibug68": np.zeros((3, 68, 2), np.float32)})
    value, note = load_cached(path, _load_npz, "landmarks")
    assert set(value) == {"ibug68"} and note is None
    _tear(path)
    value, note = load_cached(path, _load_npz, "landmarks")
    assert value is None and not path.exists()
    assert note is not None and note.startswith("cached landmarks could not be read")
    # a plain miss is not noted
    assert load_cached(tmp_path / "missing.npz", VideoFit.load, "clip fit") == (None, None)


@pytest.mark.media
def test_torn_extracted_template_clip_is_extracted_again(media_dir: Path, cache: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The clip a template embeds is extracted once into the work folder; a torn copy there
    is not used: the next opening extracts it whole again."""
    from morph3d.swap.options import SwapOptions
    from morph3d.swap.template import build_template, open_template

    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    work = tmp_path / "work"
    template = tmp_path / "still.m3dt"
    build_template(media_dir / "aligned_target1.png", template,
                   SwapOptions(work_dir=work, quiet=True))
    clip = open_template(template, work).clip
    whole = _sha(clip)
    _tear(clip)
    again = open_template(template, work).clip
    assert again == clip and _sha(again) == whole


# ----------------------------------------------------------------------------- models


def test_torn_default_model_is_deleted_and_built_again(cache: Path, built_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    """The cache's own model file torn: a warning, the file deleted and rebuilt, loaded.
    The builder is a stand-in for the real build (a copy of its result): the full build
    takes half a minute to two minutes here and runs in the two-process test below."""
    import morph3d.model.registry as models

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


def _main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """`morph3d ARGS` in this process (the checks under test run before any fitting), with
    Pillow's decompression-bomb warning an error: (exit status, stderr)."""
    import warnings

    from PIL import Image

    from morph3d.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_corrupt_user_model_is_one_line_error_and_left_alone(cache: Path, built_model: Path,
                                                             tmp_path: Path, capsys,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    user = tmp_path / "mine.npz"
    shutil.copy(built_model, user)
    _tear(user)
    before = _sha(user)
    rc, err = _main(capsys, "model", "info", "--model", user)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("morph3d")]
    assert len(lines) == 1 and lines[0].startswith("morph3d: error: "), err
    assert str(user) in lines[0]
    assert user.is_file() and _sha(user) == before


# ----------------------------------------------------------------------------- build lock

_DEFAULT_MODEL_USER = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    import morph3d.model.registry as models
    from morph3d.cli import main

    built, go, builds = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[4])

    def build(path, log):  # the real build's result, taking a while to appear
        with open(builds, "a") as f:
            f.write(f"built by {os.getpid()}\\n")
        time.sleep(1.0)
        tmp = path.with_name(".building.npz")
        shutil.copy(built, tmp)
        tmp.replace(path)

    models._build_default = build
    Path(sys.argv[3]).touch()  # ready
    while not go.exists():
        time.sleep(0.01)
    sys.exit(main(["model", "info", "--json"]))
""")


def test_two_commands_on_an_empty_cache_build_the_default_model_once(tmp_path: Path,
                                                                     built_model: Path
                                                                     ) -> None:
    """Two `morph3d model info` reach the default model of an empty cache at the same
    moment: exactly one builds it (through the command's own path: cache folder, lock,
    build, load), the other waits for it and loads its result. The builder is a stand-in
    that copies the real build's result; the real build runs in the test below."""
    cache, go, builds = tmp_path / "cache", tmp_path / "go", tmp_path / "builds.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _DEFAULT_MODEL_USER, str(built_model),
                               str(go), str(tmp_path / f"ready{k}"), str(builds)],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(cache))
             for k in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(builds.read_text().splitlines()) == 1
    assert sum("building the default head model into" in out for out, _ in outs) == 1, outs
    assert sum("waiting for another morph3d process" in out for out, _ in outs) == 1, outs
    models = [p for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    assert len(models) == 1 and _sha(models[0]) == _sha(built_model)
    assert all(json.loads(out[out.index("{"):])["vertices"] > 1000 for out, _ in outs)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MORPH3D_SLOW_TESTS") != "1",
                    reason="builds the default model for real (half a minute to minutes); "
                           "MORPH3D_SLOW_TESTS=1 runs it")
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


# ----------------------------------------------------------------------------- large images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says `width` x `height` (no pixel data): what a reader sees first."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_images_above_the_pixel_limit_are_refused_from_the_header(tmp_path: Path) -> None:
    from morph3d.errors import InputError
    from morph3d.io.limits import MAX_IMAGE_PIXELS, check_image_pixels

    check_image_pixels(_png_header_only(tmp_path / "ok.png", 8000, 8000))
    for w, h in ((12000, 10000), (20000, 20000)):  # above the limit; above Pillow's error
        assert w * h > MAX_IMAGE_PIXELS
        with pytest.raises(InputError, match="too large"):
            check_image_pixels(_png_header_only(tmp_path / f"{w}.png", w, h))
    (tmp_path / "text.png").write_text("not an image")
    check_image_pixels(tmp_path / "text.png")  # left to the reader's own error


@pytest.mark.parametrize("size", [(12000, 10000), (20000, 20000)])
def test_read_image_and_probe_refuse_a_huge_image_before_decoding(tmp_path: Path,
                                                                  size: tuple[int, int]
                                                                  ) -> None:
    """Above morph3d's limit (and above Pillow's own hard limit): refused from the header in
    one line. The file holds no pixels, so a reader that decoded first would fail
    otherwise, and Pillow's decompression-bomb warning would be an error here."""
    import warnings

    from morph3d.errors import InputError
    from morph3d.io.images import read_image
    from morph3d.io.media import probe_video

    path = _png_header_only(tmp_path / "huge.png", *size)
    said = f"{size[0]}x{size[1]} (120 MP)" if size[0] == 12000 else "over 179 MP"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for read in (read_image, probe_video):
            with pytest.raises(InputError, match="too large") as info:
                read(path)
            assert said in str(info.value) and "the limit is 100 MP" in str(info.value)


def test_an_image_under_the_limit_raises_no_pillow_warning(tmp_path: Path) -> None:
    """95 MP: under morph3d's limit, over Pillow's warning threshold. The reader goes on to
    decode it (and finds no pixels: an InputError of its own) without Pillow's warning."""
    import warnings

    from morph3d.errors import InputError
    from morph3d.io.images import read_image
    from morph3d.io.media import probe_video

    path = _png_header_only(tmp_path / "big.png", 10000, 9500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for read in (read_image, probe_video):
            with pytest.raises(InputError, match="cannot read image"):
                read(path)


def test_read_image_makes_no_full_size_copy_of_an_upright_rgb_photo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RGB photo without EXIF orientation is decoded and copied into the array, nothing
    more (`Image.copy` counted, still run); a turned one still comes back upright."""
    from PIL import Image

    from morph3d.io.images import read_image
    from morph3d.io.media import probe_video

    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "turned.png", exif=exif.tobytes())
    copies: list[tuple[int, int]] = []
    real_copy = Image.Image.copy

    def counted_copy(self: Image.Image) -> Image.Image:
        copies.append(self.size)
        return real_copy(self)

    monkeypatch.setattr(Image.Image, "copy", counted_copy)
    assert np.array_equal(read_image(tmp_path / "plain.png"), rgb)
    assert copies == []
    assert np.array_equal(read_image(tmp_path / "turned.png"), np.rot90(rgb, k=-1))
    info = probe_video(tmp_path / "turned.png")
    assert (info.width, info.height) == (30, 40)


@pytest.mark.media
def test_swap_refuses_a_huge_source_photo_in_one_line(media_dir: Path, cache: Path,
                                                       tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setenv("MORPH3D_CACHE", str(cache))
    huge = _png_header_only(tmp_path / "huge.png", 12000, 10000)
    rc, err = _main(capsys, "swap", "--source", huge, "--target",
                    media_dir / "aligned_target1.png", "-o", tmp_path / "out.png",
                    "--work-dir", tmp_path / "work", "--quiet")
    assert rc == 2, err
    assert "Traceback" not in err and "DecompressionBomb" not in err
    lines = [line for line in err.splitlines() if line.startswith("morph3d")]
    assert len(lines) == 1 and "too large" in lines[0] and "120 MP" in lines[0], err
    assert not (tmp_path / "out.png").exists()


def test_face_crop_maps_points_and_cameras_back_to_the_full_image() -> None:
    """A crop scaled by 1/4: a point drawn in the full image is found at the mapped place in
    the crop, and the crop's camera projects like the full camera followed by the map."""
    from fitting.faces import face_crop
    from fitting.params import CameraParams
    from fitting.photo import photometric_view

    image = np.zeros((3000, 4000, 3), np.uint8)
    image[1498:1503, 2198:2203] = 255  # a 5 x 5 dot centred on (2200, 1500)
    face = np.array([[1800.0, 1200.0], [2600.0, 1900.0]])  # a face 800 px wide
    crop = face_crop(image, face, face_width=200)
    assert crop.sx == pytest.approx(0.25, abs=2e-3) and crop.sy == pytest.approx(0.25, abs=2e-3)
    assert max(crop.image.shape[:2]) <= 2 * 800 * 0.25 + 4
    ys, xs = np.nonzero(crop.image[..., 0] > 0)
    weights = crop.image[ys, xs, 0].astype(float)
    centre = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    assert np.allclose(crop.to_full(centre), [2200, 1500], atol=0.5)

    full_cam = CameraParams.default_for(4000, 3000)
    view, cam = photometric_view(image, {"mediapipe478": face}, full_cam)
    same = face_crop(image, face)  # the crop photometric_view takes
    assert view.shape == same.image.shape == (cam.height, cam.width, 3)
    points = np.array([[10.0, -20.0, 600.0], [-35.0, 40.0, 580.0]])  # camera space, mm
    full_px = points[:, :2] / points[:, 2:] * [full_cam.fx, full_cam.fy] + [full_cam.cx,
                                                                            full_cam.cy]
    crop_px = points[:, :2] / points[:, 2:] * [cam.fx, cam.fy] + [cam.cx, cam.cy]
    assert np.allclose(same.to_full(crop_px), full_px, atol=1e-6)
    small = image[:1000, :1500]
    assert photometric_view(small, {"mediapipe478": face / 3}, full_cam) == (small, full_cam)


def test_paste_back_replaces_only_what_the_swap_changed() -> None:
    from fitting.faces import face_crop
    from morph3d.swap.driver import paste_back

    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (2400, 3200, 3), np.uint8)
    original = full.copy()
    crop = face_crop(full, np.array([[1400.0, 900.0], [2000.0, 1500.0]]), face_width=300)
    swapped = crop.image.copy()
    cy, cx = (s // 2 for s in swapped.shape[:2])
    yy, xx = np.mgrid[: swapped.shape[0], : swapped.shape[1]]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 60 ** 2
    swapped[disc] = (20, 200, 90)
    paste_back(full, crop, swapped)
    centre = crop.to_full(np.array([cx, cy], float)).round().astype(int)
    assert (full[centre[1] - 50:centre[1] + 50, centre[0] - 50:centre[0] + 50]
            == (20, 200, 90)).all()
    radius = 60 / crop.sx
    yy, xx = np.mgrid[: full.shape[0], : full.shape[1]]
    far = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 > (radius + 8 / crop.sx) ** 2
    assert np.array_equal(full[far], original[far])
    assert not np.array_equal(full, original)


@pytest.mark.media
def test_bounded_detection_is_detect_faces_up_to_the_limit_and_close_above(
        media_dir: Path) -> None:
    import cv2

    from fitting.detection import DETECT_MAX_SIDE, detect_faces, detect_faces_bounded
    from morph3d.io.images import read_image

    photo = read_image(media_dir / "mark.jpg")
    plain, bounded = detect_faces(photo), detect_faces_bounded(photo)
    for scheme in plain.landmarks:
        assert np.array_equal(plain.landmarks[scheme], bounded.landmarks[scheme])
    big = cv2.resize(photo, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    assert max(big.shape[:2]) > DETECT_MAX_SIDE
    found = detect_faces_bounded(big)
    assert len(found) == 1 and found.image_size == big.shape[:2]
    expected = (plain.landmarks["ibug68"][0] + 0.5) * 4 - 0.5
    width = np.ptp(expected[:, 0])
    error = np.linalg.norm(found.landmarks["ibug68"][0] - expected, axis=1)
    assert error.mean() < 0.02 * width, error.mean()


@pytest.mark.media
@pytest.mark.slow
def test_swap_between_large_images_works_on_the_face_and_keeps_the_rest(
        media_dir: Path, cache: Path, tmp_path: Path) -> None:
    """A source and a target above the detection limit: the target comes back at its size,
    swapped where the face is and bit for bit the same away from it."""
    import cv2

    from fitting.detection import DETECT_MAX_SIDE, detect_faces
    from morph3d.io.images import read_image, write_image

    source = cv2.resize(read_image(media_dir / "mark.jpg"), None, fx=3, fy=3,
                        interpolation=cv2.INTER_CUBIC)
    target = cv2.resize(read_image(media_dir / "khabenskii.jpg"), None, fx=2, fy=2,
                        interpolation=cv2.INTER_CUBIC)
    assert min(max(source.shape[:2]), max(target.shape[:2])) > DETECT_MAX_SIDE
    # Uncompressed inputs: writing and reading them costs nothing next to the swap.
    write_image(tmp_path / "source.bmp", source)
    write_image(tmp_path / "target.bmp", target)
    summary = tmp_path / "summary.json"
    proc = _morph3d(cache, "swap", "--source", tmp_path / "source.bmp", "--target",
                    tmp_path / "target.bmp", "-o", tmp_path / "out.png", "--work-dir",
                    tmp_path / "work", "--refine", "classic", "--quiet", "--summary-json",
                    summary, timeout=600)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(summary.read_text())["notes"]
    assert any("crop around the face" in note for note in notes), notes
    out = read_image(tmp_path / "out.png")
    assert out.shape == target.shape
    small = cv2.resize(target, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    points = (detect_faces(small).landmarks["mediapipe478"][0] + 0.5) * 2 - 0.5
    lo, hi = points.min(0), points.max(0)
    centre, half = (lo + hi) / 2, float(max(hi - lo)) * 1.6
    ys, xs = np.mgrid[: out.shape[0], : out.shape[1]]
    far = (np.abs(xs - centre[0]) > half) | (np.abs(ys - centre[1]) > half)
    assert far.mean() > 0.2
    assert np.array_equal(out[far], target[far])
    face = (np.abs(xs - centre[0]) < half / 4) & (np.abs(ys - centre[1]) < half / 4)
    assert np.abs(out[face].astype(int) - target[face]).mean() > 3
