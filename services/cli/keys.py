"""`mmrag keys`: create, list and revoke API keys, straight in Redis (MMRAG_REDIS_URL)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from services.common.api_keys import KeyStore
from services.common.errors import MmragError
from services.common.settings import ConfigurationError, load_settings

keys_app = typer.Typer(help="API keys (stored in Redis as hashes; a key is shown once, when it is created).")
console = Console()
err = Console(stderr=True)


def _store() -> KeyStore:
    try:
        settings = load_settings()
    except ConfigurationError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None
    return KeyStore(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5))


def _fail(error: Exception) -> typer.Exit:
    detail = error.detail if isinstance(error, MmragError) else f"Redis: {error} (is MMRAG_REDIS_URL right?)"
    err.print(f"[red]{detail}[/]", markup=True, highlight=False)
    return typer.Exit(1)


@keys_app.command()
def create(
    name: Annotated[str, typer.Argument(help="a unique name: who or what uses the key")],
    scopes: Annotated[str, typer.Option(help="comma-separated: search, index, admin")] = "search",
    rate: Annotated[str | None, typer.Option(help="at most N/second or N/minute (default: no limit)")] = None,
    collections: Annotated[
        str | None, typer.Option(help="comma-separated collections it may use (default: all)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"name", "key", "scopes", "rate"} as JSON')] = False,
) -> None:
    """Create a key and print it, this once: only its hash is stored."""
    try:
        secret, key = _store().create(
            name,
            scopes.split(","),
            rate=rate,
            collections=None if collections is None else [c.strip() for c in collections.split(",") if c.strip()],
        )
    except (MmragError, redis.RedisError) as error:
        raise _fail(error) from None
    if as_json:
        body = {"name": key.name, "key": secret, "scopes": [s.value for s in key.scopes], "rate": key.rate}
        if key.collections is not None:
            body["collections"] = key.collections
        sys.stdout.write(json.dumps(body) + "\n")
        return
    err.print(f"key [bold]{key.name}[/] ({', '.join(key.scopes)}; rate {key.rate or 'unlimited'}) — shown once:")
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="print the keys as JSON")] = False,
) -> None:
    """Names, scopes, rates, when created and last used; never the keys themselves."""
    try:
        keys = _store().list()
    except redis.RedisError as error:
        raise _fail(error) from None
    if as_json:
        sys.stdout.write(json.dumps([key.model_dump(mode="json") for key in keys]) + "\n")
        return
    table = Table("name", "scopes", "rate", "collections", "created", "last used")
    for key in keys:
        table.add_row(
            key.name,
            ",".join(key.scopes),
            key.rate or "-",
            ",".join(key.collections) if key.collections is not None else "all",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.last_used.strftime("%Y-%m-%d %H:%M:%S") if key.last_used else "never",
        )
    console.print(table)


@keys_app.command()
def revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Revoke a key: every gateway refuses it within 5 s."""
    try:
        _store().revoke(name)
    except (MmragError, redis.RedisError) as error:
        raise _fail(error) from None
    err.print(f"revoked {name}")
