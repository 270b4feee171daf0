"""The largest still image morph3d reads.

Photos are fitted on a crop around the face, so a large picture costs little beyond its own
uint8 pixels (3 bytes each); above this limit even that, and the decoder's own buffers, is
more than a photo of a face needs. Pillow's decompression-bomb check would only warn up to
twice its own limit (about 179 million pixels) and then read the whole picture, so the
limit is checked on the size in the file's header, before any pixel is decoded
(`morph3d.io.images.read_image` does it on every read; `check_image_pixels` alone does it
for commands that want to refuse before other work).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from morph3d.errors import InputError

MAX_IMAGE_PIXELS = 100_000_000


def too_large(path: str | os.PathLike, size: tuple[int, int] | None,
              limit: int = MAX_IMAGE_PIXELS) -> InputError:
    """The one-line error for an image over `limit` pixels (`size` None: over Pillow's own
    hard limit, whose error does not say the size)."""
    if size is None:
        what = f"over {2 * _pillow_limit() / 1e6:.0f} MP"
    else:
        what = f"{size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} MP)"
    return InputError(f"image is too large: {Path(path)} is {what}; the limit is "
                      f"{limit / 1e6:.0f} MP (scale it down first)")


def check_image_size(path: str | os.PathLike, size: tuple[int, int],
                     limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header says `size` (width, height) is over `limit` pixels."""
    if size[0] * size[1] > limit:
        raise too_large(path, size, limit)


def check_image_pixels(path: str | os.PathLike, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse, in one line, a still image of more than `limit` pixels, from its header only
    (no pixels are decoded). Files Pillow cannot open are left to the reader's own errors."""
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
    except Image.DecompressionBombError:
        raise too_large(path, None, limit) from None
    except Exception:  # not an image, unreadable: the reader says so in its own words
        return
    check_image_size(path, size, limit)


def _pillow_limit() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0)
