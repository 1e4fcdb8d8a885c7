"""Encoder throughput of the full-size bge-visualized-base-en-v1.5 architecture (random weights).

Images/s for image-only items (the indexing workload), end to end through `encode()` (preprocessing included),
at batch 1 and batched, fp32 and bf16 on the CPU; on a GPU also fp16/bf16 at large batches with and without
torch.compile, plus the forward pass alone. Every measurement is time-boxed. Prints one JSON object.

    PYTHONPATH=. python3 bench/encode.py [--cpu-batch 16] [--budget-s 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.embedder.model_loading import cpu_has_native_bf16
from services.embedder.model_tiny import tiny_vocab
from services.embedder.visualized_bge import EVA02_CLIP_B16, VisualizedBGE, text_config_from_dict

# bge-base-en-v1.5's config.json (the architecture only; weights are random here), as the parity fixture records it.
BASE_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "visualized_bge" / "configs.json"
CPU_GOAL_RATIO = 3.0
GPU_GOAL_IMAGES_PER_S = 2000.0


def build_base_model(device: torch.device, dtype: torch.dtype) -> VisualizedBGE:
    """Speed depends on shapes, not values: default init, and a small offline vocabulary for the tokenizer."""
    tokenizer = BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)
    text_config = text_config_from_dict(json.loads(BASE_CONFIGS.read_text())["base_en_v1.5"]["text_config"])
    model = VisualizedBGE(text_config, tokenizer, EVA02_CLIP_B16, is_random=True)
    return model.to(device=device, dtype=dtype)


def gallery_images(count: int) -> list[Image.Image]:
    """Photo-sized noise images, distinct objects so preprocessing really runs for each."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB") for _ in range(count)]


def images_per_s(run: Callable[[], object], items: int, budget_s: float, sync: Callable[[], None]) -> dict[str, Any]:
    """One untimed warm-up call, then repeated timed calls until the budget is spent (at least one)."""
    run()
    sync()
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while not timings or time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        sync()
        timings.append(time.perf_counter() - started)
    best = min(timings)
    return {
        "batch": items,
        "images_per_s": round(items / best, 3),
        "seconds_per_batch": round(best, 4),
        "runs": len(timings),
    }


def measure_encode(model: VisualizedBGE, batch: int, budget_s: float, sync: Callable[[], None]) -> dict[str, Any]:
    images = gallery_images(batch)
    texts: list[str | None] = [None] * batch
    return images_per_s(lambda: model.encode(images, texts), batch, budget_s, sync)


def measure_core(model: VisualizedBGE, batch: int, budget_s: float, sync: Callable[[], None]) -> dict[str, Any]:
    prepared = model.encode_pre(gallery_images(batch), [None] * batch)
    return images_per_s(lambda: model.encode_core(prepared), batch, budget_s, sync)


def affordable_batch(per_image_s: float, wanted: int, budget_s: float) -> int:
    """A batch that fits the time box twice over (warm-up + one timed run), never below 2."""
    return max(2, min(wanted, int(budget_s / max(per_image_s, 1e-6) / 2)))


def cpu_section(batch: int, budget_s: float) -> dict[str, Any]:
    device = torch.device("cpu")
    model = build_base_model(device, torch.float32)
    results: dict[str, Any] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype)
        single = measure_encode(model, 1, budget_s / 2, lambda: None)
        chosen = affordable_batch(single["seconds_per_batch"], batch, budget_s)
        results[f"{name}_batch_1"] = single
        results[f"{name}_batched"] = measure_encode(model, chosen, budget_s / 2, lambda: None)
    base = results["fp32_batch_1"]["images_per_s"]
    results["ratio_bf16_batched_over_fp32_batch_1"] = round(results["bf16_batched"]["images_per_s"] / base, 3)
    results["ratio_fp32_batched_over_fp32_batch_1"] = round(results["fp32_batched"]["images_per_s"] / base, 3)
    results["goal_ratio"] = CPU_GOAL_RATIO
    results["goal_met"] = results["ratio_bf16_batched_over_fp32_batch_1"] >= CPU_GOAL_RATIO
    return results


def gpu_section(batches: list[int], budget_s: float, compile_modes: tuple[bool, ...]) -> dict[str, Any]:
    device = torch.device("cuda")
    results: dict[str, Any] = {"name": torch.cuda.get_device_name(device)}
    dtypes = [("fp16", torch.float16)] + ([("bf16", torch.bfloat16)] if torch.cuda.is_bf16_supported() else [])
    for compiled in compile_modes:
        for name, dtype in dtypes:
            model = build_base_model(device, dtype)
            if compiled:
                model.compile_modules()
            for batch in batches:
                key = f"{name}{'_compiled' if compiled else ''}_batch_{batch}"
                results[key] = {
                    "end_to_end": measure_encode(model, batch, budget_s, torch.cuda.synchronize),
                    "forward_only": measure_core(model, batch, budget_s, torch.cuda.synchronize),
                }
            del model
            torch.cuda.empty_cache()
    best = max(v["end_to_end"]["images_per_s"] for k, v in results.items() if isinstance(v, dict))
    results["best_end_to_end_images_per_s"] = best
    results["goal_images_per_s"] = GPU_GOAL_IMAGES_PER_S
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-batch", type=int, default=16)
    parser.add_argument("--budget-s", type=float, default=40.0, help="time box per CPU measurement")
    parser.add_argument("--gpu-batches", default="64,256,512")
    parser.add_argument("--gpu-budget-s", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (SPEC measures 2 cores)")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU numbers only (the CPU goal is for 2 cores)")
    parser.add_argument("--compile", choices=("no", "yes", "both"), default="both", help="torch.compile on the GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "encoder",
        "model": "bge-visualized-base-en-v1.5 architecture, random weights",
        "items": "image only, 640x480 RGB, preprocessing included unless forward_only",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if not args.skip_cpu:
        report["cpu"] = cpu_section(args.cpu_batch, args.budget_s)
    if torch.cuda.is_available():
        batches = [int(b) for b in args.gpu_batches.split(",")]
        compile_modes = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]
        report["gpu"] = gpu_section(batches, args.gpu_budget_s, compile_modes)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
