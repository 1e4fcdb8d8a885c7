"""Real-size, photo-like JPEGs made on the spot, for decode tests and the decode bench.

No real camera photos ship with the project, so these start from the two CC0 photographs of the parity fixture
(scikit-image's `chelsea` and `coffee`), upscaled to the requested size. Upscaling alone would leave the image
smooth above the source's resolution, and a smooth image would flatter reduced decoding, so fine detail is added
back: luminance noise with a 1/f amplitude spectrum (the statistics of natural images) and a little per-pixel
sensor noise.
The result is then encoded as a camera would, JPEG quality 90 with 4:2:0 chroma subsampling.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

INPUTS = Path(__file__).resolve().parents[1] / "fixtures" / "visualized_bge" / "inputs"
PHOTO_SOURCES = ("chelsea.png", "coffee.png")


def pink_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise (height, width) whose amplitude falls as 1/f, scaled to unit standard deviation."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fy, fx), np.float32(1.0 / max(height, width)))
    spectrum = rng.standard_normal(falloff.shape, dtype=np.float32) * falloff
    plane = np.fft.irfft2(
        spectrum + 1j * rng.standard_normal(falloff.shape, dtype=np.float32) * falloff, s=(height, width)
    )
    return np.asarray((plane - plane.mean()) / plane.std(), dtype=np.float32)


def photo_like(size: tuple[int, int], seed: int, source: str | None = None) -> Image.Image:
    """An RGB image of `size` (width, height) with photo-like content at every scale."""
    rng = np.random.default_rng(seed)
    name = source or PHOTO_SOURCES[seed % len(PHOTO_SOURCES)]
    with Image.open(INPUTS / name) as base:
        upscaled = base.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    width, height = size
    pixels = np.asarray(upscaled, dtype=np.float32)
    # Detail in luminance (where photographs carry most of it), sensor noise in every channel.
    pixels += 12.0 * pink_noise(height, width, rng)[:, :, None]
    pixels += rng.normal(0.0, 2.0, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling="4:2:0", **options)
    return buffer.getvalue()


def photo_jpeg(size: tuple[int, int], seed: int, source: str | None = None) -> bytes:
    return jpeg_bytes(photo_like(size, seed, source))
