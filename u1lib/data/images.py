"""Decode one image file into an upright RGB image, or say in a few words why it cannot be used.

Packing must never crash on a user's file: every input is either converted or reported as a
:class:`BadItem` whose ``reason`` is short and stable (it groups the summary) and whose ``detail``
says what exactly was wrong.

Conversions (all deterministic):

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so pixels are stored upright.
* Transparency (RGBA, LA, PA, palette or RGB/L with a transparency key) is composited on **white**,
  the usual page background, rather than dropped (which would expose whatever colour the hidden
  pixels happen to have).
* 16-bit grey (``I;16*``) and 32-bit integer grey (``I``, read as 16-bit range) are scaled to
  8 bits by ``round(v / 257)``; Pillow's own conversion would clip everything above 255 to white.
  16-bit RGB PNGs are reduced to 8 bits by Pillow when it opens them.
* CMYK, grey, 1-bit and palette images go through Pillow's ``convert("RGB")``; embedded ICC
  profiles are not applied (colours are taken as stored).
* Multi-frame files (GIF, APNG, TIFF) contribute their first frame.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats Pillow may open. A closed list keeps e.g. EPS (which would start Ghostscript) out.
# (Camera JPEGs that Pillow reports as MPO are opened by its JPEG plugin.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow's own decompression-bomb warning threshold (about 9459 x 9459); Pillow refuses twice that
# at open time regardless of this setting.
DEFAULT_MAX_PIXELS = 89_478_485
# Pinned so that packing twice gives the same bytes. zlib level 1: a 1024² image encodes in a quarter
# of level 6's time (0.05 s against 0.22 s on a CI core) for a file about 16% larger; packing,
# previews and sample jobs encode many.
PNG_COMPRESS_LEVEL = 1
STORED_FORMAT = "PNG"  # what encode_png writes into a pack, and all the training reader opens

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadItem(Exception):
    """An input item that cannot be used, with a short ``reason`` and a longer ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


def read_file_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise BadItem("unreadable file", f"{type(err).__name__}: {err.strerror or err}") from None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes to a fully loaded, upright RGB image; raise BadItem otherwise."""
    if not data:
        raise BadItem("empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            # the size check below replaces Pillow's warning; its hard limit still raises
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as err:
        raise BadItem("too many pixels", str(err)) from None
    except UnidentifiedImageError:
        raise BadItem("not a recognised image", f"not one of {', '.join(ALLOWED_FORMATS)}") from None
    except Exception as err:  # noqa: BLE001 -- malformed headers surface as many exception types
        raise BadItem("corrupt image header", f"{type(err).__name__}: {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadItem("too many pixels", f"{width}x{height} exceeds the limit of {max_pixels} pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as err:  # noqa: BLE001 -- truncated streams, bad CRCs, broken EXIF, ...
        raise BadItem("truncated or corrupt image", f"{type(err).__name__}: {err}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB following the rules in the module docstring."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_on_white(image.convert("RGBA"))
    if mode == "RGB":
        return image
    if mode == "F":
        raise BadItem("unsupported pixel mode", "32-bit float pixels (mode F); save the image as 8-bit RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:  # Pillow's "conversion not supported"
        raise BadItem("unsupported pixel mode", f"cannot convert mode {mode} to RGB ({err})") from None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    eight_bit = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with pinned encoder settings and no metadata chunks (same pixels -> same bytes)."""
    bare = image.copy()
    bare.info.clear()  # Pillow would otherwise carry an ICC profile or transparency key into the file
    buffer = io.BytesIO()
    bare.save(buffer, format=STORED_FORMAT, compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()
