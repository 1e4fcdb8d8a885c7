"""API keys in a real Redis: stored as hashes, listed without secrets, revoked by name; the gateway's lookup."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis
import redis.asyncio as aioredis

from services.common.api_keys import (
    BOOTSTRAP_KEY_NAME,
    AsyncKeyStore,
    KeyExists,
    KeyNotFound,
    KeyStore,
    Scope,
    new_key,
)
from services.common.errors import InvalidRequest
from services.gateway.auth import Authenticator


def test_a_new_key_is_long_random_and_stored_only_as_its_sha256(redis_client: redis.Redis) -> None:
    secret, key = KeyStore(redis_client).create("alice", ["search", "index"], rate="10/second")
    assert secret.startswith("mmrag_") and len(secret) >= 40
    assert key.scopes == [Scope.SEARCH, Scope.INDEX]
    dump = b"".join(
        name + (redis_client.dump(name) or b"") for name in redis_client.scan_iter("*")
    )  # every key and value, raw
    assert secret.encode() not in dump
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in dump


def test_two_keys_never_share_a_secret() -> None:
    secrets = {new_key(f"k{i}", ["search"])[0] for i in range(200)}
    assert len(secrets) == 200


def test_listing_shows_names_scopes_and_rates_sorted_and_never_the_secret(redis_client: redis.Redis) -> None:
    store = KeyStore(redis_client)
    bob_secret, _ = store.create("bob", ["admin"])
    store.create("alice", ["search"], rate="5/minute", collections=["default", "shoes"])
    listed = store.list()
    assert [k.name for k in listed] == ["alice", "bob"]
    assert listed[0].rate == "5/minute" and listed[0].collections == ["default", "shoes"]
    assert listed[0].last_used is None
    assert bob_secret not in str([k.model_dump() for k in listed])


def test_a_name_is_taken_once_and_a_revoked_name_is_free_again(redis_client: redis.Redis) -> None:
    store = KeyStore(redis_client)
    store.create("carol", ["search"])
    with pytest.raises(KeyExists):
        store.create("carol", ["index"])
    store.revoke("carol")
    with pytest.raises(KeyNotFound):
        store.revoke("carol")
    store.create("carol", ["index"])
    assert [k.scopes for k in store.list()] == [[Scope.INDEX]]


@pytest.mark.parametrize(
    ("name", "scopes", "rate", "message"),
    [
        ("has space", ["search"], None, "key name"),
        ("", ["search"], None, "key name"),
        (BOOTSTRAP_KEY_NAME, ["search"], None, "MMRAG_BOOTSTRAP_ADMIN_KEY"),
        ("ok", ["read"], None, "unknown scope"),
        ("ok", [], None, "at least one scope"),
        ("ok", ["search"], "10/hour", "N/second or N/minute"),
        ("ok", ["search"], "0/second", "N/second or N/minute"),
        ("ok", ["search"], "ten/second", "N/second or N/minute"),
    ],
)
def test_bad_names_scopes_and_rates_are_refused_saying_what_is_expected(
    name: str, scopes: list[str], rate: str | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        new_key(name, scopes, rate=rate)


def test_the_gateway_finds_a_key_by_its_secret_and_notes_its_use(redis_url: str, redis_client: redis.Redis) -> None:
    secret, _ = KeyStore(redis_client).create("dave", ["search"], rate="3/second")

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            authenticator = Authenticator(AsyncKeyStore(client), None)
            principal = await authenticator.principal(secret)
            assert principal is not None and principal.name == "dave" and principal.rate == "3/second"
            assert await authenticator.principal(secret + "x") is None
            assert await authenticator.principal("") is None
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert KeyStore(redis_client).list()[0].last_used is not None


def test_a_revoked_key_stops_working_once_the_cache_entry_expires(redis_url: str, redis_client: redis.Redis) -> None:
    secret, _ = KeyStore(redis_client).create("erin", ["search"])

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            cached = Authenticator(AsyncKeyStore(client), None, cache_ttl_s=0.3)
            assert await cached.principal(secret) is not None
            KeyStore(redis_client).revoke("erin")
            assert await cached.principal(secret) is not None  # still in this replica's cache
            await asyncio.sleep(0.35)
            assert await cached.principal(secret) is None
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_bootstrap_key_is_an_admin_with_every_scope_without_redis(redis_url: str) -> None:
    from pydantic import SecretStr

    bootstrap = "b" * 64

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            authenticator = Authenticator(AsyncKeyStore(client), SecretStr(bootstrap))
            principal = await authenticator.principal(bootstrap)
            assert principal is not None
            assert principal.name == BOOTSTRAP_KEY_NAME and principal.sees_every_job
            assert principal.scopes == frozenset(Scope)
        finally:
            await client.aclose()

    asyncio.run(scenario())
