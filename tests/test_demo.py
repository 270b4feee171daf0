"""The demo's generated target clip (morph3d.cli.demo_run.make_target_clip)."""

from __future__ import annotations

from pathlib import Path


def test_the_reanimated_head_shows_no_black_where_the_photo_saw_nothing(tmp_path: Path) -> None:
    """As the head turns, texels the photo did not see (behind the ears, under the jaw)
    come into view: they are filled, not left black. Counted: pixels near black in a frame
    where the photo there is not."""
    from morph3d.cli.demo_run import bundled_target_photo, make_target_clip
    from morph3d.io.images import read_image
    from morph3d.io.media import iter_frames
    from morph3d.model.registry import load_model

    clip = make_target_clip(tmp_path / "target.mp4", load_model("default"), log=lambda *_: None)
    photo = read_image(bundled_target_photo())
    lit = photo.max(-1) >= 40
    counts = [int(((frame.rgb.max(-1) < 16) & lit).sum()) for frame in iter_frames(clip)]
    assert len(counts) > 40
    assert max(counts) <= 20, counts
