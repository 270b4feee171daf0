"""Writing videos with PyAV (FFmpeg): upright uint8 RGB frames in, frame ``i`` at
``pts = i - start_index`` in a ``1/fps`` time base (frame count, rate and duration equal to
the input's), the source's audio copied (or re-encoded where the container cannot take it),
written to a temporary file and renamed when complete, tagged as synthetic media.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from types import TracebackType
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from morph3d import __version__
from morph3d.errors import InputError, Morph3dError
from morph3d.io.atomic import default_file_mode
from morph3d.io.images import (
    _check_rgb_uint8,
    _input_file,
    _output_file,
    _remove_quietly,
    _same_file,
    synthetic_metadata,
)
from morph3d.io.media import (
    _SWS_ACCURATE,
    PathLike,
    VideoInfo,
    _audio_codec_name,
    _demux_tolerant,
    _open_media,
)
from morph3d.io.outputs import create_locked_temp, temp_path_beside

# Output container by extension. mp4/mov get `use_metadata_tags` so arbitrary keys
# (software, synthetic_media) survive; `faststart` puts the index first for streaming.
_VIDEO_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_MOV_OPTIONS = {"movflags": "+faststart+use_metadata_tags"}
# Audio codecs (FFmpeg's codec names: "mp3", not its decoder "mp3float") that each output
# container holds as they are. FFmpeg would mux a few more into mp4 (vorbis, some PCM), but
# players do not play those. Matroska holds almost anything (a trial header decides). Audio
# that cannot be copied is re-encoded to `_AUDIO_ENCODER`, which every output container plays.
_PCM_CODECS = frozenset(
    f"pcm_{kind}{end}" for kind in ("s16", "s24", "s32", "f32", "f64") for end in ("le", "be")
)
_COPYABLE_AUDIO: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "mp2", "alac", "ac3", "eac3", "opus", "flac"}),
    "mov": frozenset({"aac", "mp3", "mp2", "alac", "ac3", "eac3"}) | _PCM_CODECS,
    "matroska": None,
}
_AUDIO_ENCODER = "aac"


# ----------------------------------------------------------------------------- writing

# Zero bytes kept after the picture the encoder converts: more than swscale reads past it.
_PICTURE_TAIL = 64 * 1024


def _pick_video_codec(width: int, height: int, forced: str | None) -> tuple[str, str]:
    """(codec, pixel format) for an exact ``width x height`` output.

    H.264 (libx264) in yuv420p needs even dimensions (4:2:0 chroma cannot describe a
    half pixel and H.264 crops only in 2-pixel steps), so odd sizes use libx264 in
    yuv444p (High 4:4:4 profile: exact size, plays in FFmpeg/VLC/mpv but not in most
    browsers). Without libx264 we fall back to MPEG-4 Part 2 in yuv420p, which accepts
    odd sizes.
    """
    available = av.codecs_available
    codec = forced or ("libx264" if "libx264" in available else "mpeg4")
    if codec not in available:
        raise Morph3dError(f"video encoder '{codec}' is not available in this FFmpeg build")
    odd = width % 2 == 1 or height % 2 == 1
    if codec == "libx264" and odd:
        return codec, "yuv444p"
    return codec, "yuv420p"


def _muxer_takes(container_format: str, stream: Any) -> bool:
    """Whether FFmpeg's muxer writes a header with a copy of `stream` (an in-memory trial)."""
    try:
        with av.open(io.BytesIO(), mode="w", format=container_format) as trial:
            trial.add_stream_from_template(stream)
            trial.start_encoding()
    except Exception:  # whatever the reason, a copy would fail the same way: re-encode
        return False
    return True


class _AudioPass:
    """The first audio stream of a source, written beside the output's video.

    Its packets are copied as they are when the output container holds the codec; otherwise
    they are decoded and re-encoded to `_AUDIO_ENCODER` (`note` says so, in one line). Audio
    is never a reason to refuse a clip: when it can be neither copied nor decoded it is
    left out, with a note.

    Positions are relative to `origin_s` (source seconds where output time 0 is), so the
    audio keeps its place against the video either way; `from_start` keeps a copy's priming
    packets (negative time) when the output starts where the source does. A copy is cut at
    packet boundaries (as a stream copy must be); a re-encode is cut to the sample, with the
    source's gaps filled with silence so the encoder sees continuous audio.
    """

    def __init__(
        self, src: Any, container_format: str, suffix: str, origin_s: float, from_start: bool
    ) -> None:
        self._src = src
        self._from_start = from_start
        stream = src.streams.audio[0]
        self._stream = stream
        self._origin_s = origin_s
        self._tb: Fraction = stream.time_base
        self._shift = round(Fraction(origin_s) / self._tb)
        self._packets: Iterator[Any] | None = _demux_tolerant(src, stream, None)
        self._pending: Any = None
        self._out_stream: Any = None
        self.note: str | None = None
        codec = _audio_codec_name(stream)
        allowed = _COPYABLE_AUDIO.get(container_format)
        self.copy = (allowed is None or codec in allowed) and _muxer_takes(container_format, stream)
        if self.copy:
            return
        try:
            cc = stream.codec_context
            if not cc.codec.is_decoder:
                raise ValueError(f"no decoder for {codec}")
            channels = int(cc.layout.nb_channels) or 2
            rate = int(cc.sample_rate)
            encoder = av.Codec(_AUDIO_ENCODER, "w")
        except Exception:  # no decoder, or no encoder in this FFmpeg: write the video alone
            self._packets = None
            self.note = (
                f"audio left out: {codec} cannot go into {suffix} as it is, and this FFmpeg "
                f"cannot re-encode it to {_AUDIO_ENCODER}"
            )
            return
        rates = sorted(int(r) for r in encoder.audio_rates or ())
        if rates and rate not in rates:
            rate = next((r for r in rates if r >= rate), rates[-1])
        self.rate = rate
        # Layouts the encoder and PyAV's planar frames both handle (PyAV fails on 8-channel
        # ones); any other is downmixed to stereo.
        self.layout = {1: "mono", 6: "5.1"}.get(channels, "stereo")
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=rate)
        self._buf: np.ndarray | None = None  # decoded, resampled samples not yet encoded
        self._buf_pos = 0  # output sample position of `_buf[:, 0]`
        self._next_pos = 0  # output sample position of the next sample to encode
        self._in_pos: int | None = None  # expected position of the next decoded sample
        self.note = (
            f"audio re-encoded from {codec} to {_AUDIO_ENCODER}: {suffix} cannot hold {codec}"
        )

    def add_stream(self, out: Any) -> None:
        """Add the audio stream to `out` (before anything is muxed)."""
        if self._packets is None:
            return
        if self.copy:
            self._out_stream = out.add_stream_from_template(self._stream)
            return
        stream = out.add_stream(_AUDIO_ENCODER, rate=self.rate)
        stream.layout = self.layout
        stream.time_base = Fraction(1, self.rate)
        stream.codec_context.time_base = Fraction(1, self.rate)
        stream.bit_rate = 96_000 * min(len(stream.layout.channels), 6)
        self._out_stream = stream

    def write_until(self, out: Any, end_s: float) -> None:
        """Mux the audio that starts before `end_s` seconds of output time."""
        if self._out_stream is None:
            return
        if self.copy:
            self._copy_until(out, end_s)
        else:
            end_pos = round(end_s * self.rate)
            self._decode_until(end_pos)
            self._encode_until(out, end_pos)

    def finish(self, out: Any) -> None:
        """Flush the encoder (after the last `write_until`)."""
        if self._out_stream is not None and not self.copy:
            for packet in self._out_stream.encode(None):
                out.mux(packet)

    def close(self) -> None:
        self._src.close()
        self._packets = None

    # -- stream copy

    def _copy_until(self, out: Any, end_s: float) -> None:
        end_pts_rel = Fraction(end_s) / self._tb
        while self._packets is not None:
            packet = self._pending
            self._pending = None
            if packet is None:
                packet = next(self._packets, None)
                if packet is None:
                    self._packets = None
                    return
            if packet.pts is None or packet.size == 0:
                continue
            rel = packet.pts - self._shift
            if rel < 0 and not self._from_start:
                continue  # before the requested stretch (keeps priming when starting at 0)
            if rel >= end_pts_rel:
                self._pending = packet
                return
            packet.pts = rel
            if packet.dts is not None:
                packet.dts = packet.dts - self._shift
            packet.stream = self._out_stream
            out.mux(packet)

    # -- re-encode

    def _decode_until(self, end_pos: int) -> None:
        """Decode until the buffer reaches `end_pos` or the source ends."""
        while self._packets is not None and (
            self._buf is None or self._buf_pos + self._buf.shape[1] < end_pos
        ):
            packet = next(self._packets, None)
            if packet is None:
                self._packets = None
                self._push(self._resampler.resample(None), None)
                return
            try:
                frames = self._stream.codec_context.decode(packet)
            except av.error.FFmpegError:
                continue  # a damaged packet: its stretch becomes silence
            for frame in frames:
                pos = None
                if frame.pts is not None and frame.time_base is not None:
                    pos = round((float(frame.pts * frame.time_base) - self._origin_s) * self.rate)
                self._push(self._resampler.resample(frame), pos)

    def _push(self, frames: list[Any], pos: int | None) -> None:
        """Append resampled frames whose first sample belongs at `pos` (None: contiguous)."""
        parts = [f.to_ndarray() for f in frames]
        if not parts:
            return
        samples = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if self._buf is None:
            self._buf_pos = self._in_pos = pos if pos is not None else 0
            self._buf = samples[:, :0]
        assert self._in_pos is not None
        gap = 0 if pos is None else pos - self._in_pos
        if gap > self.rate // 100:  # a hole in the source: keep later audio in place
            silence = np.zeros((samples.shape[0], gap), np.float32)
            samples = np.concatenate([silence, samples], axis=1)
        self._in_pos += samples.shape[1]
        self._buf = np.concatenate([self._buf, samples], axis=1)
        cut = min(self._next_pos - self._buf_pos, self._buf.shape[1])
        if cut > 0:  # before the stretch written (or already written)
            self._buf = self._buf[:, cut:]
            self._buf_pos += cut

    def _encode_until(self, out: Any, end_pos: int) -> None:
        if self._buf is None:
            return
        start = max(self._next_pos, self._buf_pos)
        if self._buf_pos > self._next_pos and self._next_pos == 0:
            start = 0  # audio that starts late: silence before it
        stop = min(end_pos, self._buf_pos + self._buf.shape[1])
        if stop <= start:
            return
        chunk = np.zeros((self._buf.shape[0], stop - start), np.float32)
        first = max(start, self._buf_pos)  # the first buffered sample in the chunk
        if stop > first:
            offset = first - self._buf_pos
            chunk[:, first - start:] = self._buf[:, offset:offset + stop - first]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = start
        frame.time_base = Fraction(1, self.rate)
        for packet in self._out_stream.encode(frame):
            out.mux(packet)
        self._next_pos = stop
        used = stop - self._buf_pos
        if used > 0:
            self._buf = self._buf[:, used:]
            self._buf_pos = stop


class VideoWriter:
    """Write RGB frames as a video with the input's size, frame rate and duration.

    Use as a context manager; the file appears at `out_path` only when the block exits
    without an exception (temp file + `os.replace`); otherwise nothing is left behind.

    * `like`: the input's `VideoInfo`: size, fps and the path the output must differ from.
    * `audio_from`: write the first audio stream of this file, covering
      ``[audio_start, audio_end)`` seconds of it: copied packet for packet when the output
      container holds its codec, else re-encoded to AAC (`audio_note` then says so; see
      `_AudioPass`). `audio_start` defaults to ``start_index / fps`` and `audio_end` to
      `audio_start` plus the written video's duration, so a shorter clip gets the matching
      stretch of audio.
    * `metadata`: extra container tags, merged with `synthetic_metadata`.
    * `start_index`: the input frame index written first (output pts 0).

    `write(rgb, index)` places a frame at ``pts = index - start_index``; when indices skip
    (frames lost to corruption) the previous frame is repeated so the output keeps the
    input's frame count and timing (`frames_written` counts repeats, `frames_repeated`
    only those). Use it as a context manager, or call `close()` / `abort()` yourself.
    """

    def __init__(
        self,
        out_path: PathLike,
        like: VideoInfo,
        audio_from: PathLike | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        start_index: int = 0,
        audio_start: float | None = None,
        audio_end: float | None = None,
        crf: int = 18,
        preset: str = "veryfast",
        codec: str | None = None,
        inputs: Sequence[PathLike] = (),
    ) -> None:
        out = _output_file(out_path, "video output")
        for other in [like.path, *([audio_from] if audio_from is not None else []), *inputs]:
            if _same_file(out, other):
                raise InputError(f"output path is the same file as an input: {out}")
        suffix = out.suffix.lower()
        if suffix not in _VIDEO_OUTPUT_FORMATS:
            choices = ", ".join(sorted(_VIDEO_OUTPUT_FORMATS))
            raise InputError(f"unsupported video output extension '{out.suffix}' ({choices})")
        if like.width <= 0 or like.height <= 0 or like.fps <= 0:
            raise ValueError(f"invalid video geometry in {like}")
        self.out_path = out
        self.width, self.height = like.width, like.height
        self.fps = Fraction(like.fps)
        self.start_index = int(start_index)
        self._audio_from = _input_file(audio_from, "audio source") if audio_from else None
        self._audio_start_s = (
            float(audio_start) if audio_start is not None else self.start_index / float(self.fps)
        )
        self._audio_end_s = None if audio_end is None else float(audio_end)
        self.frames_written = 0
        self.frames_repeated = 0
        self._next_pts = 0
        self._last_rgb: np.ndarray | None = None
        self._closed = False
        # The picture the encoder converts is copied here first; the zeros after it stay
        # zero (see `_encode_rgb`).
        self._picture = np.zeros(self.height * self.width * 3 + _PICTURE_TAIL, np.uint8)

        self._audio: _AudioPass | None = None
        container_format = _VIDEO_OUTPUT_FORMATS[suffix]
        if self._audio_from is not None:
            self._open_audio_source(container_format)
        # One line for the run's notes when the audio could not be copied as it is.
        self.audio_note = self._audio.note if self._audio is not None else None

        self._tmp = temp_path_beside(out, "part")
        try:
            # Locked while written: a later run removes it only once this process is gone.
            self._tmp_lock = create_locked_temp(self._tmp)
            options = _MOV_OPTIONS if container_format in ("mp4", "mov") else {}
            self._out = av.open(
                str(self._tmp), mode="w", format=container_format, options=dict(options)
            )
            self._out.metadata.update(synthetic_metadata(metadata))
            self.codec, self.pix_fmt = _pick_video_codec(self.width, self.height, codec)
            self._video = self._add_video_stream(crf, preset)
            if self._audio is not None:
                self._audio.add_stream(self._out)
        except BaseException:
            self._cleanup_failed()
            raise

    # -- setup

    def _open_audio_source(self, container_format: str) -> None:
        assert self._audio_from is not None
        src = _open_media(self._audio_from)
        if not src.streams.audio:
            src.close()
            return  # nothing to copy: a silent video stays silent
        # Sync reference: the source's video start (audio pts are on the same clock).
        video_start_s = 0.0
        if src.streams.video and src.streams.video[0].start_time is not None:
            vs = src.streams.video[0]
            video_start_s = float(vs.start_time * vs.time_base)
        try:
            self._audio = _AudioPass(
                src,
                container_format,
                self.out_path.suffix,
                origin_s=video_start_s + self._audio_start_s,
                from_start=self._audio_start_s == 0,
            )
        except BaseException:
            src.close()
            raise

    def _add_video_stream(self, crf: int, preset: str) -> Any:
        options: dict[str, str] = {}
        if self.codec == "libx264":
            options = {"crf": str(crf), "preset": preset}
        stream = self._out.add_stream(self.codec, rate=self.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, self.pix_fmt
        time_base = 1 / self.fps
        stream.time_base = time_base
        cc = stream.codec_context
        cc.time_base = time_base
        if self.codec != "libx264":
            # MPEG-4 Part 2 has no CRF: a generous ~0.3 bit per pixel.
            cc.bit_rate = int(self.width * self.height * float(self.fps) * 0.3)
        # Tag BT.709 limited range, which is what `_encode_rgb` converts to.
        cc.colorspace = Colorspace.ITU709.value
        cc.color_range = ColorRange.MPEG.value
        cc.color_primaries = 1  # AVCOL_PRI_BT709
        cc.color_trc = 1  # AVCOL_TRC_BT709
        stream.metadata["encoder"] = f"morph3d {__version__} ({self.codec})"
        return stream

    # -- writing

    def write(self, rgb: np.ndarray, index: int | None = None) -> None:
        """Append a frame. `index` is the input frame index (default: the next one)."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        _check_rgb_uint8(rgb, "frame")
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, writer is {self.width}x{self.height}"
            )
        pts = self._next_pts if index is None else int(index) - self.start_index
        if pts < self._next_pts:
            raise ValueError(
                f"frame index {index} is not after the last written index "
                f"{self._next_pts - 1 + self.start_index}"
            )
        # Fill a gap (frames lost upstream) by repeating the previous frame, or this one
        # when the gap is at the very start.
        filler = self._last_rgb if self._last_rgb is not None else rgb
        while self._next_pts < pts:
            self._encode_rgb(filler, self._next_pts)
            self.frames_repeated += 1
        self._encode_rgb(rgb, pts)
        self._last_rgb = rgb

    def _encode_rgb(self, rgb: np.ndarray, pts: int) -> None:
        # swscale's accurate conversion reads a little past the end of the picture at some
        # widths (464 px; not 1280): after the picture it finds the zeros of the writer's own
        # buffer, not whatever memory followed a fresh frame. Kept from frame to frame, the
        # buffer also spares allocating (and faulting in) a new frame per picture. The
        # conversion writes the encoder's own new frame (its pixel format is never rgb24):
        # the buffer is free again when `reformat` returns.
        picture = self._picture[:rgb.size].reshape(rgb.shape)
        np.copyto(picture, rgb)
        frame = av.VideoFrame.from_numpy_buffer(picture, format="rgb24")
        frame = frame.reformat(
            format=self.pix_fmt,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
            interpolation=_SWS_ACCURATE,
        )
        frame.pts = pts
        frame.time_base = self._video.codec_context.time_base
        frame.duration = 1
        for packet in self._video.encode(frame):
            self._out.mux(packet)
        self.frames_written += 1
        self._next_pts = pts + 1
        self._copy_audio_until(self._audio_start_s + self._next_pts / float(self.fps))

    def _copy_audio_until(self, end_s: float) -> None:
        """Write the source audio that starts before `end_s` (source seconds)."""
        if self._audio is None:
            return
        if self._audio_end_s is not None:
            end_s = min(end_s, self._audio_end_s)
        self._audio.write_until(self._out, end_s - self._audio_start_s)

    # -- finishing

    def close(self) -> None:
        """Flush, add the remaining audio, and move the file into place."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise Morph3dError(f"no frames were written to {self.out_path}")
            for packet in self._video.encode(None):
                self._out.mux(packet)
            video_end_s = self._audio_start_s + self._next_pts / float(self.fps)
            self._copy_audio_until(video_end_s if self._audio_end_s is None else self._audio_end_s)
            if self._audio is not None:
                self._audio.finish(self._out)
            self._out.close()
            self._close_audio_source()
            # the temp file was made private (0600) while incomplete; the finished video gets
            # what any new file would (0666 less the umask), as `atomic_write` gives
            os.chmod(self._tmp, default_file_mode())
            os.replace(self._tmp, self.out_path)
            self._release_tmp_lock()
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written so far; no output file appears."""
        if self._closed:
            return
        self._closed = True
        self._cleanup_failed()

    def _cleanup_failed(self) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            try:
                out.close()
            except Exception:  # best effort while already failing
                pass
        self._close_audio_source()
        if hasattr(self, "_tmp"):
            _remove_quietly(self._tmp)
        self._release_tmp_lock()

    def _release_tmp_lock(self) -> None:
        fd = getattr(self, "_tmp_lock", None)
        if fd is not None:
            self._tmp_lock = None
            os.close(fd)

    def _close_audio_source(self) -> None:
        if self._audio is not None:
            self._audio.close()
            self._audio = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
