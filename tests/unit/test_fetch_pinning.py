"""The fetcher connects to exactly the address it checked (no DNS rebinding), and still speaks to the URL's host.

Real sockets on loopback only: the image server on 127.0.0.2 (allowed), a counting listener on 127.0.0.1 at the
same port (what a rebinding answer points to). The system resolver is replaced, for one made-up name only, by a
rebinding one: it answers 127.0.0.2 the first time and 127.0.0.1 after. If the fetcher resolved the name a second
time to connect, it would reach the listener.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from services.common.settings import Settings
from services.embedder.fetch import FetchError, ImageFetcher

NAME = "images.rebinding.test"
SERVED_ON = "127.0.0.2"
INTERNAL = "127.0.0.1"
BODY = b"\x89PNG\r\n\x1a\n pretend image"


@dataclass
class Peer:
    """Listening sockets on SERVED_ON and INTERNAL at one port; `handle` serves each connection on SERVED_ON."""

    handle: Callable[[socket.socket], None]
    accepted: dict[str, int] = field(default_factory=lambda: {SERVED_ON: 0, INTERNAL: 0})
    port: int = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[Peer]:
        stop = threading.Event()
        served, internal = self._bind()
        threads = [
            threading.Thread(target=self._serve, args=(s, host, stop), daemon=True)
            for s, host in ((served, SERVED_ON), (internal, INTERNAL))
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            served.close()
            internal.close()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        for _ in range(20):
            served = socket.create_server((SERVED_ON, 0))
            self.port = served.getsockname()[1]
            try:
                return served, socket.create_server((INTERNAL, self.port))
            except OSError:
                served.close()
        raise RuntimeError(f"no port free on both {SERVED_ON} and {INTERNAL}")

    def _serve(self, listener: socket.socket, host: str, stop: threading.Event) -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            self.accepted[host] += 1
            with connection, contextlib.suppress(OSError):
                if host == SERVED_ON:
                    connection.settimeout(5)
                    self.handle(connection)


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lookup of NAME, in order; the first answers SERVED_ON, the later ones INTERNAL."""
    asked: list[str] = []
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return system(host, port, *args, **kwargs)
        asked.append(host)
        return system(SERVED_ON if len(asked) == 1 else INTERNAL, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def _fetcher(**settings: Any) -> ImageFetcher:
    allowed = (ip_network(f"{SERVED_ON}/32"),)
    return ImageFetcher(Settings(fetch_allow_networks=allowed, fetch_timeout_s=5, **settings))


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected_to(rebinding_dns: list[str]) -> None:
    requests: list[bytes] = []

    def answer(connection: socket.socket) -> None:
        requests.append(connection.recv(65536))
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)

    with Peer(answer).running() as peer:
        body = _fetcher().fetch(f"http://{NAME}:{peer.port}/a.png", time.monotonic() + 10)

    assert body == BODY
    assert rebinding_dns == [NAME]
    assert peer.accepted == {SERVED_ON: 1, INTERNAL: 0}
    # Connected to the address, spoke to the name.
    assert f"\r\nhost: {NAME}:{peer.port}\r\n".encode() in requests[0].lower()


def test_tls_sends_the_urls_host_name_and_verifies_the_certificate_against_it(
    rebinding_dns: list[str], tmp_path: Path
) -> None:
    # A self-signed certificate for NAME: the handshake reaches certificate verification, which must refuse it.
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={NAME}",
            "-addext",
            f"subjectAltName=DNS:{NAME}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []

    def record_server_name(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        server_names.append(name)

    context.sni_callback = record_server_name

    def handshake(connection: socket.socket) -> None:
        context.wrap_socket(connection, server_side=True).close()

    with Peer(handshake).running() as peer, pytest.raises(FetchError) as refused:
        _fetcher(fetch_attempts=1).fetch(f"https://{NAME}:{peer.port}/a.png", time.monotonic() + 10)

    assert server_names == [NAME]
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.reason
    assert rebinding_dns == [NAME]
    assert peer.accepted == {SERVED_ON: 1, INTERNAL: 0}


def test_a_name_with_any_internal_address_is_refused_before_any_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return system(host, port, *args, **kwargs)
        return system(SERVED_ON, port, *args, **kwargs) + system(INTERNAL, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with Peer(lambda _connection: None).running() as peer, pytest.raises(FetchError) as refused:
        _fetcher().fetch(f"http://{NAME}:{peer.port}/a.png", time.monotonic() + 10)

    assert refused.value.reason.startswith(f"refused: {NAME} resolves to {INTERNAL}, a loopback address")
    assert peer.accepted == {SERVED_ON: 0, INTERNAL: 0}
