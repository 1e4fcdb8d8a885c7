"""Decoding for the model: speed of full against reduced decoding, and what reduction changes in the vectors.

Inputs: 2-megapixel photo-like JPEGs (tests/support/photos.py: the parity fixture's two CC0 photographs upscaled,
with 1/f-spectrum detail and sensor noise added back, JPEG quality 90, 4:2:0), in four shapes; the same pixels as
PNG (decoded whole, then resized); panoramas, whose long side is also cropped; white noise as the worst case for any
downscaling; the parity inputs as they are.

Speed: images/s on one core for full decoding (decode_image), reduced decoding (decode_for_model: Pillow's JPEG
draft mode) and, when opencv-python-headless is installed, OpenCV's IMREAD_REDUCED_COLOR_*, each alone and followed
by the model's own preprocessing (bicubic resize to 224 and centre crop), which is where full decoding pays most.
Then the decode pool's throughput with 1..N threads and with N processes, which shows whether decoding releases the
GIL. Vectors: cosine between full and reduced decoding, tiny-random and the full-size architecture (random
weights), at the chosen margin (2× the model input) and at 1× for comparison. Prints one JSON object.

    PYTHONPATH=. python3 bench/decode.py [--budget-s 3] [--photos 8] [--skip-base]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from encode import build_base_model  # bench/encode.py, beside this file

from services.common.cpus import usable_cpus
from services.common.images import REDUCED_DECODE_MARGIN, decode_for_model, decode_image, reduced_min_side
from services.embedder.model_tiny import build_tiny_random
from services.embedder.visualized_bge import VisualizedBGE, pixels_from_image
from tests.support.photos import INPUTS, jpeg_bytes, photo_like


def _optional_opencv() -> Any:
    try:
        return importlib.import_module("cv2")
    except ImportError:  # optional: only compared, never used by the service
        return None


cv2 = _optional_opencv()

MODEL_SIDE = 224
MIN_SIDE = reduced_min_side(MODEL_SIDE)
MAX_PIXELS = 50_000_000
# About 2 megapixels each: landscape 4:3, 16:9, portrait 3:4, square.
SHAPES = ((1632, 1224), (1920, 1080), (1224, 1632), (1414, 1414))
# Wider than MAX_KEPT_ASPECT: their long side is cropped as well as reduced.
PANORAMAS = ((4200, 1400), (1400, 4200), (3000, 1000), (5000, 1200))
TOLERANCE = 0.999


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(1000 + seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def full(data: bytes) -> Image.Image:
    return decode_image(data, max_pixels=MAX_PIXELS)


def reduced(data: bytes, min_side: int = MIN_SIDE) -> Image.Image:
    return decode_for_model(data, max_pixels=MAX_PIXELS, min_side=min_side)


def opencv_flag(data: bytes) -> int:
    """The IMREAD_REDUCED_COLOR_* that draft mode would pick: the largest 1/2^k keeping the short side ≥ MIN_SIDE."""
    width, height = Image.open(io.BytesIO(data)).size
    scale = min(width, height) // MIN_SIDE
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4)):
        if scale >= factor:
            return int(flag)
    return int(cv2.IMREAD_REDUCED_COLOR_2 if scale >= 2 else cv2.IMREAD_COLOR)


def opencv(data: bytes, flag: int | None = None) -> Image.Image:
    # Applies EXIF orientation itself; the pixel checks would still run on Pillow's header parse first.
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), opencv_flag(data) if flag is None else flag)
    if pixels is None:
        raise ValueError("OpenCV could not decode the image")
    return Image.fromarray(np.ascontiguousarray(pixels[..., ::-1]), "RGB")


def opencv_full(data: bytes) -> Image.Image:
    return opencv(data, cv2.IMREAD_COLOR)


def preprocessed(decode: Callable[[bytes], Image.Image]) -> Callable[[bytes], object]:
    return lambda data: pixels_from_image(decode(data), MODEL_SIDE)


def timed(work: Callable[[], int], budget_s: float) -> tuple[float, float]:
    """Images/s of repeated `work()` calls (each returns how many it did) within the budget, and the process's CPU
    seconds per wall second over them (above 1 only if threads really ran in parallel)."""
    work()
    done = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while done == 0 or time.perf_counter() - wall < budget_s:
        done += work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done / wall, cpu / wall


def best_of(variants: dict[str, Callable[[], int]], rounds: int, budget_s: float) -> dict[str, dict[str, float]]:
    """Each variant's best round; rounds interleave the variants, so load from other processes hits all alike."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, work in variants.items():
            measured = timed(work, budget_s / rounds)
            if name not in best or measured[0] > best[name][0]:
                best[name] = measured
    return {name: {"images_per_s": round(r, 1), "cpu_per_wall": round(c, 2)} for name, (r, c) in best.items()}


def _decode_reduced(data: bytes) -> tuple[int, int]:
    return reduced(data).size


def _decode_full(data: bytes) -> tuple[int, int]:
    return full(data).size


def sequential(work: Callable[[bytes], object], inputs: Sequence[bytes]) -> Callable[[], int]:
    def run() -> int:
        for data in inputs:
            work(data)
        return len(inputs)

    return run


def pooled(pool: Executor, work: Callable[[bytes], object], inputs: Sequence[bytes]) -> Callable[[], int]:
    def run() -> int:
        list(pool.map(work, inputs))
        return len(inputs)

    return run


def speed_section(jpegs: list[bytes], pngs: list[bytes], budget_s: float, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    decoders: dict[str, Callable[[bytes], Image.Image]] = {"pillow_full": full, "pillow_reduced_draft": reduced}
    if cv2 is not None:
        decoders |= {"opencv_full": opencv_full, "opencv_reduced": opencv}
    variants: dict[str, Callable[[], int]] = {}
    for name, decode in decoders.items():
        variants[f"jpeg/{name}/decode"] = sequential(decode, jpegs)
        variants[f"jpeg/{name}/decode+model_preprocessing"] = sequential(preprocessed(decode), jpegs)
    variants["png/pillow_full/decode+model_preprocessing"] = sequential(preprocessed(full), pngs)
    variants["png/pillow_reduced/decode+model_preprocessing"] = sequential(preprocessed(reduced), pngs)
    measured = best_of(variants, rounds, budget_s)
    return {
        "images_per_s_one_core": {name: value["images_per_s"] for name, value in measured.items()},
        "reduced_sizes": [list(size) for size in sorted({reduced(data).size for data in jpegs + pngs})],
    }


def parallel_section(jpegs: list[bytes], budget_s: float, rounds: int) -> dict[str, Any]:
    cpus = usable_cpus()
    results: dict[str, Any] = {"usable_cpus": cpus, "pool_threads": cpus}
    for name, work in (("reduced", _decode_reduced), ("full", _decode_full)):
        batch = list(jpegs) * cpus
        with (
            ThreadPoolExecutor(1) as one,
            ThreadPoolExecutor(cpus) as threads,
            ProcessPoolExecutor(cpus) as processes,
        ):
            variants = {
                "1_thread": pooled(one, work, batch),
                f"{cpus}_threads": pooled(threads, work, batch),
                f"{cpus}_processes": pooled(processes, work, batch),
            }
            measured = best_of(variants, rounds, budget_s)
        speedup = measured[f"{cpus}_threads"]["images_per_s"] / measured["1_thread"]["images_per_s"]
        results[name] = {**measured, "thread_speedup": round(speedup, 2)}
    return results


def encode(model: VisualizedBGE, images: list[Image.Image]) -> np.ndarray:
    return model.encode(images, [None] * len(images), batch_size=8)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    similarity = (reference * candidate).sum(axis=1)
    return {"min": round(float(similarity.min()), 6), "mean": round(float(similarity.mean()), 6)}


def vector_section(model: VisualizedBGE, sets: dict[str, list[bytes]], with_opencv: bool) -> dict[str, Any]:
    torch.set_num_threads(usable_cpus())
    results: dict[str, Any] = {}
    for name, inputs in sets.items():
        started = time.perf_counter()
        reference = encode(model, [full(data) for data in inputs])
        between = reference @ reference.T
        entry: dict[str, Any] = {
            "images": len(inputs),
            f"margin_{REDUCED_DECODE_MARGIN}x": cosines(reference, encode(model, [reduced(data) for data in inputs])),
            "margin_1x": cosines(reference, encode(model, [reduced(data, MODEL_SIDE) for data in inputs])),
            # How close the model puts two different inputs at all, to read the figures above against.
            "max_cosine_between_distinct_inputs": round(float(between[~np.eye(len(inputs), dtype=bool)].max()), 6),
        }
        if with_opencv and cv2 is not None and name.endswith("jpeg"):
            entry["opencv_reduced"] = cosines(reference, encode(model, [opencv(data) for data in inputs]))
        entry["within_tolerance"] = entry[f"margin_{REDUCED_DECODE_MARGIN}x"]["min"] >= TOLERANCE
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=3.0, help="time box per speed measurement (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per speed measurement (best kept)")
    parser.add_argument("--photos", type=int, default=8, help="2-megapixel photo-like images (at least 2)")
    parser.add_argument("--skip-base", action="store_true", help="tiny-random only (the base model is slow on CPU)")
    args = parser.parse_args()
    started = time.perf_counter()
    photos = [photo_like(SHAPES[i % len(SHAPES)], seed=i) for i in range(args.photos)]
    noises = [noise(SHAPES[i % len(SHAPES)], i) for i in range(4)]
    parity = sorted(INPUTS.glob("*.png"))
    sets = {
        "parity_inputs_as_they_are": [path.read_bytes() for path in parity],
        "photos_2mp_jpeg": [jpeg_bytes(image) for image in photos],
        "photos_2mp_png": [png_bytes(image) for image in photos],
        "panoramas_3_to_4x_jpeg": [jpeg_bytes(photo_like(size, seed=i)) for i, size in enumerate(PANORAMAS)],
        "white_noise_2mp_jpeg": [jpeg_bytes(image) for image in noises],
        "white_noise_2mp_png": [png_bytes(image) for image in noises],
    }
    report: dict[str, Any] = {
        "benchmark": "decode",
        "inputs": "2 MP photo-like JPEGs (q90, 4:2:0; tests/support/photos.py), same pixels as PNG, white noise, "
        "and the parity inputs (small PNGs, left as they are by reduced decoding)",
        "min_side": MIN_SIDE,
        "margin": f"{REDUCED_DECODE_MARGIN}x the model's {MODEL_SIDE} px input",
        "tolerance_cosine": TOLERANCE,
        "pillow": PIL.__version__,
        "opencv": cv2.__version__ if cv2 is not None else "not installed (pip install opencv-python-headless)",
        "machine": platform.machine(),
        "os_cpu_count": os.cpu_count(),
        "jpeg_bytes_mean": int(np.mean([len(data) for data in sets["photos_2mp_jpeg"]])),
    }
    section_started = time.perf_counter()
    report["speed"] = speed_section(sets["photos_2mp_jpeg"], sets["photos_2mp_png"], args.budget_s, args.rounds)
    report["parallel"] = parallel_section(sets["photos_2mp_jpeg"], args.budget_s, args.rounds)
    report["speed_seconds"] = round(time.perf_counter() - section_started, 1)
    vectors = {"tiny-random": vector_section(build_tiny_random(), sets, with_opencv=True)}
    if not args.skip_base:
        torch.manual_seed(0)  # default initialisation: seeded, so runs compare
        base = build_base_model(torch.device("cpu"), torch.float32)
        vectors["base-architecture-random-weights"] = vector_section(base, sets, with_opencv=False)
    report["cosine_full_vs_reduced"] = vectors
    report["within_tolerance"] = all(
        entry["within_tolerance"] for model in vectors.values() for entry in model.values()
    )
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
