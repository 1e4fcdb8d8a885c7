"""Checking untrusted image bytes (type, size, pixel count, decodability), and decoding them for the model."""

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

# Reduced decoding keeps the short side at least this many times the model's input side (224 for every supported
# model). bench/decode.py measured the vectors against full decoding (tiny-random and the full-size architecture,
# 2-megapixel sources): at 2× photo-like images stay at cosine ≥ 0.99998 and the worst case, white noise, at
# ≥ 0.9997; at 1× white noise falls to 0.9989 (JPEG DCT scaling) and 0.995 (other formats), under the 0.999 we allow.
REDUCED_DECODE_MARGIN = 2
# The model keeps only the centre square of an image (shortest side resized, then a centre crop). Past this ratio the
# long side is cropped, centred, which leaves half the short side of context on each side of that square and bounds
# the pixels kept for a panorama-shaped image. The model's own crop then lands up to a pixel away (it rounds its
# offset on the longer image): cosine ≥ 0.9997 for 3:1 to 4:1 photos.
MAX_KEPT_ASPECT = 2


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


def _open_unloaded(data: bytes, *, max_pixels: int, what: str) -> tuple[Image.Image, ImageInfo]:
    """Sniff and open untrusted bytes and check the header's pixel count; nothing is decoded yet."""
    if not data:
        raise InvalidImage(f"the {what} is empty: send a {SUPPORTED} file")
    sniffed = sniff(data)
    if sniffed is None:
        raise InvalidImage(f"the {what} is not a {SUPPORTED} image (its first bytes match none of them)")
    fmt, ext = sniffed
    try:
        with warnings.catch_warnings():
            # Pillow compares the declared size with its own bomb limit as it opens the file. Its warning is left
            # to our own check just below, which names the setting to change; past twice its limit it raises
            # DecompressionBombError, refused here; a size between our limit and its warning fails at load.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except UnidentifiedImageError:
        raise InvalidImage(f"the {what} starts like a {fmt} file but is not a valid one: is it corrupt?") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImage(f"the {what} looks like a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the {what} cannot be decoded as {fmt} ({error}): is the file complete?") from None
    width, height = image.size
    # Check the header's size before decoding: a small file can declare billions of pixels.
    if width * height > max_pixels:
        image.close()
        raise InvalidImage(
            f"the {what} is {width}×{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,} (MMRAG_MAX_IMAGE_PIXELS): downscale it first"
        )
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        # Allowed by a raised MMRAG_MAX_IMAGE_PIXELS, still past what Pillow itself deems a bomb.
        image.close()
        raise InvalidImage(
            f"the {what} looks like a decompression bomb ({width}×{height} = {width * height:,} pixels, past "
            f"Pillow's limit of {Image.MAX_IMAGE_PIXELS:,})"
        )
    if width < 1 or height < 1:
        image.close()
        raise InvalidImage(f"the {what} has no pixels")
    return image, ImageInfo(format=fmt, ext=ext, width=width, height=height)


def _load_checked(image: Image.Image, info: ImageInfo, what: str) -> None:
    """Decode an opened image's pixels; on failure close it and raise InvalidImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        image.close()
        raise InvalidImage(f"the {what} cannot be decoded as {info.format} ({error}): is the file complete?") from None
    except Image.DecompressionBombWarning as error:
        image.close()
        raise InvalidImage(f"the {what} looks like a decompression bomb ({error})") from None


def _open_checked(data: bytes, *, max_pixels: int, what: str) -> tuple[Image.Image, ImageInfo]:
    """Open and fully decode untrusted bytes; InvalidImage says what is wrong. The caller closes the image."""
    image, info = _open_unloaded(data, max_pixels=max_pixels, what=what)
    _load_checked(image, info, what)
    return image, info


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


def reduced_min_side(model_input_side: int) -> int:
    """The short side reduced decoding keeps for a model whose input is `model_input_side` pixels square."""
    return REDUCED_DECODE_MARGIN * model_input_side


def decode_for_model(
    data: bytes, *, max_pixels: int, min_side: int, what: str = "image", reduced: bool = True
) -> Image.Image:
    """decode_image's checks and upright RGB pixels, no larger than the model needs.

    With `reduced`, the short side comes back below `2 * min_side` and never below `min_side` (unless the source
    is smaller), and the long side at most MAX_KEPT_ASPECT times the short side: fewer than
    4 * MAX_KEPT_ASPECT * min_side² pixels whatever the source. A JPEG is decoded at that size directly (libjpeg's
    DCT scaling by 1/2, 1/4 or 1/8, through Pillow's draft mode), so its full-size pixels never exist; other
    formats are decoded whole and then resized to a short side of `min_side`. Without `reduced`, exactly
    decode_image.
    """
    if not reduced:
        return decode_image(data, max_pixels=max_pixels, what=what)
    image, info = _open_unloaded(data, max_pixels=max_pixels, what=what)
    if info.format == "JPEG":
        # Draft picks the largest DCT scale that keeps both sides at least min_side (so the short side too).
        image.draft(None, (min_side, min_side))
    _load_checked(image, info, what)
    with image:
        return _upright_rgb_within(image, min_side)


def _upright_rgb_within(image: Image.Image, min_side: int) -> Image.Image:
    """A new upright RGB image: the centre of `image` cropped to MAX_KEPT_ASPECT, shrunk towards min_side."""
    # Converted first, as decode_image does before the model resizes: palettes cannot be averaged, and this
    # drops alpha the same way (resizing RGBA would premultiply it). L stays L until the image is small.
    source = image if image.mode in ("RGB", "L") else image.convert("RGB")
    width, height = source.size
    short = min(width, height)
    keep_long = min(max(width, height), MAX_KEPT_ASPECT * short)
    keep_w, keep_h = (keep_long, short) if width >= height else (short, keep_long)
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    box = (left, top, left + keep_w, top + keep_h)
    if short >= 2 * min_side:
        # Bicubic with antialiasing, as the model resizes, after a box reduction that stops at twice the target
        # (reducing_gap). A box reduction alone aliases fine detail: white noise fell to cosine 0.9991.
        scale = min_side / short
        size = (max(1, round(keep_w * scale)), max(1, round(keep_h * scale)))
        kept = source.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
    elif (keep_w, keep_h) != (width, height):
        kept = source.crop(box)
    else:
        kept = source
    # exif_transpose copies the EXIF data along (resize and crop keep `info`), and always returns a new image.
    upright = ImageOps.exif_transpose(kept)
    return upright if upright.mode == "RGB" else upright.convert("RGB")


def open_rgb(data: bytes) -> Image.Image:
    """Decode bytes that passed `inspect_image` into an RGB image, honouring EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        oriented = ImageOps.exif_transpose(image)
        return oriented.convert("RGB")
