"""The picture the VLM ranks: the query on the left with a blue border, the candidates in a grid with red indices.

Sizing. GPT-4o (detail "high") fits an image into 2048×2048 and then scales it so its short side is at most
768 px; other VLMs do much the same. The panorama is therefore laid out inside a landscape 2048×768 box from the
start, so the VLM sees it at (about) the size it was drawn: nothing drawn here shrinks on the way. Index digits
are drawn DIGIT_PX tall, above the 24 px that a VLM needs to read them reliably, which leaves room for JPEG and
resampling blur. Tiles are square, at most MAX_TILE_PX (bigger only costs tokens), as large as the box allows.

Indices are 0-based positions, row by row (see prompt.py): label `i` sits on the i-th candidate passed in.

A text-only search has no query image: its panorama (`show_query=False`) is the candidate grid alone, with no
empty query column, so the candidates get that room and nothing in the picture pretends to be a query.

JPEG: quality 85 with 4:4:4 chroma (no subsampling). Subsampling halves the resolution of colour, and the red
digits on a white plate are exactly colour edges: with 4:2:0 they smear into pink; 4:4:4 costs about 20 % more
bytes and keeps them crisp. Quality 85 is where photos stop improving visibly; 1024×768 is about 150-250 KB.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from PIL import Image, ImageDraw, ImageFont

# The box the VLM looks at without scaling (landscape): see the module docstring.
VIEW_LONG_PX: Final = 2048
VIEW_SHORT_PX: Final = 768
MAX_TILE_PX: Final = 256
MAX_CANDIDATES: Final = 50
# Digit height after the VLM's scaling; MIN_LEGIBLE_DIGIT_PX is the contract, DIGIT_PX the margin above it.
MIN_LEGIBLE_DIGIT_PX: Final = 24
DIGIT_PX: Final = 28

JPEG_QUALITY: Final = 85
JPEG_SUBSAMPLING: Final = 0  # 4:4:4

WHITE: Final = (255, 255, 255)
RED: Final = (255, 0, 0)
BLUE: Final = (0, 0, 255)
CELL_BORDER: Final = (40, 40, 40)
PLACEHOLDER_FILL: Final = (225, 225, 225)
PLACEHOLDER_INK: Final = (90, 90, 90)

CELL_BORDER_PX: Final = 2
QUERY_BORDER_PX: Final = 8
PLATE_PAD_PX: Final = 4
# A one-pixel stroke in the ink's own colour turns the bundled regular font bold: thicker strokes survive JPEG
# and the VLM's resampling better than hairlines.
BOLD_STROKE_PX: Final = 1
# JPEG decoding may stop at 1/2, 1/4 or 1/8 scale (Image.draft); accepting a draft up to this much smaller than
# the tile, then upscaling that little, often saves a whole decode level at no visible cost.
DRAFT_SLACK: Final = 0.85

_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE_FOR_ORIENTATION: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive)


@dataclass(frozen=True)
class Layout:
    """Where everything goes, in panorama pixels; also what the golden tests check against."""

    count: int
    rows: int
    cols: int
    tile: int
    width: int
    height: int
    query_box: Box | None  # the query image inside its blue border (None: no query column)
    caption_box: Box | None  # the word "query"
    cells: tuple[Box, ...]  # one per candidate
    plates: tuple[Box, ...]  # the white plate behind each index


@dataclass(frozen=True)
class Panorama:
    jpeg: bytes
    layout: Layout
    placeholders: tuple[int, ...]  # candidate positions drawn as "image unavailable"
    query_placeholder: bool


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (no system font needed), sized so digits are at least `px` tall."""
    size = px
    while True:
        font = ImageFont.load_default(size=size)
        assert isinstance(font, ImageFont.FreeTypeFont), "Pillow was built without FreeType"
        top, bottom = font.getbbox("0123456789", stroke_width=BOLD_STROKE_PX)[1::2]
        if bottom - top >= px:
            return font
        size += 1


def _grid(count: int, query_columns: int = 1) -> tuple[int, int, int]:
    """(rows, cols, tile) with the largest square tiles whose panorama fits the VLM's 2048×768 view."""
    best: tuple[int, int, int, int, int] | None = None  # (tile, -cells, -skew, rows, cols)
    for rows in range(1, count + 1):
        cols = math.ceil(count / rows)
        width_tiles = cols + query_columns  # the query, when shown, takes the first column
        if width_tiles * VIEW_SHORT_PX > VIEW_LONG_PX * rows:
            continue  # wider than 8:3: the VLM would shrink it and the labels with it
        tile = min(MAX_TILE_PX, VIEW_SHORT_PX // rows, VIEW_LONG_PX // width_tiles)
        option = (tile, -(width_tiles * rows), -abs(cols - rows), rows, cols)
        if best is None or option > best:
            best = option
    assert best is not None
    return best[3], best[4], best[0]


def plan(count: int, labels: Sequence[str] | None = None, *, show_query: bool = True) -> Layout:
    if not 1 <= count <= MAX_CANDIDATES:
        raise ValueError(f"a panorama shows 1 to {MAX_CANDIDATES} candidates, not {count}")
    labels = labels if labels is not None else [str(i) for i in range(count)]
    query_columns = 1 if show_query else 0
    rows, cols, tile = _grid(count, query_columns)
    width, height = (cols + query_columns) * tile, rows * tile

    font = _font(DIGIT_PX)
    query_box: Box | None = None
    caption_box: Box | None = None
    if show_query:
        caption_height = _text_height(font, "query") + 2 * PLATE_PAD_PX
        side = min(tile, height - caption_height) - 2 * PLATE_PAD_PX
        left = (tile - side) // 2
        top = (height - side - caption_height) // 2
        query_box = (left, top, left + side, top + side)
        caption_box = (0, top + side, tile, top + side + caption_height)

    cells: list[Box] = []
    plates: list[Box] = []
    for position in range(count):
        row, col = divmod(position, cols)
        x, y = (col + query_columns) * tile, row * tile
        cells.append((x, y, x + tile, y + tile))
        text_left, text_top, text_right, text_bottom = (
            int(v) for v in font.getbbox(labels[position], stroke_width=BOLD_STROKE_PX)
        )
        plate_x, plate_y = x + CELL_BORDER_PX, y + CELL_BORDER_PX
        plates.append(
            (
                plate_x,
                plate_y,
                plate_x + (text_right - text_left) + 2 * PLATE_PAD_PX,
                plate_y + (text_bottom - text_top) + 2 * PLATE_PAD_PX,
            )
        )
    return Layout(count, rows, cols, tile, width, height, query_box, caption_box, tuple(cells), tuple(plates))


def _text_height(font: ImageFont.FreeTypeFont, text: str) -> int:
    top, bottom = font.getbbox(text, stroke_width=BOLD_STROKE_PX)[1::2]
    return int(bottom - top)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: transparency (RGBA, LA, palette with a transparent colour) is flattened onto a white page."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, WHITE)
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return image.convert("RGB")


def _close_enough(size: tuple[int, int], fitted: tuple[int, int]) -> bool:
    """A draft that fits the box and fills most of it is pasted as decoded: resampling costs more than it shows."""
    return all(DRAFT_SLACK * want <= have <= want for have, want in zip(size, fitted, strict=True))


def decode_fitted(data: bytes | None, box: int) -> Image.Image | None:
    """Decode image bytes into an upright RGB image fitting a box×box square; None when they do not decode.

    Cheap on big JPEGs: the decoder is asked for a reduced scale (draft) before any pixel is produced.
    """
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
            stored_w, stored_h = image.size
            upright_w, upright_h = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
            scale = min(box / upright_w, box / upright_h)
            fitted = (max(1, round(stored_w * scale)), max(1, round(stored_h * scale)))
            if image.format == "JPEG" and scale < 1:
                image.draft("RGB", (int(fitted[0] * DRAFT_SLACK), int(fitted[1] * DRAFT_SLACK)))
            image.load()  # decode now, at the drafted scale, while the bytes are open
            rgb = _to_rgb(image)
            if not _close_enough(rgb.size, fitted):
                rgb = rgb.resize(fitted, Image.Resampling.BILINEAR, reducing_gap=2.0)
            return rgb.transpose(transpose) if transpose is not None else rgb
    except Exception:  # any undecodable input becomes a labelled placeholder, never an error
        return None


def _centered(outer: Box, size: tuple[int, int]) -> tuple[int, int]:
    return outer[0] + (outer[2] - outer[0] - size[0]) // 2, outer[1] + (outer[3] - outer[1] - size[1]) // 2


def _placeholder(draw: ImageDraw.ImageDraw, box: Box, label: str) -> None:
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=PLACEHOLDER_FILL)
    font = _font(max(10, (box[2] - box[0]) // 10))
    draw.multiline_text(
        ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2),
        label,
        fill=PLACEHOLDER_INK,
        font=font,
        anchor="mm",
        align="center",
    )


def _draw_query(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont,
    query_frame: Box,
    caption: Box,
    query: bytes | None,
) -> bool:
    """The query in its blue border, captioned "query"; True when it had to be drawn as a placeholder."""
    inner = query_frame[2] - query_frame[0] - 2 * QUERY_BORDER_PX
    query_image = decode_fitted(query, inner)
    if query_image is None:
        _placeholder(draw, query_frame, "query image\nunavailable")
        frame = query_frame
    else:
        # The border hugs the image, not its letterbox: the VLM should see the query's own outline in blue.
        x, y = _centered(query_frame, query_image.size)
        canvas.paste(query_image, (x, y))
        frame = (
            x - QUERY_BORDER_PX,
            y - QUERY_BORDER_PX,
            x + query_image.width + QUERY_BORDER_PX,
            y + query_image.height + QUERY_BORDER_PX,
        )
    draw.rectangle((frame[0], frame[1], frame[2] - 1, frame[3] - 1), outline=BLUE, width=QUERY_BORDER_PX)
    draw.text(
        ((caption[0] + caption[2]) // 2, (caption[1] + caption[3]) // 2),
        "query",
        fill=BLUE,
        font=font,
        anchor="mm",
        stroke_width=BOLD_STROKE_PX,
        stroke_fill=BLUE,
    )
    return query_image is None


def build(
    query: bytes | None,
    candidates: Sequence[bytes | None],
    labels: Sequence[str] | None = None,
    *,
    show_query: bool = True,
) -> Panorama:
    """The panorama for a query and 1 to 50 candidates (encoded image bytes; None or garbage → placeholder).
    With `show_query=False` (a text-only search) the candidates alone, and `query` is ignored."""
    layout = plan(len(candidates), labels, show_query=show_query)
    labels = labels if labels is not None else [str(i) for i in range(len(candidates))]
    canvas = Image.new("RGB", (layout.width, layout.height), WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font(DIGIT_PX)
    query_missing = False
    if layout.query_box is not None and layout.caption_box is not None:
        query_missing = _draw_query(canvas, draw, font, layout.query_box, layout.caption_box, query)

    inner = layout.tile - 2 * CELL_BORDER_PX
    placeholders: list[int] = []
    for position, data in enumerate(candidates):
        cell = layout.cells[position]
        draw.rectangle((cell[0], cell[1], cell[2] - 1, cell[3] - 1), outline=CELL_BORDER, width=CELL_BORDER_PX)
        content = (
            cell[0] + CELL_BORDER_PX,
            cell[1] + CELL_BORDER_PX,
            cell[2] - CELL_BORDER_PX,
            cell[3] - CELL_BORDER_PX,
        )
        image = decode_fitted(data, inner)
        if image is None:
            placeholders.append(position)
            _placeholder(draw, content, "image\nunavailable")
        else:
            canvas.paste(image, _centered(content, image.size))
        plate = layout.plates[position]
        draw.rectangle((plate[0], plate[1], plate[2] - 1, plate[3] - 1), fill=WHITE)
        left, top = font.getbbox(labels[position], stroke_width=BOLD_STROKE_PX)[:2]
        draw.text(
            (plate[0] + PLATE_PAD_PX - left, plate[1] + PLATE_PAD_PX - top),
            labels[position],
            fill=RED,
            font=font,
            stroke_width=BOLD_STROKE_PX,
            stroke_fill=RED,
        )

    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return Panorama(
        jpeg=buffer.getvalue(),
        layout=layout,
        placeholders=tuple(placeholders),
        query_placeholder=query_missing,
    )
