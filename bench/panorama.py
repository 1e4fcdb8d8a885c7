"""Panorama build time: query + 9 and 25 candidates from realistic 500-1000 px JPEGs, median of several runs.

Prints one JSON object. Run: `PYTHONPATH=. python3 bench/panorama.py` (goal: ≤ 30 ms for 9 candidates).
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from PIL import Image, ImageDraw, ImageFilter
except ImportError:  # a bare `python3` without Pillow: run again under the project's virtual environment
    venv_python = REPO / ".venv" / "bin" / "python"
    if not venv_python.exists() or Path(sys.prefix).resolve() == venv_python.parents[1].resolve():
        raise
    os.execv(str(venv_python), [str(venv_python), *sys.argv])

from services.reranker import panorama  # noqa: E402 - after the interpreter check

RUNS = 15
WARMUP = 2


def photo_like_jpeg(seed: int) -> bytes:
    """A 500-1000 px JPEG with shapes, gradients and noise, so it decodes and compresses like a product photo."""
    rng = random.Random(seed)
    size = (rng.randint(500, 1000), rng.randint(500, 1000))
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = rng.randint(20, 300), rng.randint(20, 300)
        draw.ellipse((x, y, x + w, y + h), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noise = Image.effect_noise(size, 24).convert("RGB")
    image = Image.blend(image, noise, 0.12)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def measure(count: int, images: list[bytes], query: bytes) -> dict[str, float | int]:
    candidates = images[:count]
    for _ in range(WARMUP):
        panorama.build(query, candidates)
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        result = panorama.build(query, candidates)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "max_ms": round(max(times), 2),
        "width": result.layout.width,
        "height": result.layout.height,
        "tile_px": result.layout.tile,
        "jpeg_kb": round(len(result.jpeg) / 1024, 1),
    }


def main() -> None:
    images = [photo_like_jpeg(seed) for seed in range(25)]
    query = photo_like_jpeg(1000)
    report = {
        "bench": "panorama",
        "runs": RUNS,
        "inputs": "JPEG q90, 500-1000 px per side, generated in-process",
        "input_kb_mean": round(statistics.mean(len(i) for i in images) / 1024, 1),
        "jpeg_quality": panorama.JPEG_QUALITY,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "candidates_9": measure(9, images, query),
        "candidates_25": measure(25, images, query),
        "goal_ms_9": 30,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
