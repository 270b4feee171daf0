"""Image and video input/output: the only place pixels enter or leave morph3d as files.

Conventions (see also the project README):

* Every array crossing this module's border is ``H x W x 3`` ``uint8`` RGB (the pipeline
  converts to float32 in [0, 1] itself).
* Images are read with Pillow: EXIF orientation is applied, greyscale is replicated to
  three channels, 16-bit samples are scaled to 8 bits, and **alpha is composited onto
  white** (a transparent background becomes white, never black).
* Videos are read and written with PyAV (FFmpeg). Frames are yielded upright: a stream's
  display rotation (phone videos) is applied on decode, and `VideoInfo.width/height` are
  the upright size, so ``frame.rgb.shape == (info.height, info.width, 3)``. The writer
  writes upright pixels and no rotation tag.
* Frame *indices* come from presentation timestamps (``round(t * fps)``), so they stay on
  the source's timeline when frames are dropped; the writer places frame ``i`` at
  ``pts = i - start_index`` in a ``1/fps`` time base, which keeps frame count, rate and
  duration equal to the input's.
* Outputs are written to a temporary file in the destination folder and renamed with
  `os.replace` only when complete, so a failed run never leaves a half-written file.
* Written videos are marked as synthetic media in their container metadata
  (see `synthetic_metadata`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from morph3d import __version__
from morph3d.errors import InputError, Morph3dError
from morph3d.io.limits import check_image_size, too_large
from morph3d.io.outputs import check_writable_dir, create_locked_temp, same_file, temp_path_beside

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".webp", ".bmp", ".tif", ".tiff"}
)
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
_MAX_CONSECUTIVE_DEMUX_ERRORS = 64
# FFmpeg demuxers that turn arbitrary text/binary files into "video" (text-mode art, picked
# by extension alone: .txt, .nfo, .bin, ...); a file they claim is not media for us.
_TEXT_ART_FORMATS = frozenset({"tty", "bin", "xbin", "idf", "adf"})
_SYNTHETIC_MARKER = "synthetic media: face swapped by morph3d"
# swscale's default YUV<->RGB path is fast but darkens by ~0.9/255 per round trip; exact
# rounding with full chroma interpolation removes the bias (~5 ms per 720p frame).
_SWS_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


# ----------------------------------------------------------------------------- helpers


def _input_file(path: PathLike, what: str) -> Path:
    """Check that `path` is an existing regular file; return it as a Path."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} is a directory, not a file: {p}")
    if not p.is_file():
        raise InputError(f"{what} is not a regular file: {p}")
    return p


def _output_file(path: PathLike, what: str) -> Path:
    """Check that `path` can be created: not a folder, in an existing writable folder
    (the one guard, `morph3d.io.outputs`, with this module's wording)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} path is a directory: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent} (for {p.name})")
    check_writable_dir(parent)
    return p


_same_file = same_file
_temp_path_beside = temp_path_beside


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - only on odd filesystems
        log.warning("could not remove temporary file %s: %s", path, exc)


def is_image_path(path: PathLike) -> bool:
    """True if `path` has a still-image extension (decided by name only)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def synthetic_metadata(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Metadata tags that mark a file as synthetic media made by morph3d.

    `extra` keys are added; an extra ``comment`` is appended after the synthetic-media
    marker instead of replacing it, and the marker keys themselves cannot be overridden.
    """
    tool = f"morph3d {__version__}"
    tags: dict[str, str] = {str(k): str(v) for k, v in (extra or {}).items()}
    comment = f"{_SYNTHETIC_MARKER} {__version__}"
    if tags.get("comment"):
        comment = f"{comment}; {tags['comment']}"
    tags.update(
        {
            "comment": comment,
            "software": tool,
            "encoded_by": tool,
            "synthetic_media": "true",
        }
    )
    return tags


# ----------------------------------------------------------------------------- images


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to H x W x 3 uint8 RGB (alpha composited onto white)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) greyscale: scale 0..65535 to 0..255 with rounding.
        grey = np.asarray(img, dtype=np.float64)
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        grey8 = np.clip(np.rint(np.nan_to_num(grey) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        # Composite onto white: out = rgb * a + 255 * (1 - a), in integer arithmetic.
        out = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    # convert() copies even when the mode is already RGB: a photo's pixels are copied once,
    # into the array.
    rgb = img if mode == "RGB" else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


@contextmanager
def _open_image(p: Path) -> Iterator[Image.Image]:
    """Pillow's image `p`, opened from its header only and refused in one line when it is
    over `morph3d.io.limits.MAX_IMAGE_PIXELS`, before any pixel is decoded; errors raised in
    the block (decoding included) become `InputError`s naming `p`.

    Pillow's own decompression-bomb warning is silenced: this limit has already decided,
    and the warning would only be a stray line on stderr."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                check_image_size(p, img.size)
                yield img
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {p}") from None
    except Image.DecompressionBombError:  # over Pillow's hard limit: refused by Image.open
        raise too_large(p, None) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {p}: {exc}") from None


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1, upright, when absent); read after `img.load()`, since
    some formats keep their EXIF after the pixels."""
    return int(img.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def read_image(path: PathLike) -> np.ndarray:
    """Read a still image as H x W x 3 uint8 RGB.

    EXIF orientation is applied; greyscale is replicated to 3 channels; 16-bit samples are
    scaled to 8 bits; alpha is composited onto white. Raises `InputError` for a missing
    file, a directory, a file that is not a readable image, a zero-size image, or one over
    the pixel limit (checked from the header, before decoding).
    """
    p = _input_file(path, "image")
    with _open_image(p) as img:
        img.load()
        if _exif_orientation(img) != 1:
            ImageOps.exif_transpose(img, in_place=True)  # no copy kept when upright
        rgb = _to_rgb_uint8(img)
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image has zero size: {p}")
    return rgb


def _check_rgb_uint8(rgb: np.ndarray, what: str) -> None:
    """Programming-error check (not a user error): arrays at I/O are H x W x 3 uint8."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array, got {getattr(rgb, 'dtype', rgb)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{what} must have shape H x W x 3 with H, W > 0, got {rgb.shape}")


def write_image(path: PathLike, rgb: np.ndarray, metadata: Mapping[str, str] | None = None) -> None:
    """Write H x W x 3 uint8 RGB to `path` atomically; the format follows the extension.

    `metadata` (e.g. `synthetic_metadata()`) is stored as PNG text chunks, or for
    JPEG/WebP/TIFF as the EXIF ``Software`` and ``ImageDescription`` tags.
    """
    out = _output_file(path, "image output")
    _check_rgb_uint8(rgb, "image")
    pil_format = Image.registered_extensions().get(out.suffix.lower())
    if pil_format is None or out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"unsupported image output extension '{out.suffix}': {out}")
    img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    save_kwargs: dict[str, Any] = {}
    if pil_format == "JPEG":
        save_kwargs.update(quality=95)
    if metadata:
        if pil_format == "PNG":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for key, value in metadata.items():
                info.add_itxt(str(key), str(value))
            save_kwargs["pnginfo"] = info
        elif pil_format in ("JPEG", "WEBP", "TIFF"):
            exif = Image.Exif()
            if "software" in metadata:
                exif[0x0131] = str(metadata["software"])  # Software
            if "comment" in metadata:
                exif[0x010E] = str(metadata["comment"])  # ImageDescription
            save_kwargs["exif"] = exif.tobytes()
    tmp = _temp_path_beside(out, "tmp")
    try:
        img.save(tmp, format=pil_format, **save_kwargs)
        os.replace(tmp, out)
    except BaseException:
        _remove_quietly(tmp)
        raise


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
    rgb: np.ndarray  # H x W x 3 uint8


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
) -> Iterator[Frame]:
    """Stream upright RGB frames with index in ``[start, stop)`` from a video or image.

    Decoding is streaming (one frame in memory at a time). Corrupt packets and frames are
    skipped, the run continues, and the skipped indices are recorded in `report`.
    A still image yields one frame with index 0. Opening errors raise `InputError` here,
    before iteration starts.
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
    return _video_frames(container, vs, fps, start, stop, report)


def _image_frames(
    rgb: np.ndarray, start: int, stop: int | None, report: DecodeReport
) -> Iterator[Frame]:
    if start == 0 and (stop is None or stop > 0):
        report.frames_yielded += 1
        yield Frame(index=0, pts=0, time_s=0.0, rgb=rgb)


def _video_frames(
    container: Any,
    vs: Any,
    fps: Fraction,
    start: int,
    stop: int | None,
    report: DecodeReport,
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
                rgb = frame.to_ndarray(format="rgb24", interpolation=_SWS_ACCURATE)
                rotation = _normalise_rotation(frame.rotation)
                if rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
                last_index = index
                next_index = index + 1
                report.frames_yielded += 1
                time_s = (
                    float((frame.pts - origin_pts) * tb)
                    if frame.pts is not None
                    else (index / float(fps))
                )
                yield Frame(index=index, pts=frame.pts, time_s=time_s, rgb=rgb)
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


# ----------------------------------------------------------------------------- writing


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


def _audio_codec_name(stream: Any) -> str:
    """The stream's codec ("mp3"), not the decoder FFmpeg picked for it ("mp3float")."""
    cc = stream.codec_context
    try:
        return str(cc.codec.canonical_name)
    except Exception:  # no decoder for it in this FFmpeg build: the context still has a name
        return str(cc.name)


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

        self._audio: _AudioPass | None = None
        container_format = _VIDEO_OUTPUT_FORMATS[suffix]
        if self._audio_from is not None:
            self._open_audio_source(container_format)
        # One line for the run's notes when the audio could not be copied as it is.
        self.audio_note = self._audio.note if self._audio is not None else None

        self._tmp = _temp_path_beside(out, "part")
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
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
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
