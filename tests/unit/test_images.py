from __future__ import annotations

import io

import pytest
from PIL import Image

from services.common.errors import InvalidImage
from services.common.images import inspect_image, open_rgb, sniff


def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "ext"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")]
)
def test_supported_formats_are_recognised_by_their_magic_bytes(fmt: str, ext: str) -> None:
    data = _encode(fmt, "RGB" if fmt != "GIF" else "P")
    assert sniff(data) == (fmt, ext)
    info = inspect_image(data, max_pixels=10_000)
    assert (info.format, info.width, info.height) == (fmt, 40, 30)


def test_a_file_that_lies_about_its_type_is_refused() -> None:
    with pytest.raises(InvalidImage, match="not a valid one"):
        inspect_image(b"GIF89a" + b"\0" * 100, max_pixels=10_000)
    with pytest.raises(InvalidImage, match="not a"):
        inspect_image(b"%PDF-1.7 ...", max_pixels=10_000)


def test_truncated_and_empty_files_are_refused() -> None:
    with pytest.raises(InvalidImage, match="complete"):
        inspect_image(_encode("JPEG", size=(200, 200))[:400], max_pixels=10**6)
    with pytest.raises(InvalidImage, match="empty"):
        inspect_image(b"", max_pixels=10)


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(InvalidImage, match="MMRAG_MAX_IMAGE_PIXELS"):
        inspect_image(_encode("PNG", size=(200, 100)), max_pixels=19_999)


def test_open_rgb_converts_any_mode() -> None:
    for mode in ("RGBA", "L", "P", "CMYK"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert open_rgb(_encode(fmt, mode)).mode == "RGB"
