"""Media faults: audio the output container cannot hold, and native libraries' stderr chatter.

* Audio is never a reason to refuse a clip: the writer the swap uses copies the audio when
  the output container holds its codec (mp3 and opus in .mp4 included) and re-encodes it to
  AAC otherwise (PCM or vorbis into .mp4), with one note line; either way the audio starts
  with the video and lasts as long as the written video.
* mediapipe's graphs print TFLite/absl start-up lines straight to file descriptor 2; a
  `morph3d fit`, quiet or not, shows none of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from morph3d.io.media import iter_frames, probe_video
from morph3d.io.native_stderr import native_stderr_captured
from morph3d.io.video_writer import VideoWriter

REPO = Path(__file__).resolve().parents[1]
FPS = 25
RATE = 48000


# ----------------------------------------------------------------------------- helpers


def _make_clip(path: Path, audio_encoder: str, seconds: float = 0.4,
               burst: tuple[float, float] | None = None, layout: str = "stereo",
               rate: int = RATE, audio_seconds: float | None = None) -> Path:
    """A tiny 64x48 clip at 25 fps with audio from `audio_encoder` (`audio_seconds` long,
    default as long as the video): a quiet 440 Hz tone, or silence with a loud tone during
    `burst` (seconds) to locate in the output."""
    if audio_encoder not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {audio_encoder} encoder")
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream(audio_encoder, rate=rate)
        audio.layout = layout
        if audio_encoder == "vorbis":
            audio.codec_context.options = {"strict": "experimental"}
        for i in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8),
                                               format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        t = np.arange(round((seconds if audio_seconds is None else audio_seconds) * rate)) / rate
        wave = np.sin(2 * np.pi * 440 * t)
        if burst is None:
            wave *= 0.3
        else:
            wave *= 0.8 * ((t >= burst[0]) & (t < burst[1]))
        resampler = av.AudioResampler(format=audio.codec_context.format.name, layout=layout,
                                      rate=rate)
        for start in range(0, len(t), 1024):
            chunk = wave[start:start + 1024].astype(np.float32)
            # Packed samples: PyAV cannot build 8-channel planar frames.
            packed = np.repeat(chunk, av.AudioLayout(layout).nb_channels)[None]
            frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for out in resampler.resample(frame):
                for packet in audio.encode(out):
                    container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)
    return path


def _write(src: Path, out: Path, frames: int, start_index: int = 0) -> VideoWriter:
    """Frames [start_index, start_index + frames) of `src` through the swap's writer."""
    info = probe_video(src)
    with VideoWriter(out, like=info, audio_from=src, start_index=start_index) as writer:
        for frame in iter_frames(src):
            if start_index <= frame.index < start_index + frames:
                writer.write(frame.rgb, index=frame.index)
    return writer


def _audio_span(path: Path) -> tuple[str, float, float]:
    """(codec, first packet's start, last packet's end) of the first audio stream, seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        codec = stream.codec_context.codec.canonical_name
        starts, ends = [], []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            starts.append(float(packet.pts * stream.time_base))
            ends.append(float((packet.pts + (packet.duration or 0)) * stream.time_base))
    return codec, min(starts), max(ends)


def _onset(path: Path, threshold: float = 0.2) -> float:
    """Output time (seconds) of the first decoded audio sample louder than `threshold`."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            samples = frame.to_ndarray().astype(np.float32)
            if frame.format.name.startswith("s16"):
                samples /= 32768
            loud = np.flatnonzero((np.abs(samples) > threshold).any(axis=0)
                                  if frame.format.is_planar else
                                  (np.abs(samples.reshape(-1, len(frame.layout.channels)))
                                   > threshold).any(axis=1))
            if loud.size:
                return float(frame.time) + loud[0] / frame.sample_rate
    raise AssertionError(f"no sound in {path}")


# ----------------------------------------------------------------------------- audio


# (encoder, source container, output container, codec in the output, re-encoded)
AUDIO_CASES = [
    ("libmp3lame", ".mp4", ".mp4", "mp3", False),  # the clip: mp3 in mp4 is legal
    ("libmp3lame", ".mp4", ".mkv", "mp3", False),
    ("aac", ".mp4", ".mp4", "aac", False),
    ("aac", ".mov", ".mkv", "aac", False),
    ("libopus", ".mkv", ".mp4", "opus", False),
    ("libopus", ".mkv", ".mov", "aac", True),
    ("pcm_s16le", ".mkv", ".mp4", "aac", True),
    ("pcm_s16le", ".mov", ".mp4", "aac", True),
    ("pcm_s16le", ".mkv", ".mkv", "pcm_s16le", False),
    ("pcm_s16le", ".mkv", ".mov", "pcm_s16le", False),
    ("vorbis", ".mkv", ".mp4", "aac", True),
    ("vorbis", ".mkv", ".mkv", "vorbis", False),
]


@pytest.mark.parametrize(("encoder", "src_ext", "out_ext", "codec", "reencoded"), AUDIO_CASES)
def test_audio_is_copied_or_reencoded_never_refused(tmp_path: Path, encoder: str, src_ext: str,
                                                    out_ext: str, codec: str,
                                                    reencoded: bool) -> None:
    src = _make_clip(tmp_path / f"src{src_ext}", encoder)
    frames = 6  # of 10: the audio is trimmed to the written video, as with --max-frames
    out = tmp_path / f"out{out_ext}"
    writer = _write(src, out, frames)
    source_codec = probe_video(src).audio_codec
    assert source_codec == {"libmp3lame": "mp3", "libopus": "opus"}.get(encoder, encoder)
    info = probe_video(out)
    assert info.has_audio and info.audio_codec == codec
    assert (info.audio_sample_rate, info.audio_channels) == (RATE, 2)
    if reencoded:
        assert writer.audio_note == (f"audio re-encoded from {source_codec} to aac: "
                                     f"{out_ext} cannot hold {source_codec}")
    else:
        assert writer.audio_note is None
    _, start, end = _audio_span(out)
    assert start == pytest.approx(0.0, abs=0.03)  # starts with the video (or its priming)
    assert end == pytest.approx(frames / FPS, abs=0.05)  # within about one audio packet


@pytest.mark.parametrize("encoder", ["vorbis", "pcm_s16le"])
def test_reencoding_to_the_end_of_the_source(tmp_path: Path, encoder: str) -> None:
    """Audio shorter than the video: written to its end (decoder and resampler flushed)."""
    src = _make_clip(tmp_path / "src.mkv", encoder, seconds=0.4, audio_seconds=0.3)
    out = tmp_path / "out.mp4"
    assert _write(src, out, frames=10).audio_note is not None
    assert probe_video(out).audio_codec == "aac"
    _, start, end = _audio_span(out)
    assert start == pytest.approx(0.0, abs=0.03) and end == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("out_ext", [".mp4", ".mkv"])
def test_audio_stays_in_sync_from_a_later_start(tmp_path: Path, out_ext: str) -> None:
    """A tone burst at 0.5 s of the source, written from frame 5 (0.2 s): at 0.3 s."""
    src = _make_clip(tmp_path / "src.mkv", "pcm_s16le", seconds=1.0, burst=(0.5, 0.7))
    out = tmp_path / f"out{out_ext}"
    writer = _write(src, out, frames=15, start_index=5)
    assert (writer.audio_note is not None) == (out_ext == ".mp4")  # pcm: re-encoded in mp4
    assert _onset(out) == pytest.approx(0.3, abs=0.005)
    _, start, end = _audio_span(out)
    assert start == pytest.approx(0.0, abs=0.03)
    assert end == pytest.approx(15 / FPS, abs=0.05)


@pytest.mark.parametrize(("layout", "rate", "channels", "out_rate"), [
    ("mono", 22050, 1, 22050),
    ("5.1", 48000, 6, 48000),
    ("7.1", 48000, 2, 48000),  # downmixed: wider planar frames crash PyAV
    ("stereo", 44056, 2, 44100),  # a rate AAC does not take: the next one up
])
def test_reencoded_audio_keeps_or_adapts_its_layout_and_rate(tmp_path: Path, layout: str,
                                                            rate: int, channels: int,
                                                            out_rate: int) -> None:
    src = _make_clip(tmp_path / "src.mkv", "pcm_s16le", layout=layout, rate=rate)
    out = tmp_path / "out.mp4"
    assert _write(src, out, frames=6).audio_note is not None
    info = probe_video(out)
    assert (info.audio_codec, info.audio_channels, info.audio_sample_rate) == (
        "aac", channels, out_rate)
    _, start, end = _audio_span(out)
    aac_frame = 1024 / out_rate  # the encoder's priming and last frame's padding, at most
    assert start == pytest.approx(0.0, abs=aac_frame + 0.001)
    assert end == pytest.approx(6 / FPS, abs=aac_frame + 0.001)


def test_mp3_in_mp4_is_probed_by_codec_not_decoder(tmp_path: Path) -> None:
    """FFmpeg decodes mp3 with "mp3float"; the codec is mp3 (what containers care about)."""
    src = _make_clip(tmp_path / "src.mp4", "libmp3lame")
    assert probe_video(src).audio_codec == "mp3"


# ----------------------------------------------------------------------------- native stderr


def test_native_stderr_is_dropped_on_success_and_shown_on_failure(capfd) -> None:
    with native_stderr_captured():
        os.write(2, b"W0000 native start-up chatter\n")
    with pytest.raises(RuntimeError, match="graph failed"), native_stderr_captured():
        os.write(2, b"E0000 the native reason\n")
        raise RuntimeError("graph failed")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "chatter" not in err
    assert err.splitlines() == ["E0000 the native reason", "after"]


LIBRARY_LINES = ("W0000", "XNNPACK", "INFO:", "absl", "inference_feedback_manager")


def _fit(*args: str) -> subprocess.CompletedProcess[str]:
    import skimage.data

    photo = Path(skimage.data.__file__).parent / "astronaut.png"
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", "morph3d", "fit", str(photo),
                           "--no-photometric", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [True, False])
def test_fit_shows_no_library_logs(quiet: bool) -> None:
    proc = _fit(*(["--quiet"] if quiet else []))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.replace("\r", "\n").splitlines()
    assert not [line for line in lines if any(word in line for word in LIBRARY_LINES)]
    if quiet:
        assert proc.stdout == "" and proc.stderr == ""
    else:
        assert proc.stdout.startswith("fitted 1 frame(s) of astronaut.png")
