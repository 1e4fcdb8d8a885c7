"""Fetching one image from a URL for an index job, without letting the URL reach anything but public addresses.

SSRF rules: only http and https; every address connected to, for the URL and for each redirect (at most
MAX_REDIRECTS, followed here rather than by httpx), must be public (addresses.py) unless it lies in
MMRAG_FETCH_ALLOW_NETWORKS. The check sits in the connection itself: `VettedBackend` resolves the host once,
checks every address it got, and opens the TCP connection to exactly those addresses, so DNS cannot answer
differently between the check and the connection (rebinding). TLS still verifies and sends SNI for the URL's host
name (httpcore passes the origin's host to start_tls), and the Host header is the URL's.

Each attempt is bounded in time (MMRAG_FETCH_TIMEOUT_S, for connecting, the answer and the whole body) and the
body in size (MMRAG_MAX_UPLOAD_MB, before it is read when the server declares its length); timeouts, 5xx and 429
are tried again after a growing pause (or the server's Retry-After), up to MMRAG_FETCH_ATTEMPTS in all.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address

import httpcore
import httpx

from services.common.settings import Settings
from services.embedder.addresses import IPAddress, IPNetwork, literal_address, refusal

MAX_REDIRECTS = 5
# Addresses of one host tried in turn when a connection fails (each within the attempt's time).
MAX_ADDRESSES_TRIED = 3
# Pauses between attempts: 0.5 s, 1 s, 2 s … (each with jitter), at most this; a Retry-After at most the second.
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0
SCHEMES = ("http", "https")
USER_AGENT = "mmrag-indexer/0.1 (image search; fetches images whose URLs were sent to be indexed)"
_REFUSAL_HINT = "only public addresses are fetched (MMRAG_FETCH_ALLOW_NETWORKS lists exceptions)"


class FetchError(Exception):
    """A URL that could not be fetched, with the reason a client reads in the job's progress.failed."""

    def __init__(self, reason: str, *, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host`, each once, in the resolver's order; a numeric host is its own address."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        # EAI_AGAIN is the resolver's own "try again later"; the others are answers.
        raise FetchError(
            f"the host {host!r} cannot be resolved ({error.strerror})", retryable=error.errno == socket.EAI_AGAIN
        ) from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = literal_address(str(sockaddr[0]))
        if address is not None and address not in found:
            found.append(address)
    if not found:
        raise FetchError(f"the host {host!r} has no address")
    return found


def _naming(host: str, address: IPAddress) -> str:
    """How a refusal names the address: as written, as a numeric form's meaning, or as what DNS answered."""
    if literal_address(host) != address:
        return f"{host} resolves to {address},"
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return f"{host} means {address},"  # 2130706433, 0x7f.1: what the C resolver makes of them
    return f"{host.strip('[]')} is"


def vetted_addresses(host: str, port: int, allowed: Iterable[IPNetwork]) -> list[IPAddress]:
    """The addresses a connection to `host` may use; FetchError if any of them is not public and not allowed (a
    host that also resolves to an internal address is refused whole, whichever address would be tried first)."""
    addresses = resolve(host, port)
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            raise FetchError(f"refused: {_naming(host, address)} {reason}; {_REFUSAL_HINT}")
    return addresses


class VettedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, opened only to addresses that passed `vetted_addresses`."""

    def __init__(self, allowed: tuple[IPNetwork, ...]) -> None:
        self._allowed = allowed
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = vetted_addresses(host, port, self._allowed)
        last_error: Exception | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            try:
                return self._sockets.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None  # vetted_addresses returns at least one address
        raise last_error

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class VettedTransport(httpx.HTTPTransport):
    """httpx's own transport (its request and error mapping) over a pool that connects through VettedBackend.

    httpx.HTTPTransport has no parameter for httpcore's network backend, so its pool is replaced by one built with
    the same arguments plus ours; without a proxy (one would connect to addresses of its own choosing) and without
    httpcore's connect retries (attempts are counted by the fetcher)."""

    def __init__(self, allowed: tuple[IPNetwork, ...], limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx keeps its connection pool elsewhere: VettedTransport cannot pin addresses")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=VettedBackend(allowed),
        )


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


def backoff_s(attempt: int, retry_after_s: float | None) -> float:
    """The pause after failed attempt number `attempt` (1, 2, …): exponential with jitter, or the server's wish."""
    if retry_after_s is not None:
        return retry_after_s
    return min(MAX_BACKOFF_S, 0.5 * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.3g} MB"


class ImageFetcher:
    """Fetches URLs for one worker process; thread-safe (one connection pool shared by the fetch threads)."""

    def __init__(self, settings: Settings) -> None:
        self._max_bytes = settings.max_upload_bytes
        self._max_mb = settings.max_upload_mb
        self._timeout_s = settings.fetch_timeout_s
        self._attempts = settings.fetch_attempts
        limits = httpx.Limits(max_connections=settings.fetch_concurrency, max_keepalive_connections=4)
        self._client = httpx.Client(
            transport=VettedTransport(settings.fetch_allow_networks, limits),
            follow_redirects=False,
            trust_env=False,
            timeout=settings.fetch_timeout_s,
            # Image formats are compressed already; a compressed body could expand past the size limit.
            headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str, deadline: float) -> bytes:
        """The body at `url`; FetchError says why not. No attempt starts after `deadline` (time.monotonic())."""
        for attempt in range(1, self._attempts + 1):
            started = time.monotonic()
            if attempt == 1 and started >= deadline:
                raise FetchError("not tried: the chunk's time for fetching ran out (half of MMRAG_INDEX_TIME_LIMIT_S)")
            try:
                return self._follow(url, min(deadline, started + self._timeout_s))
            except FetchError as error:
                pause = backoff_s(attempt, error.retry_after_s)
                if not error.retryable or attempt == self._attempts or time.monotonic() + pause >= deadline:
                    if error.retryable and attempt > 1:
                        raise FetchError(f"{error.reason} (after {attempt} attempts)") from None
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _follow(self, url: str, deadline: float) -> bytes:
        current = self._checked_url(url)
        for hop in range(MAX_REDIRECTS + 1):
            with self._get(current, deadline, redirected=hop > 0) as response:
                if not response.is_redirect:
                    return self._body(response, deadline)
                try:
                    current = self._checked_url(str(current.join(response.headers["location"])))
                except FetchError as error:
                    raise FetchError(f"redirected to {response.headers['location'][:200]!r}: {error.reason}") from None
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _checked_url(url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise FetchError(f"not a valid URL ({error})") from None
        if parsed.scheme not in SCHEMES:
            raise FetchError(f"refused: only http and https URLs are fetched, not {parsed.scheme or 'no scheme'}")
        if not parsed.host:
            raise FetchError("not a valid URL: it names no host")
        return parsed

    @contextmanager
    def _get(self, url: httpx.URL, deadline: float, *, redirected: bool) -> Iterator[httpx.Response]:
        where = f" (after a redirect to {url})" if redirected else ""
        timeout = max(0.001, deadline - time.monotonic())
        try:
            with self._client.stream("GET", url, timeout=timeout) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise FetchError(
                        f"the server answered {response.status_code} {response.reason_phrase}{where}",
                        retryable=True,
                        retry_after_s=_retry_after_s(response),
                    )
                if not response.is_redirect and response.status_code != 200:
                    raise FetchError(f"the server answered {response.status_code} {response.reason_phrase}{where}")
                yield response
        except FetchError as error:
            if where and error.reason.startswith("refused"):
                raise FetchError(f"{error.reason}{where}", retryable=error.retryable) from None
            raise
        except httpx.TimeoutException:
            raise FetchError(self._too_slow(where), retryable=True) from None
        except httpx.HTTPError as error:
            raise FetchError(f"the request failed{where}: {type(error).__name__}: {error}") from None

    def _too_slow(self, where: str) -> str:
        return f"no complete answer within {self._timeout_s:g} s (MMRAG_FETCH_TIMEOUT_S){where}"

    def _body(self, response: httpx.Response, deadline: float) -> bytes:
        too_large = f"larger than {self._max_mb:g} MB (MMRAG_MAX_UPLOAD_MB)"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise FetchError(f"{too_large}: the server declares {_megabytes(int(declared))}")
        body = bytearray()
        # Raw bytes: no decompression (asked with Accept-Encoding: identity; a compressed body fails sniffing).
        for piece in response.iter_raw():
            body += piece
            if len(body) > self._max_bytes:
                raise FetchError(too_large)
            if time.monotonic() > deadline:
                raise FetchError(self._too_slow(""), retryable=True)
        return bytes(body)
