"""`mmrag health`: the checks container healthchecks and Kubernetes probes run; exit 0 healthy, 1 with a reason."""

from __future__ import annotations

from typing import Annotated, NoReturn

import httpx
import typer

from services.cli.services import WorkerName
from services.common.settings import ConfigurationError, Settings, load_settings
from services.common.worker_probe import processes_with_model, seconds_since_alive, worker_node_name

health_app = typer.Typer(help="Health checks for containers and probes: exit 0 when healthy, 1 otherwise.")

TimeoutOption = Annotated[float, typer.Option(min=0.1, help="seconds to wait for an answer")]


def _unhealthy(reason: str) -> NoReturn:
    typer.echo(f"unhealthy: {reason}", err=True)
    raise typer.Exit(1)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        _unhealthy(" ".join(str(error).split()))


# Liveness: how stale the main process's local mark may be. It is touched every HEARTBEAT_INTERVAL_S (5 s); a
# margin for a loaded host or a Redis call that waits out its timeout.
LIVE_WITHIN_S = 60.0


@health_app.command()
def worker(
    name: Annotated[WorkerName, typer.Argument(help="embedder or reranker")],
    timeout: TimeoutOption = 5.0,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="liveness only: the main process marked itself alive within the last minute (no broker needed)",
        ),
    ] = False,
) -> None:
    """Readiness: the worker `<name>@<this hostname>` answers a ping through the broker, and (embedder) a pool
    process has its model loaded. With --live, a local check that a Redis outage cannot fail (worker_probe.py)."""
    node = worker_node_name(name)
    if live:
        age = seconds_since_alive(node)
        if age is None:
            _unhealthy(f"worker {node} has not marked itself alive on this host (not started yet?)")
        if age > LIVE_WITHIN_S:
            _unhealthy(f"worker {node} last marked itself alive {age:.0f} s ago (stuck or gone)")
        typer.echo(f"{node}: alive")
        return
    _ping(node, timeout)
    if name == "embedder" and not processes_with_model(node):
        _unhealthy(f"worker {node} answers, but no pool process has its model loaded yet (loading or reloading)")
    typer.echo(f"{node}: ok")


def _ping(node: str, timeout: float) -> None:
    # Imported here: Celery is not needed by the other `mmrag` commands that load this module.
    from services.common.celery_app import create_celery

    app = create_celery(_settings())
    # Fail fast on an unreachable broker instead of the default retry loop; this only shapes this client.
    app.conf.broker_connection_timeout = timeout
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            replies = app.control.ping(destination=[node], timeout=timeout, connection=connection)
    except Exception as error:  # kombu and redis-py raise several types for a broker that is down or refusing
        _unhealthy(f"the broker does not answer ({type(error).__name__}: {error})")
    if not any(node in reply for reply in replies):
        _unhealthy(f"worker {node} did not answer a ping within {timeout:g} s{_stopped_because(node, timeout)}")


@health_app.command()
def gateway(
    url: Annotated[str | None, typer.Option("--url", help="gateway URL (default: MMRAG_GATEWAY_URL)")] = None,
    timeout: TimeoutOption = 5.0,
    full: Annotated[
        bool, typer.Option("--full", help="also require a live consumer on every queue (GET /readyz?full=1)")
    ] = False,
) -> None:
    """GET /readyz: healthy when the gateway can serve (Redis answers); with --full, when every queue has a consumer."""
    base = (url or _settings().gateway_url).rstrip("/")
    path = "/readyz?full=1" if full else "/readyz"
    try:
        response = httpx.get(f"{base}{path}", timeout=timeout)
    except httpx.HTTPError as error:
        _unhealthy(f"{base} does not answer ({type(error).__name__}: {error})")
    if response.status_code != httpx.codes.OK:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        _unhealthy(f"{base}{path} answered {response.status_code}: {detail}")
    typer.echo(f"{base}: ready")


def _stopped_because(node: str, timeout: float) -> str:
    """Why `node` stopped, if it gave up and said so (broken_workers.py); empty otherwise."""
    import redis

    from services.common.broken_workers import broken_workers

    client = redis.Redis.from_url(_settings().redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        found = broken_workers(client, node)
    except redis.RedisError:
        return ""
    finally:
        client.close()
    return "".join(f"; {name} stopped: {reason}" for name, reason in sorted(found.items()))
