"""The panorama: layout (golden), colours, legibility of the index digits after the VLM's scaling, odd inputs."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.reranker import panorama
from services.reranker.panorama import Box

# Candidate colours without much red in them, so red pixels can only be index digits.
QUERY_COLOR = (210, 190, 60)
PALETTE = [(30, 140, 60), (40, 90, 200), (120, 120, 120), (0, 160, 160), (90, 60, 140), (200, 200, 60)]


def _encoded(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (300, 300)) -> bytes:
    return _encoded(Image.new("RGB", size, color), quality=95)


def _candidates(count: int, size: tuple[int, int] = (300, 300)) -> list[bytes | None]:
    return [_solid(PALETTE[i % len(PALETTE)], size) for i in range(count)]


def _decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def _px(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _all_px(image: Image.Image) -> list[tuple[int, ...]]:
    data = image.convert("RGB").tobytes()
    return [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]


def _is_red(pixel: tuple[int, ...]) -> bool:
    return pixel[0] > 170 and pixel[1] < 110 and pixel[2] < 110


def _is_blue(pixel: tuple[int, ...]) -> bool:
    return pixel[2] > 170 and pixel[0] < 90 and pixel[1] < 90


def _close(pixel: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


def _red_bbox(image: Image.Image, box: Box) -> Box | None:
    """The bounding box of the red pixels inside `box` (in image coordinates)."""
    crop = image.crop(box)
    mask = Image.eval(crop.split()[0], lambda v: 255 if v > 170 else 0)
    for channel in crop.split()[1:]:
        mask = Image.composite(mask, Image.new("L", crop.size, 0), Image.eval(channel, lambda v: 255 if v < 110 else 0))
    found = mask.getbbox()
    if found is None:
        return None
    return (box[0] + found[0], box[1] + found[1], box[0] + found[2], box[1] + found[3])


def _scaled_to_short_side(image: Image.Image, short: int = 768) -> tuple[Image.Image, float]:
    scale = short / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC), scale


def _digit_heights_after_vlm_scaling(count: int) -> list[int]:
    """Build, decode, scale the short side to 768 px as GPT-4o does, and measure each label's red pixels."""
    result = panorama.build(_solid(QUERY_COLOR), _candidates(count))
    scaled, scale = _scaled_to_short_side(_decode(result.jpeg))
    heights = []
    for plate in result.layout.plates:
        # The plate with a margin: nothing red may spill out of it, so measuring a little wider is safe.
        left, top, right, bottom = (round(v * scale) for v in (plate[0] - 2, plate[1] - 2, plate[2] + 2, plate[3] + 2))
        region = (left, top, right, bottom)
        found = _red_bbox(scaled, region)
        assert found is not None, f"no red label in {region}"
        heights.append(found[3] - found[1])
    return heights


@pytest.mark.parametrize(
    ("count", "size", "grid", "tile"),
    [(9, (1024, 768), (3, 3), 256), (25, (1536, 768), (4, 7), 192), (50, (1683, 765), (5, 10), 153)],
)
def test_golden_layout(count: int, size: tuple[int, int], grid: tuple[int, int], tile: int) -> None:
    result = panorama.build(_solid(QUERY_COLOR), _candidates(count))
    layout = result.layout
    image = _decode(result.jpeg)
    assert image.size == (layout.width, layout.height) == size
    assert (layout.rows, layout.cols, layout.tile) == (*grid, tile)
    # The query column is the first tile column; candidates fill the grid row by row from its right.
    assert layout.cells[0] == (tile, 0, 2 * tile, tile)
    assert layout.cells[grid[1]] == (tile, tile, 2 * tile, 2 * tile)
    assert layout.cells[-1][2] <= layout.width and layout.cells[-1][3] <= layout.height
    assert layout.query_box[2] <= tile and layout.caption_box[3] <= layout.height
    assert result.placeholders == () and not result.query_placeholder

    for position, (cell, plate) in enumerate(zip(layout.cells, layout.plates, strict=True)):
        # Each index sits on a white plate in its cell's top-left corner...
        assert plate[0] == cell[0] + panorama.CELL_BORDER_PX and plate[1] == cell[1] + panorama.CELL_BORDER_PX
        assert plate[2] < cell[2] and plate[3] < cell[3]
        assert _close(_px(image, (plate[0] + 1, plate[1] + 1)), panorama.WHITE)
        assert _close(_px(image, (plate[2] - 2, plate[3] - 2)), panorama.WHITE)
        # ... in red, entirely inside the plate.
        red = _red_bbox(image, (cell[0], cell[1], cell[0] + tile // 2, cell[1] + tile // 2))
        assert red is not None
        assert plate[0] < red[0] and red[2] < plate[2] and plate[1] < red[1] and red[3] < plate[3]
        # The candidate itself fills the middle of its cell.
        centre = ((cell[0] + cell[2]) // 2, (cell[1] + cell[3]) // 2)
        assert _close(_px(image, centre), PALETTE[position % len(PALETTE)])

    # The query has a blue border all round (hugging the image, inside the query box) and "query" in blue under it.
    left, top, right, bottom = layout.query_box
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    row = [_px(image, (x, middle_y)) for x in range(left, right)]
    column = [_px(image, (middle_x, y)) for y in range(top, bottom)]
    for line in (row, column):
        blue = [i for i, pixel in enumerate(line) if _is_blue(pixel)]
        assert blue, "no blue border"
        # Blue at both ends of the line (the two opposite borders), the query's own colour between them.
        assert blue[0] < len(line) // 4 and blue[-1] > 3 * len(line) // 4
        assert not _is_blue(line[len(line) // 2])
    assert _close(_px(image, (middle_x, middle_y)), QUERY_COLOR)
    caption = image.crop(layout.caption_box)
    assert sum(1 for pixel in _all_px(caption) if _is_blue(pixel)) > 50
    # Nothing red outside the labels: the query column has none.
    assert _red_bbox(image, (0, 0, tile, layout.height)) is None


@pytest.mark.parametrize("count", [9, 25, 50])
def test_digits_are_at_least_24_px_tall_once_the_short_side_is_768(count: int) -> None:
    heights = _digit_heights_after_vlm_scaling(count)
    assert min(heights) >= panorama.MIN_LEGIBLE_DIGIT_PX, heights


def test_every_count_from_1_to_50_fits_the_vlm_view_with_legible_labels() -> None:
    for count in range(1, panorama.MAX_CANDIDATES + 1):
        layout = panorama.plan(count)
        long_side, short_side = max(layout.width, layout.height), min(layout.width, layout.height)
        # Within 2048×768 the VLM does not shrink it: what is drawn is what it sees.
        assert long_side <= panorama.VIEW_LONG_PX and short_side <= panorama.VIEW_SHORT_PX, count
        assert layout.rows * layout.cols >= count and layout.rows * (layout.cols - 1) < count
        for cell, plate in zip(layout.cells, layout.plates, strict=True):
            assert plate[2] - cell[0] <= cell[2] - cell[0] - 2 * panorama.CELL_BORDER_PX
    for count in (1, 2, 7, 13, 21, 22, 36, 49):
        assert min(_digit_heights_after_vlm_scaling(count)) >= panorama.MIN_LEGIBLE_DIGIT_PX, count


@pytest.mark.parametrize("count", [0, 51])
def test_counts_outside_1_to_50_are_refused(count: int) -> None:
    with pytest.raises(ValueError, match="1 to 50"):
        panorama.plan(count)


def test_missing_and_unreadable_candidates_become_labelled_placeholders() -> None:
    truncated = _solid((30, 140, 60), (600, 400))[:300]
    candidates = [*_candidates(2), None, b"not an image at all", truncated]
    result = panorama.build(_solid(QUERY_COLOR), candidates)
    assert result.placeholders == (2, 3, 4)
    image = _decode(result.jpeg)
    for position in result.placeholders:
        cell = result.layout.cells[position]
        assert _close(_px(image, (cell[0] + 10, cell[3] - 10)), panorama.PLACEHOLDER_FILL)
        assert _red_bbox(image, result.layout.plates[position]) is not None  # the index is still shown
    middle = result.layout.cells[2]
    centre_band = image.crop(
        (middle[0] + 8, (middle[1] + middle[3]) // 2 - 20, middle[2] - 8, (middle[1] + middle[3]) // 2 + 20)
    )
    assert min(pixel[0] for pixel in _all_px(centre_band)) < 150  # "image unavailable"


def test_an_unreadable_query_becomes_a_placeholder_inside_the_blue_border() -> None:
    result = panorama.build(b"garbage", _candidates(3))
    assert result.query_placeholder
    image = _decode(result.jpeg)
    left, top, _, bottom = result.layout.query_box
    assert _is_blue(_px(image, (left + 2, (top + bottom) // 2)))


def test_exif_orientation_is_honoured() -> None:
    # Stored landscape, left half green and right half blue; orientation 6 means "rotate 90° clockwise to view",
    # so upright it is portrait with green on top.
    stored = Image.new("RGB", (200, 100), (0, 200, 0))
    stored.paste((0, 0, 220), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = panorama.decode_fitted(_encoded(stored, exif=exif, quality=95), 100)
    assert upright is not None and upright.size == (50, 100)
    assert _close(_px(upright, (25, 10)), (0, 200, 0), 40)
    assert _close(_px(upright, (25, 90)), (0, 0, 220), 40)


def test_large_jpegs_are_drafted_and_fitted_to_the_box() -> None:
    fitted = panorama.decode_fitted(_solid((10, 20, 30), (4000, 3000)), 252)
    assert fitted is not None and fitted.mode == "RGB"
    assert max(fitted.size) <= 252 and max(fitted.size) >= 252 * panorama.DRAFT_SLACK


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent → white page
        (Image.new("RGBA", (64, 64), (0, 0, 255, 255)), "PNG", (0, 0, 255)),
        (Image.new("LA", (64, 64), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("L", (64, 64), 40), "PNG", (40, 40, 40)),
        (Image.new("I;16", (64, 64), 0), "PNG", (0, 0, 0)),
        (Image.new("CMYK", (64, 64), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("RGB", (64, 64), (0, 128, 0)), "WEBP", (0, 128, 0)),
        (Image.new("RGB", (64, 64), (0, 128, 0)), "GIF", (0, 128, 0)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la", "l", "i16", "cmyk", "webp", "gif"],
)
def test_other_modes_and_formats_become_rgb(image: Image.Image, fmt: str, expected: tuple[int, int, int]) -> None:
    decoded = panorama.decode_fitted(_encoded(image, fmt), 32)
    assert decoded is not None and decoded.mode == "RGB" and decoded.size == (32, 32)
    assert _close(_px(decoded, (16, 16)), expected, 12)


def test_a_palette_image_with_a_transparent_colour_is_flattened_onto_white() -> None:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    decoded = panorama.decode_fitted(_encoded(image, "PNG", transparency=1), 32)
    assert decoded is not None and _close(_px(decoded, (5, 5)), (255, 255, 255))


def test_custom_labels_are_drawn_and_sized() -> None:
    result = panorama.build(_solid((1, 1, 1)), _candidates(2), labels=["7", "42"])
    widths = [plate[2] - plate[0] for plate in result.layout.plates]
    assert widths[1] > widths[0]


def test_a_text_only_panorama_shows_the_candidates_alone() -> None:
    # Without the palette's blue, so that any blue pixel would be a query border or caption.
    colours = [colour for colour in PALETTE if not _is_blue(colour) and colour[2] < 170]
    result = panorama.build(None, [_solid(colours[i % len(colours)]) for i in range(9)], show_query=False)
    layout = result.layout
    image = _decode(result.jpeg)
    assert layout.query_box is None and layout.caption_box is None and not result.query_placeholder
    # No query column: the grid starts at the left edge, and its tiles are at least as large as with one.
    assert layout.cells[0][:2] == (0, 0)
    assert image.size == (layout.width, layout.height) == (layout.cols * layout.tile, layout.rows * layout.tile)
    assert layout.tile >= panorama.plan(9).tile
    assert not any(_is_blue(pixel) for pixel in _all_px(image)), "nothing may look like a query"
    for position, cell in enumerate(layout.cells):
        centre = ((cell[0] + cell[2]) // 2, (cell[1] + cell[3]) // 2)
        assert _close(_px(image, centre), colours[position % len(colours)])
        assert _red_bbox(image, (cell[0], cell[1], cell[0] + layout.tile // 2, cell[1] + layout.tile // 2))
