"""Tests for morph3d.io.media on real media (skipped without ../shared/media)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from morph3d import __version__
from morph3d.errors import InputError
from morph3d.io.images import is_image_path, read_image, synthetic_metadata, write_image
from morph3d.io.media import DecodeReport, VideoInfo, iter_frames, probe_video
from morph3d.io.video_writer import VideoWriter

pytestmark = pytest.mark.media


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _audio_packets(path: Path, limit: int | None = None) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        out = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            out.append(bytes(packet))
            if limit is not None and len(out) >= limit:
                break
        return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def orig_roundtrip(media_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """orig.webm (all 66 frames) decoded and re-encoded to mp4 with the writer."""
    src = media_dir / "orig.webm"
    info = probe_video(src)
    frames = [f.rgb for f in iter_frames(src)]
    out = tmp_path_factory.mktemp("orig") / "swapped.mp4"
    with VideoWriter(out, like=info, audio_from=src, metadata={"source_photo": "mark.jpg"}) as w:
        for index, rgb in enumerate(frames):
            w.write(rgb, index)
    return info, frames, out


@pytest.fixture(scope="module")
def nggyup_clip(media_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The first 30 frames of nggyup.mp4 written with the matching stretch of audio."""
    src = media_dir / "nggyup.mp4"
    info = probe_video(src)
    out = tmp_path_factory.mktemp("nggyup") / "clip.mp4"
    with VideoWriter(out, like=info, audio_from=src) as w:
        for frame in iter_frames(src, stop=30):
            w.write(frame.rgb, frame.index)
    return info, out


# ----------------------------------------------------------------------------- probing


def test_probe_nggyup(media_dir: Path) -> None:
    info = probe_video(media_dir / "nggyup.mp4")
    assert (info.width, info.height) == (1280, 720)
    assert info.fps == Fraction(30) and info.fps_float == pytest.approx(30.0)
    assert info.frame_count == 289 and info.frame_count_exact
    assert info.duration_s == pytest.approx(289 / 30, abs=1 / 30)
    assert info.video_codec == "h264"
    assert info.has_audio and info.audio_codec == "aac"
    assert info.audio_sample_rate == 48000 and info.audio_channels == 2
    assert info.rotation_deg == 0 and not info.is_image
    assert VideoInfo.from_dict(info.to_dict()) == info


def test_probe_orig_webm_counts_frames_by_demuxing(media_dir: Path) -> None:
    info = probe_video(media_dir / "orig.webm")
    assert (info.width, info.height) == (464, 560)
    assert info.fps == Fraction(25)
    assert info.frame_count == 66 and not info.frame_count_exact  # webm stores no count
    assert info.duration_s == pytest.approx(2.64, abs=1 / 25)
    assert info.video_codec == "vp9"
    assert not info.has_audio and info.audio_codec is None


def test_probe_still_image_is_one_frame(media_dir: Path) -> None:
    info = probe_video(media_dir / "mark.jpg")
    assert info.is_image and info.frame_count == 1 and not info.has_audio
    rgb = read_image(media_dir / "mark.jpg")
    assert (info.height, info.width) == rgb.shape[:2]
    frames = list(iter_frames(media_dir / "mark.jpg"))
    assert len(frames) == 1 and frames[0].index == 0
    np.testing.assert_array_equal(frames[0].rgb, rgb)


@pytest.mark.parametrize(
    "maker", ["text_as_mp4", "text_as_txt", "random_bytes", "directory", "missing"]
)
def test_not_a_video_raises_input_error(tmp_path: Path, maker: str) -> None:
    path = tmp_path / "clip.mp4"
    if maker == "text_as_mp4":
        path.write_text("this is a text file, not a video\n" * 20)
    elif maker == "text_as_txt":  # FFmpeg would read this as text-mode-art "video"
        path = tmp_path / "notes.txt"
        path.write_text("this is a text file, not a video\n" * 20)
    elif maker == "random_bytes":
        path = tmp_path / "noise.bin"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 8000, np.uint8).tobytes())
    elif maker == "directory":
        path.mkdir()
    with pytest.raises(InputError, match=path.name):
        probe_video(path)
    with pytest.raises(InputError, match=path.name):
        iter_frames(path)  # raises on the call, before iteration


def test_audio_only_file_has_no_video_stream(tmp_path: Path, nggyup_clip) -> None:
    _, clip = nggyup_clip
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(clip)) as src, av.open(str(audio_only), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        probe_video(audio_only)


# ----------------------------------------------------------------------------- decoding


def test_iter_frames_seek_matches_sequential_decode(media_dir: Path) -> None:
    src = media_dir / "nggyup.mp4"  # keyframes every 30 frames: seeking lands on 30
    sequential = {f.index: f.rgb for f in iter_frames(src, stop=38)}
    assert sorted(sequential) == list(range(38))
    report = DecodeReport()
    window = list(iter_frames(src, start=35, stop=40, report=report))
    assert [f.index for f in window] == [35, 36, 37, 38, 39]
    assert [f.time_s for f in window] == pytest.approx([i / 30 for i in range(35, 40)])
    assert window[0].rgb.shape == (720, 1280, 3) and window[0].rgb.dtype == np.uint8
    for frame in window[:3]:
        np.testing.assert_array_equal(frame.rgb, sequential[frame.index])
    assert report.ok and report.frames_yielded == 5


def test_rotation_is_applied_on_decode(media_dir: Path, tmp_path: Path) -> None:
    crop = read_image(media_dir / "mark.jpg")[100:196, 200:264]  # 96 x 64, not square
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 64, 96, "yuv444p"
        stream.set_display_rotation(90)  # counter-clockwise, as phones tag portrait video
        for pts in range(3):
            frame = av.VideoFrame.from_ndarray(crop, format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert info.rotation_deg == 90
    assert (info.width, info.height) == (96, 64)
    first = next(iter_frames(path))
    assert first.rgb.shape == (64, 96, 3)
    assert _mean_abs_diff(first.rgb, np.rot90(crop)) < 4.0


def test_corrupt_middle_is_skipped_and_reported(orig_roundtrip, tmp_path: Path) -> None:
    _, _, good = orig_roundtrip
    broken = tmp_path / "broken.mp4"
    shutil.copy(good, broken)
    garbage = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with open(broken, "r+b") as f:
        f.seek(broken.stat().st_size // 2)
        f.write(garbage)
    report = DecodeReport()
    indices = [frame.index for frame in iter_frames(broken, report=report)]
    assert indices[-1] == 65  # ran to the end
    assert report.skipped >= 1 and report.decode_errors >= 1
    assert report.frames_yielded == len(indices)
    assert sorted(set(indices) | set(report.skipped_indices)) == list(range(66))
    assert all(0 < i < 65 for i in report.skipped_indices)


# ----------------------------------------------------------------------------- writing


def test_roundtrip_keeps_size_rate_count_and_duration(orig_roundtrip) -> None:
    src_info, src_frames, out = orig_roundtrip
    info = probe_video(out)
    assert (info.width, info.height) == (src_info.width, src_info.height)
    assert info.fps == src_info.fps
    assert info.frame_count == src_info.frame_count == 66
    assert abs(info.duration_s - src_info.duration_s) <= 1 / float(src_info.fps)
    assert info.video_codec == "h264" and not info.has_audio
    # Marked as synthetic media made by morph3d.
    assert info.metadata["comment"].startswith("synthetic media: face swapped by morph3d")
    assert __version__ in info.metadata["comment"]
    assert info.metadata["software"] == f"morph3d {__version__}"
    assert info.metadata["synthetic_media"] == "true"
    assert info.metadata["source_photo"] == "mark.jpg"
    report = DecodeReport()
    decoded = [f.rgb for f in iter_frames(out, report=report)]
    assert report.ok and len(decoded) == 66
    errors = [_mean_abs_diff(a, b) for a, b in zip(src_frames, decoded, strict=True)]
    assert max(errors) < 3.0, errors


def test_audio_is_copied_and_trimmed_to_the_clip(media_dir: Path, nggyup_clip) -> None:
    src_info, clip = nggyup_clip
    info = probe_video(clip)
    assert (info.width, info.height, info.fps) == (1280, 720, Fraction(30))
    assert info.frame_count == 30
    assert info.duration_s == pytest.approx(1.0, abs=1 / 30)
    assert info.has_audio
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == (
        src_info.audio_codec,
        src_info.audio_sample_rate,
        src_info.audio_channels,
    )
    assert info.metadata["comment"].startswith("synthetic media")
    copied = _audio_packets(clip)
    source = _audio_packets(media_dir / "nggyup.mp4", limit=len(copied) + 1)
    assert copied == source[: len(copied)]  # packet for packet: not re-encoded
    with av.open(str(clip)) as container:
        audio = container.streams.audio[0]
        audio_s = float(audio.duration * audio.time_base)
    assert audio_s == pytest.approx(1.0, abs=1 / 30)  # trimmed to the 30 video frames


def test_audio_window_follows_start_index(media_dir: Path, tmp_path: Path) -> None:
    src = media_dir / "nggyup.mp4"
    info = probe_video(src)
    out = tmp_path / "middle.mkv"
    with VideoWriter(out, like=info, audio_from=src, start_index=150) as w:
        for frame in iter_frames(src, start=150, stop=165):
            w.write(frame.rgb, frame.index)
    clip = probe_video(out)
    assert clip.frame_count == 15 and clip.duration_s == pytest.approx(0.5, abs=1 / 30)
    with av.open(str(src)) as container:
        stream = container.streams.audio[0]
        first_at_5s = next(
            bytes(p)
            for p in container.demux(stream)
            if p.pts is not None and p.pts * p.time_base >= 5
        )
    assert _audio_packets(out, limit=1)[0] == first_at_5s


def test_odd_size_is_kept_exactly(orig_roundtrip, tmp_path: Path) -> None:
    src_info, frames, _ = orig_roundtrip
    odd = replace(src_info, width=463, height=559)
    out = tmp_path / "odd.mp4"
    crops = [np.ascontiguousarray(f[:559, :463]) for f in frames[:3]]
    with VideoWriter(out, like=odd) as w:
        for rgb in crops:
            w.write(rgb)
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (463, 559, 3)
    decoded = [f.rgb for f in iter_frames(out)]
    assert decoded[0].shape == (559, 463, 3)
    assert _mean_abs_diff(decoded[0], crops[0]) < 3.0


def test_writer_encodes_the_callers_array_without_a_new_frame(media_dir: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """The writer converts each picture from its own kept buffer (no new RGB frame per
    picture): the same video as from fresh contiguous copies, strided views included, and
    the same from one writer to the next."""
    src = media_dir / "nggyup.mp4"
    info = probe_video(src)
    frames = [f.rgb for f in iter_frames(src, stop=4)]

    def packets(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]

    def no_new_frame(*args, **kwargs):
        raise AssertionError("the writer made a new RGB frame for a picture")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", no_new_frame)
    written = []
    for name in ("copies", "views", "copies again"):
        out = tmp_path / f"{name}.mp4"
        with VideoWriter(out, like=info) as w:
            for rgb in frames:
                if name == "views":
                    padded = np.zeros((rgb.shape[0], rgb.shape[1] + 7, 3), np.uint8)
                    padded[:, 3:-4] = rgb
                    w.write(padded[:, 3:-4])  # a strided view of the picture
                else:
                    w.write(np.array(rgb, copy=True))
        written.append(packets(out))
    assert written[0] == written[1] == written[2]


def test_gaps_are_filled_by_repeating_frames(orig_roundtrip, tmp_path: Path) -> None:
    src_info, frames, _ = orig_roundtrip
    out = tmp_path / "gaps.mp4"
    with VideoWriter(out, like=src_info) as w:
        for index in (1, 2, 5):  # index 0 and 3, 4 lost upstream
            w.write(frames[index], index)
    assert w.frames_repeated == 3
    info = probe_video(out)
    assert info.frame_count == 6 and info.duration_s == pytest.approx(6 / 25, abs=1 / 25)
    decoded = [f.rgb for f in iter_frames(out)]
    assert _mean_abs_diff(decoded[4], frames[2]) < _mean_abs_diff(decoded[4], frames[4])


def test_finished_video_gets_the_usual_permissions(tmp_path: Path) -> None:
    from morph3d.io.atomic import default_file_mode

    like = VideoInfo(path=tmp_path / "input.mp4", width=64, height=48, fps=Fraction(25),
                     frame_count=3, duration_s=0.12, video_codec="h264", has_audio=False)
    out = tmp_path / "out.mp4"
    old = os.umask(0o027)
    try:
        with VideoWriter(out, like=like) as w:
            for i in range(3):
                w.write(np.full((48, 64, 3), 40 * i, np.uint8), i)
        mode = stat.S_IMODE(out.stat().st_mode)
        assert mode == default_file_mode() == 0o640  # not the temp file's private 0600
    finally:
        os.umask(old)
    assert probe_video(out).frame_count == 3


def test_writer_rejects_missing_folder_and_bad_extension(orig_roundtrip, tmp_path: Path) -> None:
    src_info, _, _ = orig_roundtrip
    with pytest.raises(InputError, match="output folder does not exist"):
        VideoWriter(tmp_path / "nope" / "out.mp4", like=src_info)
    with pytest.raises(InputError, match="extension"):
        VideoWriter(tmp_path / "out.avi", like=src_info)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_overwrite_its_input(media_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.webm"
    shutil.copy(media_dir / "orig.webm", target)
    link = tmp_path / "link.webm"
    link.symlink_to(target)
    before = _sha256(target)
    info = probe_video(link)
    for out in (target, link, tmp_path / "." / "target.webm"):
        with pytest.raises(InputError, match="same file as an input"):
            VideoWriter(out, like=info)
    audio_src = tmp_path / "audio.mp4"
    shutil.copy(media_dir / "nggyup.mp4", audio_src)
    with pytest.raises(InputError, match="same file as an input"):
        VideoWriter(audio_src, like=info, audio_from=audio_src)
    assert _sha256(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.mp4", "link.webm", "target.webm"]


def test_interrupted_write_leaves_no_file(orig_roundtrip, tmp_path: Path) -> None:
    src_info, frames, _ = orig_roundtrip
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, like=src_info, audio_from=src_info.path) as w:
            for rgb in frames[:40]:
                w.write(rgb)
            assert any(p.name.endswith(".part.mp4") for p in tmp_path.iterdir())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_metadata_cannot_be_overridden() -> None:
    tags = synthetic_metadata({"comment": "source mark.jpg", "synthetic_media": "false"})
    assert tags["synthetic_media"] == "true"
    assert (
        tags["comment"]
        == f"synthetic media: face swapped by morph3d {__version__}; source mark.jpg"
    )


# ----------------------------------------------------------------------------- images


def test_greyscale_reads_as_three_equal_channels(media_dir: Path, tmp_path: Path) -> None:
    rgb = read_image(media_dir / "murakami_gray.jpg")
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    # Also a true single-channel file (the shared one is stored as 3-channel JPEG).
    grey_path = tmp_path / "grey.png"
    Image.fromarray(rgb[:, :, 0], mode="L").save(grey_path)
    grey = read_image(grey_path)
    assert grey.shape == rgb.shape
    np.testing.assert_array_equal(grey[:, :, 0], grey[:, :, 1])
    np.testing.assert_array_equal(grey[:, :, 0], grey[:, :, 2])
    np.testing.assert_array_equal(grey[:, :, 0], rgb[:, :, 0])


def test_reads_png_and_ppm(media_dir: Path) -> None:
    people = read_image(media_dir / "three_people.png")  # stored as RGBA, opaque
    assert people.shape == (1372, 2542, 3) and people.dtype == np.uint8
    takeo = read_image(media_dir / "annotated" / "takeo.ppm")
    assert takeo.shape == (225, 150, 3)


def test_alpha_is_composited_onto_white(media_dir: Path, tmp_path: Path) -> None:
    rgb = read_image(media_dir / "aligned_source1.png")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :50] = 0  # transparent stripe
    alpha[:, 50:100] = 128  # half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    out = read_image(path)
    assert out.shape == rgb.shape
    assert (out[:, :50] == 255).all()
    np.testing.assert_array_equal(out[:, 100:], rgb[:, 100:])
    expected_half = (rgb[:, 50:100].astype(float) * 128 + 255 * 127) / 255
    assert np.abs(out[:, 50:100] - expected_half).max() <= 1.0


def test_sixteen_bit_png_is_scaled(media_dir: Path, tmp_path: Path) -> None:
    rgb = read_image(media_dir / "aligned_source2.png")
    grey16 = rgb[:, :, 1].astype(np.uint16) * 257  # exact 16-bit version of the 8-bit values
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 1])
    np.testing.assert_array_equal(out[:, :, 2], rgb[:, :, 1])


def test_exif_orientation_is_applied(media_dir: Path, tmp_path: Path) -> None:
    rgb = read_image(media_dir / "mark.jpg")[:200, :300]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = tmp_path / "sideways.jpg"
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    out = read_image(path)
    assert out.shape == (300, 200, 3)
    assert _mean_abs_diff(out, np.rot90(rgb, k=-1)) < 3.0


@pytest.mark.parametrize("maker", ["missing", "directory", "text", "zero_size", "truncated"])
def test_bad_images_raise_input_error(media_dir: Path, tmp_path: Path, maker: str) -> None:
    path = tmp_path / "photo.png"
    if maker == "directory":
        path.mkdir()
    elif maker == "text":
        path.write_text("not an image")
    elif maker == "zero_size":
        path = tmp_path / "empty.ppm"
        path.write_bytes(b"P6\n0 0\n255\n")
    elif maker == "truncated":
        data = (media_dir / "aligned_source1.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=path.name):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".ppm"])
def test_write_image_roundtrip(media_dir: Path, tmp_path: Path, suffix: str) -> None:
    rgb = read_image(media_dir / "aligned_target1.png")
    path = tmp_path / f"out{suffix}"
    write_image(path, rgb, metadata=synthetic_metadata())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    back = read_image(path)
    assert back.shape == rgb.shape
    if suffix in (".png", ".ppm"):
        np.testing.assert_array_equal(back, rgb)
    else:
        assert _mean_abs_diff(back, rgb) < 4.0
    if suffix == ".png":
        assert Image.open(path).text["synthetic_media"] == "true"
    if suffix == ".jpg":
        assert Image.open(path).getexif()[0x0131] == f"morph3d {__version__}"


def test_write_image_errors(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(InputError, match="output folder does not exist"):
        write_image(tmp_path / "missing" / "x.png", rgb)
    with pytest.raises(InputError, match="extension"):
        write_image(tmp_path / "x.xyz", rgb)
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", rgb.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


def test_is_image_path() -> None:
    assert is_image_path("a/b/Photo.JPG") and is_image_path("x.webp") and is_image_path("y.ppm")
    assert not is_image_path("clip.mp4") and not is_image_path("clip.webm")
