"""Who is calling: the API key of a request, checked against Redis (through a short cache) and its scopes.

With `MMRAG_AUTH=required` every `/v1` route asks for a key; the open routes (health, docs, the web app's files,
metrics) declare no dependency on this module. With auth off every request acts as the operator: all scopes,
every job, no rate limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from pydantic import SecretStr

from services.common.api_keys import BOOTSTRAP_KEY_NAME, AsyncKeyStore, Scope, StoredKey, digests_match, key_digest
from services.common.errors import Forbidden, Unauthorized
from services.gateway.problems import problem_doc

if TYPE_CHECKING:
    from services.gateway.state import GatewayState

# A revoked key stops working within this long on every gateway replica (the promise is 5 s).
KEY_CACHE_TTL_S = 2.0
KEY_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    """The caller of a request. `name` is None when auth is off."""

    name: str | None
    scopes: frozenset[Scope]
    collections: frozenset[str] | None = None
    rate: str | None = None

    @property
    def sees_every_job(self) -> bool:
        return Scope.ADMIN in self.scopes

    def check_collection(self, collection: str) -> None:
        """403 for a collection outside the key's allow-list; decided on the name alone, so it reveals nothing
        about which collections exist."""
        if self.collections is not None and collection not in self.collections:
            allowed = ", ".join(sorted(self.collections)) or "none"
            raise Forbidden(f"this API key may use only these collections: {allowed}")

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


OPERATOR = Principal(name=None, scopes=frozenset(Scope))
BOOTSTRAP_ADMIN = Principal(name=BOOTSTRAP_KEY_NAME, scopes=frozenset(Scope))


def _principal(record: StoredKey) -> Principal:
    return Principal(
        name=record.name,
        scopes=frozenset(record.scopes),
        collections=None if record.collections is None else frozenset(record.collections),
        rate=record.rate,
    )


class Authenticator:
    """Turns a presented secret into a Principal, or None when no key has it."""

    def __init__(self, keys: AsyncKeyStore, bootstrap_key: SecretStr | None, cache_ttl_s: float = KEY_CACHE_TTL_S):
        self._keys = keys
        self._bootstrap_digest = None if bootstrap_key is None else key_digest(bootstrap_key.get_secret_value())
        self._cache_ttl_s = cache_ttl_s
        # digest → (expiry on the monotonic clock, principal). Only known keys are kept: a new key works at once.
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal(self, secret: str) -> Principal | None:
        digest = key_digest(secret)
        if self._bootstrap_digest is not None and digests_match(self._bootstrap_digest, digest):
            return BOOTSTRAP_ADMIN
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self._keys.lookup(digest)
        if record is None:
            self._cache.pop(digest, None)
            return None
        principal = _principal(record)
        if len(self._cache) >= KEY_CACHE_MAX_ENTRIES:
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= KEY_CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[digest] = (now + self._cache_ttl_s, principal)
        return principal

    def forget(self, name: str) -> None:
        """Drop a revoked key from this replica's cache at once (the others notice within the cache TTL)."""
        self._cache = {d: entry for d, entry in self._cache.items() if entry[1].name != name}


_bearer = HTTPBearer(auto_error=False, description="an mmrag API key: `Authorization: Bearer <key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an mmrag API key")


def _presented_key(request: Request, bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    if header:
        return header
    if request.headers.get("authorization"):
        raise Unauthorized("the Authorization header must be `Bearer <key>`")
    return None


async def authorize(
    security_scopes: SecurityScopes,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The caller, once its key is known, within its rate, and holding one of the route's scopes."""
    state: GatewayState = request.app.state.gateway
    if not state.settings.auth_required:
        return OPERATOR
    secret = _presented_key(request, bearer, header)
    if secret is None:
        raise Unauthorized("this server requires an API key: send `Authorization: Bearer <key>` (or X-API-Key)")
    principal = await state.authenticator.principal(secret)
    if principal is None:
        raise Unauthorized("the API key is not valid: it is unknown or was revoked")
    await state.rate_limiter.check(principal)
    needed = {Scope(scope) for scope in security_scopes.scopes}
    if needed and not needed & principal.scopes:
        wanted = " or ".join(sorted(needed))
        raise Forbidden(f"this API key lacks the {wanted} scope this request needs")
    return principal


# What each kind of route asks for: a key with at least one of these scopes.
SearchAccess = Annotated[Principal, Security(authorize, scopes=[Scope.SEARCH])]
IndexAccess = Annotated[Principal, Security(authorize, scopes=[Scope.INDEX])]
CollectionReadAccess = Annotated[Principal, Security(authorize, scopes=[Scope.SEARCH, Scope.INDEX])]
JobAccess = Annotated[Principal, Security(authorize, scopes=[Scope.SEARCH, Scope.INDEX, Scope.ADMIN])]
AdminAccess = Annotated[Principal, Security(authorize, scopes=[Scope.ADMIN])]

# The answers every route behind a key may give, for the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: problem_doc("No API key, or one that is unknown or revoked (with `WWW-Authenticate: Bearer`)"),
    403: problem_doc("The API key lacks the scope, or the collection is outside its allow-list"),
    429: problem_doc("The API key is over its rate or its number of active jobs (with `Retry-After`)"),
}
