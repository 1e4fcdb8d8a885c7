"""Reduced decoding (decode_for_model): the checks of full decoding, EXIF, the size bounds, the vectors, the setting."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.common.cpus import cgroup_cpu_quota, usable_cpus
from services.common.errors import InvalidImage
from services.common.images import MAX_KEPT_ASPECT, decode_for_model, decode_image, reduced_min_side
from services.common.settings import Settings
from services.embedder.ingest import decode_stored, decode_threads
from services.embedder.model_tiny import build_tiny_random
from tests.support.photos import jpeg_bytes, photo_jpeg, photo_like

REPO = Path(__file__).resolve().parents[2]
MIN_SIDE = reduced_min_side(224)
LIMIT = 50_000_000


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, **options)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height RGB pixels, with almost no data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header is rewritten to declare width × height."""
    data = bytearray(jpeg_bytes(Image.new("RGB", (64, 64), (200, 30, 30))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _decode(data: bytes, max_pixels: int = LIMIT) -> Image.Image:
    return decode_for_model(data, max_pixels=max_pixels, min_side=MIN_SIDE)


# --- the checks of full decoding are kept -------------------------------------------------------------------

BAD_INPUTS = {
    "empty": (b"", "empty"),
    "not an image": (b"%PDF-1.7 ...", "not a"),
    "lying GIF header": (b"GIF89a" + b"\0" * 100, "not a valid one"),
    "truncated 2 MP JPEG": (photo_jpeg((1632, 1224), seed=0)[:20_000], "complete"),
    "truncated PNG": (_png(Image.new("RGB", (1000, 800), (9, 99, 199)))[:200], "complete"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_reduced_decoding_refuses_what_full_decoding_refuses(name: str) -> None:
    data, message = BAD_INPUTS[name]
    with pytest.raises(InvalidImage, match=message) as full:
        decode_image(data, max_pixels=LIMIT)
    with pytest.raises(InvalidImage, match=message) as reduced:
        _decode(data)
    assert reduced.value.detail == full.value.detail


@pytest.mark.parametrize("declared", [_png_declaring, _jpeg_declaring])
def test_the_pixel_limit_is_checked_on_the_header_before_anything_is_decoded(declared: object) -> None:
    # 9,000 × 9,000 = 81 MP declared in a file of a few hundred bytes.
    data = declared(9_000, 9_000)  # type: ignore[operator]
    assert len(data) < 2_000
    with pytest.raises(InvalidImage, match="MMRAG_MAX_IMAGE_PIXELS"):
        _decode(data)


@pytest.mark.parametrize("declared", [_png_declaring, _jpeg_declaring])
@pytest.mark.parametrize("side", [10_000, 20_000])  # past Pillow's bomb warning (89 MP) and its error (179 MP)
def test_a_decompression_bomb_is_refused_even_under_a_high_pixel_limit(declared: object, side: int) -> None:
    data = declared(side, side)  # type: ignore[operator]
    for decode in (_decode, lambda data, max_pixels: decode_image(data, max_pixels=max_pixels)):
        with pytest.raises(InvalidImage, match="looks like a decompression bomb"):
            decode(data, max_pixels=10**12)


# --- size --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1632, 1224), (1080, 1920), (4000, 3000), (6000, 2000), (900, 900), (2000, 897)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_short_side_stays_between_the_margin_and_twice_it(size: tuple[int, int], fmt: str) -> None:
    source = Image.new("RGB", size, (120, 60, 30))
    data = jpeg_bytes(source) if fmt == "JPEG" else _png(source)
    width, height = _decode(data).size
    assert MIN_SIDE <= min(width, height) < 2 * MIN_SIDE
    assert max(width, height) <= MAX_KEPT_ASPECT * min(width, height) + 1
    # Landscape stays landscape: the crop of a long side is centred, never a rotation.
    assert (width >= height) == (size[0] >= size[1])


def test_an_image_already_near_the_model_size_is_decoded_exactly_as_in_full() -> None:
    source = photo_like((600, 400), seed=3)
    for data in (jpeg_bytes(source), _png(source)):
        reduced = _decode(data)
        assert reduced.size == (600, 400)
        assert np.array_equal(np.asarray(reduced), np.asarray(decode_image(data, max_pixels=LIMIT)))


def test_a_7000_pixel_png_never_yields_more_than_the_bound() -> None:
    # Issue 17: eight of these (1.3 MB of upload) held at full size added 2.2 GB to the embedder.
    source = Image.new("RGBA", (7000, 7000), (10, 20, 30, 255))
    ImageDraw.Draw(source).ellipse((1000, 1000, 6000, 6000), fill=(200, 100, 50, 128))
    image = _decode(_png(source))
    assert image.mode == "RGB"
    assert min(image.size) < 2 * MIN_SIDE
    assert image.width * image.height < 4 * MAX_KEPT_ASPECT * MIN_SIDE**2


# Run in a fresh process: VmHWM, its peak resident memory, starts afresh at exec (ru_maxrss would not).
_PEAK_PROGRAM = """
import io, json, sys
from pathlib import Path
from PIL import Image
from services.common.images import decode_for_model

def peak_kib():
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])

path, reduced, limit, min_side = sys.argv[1], sys.argv[2] == "reduced", int(sys.argv[3]), int(sys.argv[4])
data = Path(path).read_bytes()
small = io.BytesIO()
Image.new("RGB", (8, 8)).save(small, format="PNG")
decode_for_model(small.getvalue(), max_pixels=64, min_side=4)  # plugins and zlib loaded before the baseline
before = peak_kib()
kept = [decode_for_model(data, max_pixels=limit, min_side=min_side, reduced=reduced) for _ in range(4)]
print(json.dumps({"peak_growth_kib": peak_kib() - before, "sizes": [image.size for image in kept]}))
"""


def _peak_of_four_decodes(path: Path, mode: str) -> dict[str, object]:
    command = [sys.executable, "-c", _PEAK_PROGRAM, str(path), mode, str(LIMIT), str(MIN_SIDE)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_chunk_of_large_pngs_holds_no_full_size_pixels(tmp_path: Path) -> None:
    """Peak memory of a process that decodes four 7000×7000 PNGs and keeps all four results, as a chunk does.

    Measured: about 200 MiB reduced (one full-size decode at a time: 140 MiB, then four images of 0.6 MiB), about
    1,100 MiB in full. The bound is two full-size images; full decoding is checked to break it, so the measurement
    can tell the two apart.
    """
    source = Image.new("RGB", (7000, 7000), (30, 60, 90))
    ImageDraw.Draw(source).rectangle((500, 500, 6500, 3000), fill=(250, 250, 0))
    path = tmp_path / "big.png"
    path.write_bytes(_png(source))
    del source
    bound_kib = 2 * 7000 * 7000 * 3 // 1024
    reduced = _peak_of_four_decodes(path, "reduced")
    assert all(min(size) < 2 * MIN_SIDE for size in reduced["sizes"])  # type: ignore[attr-defined]
    assert reduced["peak_growth_kib"] < bound_kib, reduced  # type: ignore[operator]
    full = _peak_of_four_decodes(path, "full")
    assert full["peak_growth_kib"] > bound_kib, full  # type: ignore[operator]


# --- orientation and vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied_as_in_full_decoding(fmt: str) -> None:
    source = photo_like((1632, 1224), seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise: portrait
    data = jpeg_bytes(source, exif=exif.tobytes()) if fmt == "JPEG" else _png(source, exif=exif.tobytes())
    full = decode_image(data, max_pixels=LIMIT)
    reduced = _decode(data)
    assert full.height > full.width
    assert reduced.height > reduced.width
    small = (102, 136)
    difference = np.abs(
        np.asarray(full.resize(small, Image.Resampling.BOX), dtype=np.int16)
        - np.asarray(reduced.resize(small, Image.Resampling.BOX), dtype=np.int16)
    )
    assert difference.mean() < 2.0


def test_vectors_stay_within_the_tolerance_on_real_size_photos() -> None:
    model = build_tiny_random()
    shapes = [(1632, 1224), (1920, 1080), (1224, 1632), (3000, 2000)]
    photos = [photo_like(size, seed=i) for i, size in enumerate(shapes)]
    inputs = [jpeg_bytes(photo) for photo in photos] + [_png(photo) for photo in photos]
    full = model.encode([decode_image(data, max_pixels=LIMIT) for data in inputs], [None] * len(inputs))
    reduced = model.encode([_decode(data) for data in inputs], [None] * len(inputs))
    cosines = (full * reduced).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    # Reduction did happen: the test would pass trivially if every image came back at full size.
    assert all(max(_decode(data).size) < max(shapes[i % 4]) for i, data in enumerate(inputs))


# --- settings ---------------------------------------------------------------------------------------------


def test_the_setting_turns_reduced_decoding_off(monkeypatch: pytest.MonkeyPatch) -> None:
    data = photo_jpeg((1632, 1224), seed=2)
    monkeypatch.setenv("MMRAG_DECODE_REDUCED", "false")
    off = Settings()
    assert off.decode_reduced is False
    image = decode_stored(data, off, min_side=MIN_SIDE, what="file")
    assert image.size == (1632, 1224)
    assert np.array_equal(np.asarray(image), np.asarray(decode_image(data, max_pixels=LIMIT)))
    monkeypatch.delenv("MMRAG_DECODE_REDUCED")
    assert decode_stored(data, Settings(), min_side=MIN_SIDE, what="file").size == (816, 612)


def test_decode_threads_default_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMRAG_DECODE_THREADS", raising=False)
    assert decode_threads(Settings()) == usable_cpus()
    monkeypatch.setenv("MMRAG_DECODE_THREADS", "3")
    assert decode_threads(Settings()) == 3


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_container_cpu_quota_caps_the_pool(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if quota is None else min(affinity, math.ceil(quota)))
