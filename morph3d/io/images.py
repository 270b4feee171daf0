"""Still images in and out (Pillow), the input/output path checks every media file goes
through, and the synthetic-media tags written files carry.

Arrays are ``H x W x 3`` ``uint8`` RGB. EXIF orientation is applied, greyscale is
replicated to three channels, 16-bit samples are scaled to 8 bits, and **alpha is
composited onto white** (a transparent background becomes white, never black). Images over
the pixel limit are refused from their header (`morph3d.io.limits`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from morph3d import __version__
from morph3d.errors import InputError
from morph3d.io.atomic import atomic_write
from morph3d.io.limits import check_image_size, too_large
from morph3d.io.outputs import check_writable_dir, same_file

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".webp", ".bmp", ".tif", ".tiff"}
)
_SYNTHETIC_MARKER = "synthetic media: face swapped by morph3d"


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
    with atomic_write(out, parents=False) as f:
        img.save(f, format=pil_format, **save_kwargs)
