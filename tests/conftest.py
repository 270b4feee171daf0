"""Shared pytest fixtures."""

from pathlib import Path

import pytest

# Real test media lives beside the repository (../shared/media) on development machines
# and in CI, never inside it; tests that need it skip when it is absent.
MEDIA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "media"


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The read-only real-media folder; skips the test when it is missing."""
    if not MEDIA_DIR.is_dir():
        pytest.skip(f"real test media not found at {MEDIA_DIR}")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def model():
    """The default head model (`load_model("default")`), loaded once for the whole run.
    Shared by every test that asks for it: a test must not change it (move, retype or
    edit it); one that needs to makes its own with `load_model`."""
    from morph3d.model.registry import load_model

    return load_model("default")


def corrupted_copy(weights: Path, manifest: Path, folder: Path) -> Path:
    """A copy of shipped weights (and their manifest) in `folder` with one byte flipped in
    the middle: what a damaged download or disk gives. Returns the copy's path."""
    import shutil

    copy = folder / weights.name
    shutil.copy(weights, copy)
    shutil.copy(manifest, folder / manifest.name)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    return copy


def one_line_error(rc: int, stderr: str, *fragments: str) -> str:
    """Assert a command failed the way users are promised: exit status 2, no traceback,
    exactly one `morph3d: error: ...` line holding every fragment. Returns that line."""
    assert "Traceback" not in stderr, stderr
    assert rc == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("morph3d")]
    assert len(lines) == 1 and lines[0].startswith("morph3d: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def grey_clip(path: Path, frames: int = 4, size: int = 64) -> Path:
    """A short H.264 clip of flat grey frames (no face: a fit of it fails after decoding),
    written to `path`."""
    from fractions import Fraction

    import numpy as np

    from morph3d.io.media import VideoInfo
    from morph3d.io.video_writer import VideoWriter

    like = VideoInfo(path=Path("synthetic"), width=size, height=size, fps=Fraction(25),
                     frame_count=frames, duration_s=frames / 25, video_codec="h264",
                     has_audio=False)
    with VideoWriter(path, like=like) as writer:
        for i in range(frames):
            writer.write(np.full((size, size, 3), 40 * i, np.uint8), i)
    return path


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A real folder this process cannot create files in: a read-only folder for an
    ordinary user; for root (who ignores permission bits) sysfs's top folder."""
    import os
    import tempfile

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        if not candidate.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no unwritable folder available to test with")
