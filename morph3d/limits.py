"""The largest still image morph3d reads.

Photos are fitted on a crop around the face, so a large picture costs little beyond its own
uint8 pixels (3 bytes each); above this limit even that, and the decoder's own buffers, is
more than a photo of a face needs. Pillow's decompression-bomb check would only warn up to
twice its own limit (about 179 million pixels) and then read the whole picture.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from morph3d.errors import InputError

MAX_IMAGE_PIXELS = 100_000_000


def check_image_pixels(path: str | os.PathLike, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse, in one line, a still image of more than `limit` pixels, from its header only
    (no pixels are decoded). Files Pillow cannot open are left to the reader's own errors."""
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        width = height = None
    except Exception:  # not an image, unreadable: the reader says so in its own words
        return
    if width is None or width * height > limit:
        size = f"{width}x{height} ({width * height / 1e6:.0f} MP)" if width else "over 179 MP"
        raise InputError(f"image is too large: {path} is {size}; the limit is "
                         f"{limit / 1e6:.0f} MP (scale it down first)")
