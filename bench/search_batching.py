"""Searches/s of the full-size architecture on the CPU: one client at a time against 32 batched together.

With dynamic batching (services/common/search_claims.py), 32 concurrent clients keep up to 32 searches waiting
whenever the model becomes free, and the worker embeds them in one forward pass; one client's searches run one
at a time. This measures that difference where it lives, in the embedder's model call: query photos (640x480)
with an instruction, preprocessing included, bge-visualized-base-en-v1.5's architecture with random weights
(speed depends on shapes, not values; the hub is out of reach here), bf16 where the CPU has bf16 units.
The full stack cannot load a random full-size model, so the pipeline around the model (a few ms per search,
bench/pipeline.py) is not included. Prints one JSON object.

    PYTHONPATH=. python3 bench/search_batching.py [--clients 32] [--budget-s 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.encode import build_base_model, gallery_images
from services.embedder.model_loading import cpu_has_native_bf16

GOAL_RATIO = 3.0
INSTRUCTIONS = ["phone case with this image theme", "the same in blue", "a mug with this pattern", "as a poster"]


def searches_per_s(model: Any, batch: int, budget_s: float) -> dict[str, Any]:
    """Batches of `batch` (image, instruction) queries, repeated until the budget is spent; one warm-up first."""
    images = gallery_images(batch)
    texts = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)]
    model.encode(images, texts)
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while not timings or time.perf_counter() < deadline:
        started = time.perf_counter()
        model.encode(images, texts)
        timings.append(time.perf_counter() - started)
    median = sorted(timings)[len(timings) // 2]
    return {
        "batch": batch,
        "searches_per_s": round(batch / median, 2),
        "seconds_per_batch_median": round(median, 4),
        "runs": len(timings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients = searches per forward pass")
    parser.add_argument("--budget-s", type=float, default=40.0, help="time box per measurement")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (SPEC measures 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    model = build_base_model(torch.device("cpu"), dtype)
    one = searches_per_s(model, 1, args.budget_s)
    many = searches_per_s(model, args.clients, args.budget_s)
    ratio = many["searches_per_s"] / one["searches_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "search batching, full-size architecture",
                "model": "bge-visualized-base-en-v1.5 architecture, random weights",
                "dtype": str(dtype).removeprefix("torch."),
                "queries": "640x480 photo-sized image + instruction, preprocessing included",
                "machine": {"arch": platform.machine(), "cpu_threads": torch.get_num_threads()},
                "one_client": one,
                f"{args.clients}_clients": many,
                "ratio": round(ratio, 2),
                "goal_ratio": GOAL_RATIO,
                "goal_met": ratio >= GOAL_RATIO,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
