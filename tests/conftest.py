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
