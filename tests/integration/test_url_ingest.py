"""Indexing images from URLs on a real stack: the embedder fetches them from a real HTTP server, SSRF-safe.

Every connection stays on loopback. Images are served on 127.0.0.2, the one network the stack may fetch from
(MMRAG_FETCH_ALLOW_NETWORKS=127.0.0.2/32); 127.0.0.1 (and ::1) stand for the internal addresses that must never be
reached: a listener there counts every connection it is offered, and must count none.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import Stack, gallery, running_stack, sha256_id, stored_requests, wait_for_job
from tests.support.processes import REPO, python_module

pytestmark = pytest.mark.integration

SERVED_ON = "127.0.0.2"
MAX_UPLOAD_MB = 0.05  # 52 KB: far above the test images, far below the oversize bodies
MAX_INDEX_FILES = 20
FETCH_TIMEOUT_S = 1.0
SLOW_ANSWER_S = 2.5  # past FETCH_TIMEOUT_S: every attempt times out
IMAGES = dict(gallery(6))
OVERSIZE = 200_000


class ImageHandler(BaseHTTPRequestHandler):
    """The routes of the image server; `server.hits` counts the requests per path."""

    server: ImageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        hits = self.server.count(path)
        # A client that gave up (timeout, size limit) closes the connection while we still write.
        with contextlib.suppress(ConnectionError):
            self._answer(path, hits)

    def _answer(self, path: str, hits: int) -> None:
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/img/") and name in IMAGES:
            # The type a server claims is not what decides: the bytes are sniffed.
            self._send(200, IMAGES[name], {"Content-Type": "application/octet-stream"})
        elif path == "/copy-of-first.png":
            self._send(200, IMAGES["item_000.png"], {"Content-Type": "image/png"})
        elif path.startswith("/flaky/"):  # 503 once, then the image
            self._send(503) if hits == 1 else self._send(200, IMAGES[name])
        elif path.startswith("/throttled/"):  # 429 once, then the image
            self._send(429, headers={"Retry-After": "1"}) if hits == 1 else self._send(200, IMAGES[name])
        elif path == "/redirect":
            target = parse_qs(urlsplit(self.path).query)["to"][0]
            self._send(302, headers={"Location": target})
        elif path == "/text.png":
            self._send(200, b"<html>not an image at all</html>", {"Content-Type": "image/png"})
        elif path == "/oversize-declared.png":
            self._send(200, b"\x89PNG\r\n\x1a\n" + bytes(OVERSIZE), {"Content-Type": "image/png"})
        elif path == "/oversize-streamed.png":
            # No Content-Length: the body runs until the connection closes, and only counting it can stop it.
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\x89PNG\r\n\x1a\n")
            for _ in range(OVERSIZE // 8192):
                self.wfile.write(bytes(8192))
        elif path == "/slow.png":
            time.sleep(SLOW_ANSWER_S)
            self._send(200, IMAGES["item_005.png"])
        else:
            self._send(404)


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((SERVED_ON, 0), ImageHandler)
        self._lock = threading.Lock()
        self.hits: Counter[str] = Counter()

    def count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def url(self, path: str) -> str:
        return f"http://{SERVED_ON}:{self.server_address[1]}{path}"


class CountingListener:
    """Listening sockets on 127.0.0.1 and ::1 (one port) that accept and count every connection offered to them."""

    def __init__(self) -> None:
        self.accepted = 0
        self._stop = threading.Event()
        self._sockets = self._bind()
        self.port = int(self._sockets[0].getsockname()[1])
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self._sockets]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _bind() -> list[socket.socket]:
        for _ in range(20):  # the port free on 127.0.0.1 may be taken on ::1: try another
            v4 = socket.create_server(("127.0.0.1", 0))
            try:
                v6 = socket.create_server(("::1", v4.getsockname()[1]), family=socket.AF_INET6)
            except OSError:
                v4.close()
                continue
            return [v4, v6]
        raise RuntimeError("no port free on both 127.0.0.1 and ::1")

    def _serve(self, listener: socket.socket) -> None:
        listener.settimeout(0.1)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = listener.accept()
                self.accepted += 1
                connection.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for listener in self._sockets:
            listener.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    image_server = ImageServer()
    thread = threading.Thread(target=image_server.serve_forever, daemon=True)
    thread.start()
    yield image_server
    image_server.shutdown()
    image_server.server_close()


@pytest.fixture(scope="module")
def internal() -> Iterator[CountingListener]:
    listener = CountingListener()
    # The listener really counts: a connection to each of its addresses is seen (then the count starts over).
    for host in ("127.0.0.1", "::1"):
        socket.create_connection((host, listener.port), timeout=5).close()
    deadline = time.monotonic() + 10
    while listener.accepted < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.accepted == 2
    listener.accepted = 0
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def url_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An embedder (no reranker: index jobs only) that may fetch from 127.0.0.2 alone, with short fetch limits."""
    settings = {
        "MMRAG_FETCH_ALLOW_NETWORKS": f"{SERVED_ON}/32",
        "MMRAG_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "MMRAG_FETCH_ATTEMPTS": "3",
        "MMRAG_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "MMRAG_MAX_INDEX_FILES": str(MAX_INDEX_FILES),
        "MMRAG_INDEX_BATCH_SIZE": "8",
        # Fetching may take half of a chunk's time limit: room for three timed-out attempts and their pauses.
        "MMRAG_INDEX_TIME_LIMIT_S": "20",
        "MMRAG_VISIBILITY_TIMEOUT_S": "60",
    }
    with running_stack(tmp_path_factory.mktemp("url-stack"), {"embedder": "embedder"}, settings) as stack:
        yield stack


def _index(stack: Stack, collection: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    with stack.http() as http:
        response = http.post(f"/v1/collections/{collection}/images", json={"items": items})
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        return wait_for_job(http, response.json()["id"])


def _reasons(job: dict[str, Any]) -> dict[str, str]:
    return {failure["url"]: failure["reason"] for failure in job["progress"]["failed"]}


def test_images_at_urls_are_fetched_indexed_and_each_failure_is_listed(
    url_stack: Stack, server: ImageServer, internal: CountingListener
) -> None:
    good = [server.url(f"/img/item_00{i}.png") for i in range(3)]
    retried = [server.url("/flaky/item_003.png"), server.url("/throttled/item_004.png")]
    redirected = server.url(f"/redirect?to={server.url('/img/item_005.png')}")
    failing = {
        server.url("/text.png"): "not a JPEG, PNG",
        server.url("/oversize-declared.png"): "MMRAG_MAX_UPLOAD_MB",
        server.url("/oversize-streamed.png"): "MMRAG_MAX_UPLOAD_MB",
        server.url("/slow.png"): "MMRAG_FETCH_TIMEOUT_S",
        server.url("/missing.png"): "404",
    }
    items = [{"url": url, "metadata": {"title": f"fetched {n}"}} for n, url in enumerate(good)]
    items += [{"url": url} for url in [*retried, redirected, server.url("/copy-of-first.png"), *failing]]

    job = _index(url_stack, "fetched", items)

    assert job["status"] == "succeeded", job
    assert job["progress"]["total"] == job["progress"]["done"] == len(items) == 12  # two chunks of 8
    # The copy of the first image is the same bytes: stored and indexed once.
    assert (job["result"]["indexed"], job["result"]["duplicates"], job["result"]["failed"]) == (6, 1, 5)
    reasons = _reasons(job)
    assert set(reasons) == set(failing), reasons
    for url, hint in failing.items():
        assert hint in reasons[url], (url, reasons[url])
    # 5xx and 429 were answered with a second attempt, and a timeout was tried MMRAG_FETCH_ATTEMPTS times.
    assert (server.hits["/flaky/item_003.png"], server.hits["/throttled/item_004.png"]) == (2, 2)
    assert server.hits["/slow.png"] == 3 and "after 3 attempts" in reasons[server.url("/slow.png")]
    # The oversize bodies were refused, not read whole: once each, never retried.
    assert server.hits["/oversize-declared.png"] == server.hits["/oversize-streamed.png"] == 1

    with url_stack.http() as http:
        assert http.get("/v1/collections/fetched").json()["count"] == 6
        listed = {item["id"]: item["metadata"] for item in http.get("/v1/collections/fetched/images").json()["items"]}
        assert set(listed) == {sha256_id(data) for data in IMAGES.values()}
        assert listed[sha256_id(IMAGES["item_001.png"])] == {"title": "fetched 1"}
        stored = http.get(f"/v1/collections/fetched/images/{sha256_id(IMAGES['item_004.png'])}")
        assert stored.status_code == 200 and stored.content == IMAGES["item_004.png"]
    assert internal.accepted == 0


def test_internal_addresses_are_refused_without_ever_connecting(
    url_stack: Stack, server: ImageServer, internal: CountingListener
) -> None:
    port = internal.port
    refused = [
        f"http://127.0.0.1:{port}/a.png",
        f"http://localhost:{port}/a.png",
        f"http://[::1]:{port}/a.png",
        f"http://[::ffff:127.0.0.1]:{port}/a.png",
        f"http://2130706433:{port}/a.png",  # 127.0.0.1 in decimal
        f"http://0x7f.1:{port}/a.png",
        f"http://017700000001:{port}/a.png",  # octal
        f"http://127.1:{port}/a.png",
    ]
    # Allowed at first, then redirected inside: each address is checked again on every hop.
    redirects = [
        server.url(f"/redirect?to=http://127.0.0.1:{port}/a.png"),
        server.url(f"/redirect?to=/redirect?to=http://localhost:{port}/"),
    ]
    job = _index(url_stack, "internal", [{"url": url} for url in refused + redirects])

    assert job["status"] == "failed", job
    assert job["error"]["type"] == "invalid-request"
    assert f"none of the {len(refused) + len(redirects)} URLs could be indexed" in job["error"]["detail"]
    reasons = _reasons(job)
    assert set(reasons) == set(refused + redirects)
    for url, reason in reasons.items():
        assert reason.startswith("refused:") and "loopback" in reason, (url, reason)
        assert "MMRAG_FETCH_ALLOW_NETWORKS" in reason
    assert "2130706433 means 127.0.0.1" in reasons[refused[4]]
    assert "after a redirect to http://127.0.0.1" in reasons[redirects[0]]
    assert server.hits["/redirect"] >= 3  # the allowed hops were really served
    assert internal.accepted == 0


@pytest.mark.parametrize(
    ("body", "status", "hint"),
    [
        ({"items": [{"url": "ftp://127.0.0.2/a.png"}]}, 400, "items[0].url: only http and https"),
        ({"items": [{"url": "file:///etc/passwd"}]}, 400, "only http and https"),
        ({"items": [{"url": "http://user:secret@127.0.0.2/a.png"}]}, 400, "user name or password"),
        ({"items": [{"url": "http:///a.png"}]}, 400, "items[0].url"),
        ({"items": [{"url": "http://127.0.0.2/a.png", "metadata": [1]}]}, 400, "items[0].metadata"),
        ({"items": [{"url": "http://127.0.0.2/a.png", "extra": 1}]}, 400, "items[0].extra"),
        ({"items": []}, 400, "items"),
        ({"urls": ["http://127.0.0.2/a.png"]}, 400, "items"),
        ({"items": [{"url": "http://127.0.0.1/a.png"}] * (MAX_INDEX_FILES + 1)}, 413, "MMRAG_MAX_INDEX_FILES"),
        ("not json", 400, "not JSON"),
    ],
)
def test_the_gateway_checks_a_url_request_and_queues_nothing_it_refuses(
    url_stack: Stack, internal: CountingListener, body: Any, status: int, hint: str
) -> None:
    before = stored_requests(url_stack)
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with url_stack.http() as http:
        response = http.post(
            "/v1/collections/checked/images", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert hint in response.json()["detail"], response.json()
    assert stored_requests(url_stack) == before, "a refused request must not create or queue a job"
    assert internal.accepted == 0


def test_mmrag_index_urls_follows_the_job_with_a_progress_bar(
    url_stack: Stack, server: ImageServer, tmp_path: Path
) -> None:
    lines = [
        {"url": server.url("/img/item_000.png"), "metadata": {"title": "from the CLI"}},
        {"url": server.url("/img/item_001.png")},
        {"url": server.url("/missing.png")},
    ]
    listing = tmp_path / "urls.jsonl"
    listing.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    env = {**url_stack.env, "MMRAG_GATEWAY_URL": url_stack.gateway_url, "COLUMNS": "200"}
    done = subprocess.run(
        python_module("services.cli.main", "index", "--urls", str(listing), "-c", "cli_urls"),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cli_urls: 2 indexed, 0 already there, 1 failed (of 3 URLs)" in done.stdout
    assert re.search(r"fetching and indexing\s+\S+\s+3/3", done.stderr), done.stderr
    assert f"failed {server.url('/missing.png')}: the server answered 404" in done.stderr
