"""API keys in Redis: random secrets shown once, of which only the SHA-256 is stored.

A key is 32 random bytes, so a fast hash is the right one: nobody can guess it, and a slow password hash would
only cost every request. The secret is never compared: its digest is looked up, which tells an attacker timing
nothing about any key, and the stored digest is compared with the computed one in constant time as the last step.

Layout: `mmrag:apikey:<digest>` holds the record (JSON), `mmrag:apikeys` maps each name to its digest (names are
unique; listing and revoking go by name), `mmrag:apikeys:last-used` holds when each was last looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from services.common.collections import validate_collection_name
from services.common.errors import InvalidRequest, NotFound

RECORD_PREFIX = "mmrag:apikey:"
NAMES_KEY = "mmrag:apikeys"
LAST_USED_KEY = "mmrag:apikeys:last-used"
SECRET_PREFIX = "mmrag_"
# The key given by MMRAG_BOOTSTRAP_ADMIN_KEY is checked by the gateway itself, under this name.
BOOTSTRAP_KEY_NAME = "bootstrap-admin"
# \Z, not $: `$` also matches before a trailing newline.
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
RATE_PATTERN = re.compile(r"([1-9][0-9]{0,8})/(second|minute)\Z")


class Scope(StrEnum):
    SEARCH = "search"  # searches, its own jobs, reading collections and images
    INDEX = "index"  # uploading and deleting images, managing collections (and reading them)
    ADMIN = "admin"  # keys, and every job


class ApiKey(BaseModel):
    """A stored key: what it may do, never the secret."""

    name: str
    scopes: list[Scope]
    rate: str | None = Field(default=None, description="the most requests it may make: N/second or N/minute")
    collections: list[str] | None = Field(default=None, description="the only collections it may use; null: all")
    created_at: datetime
    last_used: datetime | None = None


class StoredKey(ApiKey):
    digest: str


class KeyExists(InvalidRequest):
    """A key with this name exists already."""


class KeyNotFound(NotFound):
    """No key has this name."""


def new_secret() -> str:
    """A fresh key: the prefix lets secret scanners find leaked keys; the rest is 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def digests_match(stored: str, computed: str) -> bool:
    return hmac.compare_digest(stored.encode(), computed.encode())


def validate_key_name(name: str) -> str:
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"key name {name[:80]!r} is not valid: use 1–64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if name == BOOTSTRAP_KEY_NAME:
        raise InvalidRequest(f"{BOOTSTRAP_KEY_NAME!r} names the key of MMRAG_BOOTSTRAP_ADMIN_KEY: pick another name")
    return name


def parse_scopes(scopes: Iterable[str]) -> list[Scope]:
    names = [s.strip().lower() for s in scopes if s.strip()]
    unknown = sorted(set(names) - {s.value for s in Scope})
    if unknown:
        raise InvalidRequest(f"unknown scope(s) {', '.join(unknown)}: use search, index and/or admin")
    if not names:
        raise InvalidRequest("give the key at least one scope: search, index and/or admin")
    return sorted({Scope(name) for name in names}, key=list(Scope).index)


def validate_rate(rate: str | None) -> str | None:
    if rate is None:
        return None
    rate = rate.strip().lower()
    if not RATE_PATTERN.fullmatch(rate):
        raise InvalidRequest(f"rate {rate[:40]!r} is not valid: write N/second or N/minute, such as 10/second")
    return rate


def new_key(
    name: str, scopes: Iterable[str], *, rate: str | None = None, collections: Iterable[str] | None = None
) -> tuple[str, StoredKey]:
    """A validated new key: its secret (to show once) and its record (to store)."""
    secret = new_secret()
    record = StoredKey(
        name=validate_key_name(name),
        scopes=parse_scopes(scopes),
        rate=validate_rate(rate),
        collections=None if collections is None else sorted({validate_collection_name(c) for c in collections}),
        created_at=datetime.now(UTC),
        digest=key_digest(secret),
    )
    return secret, record


def _record_key(digest: str) -> str:
    return RECORD_PREFIX + digest


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# KEYS: names, record. ARGV: name, digest, record. A name is taken at most once.
_CREATE_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""
# KEYS: names, last used. ARGV: name, record prefix.
_REVOKE_SCRIPT = """
local digest = redis.call('HGET', KEYS[1], ARGV[1])
if not digest then return 0 end
redis.call('DEL', ARGV[2] .. digest)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
# KEYS: record, last used. ARGV: now. One round trip per lookup, noting when the key was used.
_LOOKUP_SCRIPT = """
local record = redis.call('GET', KEYS[1])
if record then redis.call('HSET', KEYS[2], cjson.decode(record)['name'], ARGV[1]) end
return record
"""


def _exists(name: str) -> KeyExists:
    return KeyExists(f"a key named {name!r} exists: revoke it first (mmrag keys revoke) or pick another name")


def _unknown(name: str) -> KeyNotFound:
    return KeyNotFound(f"no key is named {name[:80]!r}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _listing(records: Iterable[bytes | str | None], last_used: Mapping[bytes | str, bytes | str]) -> list[ApiKey]:
    used = {_text(name): datetime.fromisoformat(_text(when)) for name, when in last_used.items()}
    keys = [ApiKey.model_validate_json(raw) for raw in records if raw is not None]
    return sorted((key.model_copy(update={"last_used": used.get(key.name)}) for key in keys), key=lambda k: k.name)


class KeyStore:
    """Synchronous access, for `mmrag keys`."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._create = client.register_script(_CREATE_SCRIPT)
        self._revoke = client.register_script(_REVOKE_SCRIPT)

    def create(
        self, name: str, scopes: Iterable[str], *, rate: str | None = None, collections: Iterable[str] | None = None
    ) -> tuple[str, ApiKey]:
        secret, record = new_key(name, scopes, rate=rate, collections=collections)
        created = self._create(
            keys=[NAMES_KEY, _record_key(record.digest)], args=[record.name, record.digest, record.model_dump_json()]
        )
        if not int(created):
            raise _exists(record.name)
        return secret, ApiKey.model_validate(record.model_dump(exclude={"digest"}))

    def list(self) -> list[ApiKey]:
        digests = self._redis.hvals(NAMES_KEY)
        records = self._redis.mget([_record_key(_text(d)) for d in digests]) if digests else []
        return _listing(records, self._redis.hgetall(LAST_USED_KEY))

    def revoke(self, name: str) -> None:
        if not int(self._revoke(keys=[NAMES_KEY, LAST_USED_KEY], args=[name, RECORD_PREFIX])):
            raise _unknown(name)


class AsyncKeyStore:
    """Asynchronous access, for the gateway: the same operations, and the lookup of a presented key."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._create = client.register_script(_CREATE_SCRIPT)
        self._revoke = client.register_script(_REVOKE_SCRIPT)
        self._lookup = client.register_script(_LOOKUP_SCRIPT)

    async def create(
        self, name: str, scopes: Iterable[str], *, rate: str | None = None, collections: Iterable[str] | None = None
    ) -> tuple[str, ApiKey]:
        secret, record = new_key(name, scopes, rate=rate, collections=collections)
        created = await self._create(
            keys=[NAMES_KEY, _record_key(record.digest)], args=[record.name, record.digest, record.model_dump_json()]
        )
        if not int(created):
            raise _exists(record.name)
        return secret, ApiKey.model_validate(record.model_dump(exclude={"digest"}))

    async def list(self) -> list[ApiKey]:
        digests = await self._redis.hvals(NAMES_KEY)
        records = await self._redis.mget([_record_key(_text(d)) for d in digests]) if digests else []
        return _listing(records, await self._redis.hgetall(LAST_USED_KEY))

    async def revoke(self, name: str) -> None:
        if not int(await self._revoke(keys=[NAMES_KEY, LAST_USED_KEY], args=[name, RECORD_PREFIX])):
            raise _unknown(name)

    async def lookup(self, digest: str) -> StoredKey | None:
        """The key whose secret has this digest, or None (unknown or revoked)."""
        raw = await self._lookup(keys=[_record_key(digest), LAST_USED_KEY], args=[_now_iso()])
        if raw is None:
            return None
        record = StoredKey.model_validate_json(raw)
        return record if digests_match(record.digest, digest) else None
