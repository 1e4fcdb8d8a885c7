"""Worker process metrics on a port of the worker's own (MMRAG_WORKER_METRICS_PORT): model load time, encode rate,
memory and GPU memory of each pool process.

Celery's prefork children share nothing, so prometheus_client's multiprocess mode collects them: every process
writes its values to files in PROMETHEUS_MULTIPROC_DIR, and the worker's main process serves their sum (counters)
or one series per live process (gauges, `pid` label: bounded by the pool size). The directory must be set before
prometheus_client is imported anywhere in the worker, hence `enable` runs first thing in `run_worker`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from services.embedder.model_loading import Encoder

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable(port: int | None) -> None:
    """Serve this worker's metrics on `port` (None: off). Call in the main process before the pool forks."""
    if port is None:
        return
    directory = tempfile.mkdtemp(prefix="mmrag-worker-metrics-")
    os.environ[MULTIPROC_ENV] = directory

    from celery.signals import task_postrun, worker_process_shutdown, worker_shutdown
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)

    def _sample(**_: Any) -> None:
        sample_memory()

    def _dead(pid: int | None = None, **_: Any) -> None:
        mark_process_dead(pid or os.getpid(), path=directory)  # type: ignore[no-untyped-call]

    def _remove(**_: Any) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    task_postrun.connect(_sample, weak=False, dispatch_uid="mmrag-worker-metrics-sample")
    worker_process_shutdown.connect(_dead, weak=False, dispatch_uid="mmrag-worker-metrics-dead")
    worker_shutdown.connect(_remove, weak=False, dispatch_uid="mmrag-worker-metrics-remove")


def enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _Metrics:
    """Created on first use, in the process that records: after `enable` set the directory."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.model_load = Gauge(
            "mmrag_worker_model_load_seconds", "Time to load and warm up the model", multiprocess_mode="max"
        )
        self.encoded = Counter("mmrag_worker_encoded_items", "Images and texts encoded (warm-up excluded)")
        self.encode_seconds = Histogram(
            "mmrag_worker_encode_seconds",
            "Time of one encode call (a batch)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.memory = Gauge(
            "mmrag_worker_resident_memory_bytes", "Resident memory of a pool process", multiprocess_mode="liveall"
        )
        self.gpu_memory = Gauge(
            "mmrag_worker_gpu_memory_bytes", "GPU memory a pool process has allocated", multiprocess_mode="liveall"
        )


_metrics: _Metrics | None = None


def metrics() -> _Metrics | None:
    global _metrics
    if _metrics is None and enabled():
        _metrics = _Metrics()
    return _metrics


def sample_memory() -> None:
    recorded = metrics()
    if recorded is None:
        return
    try:
        with open("/proc/self/statm") as statm:
            recorded.memory.set(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        pass
    import sys

    torch = sys.modules.get("torch")  # only where the model lives; never imported for this
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        recorded.gpu_memory.set(torch.cuda.memory_allocated())


def record_model_load(seconds: float) -> None:
    recorded = metrics()
    if recorded is not None:
        recorded.model_load.set(seconds)
        sample_memory()


class CountingEncoder:
    """An Encoder that counts what it encodes (the encode rate) and how long each call takes."""

    def __init__(self, model: Encoder) -> None:
        self._model = model
        self.model_name = model.model_name
        self.dim = model.dim
        self.is_random = model.is_random
        self.image_size = model.image_size

    @property
    def device(self) -> Any:
        return self._model.device

    @property
    def dtype(self) -> Any:
        return self._model.dtype

    def encode(self, images: Sequence[Image.Image | None], texts: Sequence[str | None], **options: Any) -> np.ndarray:
        recorded = metrics()
        if recorded is None:
            return self._model.encode(images, texts, **options)
        with recorded.encode_seconds.time():
            vectors = self._model.encode(images, texts, **options)
        recorded.encoded.inc(len(images))
        return vectors
