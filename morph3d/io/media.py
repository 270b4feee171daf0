"""Media in: probing and decoding videos (and stills, as one-frame clips) with PyAV (FFmpeg).

The files around it: `morph3d.io.images` reads and writes still images (Pillow) and holds
the path checks; `morph3d.io.video_writer` writes videos. Together they are the only place
pixels enter or leave morph3d as files.

* Every array crossing this border is ``H x W x 3`` ``uint8`` RGB (the pipeline converts to
  float32 in [0, 1] itself). A reader of parts of each frame (the landmark stage) takes
  `VideoPicture`s (`iter_pictures`): the same bytes, made only where they are read.
* Frames are yielded upright: a stream's display rotation (phone videos) is applied on
  decode, and `VideoInfo.width/height` are the upright size, so
  ``frame.rgb.shape == (info.height, info.width, 3)``. The writer writes upright pixels and
  no rotation tag.
* Frame *indices* come from presentation timestamps (``round(t * fps)``), so they stay on
  the source's timeline when frames are dropped.
* Outputs are written to a temporary file in the destination folder and renamed with
  `os.replace` only when complete, so a failed run never leaves a half-written file; written
  files are marked as synthetic media (`morph3d.io.images.synthetic_metadata`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation

from morph3d.errors import InputError
from morph3d.io.images import (
    _exif_orientation,
    _input_file,
    _open_image,
    is_image_path,
    read_image,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_MAX_CONSECUTIVE_DEMUX_ERRORS = 64
# FFmpeg demuxers that turn arbitrary text/binary files into "video" (text-mode art, picked
# by extension alone: .txt, .nfo, .bin, ...); a file they claim is not media for us.
_TEXT_ART_FORMATS = frozenset({"tty", "bin", "xbin", "idf", "adf"})
# swscale's default YUV<->RGB path is fast but darkens by ~0.9/255 per round trip; exact
# rounding with full chroma interpolation removes the bias (~5 ms per 720p frame).
_SWS_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


# ----------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What a video (or still image treated as a 1-frame video) contains.

    `width`/`height` are the upright (display) size: the size of frames from
    `iter_frames`. `rotation_deg` is the counter-clockwise display rotation that was
    found in the stream and is applied on decode (0, 90, 180 or 270).
    `frame_count_exact` is True when the container stores the count; otherwise the count
    comes from demuxing the video packets (one packet per frame).
    For a still image: ``fps == 1``, ``frame_count == 1``, ``duration_s == 0``.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration_s: float
    video_codec: str
    has_audio: bool
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    rotation_deg: int = 0
    frame_count_exact: bool = True
    is_image: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def fps_float(self) -> float:
        return float(self.fps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (fps as ``"num/den"``)."""
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "frame_count": self.frame_count,
            "duration_s": self.duration_s,
            "video_codec": self.video_codec,
            "has_audio": self.has_audio,
            "audio_codec": self.audio_codec,
            "audio_sample_rate": self.audio_sample_rate,
            "audio_channels": self.audio_channels,
            "rotation_deg": self.rotation_deg,
            "frame_count_exact": self.frame_count_exact,
            "is_image": self.is_image,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoInfo:
        kwargs = dict(d)
        kwargs["path"] = Path(kwargs["path"])
        kwargs["fps"] = Fraction(kwargs["fps"])
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return cls(**kwargs)


def _open_media(p: Path) -> Any:
    """Open `p` with PyAV, turning FFmpeg failures into a one-line InputError."""
    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not a readable media file: {p} ({reason})") from None
    if container.format.name in _TEXT_ART_FORMATS:
        container.close()
        raise InputError(f"not a media file: {p} (looks like text or binary data)")
    return container


def _video_stream(container: Any, p: Path) -> Any:
    if not container.streams.video:
        container.close()
        raise InputError(f"no video stream in {p}")
    return container.streams.video[0]


def _stream_fps(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _declared_frame_count(stream: Any, fps: Fraction) -> int:
    """Frame count the container declares: mp4 stores it, matroska stores a per-stream
    ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``); 0 when neither is there."""
    if stream.frames:
        return int(stream.frames)
    tags = {str(k).lower(): str(v) for k, v in stream.metadata.items()}
    text = tags.get("duration")
    if not text:
        return 0
    try:
        hours, minutes, seconds = text.split(":")
        duration = Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)
    except ValueError:
        return 0
    return round(duration * fps)


def _normalise_rotation(degrees: float | None) -> int:
    """Counter-clockwise display rotation rounded to 0/90/180/270 (others ignored)."""
    if degrees is None or not math.isfinite(degrees):
        return 0
    quarter = round(degrees / 90.0)
    if abs(degrees - 90.0 * quarter) > 1.0:
        return 0
    return int(quarter % 4) * 90


def _first_frame_rotation(container: Any, stream: Any) -> int:
    """The display rotation FFmpeg attaches to decoded frames (cheap: one frame)."""
    try:
        for frame in container.decode(stream):
            return _normalise_rotation(frame.rotation)
    except av.error.FFmpegError:
        return 0
    return 0


def _image_info(p: Path) -> VideoInfo:
    """A still image as a 1-frame video: its upright size, from one decoding (a damaged file
    is refused here, before any work) without the conversions `read_image` makes."""
    with _open_image(p) as img:
        img.load()
        width, height = img.size
        if _exif_orientation(img) in (5, 6, 7, 8):  # turned by a quarter: upright is W x H
            width, height = height, width
        codec = (img.format or p.suffix.lstrip(".")).lower()
    if width == 0 or height == 0:
        raise InputError(f"image has zero size: {p}")
    return VideoInfo(
        path=p,
        width=int(width),
        height=int(height),
        fps=Fraction(1),
        frame_count=1,
        duration_s=0.0,
        video_codec=codec,
        has_audio=False,
        is_image=True,
    )


def probe_video(path: PathLike) -> VideoInfo:
    """Describe a video file (or a still image, as a 1-frame video).

    Raises `InputError` for a missing file, a file that is not media, or no video stream.
    """
    p = _input_file(path, "video")
    if is_image_path(p):
        return _image_info(p)
    container = _open_media(p)
    try:
        vs = _video_stream(container, p)
        cc = vs.codec_context
        fps = _stream_fps(vs)
        if fps is None or fps <= 0:
            raise InputError(f"cannot determine the frame rate of {p}")
        tb = vs.time_base
        start_pts = vs.start_time or 0
        frame_count = int(vs.frames or 0)
        exact = frame_count > 0
        duration_s: float | None = None
        if vs.duration and tb:
            duration_s = float(vs.duration * tb)
        if not exact:
            # Count by demuxing packets (no decoding) and take the video's end time.
            frame_count, end_pts = _count_video_packets(p)
            if frame_count == 0:
                raise InputError(f"no readable video frames in {p}")
            if end_pts is not None and tb:
                duration_s = float((end_pts - start_pts) * tb)
            declared = _declared_frame_count(vs, fps)
            if declared and abs(declared - frame_count) > 1:
                log.warning(
                    "%s: header declares %d frames but only %d are readable "
                    "(truncated or corrupt file?)",
                    p,
                    declared,
                    frame_count,
                )
        if duration_s is None or duration_s <= 0:
            if container.duration:
                duration_s = container.duration / 1_000_000
            else:
                duration_s = frame_count / float(fps)
        audio = container.streams.audio[0] if container.streams.audio else None
        rotation = _first_frame_rotation(container, vs)
        width, height = int(cc.width), int(cc.height)
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=p,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            duration_s=float(duration_s),
            video_codec=str(cc.name),
            has_audio=audio is not None,
            audio_codec=_audio_codec_name(audio) if audio is not None else None,
            audio_sample_rate=int(audio.codec_context.sample_rate) if audio else None,
            audio_channels=int(audio.codec_context.layout.nb_channels) if audio else None,
            rotation_deg=rotation,
            frame_count_exact=exact,
            metadata={str(k).lower(): str(v) for k, v in container.metadata.items()},
        )
    finally:
        container.close()


def _count_video_packets(p: Path) -> tuple[int, int | None]:
    """Number of video packets and the end pts (pts + duration) of the last one."""
    container = _open_media(p)
    count = 0
    end_pts: int | None = None
    try:
        vs = container.streams.video[0]
        for packet in _demux_tolerant(container, vs, None):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                end_pts = end if end_pts is None else max(end_pts, end)
    finally:
        container.close()
    return count, end_pts


def _demux_tolerant(container: Any, stream: Any, report: DecodeReport | None) -> Iterator[Any]:
    """Demux `stream`, resuming after read errors (FFmpeg resyncs on the next call)."""
    consecutive_errors = 0
    while True:
        try:
            for packet in container.demux(stream):
                consecutive_errors = 0
                yield packet
            return
        except av.error.FFmpegError as exc:
            consecutive_errors += 1
            if report is not None:
                report._note_error(f"demux: {exc}")
            if consecutive_errors >= _MAX_CONSECUTIVE_DEMUX_ERRORS:
                log.warning("giving up demuxing %s after repeated errors", container.name)
                return


# ----------------------------------------------------------------------------- decoding


@dataclass
class Frame:
    """One decoded, upright frame. `index` is on the source timeline (see module doc)."""

    index: int
    pts: int | None
    time_s: float
    rgb: np.ndarray | None  # H x W x 3 uint8; None from iter_frames(rgb=False) on a video
    decoded: Any = None  # iter_frames(rgb=False) on a video: the av.VideoFrame (`frame_rgb`)


@dataclass
class DecodeReport:
    """Filled in by `iter_frames` while it runs; read it after iteration.

    `skipped_indices` lists frame indices in the requested range that produced no frame
    (undecodable or flagged corrupt by the decoder), `errors` the first few FFmpeg errors.
    """

    frames_yielded: int = 0
    skipped_indices: list[int] = field(default_factory=list)
    decode_errors: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.skipped_indices)

    @property
    def ok(self) -> bool:
        return not self.skipped_indices and self.decode_errors == 0

    def _note_error(self, message: str) -> None:
        self.decode_errors += 1
        if len(self.errors) < 20:
            self.errors.append(message)


def iter_frames(
    path: PathLike,
    start: int = 0,
    stop: int | None = None,
    report: DecodeReport | None = None,
    rgb: bool = True,
) -> Iterator[Frame]:
    """Stream upright RGB frames with index in ``[start, stop)`` from a video or image.

    Decoding is streaming (one frame in memory at a time). Corrupt packets and frames are
    skipped, the run continues, and the skipped indices are recorded in `report`.
    A still image yields one frame with index 0. Opening errors raise `InputError` here,
    before iteration starts. rgb=False: a video's frames come unconverted (`Frame.rgb`
    None, the decoder's frame in `Frame.decoded`; `frame_rgb` converts one), for a reader
    of a few pixels per frame (the RGB conversion costs more than decoding).
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    p = _input_file(path, "video")
    if report is None:
        report = DecodeReport()
    if is_image_path(p):
        rgb = read_image(p)
        return _image_frames(rgb, start, stop, report)
    container = _open_media(p)
    vs = _video_stream(container, p)
    fps = _stream_fps(vs)
    if fps is None or fps <= 0 or vs.time_base is None:
        container.close()
        raise InputError(f"cannot determine the frame rate of {p}")
    return _video_frames(container, vs, fps, start, stop, report, rgb)


def _image_frames(
    rgb: np.ndarray, start: int, stop: int | None, report: DecodeReport
) -> Iterator[Frame]:
    if start == 0 and (stop is None or stop > 0):
        report.frames_yielded += 1
        yield Frame(index=0, pts=0, time_s=0.0, rgb=rgb)


def frame_rgb(frame: Any, accurate: bool = True) -> np.ndarray:
    """A decoded av.VideoFrame as the upright H x W x 3 uint8 RGB `iter_frames` yields
    (`accurate` False: swscale's default, fast conversion instead)."""
    rgb = (frame.to_ndarray(format="rgb24", interpolation=_SWS_ACCURATE) if accurate
           else frame.to_ndarray(format="rgb24"))
    rotation = _normalise_rotation(frame.rotation)
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


class RegionConverter:
    """Converts parts of one stream's decoded frames to RGB, each the same bytes as that part
    of `frame_rgb`'s whole picture: a reader of a face-sized square (the landmark stage's
    mesh crops) pays for its pixels only, not the whole frame's accurate conversion.

    The part, widened by `MARGIN` pixels (swscale's filters reach a pixel or two; nearer the
    cut-out's edge the output differs) and aligned to the chroma grid, is copied into a kept
    frame and converted with `frame_rgb`'s flags. The kept frames descend from the stream's
    own frames (`reformat` copies a frame's colour tags, chroma siting included; PyAV cannot
    set the siting, and a new frame's differs and moves the colours). Planar 4:2:0 only,
    unrotated, even sizes (`supports`). Not thread-safe: one per thread.
    """

    MARGIN = 8  # pixels: 4 was the least that gave equal bytes at every tested part
    _STEP = 16  # kept frames' sides are rounded up to this: a face's crop changes by pixels
    _KEEP = 16  # kept frames at most

    def __init__(self) -> None:
        self._frames: dict[tuple, Any] = {}

    @staticmethod
    def supports(frame: Any) -> bool:
        return (frame.format.name == "yuv420p" and not _normalise_rotation(frame.rotation)
                and frame.width % 2 == 0 and frame.height % 2 == 0)

    def _kept(self, frame: Any, width: int, height: int) -> Any:
        tags = (frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries)
        kept = self._frames.get((width, height, tags))
        if kept is None:
            base = self._frames.get((0, 0, tags))
            if base is None:  # one whole-frame scale per stream; the rest descend from it
                base = self._frames[(0, 0, tags)] = frame.reformat(width=16, height=16)
            if len(self._frames) > self._KEEP:
                del self._frames[next(k for k in self._frames if k[0])]
            kept = self._frames[(width, height, tags)] = base.reformat(width=width,
                                                                       height=height)
        return kept

    def convert(self, frame: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0, 3) uint8: ``frame_rgb(frame)[y0:y1, x0:x1]`` (bounds inside
        the frame, non-empty) for a frame `supports` accepts."""
        height, width = frame.height, frame.width
        top = max(y0 - self.MARGIN, 0) // 2 * 2
        left = max(x0 - self.MARGIN, 0) // 2 * 2
        bottom = min(-(-(y1 + self.MARGIN) // 2) * 2, height)
        right = min(-(-(x1 + self.MARGIN) // 2) * 2, width)
        size_x = min(-(-(right - left) // self._STEP) * self._STEP, width)
        size_y = min(-(-(bottom - top) // self._STEP) * self._STEP, height)
        if (size_x, size_y) == (width, height):
            return frame_rgb(frame)[y0:y1, x0:x1]
        # a kept frame larger than the widened part holds more of the picture around it
        right, bottom = min(left + size_x, width), min(top + size_y, height)
        left, top = right - size_x, bottom - size_y
        kept = self._kept(frame, size_x, size_y)
        for plane, dst, sub in zip(frame.planes, kept.planes, (1, 2, 2), strict=True):
            src = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            out = np.frombuffer(dst, np.uint8).reshape(-1, dst.line_size)
            rows, cols = size_y // sub, size_x // sub
            out[:rows, :cols] = src[top // sub:top // sub + rows, left // sub:left // sub + cols]
        rgb = kept.to_ndarray(format="rgb24", interpolation=_SWS_ACCURATE, threads=1)
        return rgb[y0 - top:y1 - top, x0 - left:x1 - left]


class VideoPicture:
    """A decoded video frame whose RGB is made when and where it is read: `rgb()` the whole
    upright picture (`frame_rgb`, made once), `region` a part of it with the same bytes,
    `preview()` the whole picture on swscale's fast path (within a level or two of the
    accurate one; for tests of change between frames, not for pixels anyone keeps).
    ``np.asarray(picture)`` is `rgb()`."""

    def __init__(self, frame: Any, converter: RegionConverter | None = None) -> None:
        self.frame = frame
        self._converter = converter if RegionConverter.supports(frame) else None
        self._rgb: np.ndarray | None = None
        self._preview: np.ndarray | None = None
        # what readers made of this picture, kept with it (some made ahead, in the thread
        # that decodes): name -> value
        self.notes: dict[str, Any] = {}
        rotated = _normalise_rotation(frame.rotation) in (90, 270)
        h, w = (frame.width, frame.height) if rotated else (frame.height, frame.width)
        self.shape = (h, w, 3)

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = frame_rgb(self.frame)
        return self._rgb

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        rgb = self.rgb()  # kept for the picture's later readers: a copy when one is asked
        if dtype is not None and np.dtype(dtype) != rgb.dtype:
            return rgb.astype(dtype)
        return rgb.copy() if copy else rgb

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``rgb()[y0:y1, x0:x1]`` (bounds clipped to the picture), converting only that
        part when the whole picture has not been made."""
        h, w = self.shape[:2]
        y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
        x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
        if self._rgb is not None or self._converter is None or y1 <= y0 or x1 <= x0:
            return self.rgb()[y0:y1, x0:x1]
        return self._converter.convert(self.frame, y0, y1, x0, x1)

    def preview(self) -> np.ndarray:
        """The fast path always, even once `rgb()` is made: consecutive previews compare."""
        if self._preview is None:
            self._preview = frame_rgb(self.frame, accurate=False)
        return self._preview


def iter_pictures(path: PathLike, stop: int | None = None
                  ) -> Iterator[np.ndarray | VideoPicture]:
    """The frames of `iter_frames(path, stop=stop)` for readers of parts of each picture: a
    still image's RGB array, a video's frames as `VideoPicture`s sharing one
    `RegionConverter` (so their `region` calls belong to one thread), each with its
    `preview` made here, in the thread that iterates (a reader thread, with the decoding)."""
    converter = RegionConverter()
    for frame in iter_frames(path, stop=stop, rgb=False):
        if frame.rgb is not None:
            yield frame.rgb
            continue
        picture = VideoPicture(frame.decoded, converter)
        picture.preview()
        yield picture


def _video_frames(
    container: Any,
    vs: Any,
    fps: Fraction,
    start: int,
    stop: int | None,
    report: DecodeReport,
    rgb: bool = True,
) -> Iterator[Frame]:
    tb: Fraction = vs.time_base
    origin_pts = vs.start_time or 0
    expected_total = _declared_frame_count(vs, fps)  # 0 when the container does not say
    vs.thread_type = "AUTO"  # frame + slice threads: ~2x faster on 2 cores
    next_index = start  # the next index we expect to yield; gaps before it are skips
    last_index = start - 1

    def index_of(frame: Any) -> int:
        if frame.pts is None:
            return last_index + 1
        return round((frame.pts - origin_pts) * tb * fps)

    try:
        if start > 0:
            target = origin_pts + int(Fraction(start) / fps / tb)
            try:
                container.seek(target, stream=vs, backward=True, any_frame=False)
            except av.error.FFmpegError:
                container.seek(0)
        packets = _demux_tolerant(container, vs, report)
        finished = False
        for packet in _chain_flush(packets):
            try:
                frames = vs.decode(packet)
            except av.error.EOFError:
                continue  # decoder already drained by the demuxer's own flush packet
            except av.error.FFmpegError as exc:
                report._note_error(f"decode: {exc}")
                continue
            for frame in frames:
                index = index_of(frame)
                if index < start:
                    continue  # decoded from the keyframe before `start` after seeking
                if index <= last_index:  # duplicate/out-of-order timestamp (VFR sources)
                    index = last_index + 1
                if stop is not None and index >= stop:
                    finished = True
                    break
                if frame.is_corrupt:
                    report._note_error(f"frame {index} flagged corrupt by the decoder")
                    report.skipped_indices.extend(range(next_index, index + 1))
                    last_index = index
                    next_index = index + 1
                    continue
                report.skipped_indices.extend(range(next_index, index))
                pixels = frame_rgb(frame) if rgb else None
                last_index = index
                next_index = index + 1
                report.frames_yielded += 1
                time_s = (
                    float((frame.pts - origin_pts) * tb)
                    if frame.pts is not None
                    else (index / float(fps))
                )
                yield Frame(index=index, pts=frame.pts, time_s=time_s, rgb=pixels,
                            decoded=None if rgb else frame)
            if finished:
                break
        # Frames missing at the end of the requested range (only when the count is known).
        end = expected_total if stop is None else min(stop, expected_total)
        if expected_total and next_index < end:
            report.skipped_indices.extend(range(next_index, end))
        if report.skipped_indices:
            log.warning(
                "%s: skipped %d undecodable frame(s): %s",
                container.name,
                len(report.skipped_indices),
                _short_list(report.skipped_indices),
            )
    finally:
        container.close()


def _chain_flush(packets: Iterator[Any]) -> Iterator[Any]:
    """The demuxed packets, then ``None`` to drain the decoder."""
    yield from packets
    yield None


def _short_list(values: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _audio_codec_name(stream: Any) -> str:
    """The stream's codec ("mp3"), not the decoder FFmpeg picked for it ("mp3float")."""
    cc = stream.codec_context
    try:
        return str(cc.codec.canonical_name)
    except Exception:  # no decoder for it in this FFmpeg build: the context still has a name
        return str(cc.name)
