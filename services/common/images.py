"""Checking untrusted image bytes before anything is queued: type, size, pixel count, decodability."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import InvalidImage

# Magic numbers of the formats we accept, and the extension each is stored under.
_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG", "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG", "png"),
    (b"GIF87a", 0, "GIF", "gif"),
    (b"GIF89a", 0, "GIF", "gif"),
    (b"BM", 0, "BMP", "bmp"),
    (b"WEBP", 8, "WEBP", "webp"),
)
SUPPORTED = "JPEG, PNG, WebP, GIF or BMP"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    ext: str
    width: int
    height: int


def sniff(data: bytes) -> tuple[str, str] | None:
    for signature, offset, fmt, ext in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if fmt == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return fmt, ext
    return None


def _open_checked(data: bytes, *, max_pixels: int, what: str) -> tuple[Image.Image, ImageInfo]:
    """Open and fully decode untrusted bytes; InvalidImage says what is wrong. The caller closes the image."""
    if not data:
        raise InvalidImage(f"the {what} is empty: send a {SUPPORTED} file")
    sniffed = sniff(data)
    if sniffed is None:
        raise InvalidImage(f"the {what} is not a {SUPPORTED} image (its first bytes match none of them)")
    fmt, ext = sniffed
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except UnidentifiedImageError:
        raise InvalidImage(f"the {what} starts like a {fmt} file but is not a valid one: is it corrupt?") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImage(f"the {what} cannot be decoded as {fmt} ({error}): is the file complete?") from None
    try:
        width, height = image.size
        # Check the header's size before decoding: a small file can declare billions of pixels.
        if width * height > max_pixels:
            raise InvalidImage(
                f"the {what} is {width}×{height} = {width * height:,} pixels; the limit is "
                f"{max_pixels:,} (MMRAG_MAX_IMAGE_PIXELS): downscale it first"
            )
        if width < 1 or height < 1:
            raise InvalidImage(f"the {what} has no pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except InvalidImage:
        image.close()
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        image.close()
        raise InvalidImage(f"the {what} cannot be decoded as {fmt} ({error}): is the file complete?") from None
    except Image.DecompressionBombWarning as error:
        image.close()
        raise InvalidImage(f"the {what} looks like a decompression bomb ({error})") from None
    return image, ImageInfo(format=fmt, ext=ext, width=width, height=height)


def inspect_image(data: bytes, *, max_pixels: int, what: str = "image") -> ImageInfo:
    """Validate untrusted bytes as an image; raise InvalidImage saying what is wrong and what to send."""
    image, info = _open_checked(data, max_pixels=max_pixels, what=what)
    image.close()
    return info


def decode_image(data: bytes, *, max_pixels: int, what: str = "image") -> Image.Image:
    """inspect_image's checks and the upright RGB pixels, from a single decode."""
    image, _ = _open_checked(data, max_pixels=max_pixels, what=what)
    with image:
        return ImageOps.exif_transpose(image).convert("RGB")


def open_rgb(data: bytes) -> Image.Image:
    """Decode bytes that passed `inspect_image` into an RGB image, honouring EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        oriented = ImageOps.exif_transpose(image)
        return oriented.convert("RGB")
