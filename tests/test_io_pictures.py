"""Video pictures converted to RGB where they are read (`morph3d.io.media.VideoPicture`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from morph3d.io.media import (
    RegionConverter,
    VideoInfo,
    VideoPicture,
    frame_rgb,
    iter_frames,
    iter_pictures,
)
from morph3d.io.video_writer import VideoWriter


def colour_clip(path: Path, width: int = 320, height: int = 240, frames: int = 3,
                pix_fmt: str | None = None) -> Path:
    """Smooth colour ramps with noise: sharp chroma edges everywhere, so any difference in
    the chroma's interpolation shows."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    pictures = []
    for i in range(frames):
        base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy + 40 * i) % 256], -1)
        noise = rng.integers(-60, 60, (height // 8, width // 8, 3)).repeat(8, 0).repeat(8, 1)
        pictures.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    if pix_fmt is None:
        like = VideoInfo(path=Path("synthetic"), width=width, height=height, fps=Fraction(25),
                         frame_count=frames, duration_s=frames / 25, video_codec="h264",
                         has_audio=False)
        with VideoWriter(path, like=like) as writer:
            for i, picture in enumerate(pictures):
                writer.write(picture, i)
        return path
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for picture in pictures:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def regions(height: int, width: int, count: int, seed: int = 0):
    """Random parts, and parts on every edge and corner, odd bounds included."""
    rng = np.random.default_rng(seed)
    yield from [(0, 7, 0, 9), (height - 5, height, width - 11, width), (0, height, 3, 40),
                (101, 140, width - 1, width), (1, height - 1, 1, width - 1)]
    for _ in range(count):
        y0, x0 = int(rng.integers(0, height - 1)), int(rng.integers(0, width - 1))
        yield (y0, int(rng.integers(y0 + 1, height + 1)),
               x0, int(rng.integers(x0 + 1, width + 1)))


def test_a_region_has_the_whole_pictures_bytes(tmp_path):
    """Each part converted alone equals that part of the accurate whole-frame conversion
    (a new frame's own chroma siting would move the colours by up to ~10 levels)."""
    clip = colour_clip(tmp_path / "c.mp4")
    converter = RegionConverter()
    for frame in iter_frames(clip, rgb=False):
        assert RegionConverter.supports(frame.decoded)
        whole = frame_rgb(frame.decoded)
        for y0, y1, x0, x1 in regions(*whole.shape[:2], 60):
            part = converter.convert(frame.decoded, y0, y1, x0, x1)
            np.testing.assert_array_equal(part, whole[y0:y1, x0:x1])
        picture = VideoPicture(frame.decoded, converter)
        np.testing.assert_array_equal(picture.region(-5, 50, 300, 400), whole[:50, 300:])
        assert picture.shape == whole.shape
        np.testing.assert_array_equal(np.asarray(picture), whole)
        # after the whole picture is made, a region is cut from it
        np.testing.assert_array_equal(picture.region(10, 20, 30, 40), whole[10:20, 30:40])
        # the fast conversion is near the accurate one on the whole (its chroma is not
        # interpolated: this clip's colour edges are sharp), and stays the fast one
        preview = picture.preview()
        assert np.abs(preview.astype(int) - whole).mean() <= 6
        assert not np.array_equal(preview, whole)


def test_other_pixel_formats_are_converted_whole(tmp_path):
    clip = colour_clip(tmp_path / "c444.mp4", pix_fmt="yuv444p")
    frames = list(iter_frames(clip, rgb=False))
    assert frames and not RegionConverter.supports(frames[0].decoded)
    for frame, rgb in zip(frames, (f.rgb for f in iter_frames(clip)), strict=True):
        picture = VideoPicture(frame.decoded, RegionConverter())
        np.testing.assert_array_equal(picture.region(3, 90, 5, 77), rgb[3:90, 5:77])


def test_iter_pictures_gives_a_stills_array_and_a_videos_pictures(tmp_path):
    clip = colour_clip(tmp_path / "c.mp4")
    pictures = list(iter_pictures(clip, stop=2))
    assert len(pictures) == 2 and all(isinstance(p, VideoPicture) for p in pictures)
    for picture, frame in zip(pictures, iter_frames(clip, stop=2), strict=True):
        np.testing.assert_array_equal(picture.rgb(), frame.rgb)
    still = tmp_path / "s.png"
    from morph3d.io.images import write_image

    write_image(still, pictures[0].rgb())
    (only,) = list(iter_pictures(still))
    assert isinstance(only, np.ndarray) and only.shape == (240, 320, 3)


@pytest.mark.parametrize("size", [(64, 48), (1280, 720)])
def test_a_region_of_a_whole_frame_size_is_the_whole_conversion(tmp_path, size):
    clip = colour_clip(tmp_path / "c.mp4", *size, frames=1)
    frame = next(iter(iter_frames(clip, rgb=False))).decoded
    whole = frame_rgb(frame)
    part = RegionConverter().convert(frame, 0, size[1], 1, size[0] - 1)
    np.testing.assert_array_equal(part, whole[:, 1:-1])


def test_a_rotated_clips_pictures_are_upright_and_converted_whole(tmp_path):
    """A phone's portrait tag: the picture's shape, its regions and its preview are upright,
    and the same as `iter_frames`' frames."""
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 256, (96, 64, 3), np.uint8).repeat(2, 0).repeat(2, 1)
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 192, "yuv420p"
        stream.set_display_rotation(90)
        for pts in range(2):
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for picture, frame in zip(iter_pictures(path), iter_frames(path), strict=True):
        assert not RegionConverter.supports(picture.frame)
        assert picture.shape == frame.rgb.shape == (128, 192, 3)
        np.testing.assert_array_equal(picture.region(5, 100, 17, 150), frame.rgb[5:100, 17:150])
        assert picture.preview().shape == (128, 192, 3)


def test_a_copy_asked_of_a_picture_leaves_its_rgb_alone(tmp_path):
    picture = next(iter_pictures(colour_clip(tmp_path / "c.mp4", frames=1)))
    kept = picture.rgb().copy()
    changed = np.array(picture)  # numpy asks for a copy
    changed[:] = 0
    np.testing.assert_array_equal(picture.rgb(), kept)
    assert np.asarray(picture) is picture.rgb()
    assert np.asarray(picture, np.float32).dtype == np.float32
