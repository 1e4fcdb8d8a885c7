"""GET /metrics (Prometheus text): this process's HTTP traffic, and the shared job and queue picture.

Two kinds of families, so that summing any series over every scrape target never counts twice:
- HTTP families (`mmrag_http_*`) count the requests this gateway served; each replica reports its own, and their
  sum is the whole. Under several uvicorn workers set PROMETHEUS_MULTIPROC_DIR so the workers' counts add up.
- Job and queue families live in Redis (job_metrics.py, the queues, the consumer heartbeats), the same for every
  replica. Only one gateway host reports them: the one holding the reporter lease in Redis, renewed at each
  scrape (another host takes it over a minute after the reporter stops being scraped or dies). The others leave
  those families out, and `mmrag_metrics_reporter` says which target reports.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.heartbeat import live_consumers
from services.common.job_metrics import BATCH_BUCKETS, METRICS_KEY, STAGE_BUCKETS
from services.common.queues import Queue
from services.gateway.request_ids import RequestIds
from services.gateway.state import StateDep

REPORTER_KEY = "mmrag:metrics:reporter"
REPORTER_TTL_MS = 60_000
UNMATCHED_ROUTE = "<unmatched>"
# kombu's Redis transport keeps messages of priority 3, 6 and 9 in lists named after the queue with this suffix.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)

_HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "mmrag_http_requests",
    "HTTP requests served by this gateway, by route template",
    ["method", "route", "status"],
    registry=_HTTP_REGISTRY,
)
HTTP_DURATION = Histogram(
    "mmrag_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ["method", "route"],
    registry=_HTTP_REGISTRY,
)

router = APIRouter(tags=["health"])


class HttpMetrics:
    """Counts every request under its route template (`/v1/jobs/{job_id}`), never its raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # FastAPI puts the matched route in the scope; anything else (404s, static files) shares one label.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = str(scope.get("method", "GET"))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(HttpMetrics)
    app.add_middleware(RequestIds)
    app.include_router(router)


def _reporter_id() -> str:
    # The host, not the process: every uvicorn worker of one replica reports, so a scrape of that target always
    # finds the families whichever worker answers it.
    return os.environ.get("MMRAG_METRICS_REPORTER_ID") or socket.gethostname()


async def _is_reporter(client: aioredis.Redis) -> bool:
    me = _reporter_id()
    if await client.set(REPORTER_KEY, me, nx=True, px=REPORTER_TTL_MS):
        return True
    holder = await client.get(REPORTER_KEY)
    if holder is not None and (holder.decode() if isinstance(holder, bytes) else str(holder)) == me:
        await client.pexpire(REPORTER_KEY, REPORTER_TTL_MS)
        return True
    return False


async def _queue_length(client: aioredis.Redis, queue: str) -> int:
    names = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        lengths = await pipe.execute()
    return sum(int(n) for n in lengths)


class _Snapshot(Collector):
    """The shared families, from values read from Redis at this scrape."""

    def __init__(self, counters: Mapping[str, str], queues: Mapping[str, tuple[int, int]], reporter: bool) -> None:
        self._counters = counters
        self._queues = queues
        self._reporter = reporter

    def collect(self) -> Iterator[Metric]:
        reporter = GaugeMetricFamily(
            "mmrag_metrics_reporter", "1 on the one gateway host that reports the shared job and queue families"
        )
        reporter.add_metric([], 1 if self._reporter else 0)
        yield reporter
        if not self._reporter:
            return
        yield from self._counter_families()
        yield from self._histograms()
        length = GaugeMetricFamily("mmrag_queue_length", "Messages waiting on a Celery queue", labels=["queue"])
        consumers = GaugeMetricFamily(
            "mmrag_queue_consumers", "Worker processes consuming a queue (live heartbeats)", labels=["queue"]
        )
        for queue, (waiting, live) in self._queues.items():
            length.add_metric([queue], waiting)
            consumers.add_metric([queue], live)
        yield length
        yield consumers

    def _values(self, prefix: str) -> Iterator[tuple[list[str], float]]:
        for field, value in self._counters.items():
            if field.startswith(prefix):
                yield field.removeprefix(prefix).split("|"), float(value)

    def _counter_families(self) -> Iterator[Metric]:
        families: list[tuple[str, str, str, list[str]]] = [
            ("jobs_submitted|", "mmrag_jobs_submitted", "Jobs created, by kind", ["kind"]),
            ("jobs_finished|", "mmrag_jobs_finished", "Jobs ended, by kind and final status", ["kind", "status"]),
            ("rerank|", "mmrag_rerank", "Searches ended, by rerank outcome", ["status"]),
            ("index_images|", "mmrag_index_images", "Images of ended index jobs, by outcome", ["outcome"]),
            ("vlm_requests|", "mmrag_vlm_requests", "Searches that asked the VLM, by outcome", ["outcome"]),
        ]
        for prefix, name, doc, labels in families:
            family = CounterMetricFamily(name, doc, labels=labels)
            for values, value in self._values(prefix):
                if len(values) == len(labels):
                    family.add_metric(values, value)
            yield family

    def _histogram(
        self, prefix: str, name: str, doc: str, labels: list[str], buckets: Iterable[float]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        series: dict[tuple[str, ...], dict[str, float]] = {}
        for parts, value in self._values(prefix):
            series.setdefault(tuple(parts[: len(labels)]), {})[parts[-1]] = value
        bounds = list(buckets)
        for label_values, fields in sorted(series.items()):
            count = fields.get("count", 0.0)
            cumulative = [(_bound(b), fields.get(f"b{i}", 0.0)) for i, b in enumerate(bounds, start=1)]
            family.add_metric(list(label_values), [*cumulative, ("+Inf", count)], sum_value=fields.get("sum", 0.0))
        return family

    def _histograms(self) -> Iterator[Metric]:
        yield self._histogram(
            "job_stage|", "mmrag_job_stage_seconds", "Time jobs spent in each stage", ["kind", "stage"], STAGE_BUCKETS
        )
        yield self._histogram(
            "search_batch_size|",
            "mmrag_search_batch_size",
            "Searches embedded per forward pass, per search",
            [],
            BATCH_BUCKETS,
        )
        yield self._histogram("vlm|", "mmrag_vlm_seconds", "Time searches waited for the VLM", [], STAGE_BUCKETS)


def _bound(value: float) -> str:
    return repr(float(value))


def _http_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return _HTTP_REGISTRY


async def render(client: aioredis.Redis) -> bytes:
    reporter = await _is_reporter(client)
    counters: dict[str, str] = {}
    queues: dict[str, tuple[int, int]] = {}
    if reporter:
        raw: dict[Any, Any] = await client.hgetall(METRICS_KEY)
        counters = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        for queue in Queue:
            queues[queue.value] = (await _queue_length(client, queue.value), await live_consumers(client, queue.value))
    shared = CollectorRegistry(auto_describe=False)
    shared.register(_Snapshot(counters, queues, reporter))
    return generate_latest(_http_registry()) + generate_latest(shared)


@router.get("/metrics", summary="Prometheus metrics (open, no key)", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    return Response(await render(state.redis), media_type=CONTENT_TYPE_LATEST)
