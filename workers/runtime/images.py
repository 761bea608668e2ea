"""Image items: from a data URL or base64 to an RGB picture, with every decode bounded.

An image is hostile bytes. Pillow reads only the formats named here (PNG, JPEG, WebP, GIF, BMP:
no PostScript, no plugins that shell out), the declared size is checked from the header before
a pixel is decoded (a 40,000 x 40,000 PNG of zeros is a few kilobytes: a decompression bomb),
a truncated file is an error rather than a half-grey picture, and a URL is never fetched (the
worker would become a proxy into the farm's own network). Each failure is an ItemError, so it
costs one error line: `image_too_large` or `invalid_image`.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from workers.runtime.base import ItemError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: Sides further apart than this are refused: a processor that resizes the shorter side to its
#: size makes the longer one this many times that, so the ratio bounds its memory too.
MAX_ASPECT = 20
#: Pictures at most this large are kept decoded between prepare and run; larger ones are kept
#: as their (smaller) encoded bytes and decoded again in their micro-batch, so a chunk of large
#: pictures never sits decoded in memory at once.
KEEP_DECODED_PIXELS = 1_000_000
#: What an archive member over the per-image byte cap becomes in the planner's item file
#: (workers/runtime/image_archive.py): an item that can only be this error.
TOO_LARGE_MEMBER = "archive_member_bytes"

# Never paint the missing part of a truncated file grey: that is a wrong answer, not an image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class PreparedImage:
    """A checked image: its size, and the decoded picture or the bytes to decode it again."""

    width: int
    height: int
    image: Image.Image | None
    data: bytes | None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def rgb(self, max_pixels: int) -> Image.Image:
        if self.image is not None:
            return self.image
        assert self.data is not None
        return decode(self.data, max_pixels)


def image_bytes(value: Any) -> bytes:
    """The encoded bytes of an item's input: {"image": data URL or base64}, or that string."""
    return item_bytes(value, "image")


def item_bytes(value: Any, kind: str) -> bytes:
    """The encoded bytes of a media item's input, {kind: data URL or base64} or that string
    (kind "image" or "audio"); a URL is never fetched. Errors: `invalid_<kind>`,
    `<kind>_too_large` (an archive member over the byte cap), `invalid_input_type`."""
    if isinstance(value, dict):
        if TOO_LARGE_MEMBER in value:
            raise ItemError(
                f"{kind}_too_large", f"the archive member is {value[TOO_LARGE_MEMBER]} bytes"
            )
        if kind not in value:
            raise ItemError(
                "invalid_input_type", f'input must be {{"{kind}": "<data URL or base64>"}}'
            )
        value = value[kind]
    if not isinstance(value, str):
        raise ItemError("invalid_input_type", f"the {kind} must be a data URL or a base64 string")
    text = value.strip()
    lowered = text[:16].lower()
    if lowered.startswith(("http:", "https:", "ftp:", "file:", "s3:")):
        raise ItemError(
            f"invalid_{kind}",
            f"{kind} URLs are not fetched; send the {kind} itself as a data URL or base64",
        )
    if lowered.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ItemError(f"invalid_{kind}", f"a data URL must be data:{kind}/...;base64,<data>")
        text = payload
    if not text:
        raise ItemError("empty_input", f"the {kind} is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError(f"invalid_{kind}", f"the {kind} is not valid base64") from None


def prepare_image(value: Any, max_pixels: int) -> PreparedImage:
    """Check and decode one item's image; ItemError if it is not a usable image."""
    data = image_bytes(value)
    image = decode(data, max_pixels)
    width, height = image.size
    if width * height <= KEEP_DECODED_PIXELS:
        return PreparedImage(width, height, image, None)
    image.close()
    return PreparedImage(width, height, None, data)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes to an RGB picture, EXIF orientation applied; GIFs give their first frame."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between its own limit and twice it; the size check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
                width, height = opened.size
                if width < 1 or height < 1:
                    raise ItemError("invalid_image", "the image has no pixels")
                if width * height > max_pixels:
                    raise ItemError(
                        "image_too_large",
                        f"the image is {width} x {height} pixels; the limit is {max_pixels} "
                        "pixels (MAX_IMAGE_PIXELS)",
                    )
                if max(width, height) > MAX_ASPECT * min(width, height):
                    raise ItemError(
                        "image_too_large",
                        f"the image is {width} x {height} pixels; sides more than {MAX_ASPECT} "
                        "times apart are refused",
                    )
                opened.seek(0)
                opened.load()
                upright = ImageOps.exif_transpose(opened)
                return upright.convert("RGB")
    except ItemError:
        raise
    except Image.DecompressionBombError:
        raise ItemError(
            "image_too_large", f"the image is over the limit of {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise ItemError(
            "invalid_image", f"not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        # Truncated data, a broken header, a corrupt palette: each decoder raises its own.
        raise ItemError("invalid_image", f"the image cannot be decoded ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return "the file is truncated"
    return type(exc).__name__


def pixel_batches(pixels: list[int], batch_pixels: int, batch_size: int) -> list[list[int]]:
    """Indices in input order, cut so that each micro-batch holds at most batch_size pictures
    and batch_pixels source pixels (preprocessing holds every source picture of a batch at
    full size); a picture larger than the budget runs alone."""
    if batch_pixels < 1 or batch_size < 1:
        raise ValueError("batch_pixels and batch_size must be at least 1")
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, count in enumerate(pixels):
        if current and (len(current) >= batch_size or total + count > batch_pixels):
            batches.append(current)
            current, total = [], 0
        current.append(index)
        total += count
    if current:
        batches.append(current)
    return batches
