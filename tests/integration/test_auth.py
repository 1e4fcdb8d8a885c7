"""API keys on the real stack (MMRAG_AUTH=required): isolation between keys, scopes, rate limits shared by two
gateway processes, revocation, backpressure, and the HTTP headers every answer carries.

The rest of the integration suite runs with auth off (the default on loopback) and keeps passing that way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Route, expect, sync_playwright

from services.common.job_store import PENDING_SEARCHES_KEY
from tests.integration.conftest import Stack, gallery, paused, png_bytes, running_stack, wait_for_job
from tests.support.contract import gateway_client
from tests.support.processes import Service, free_port, python_module, wait_until

pytestmark = pytest.mark.integration

BOOTSTRAP_KEY = secrets.token_hex(32)
MAX_QUEUED_JOBS = 3
MAX_ACTIVE_JOBS_PER_KEY = 2
COLLECTION = "default"
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@dataclass
class AuthStack:
    stack: Stack
    image_ids: list[str]

    def client(self, key: str | None = None, *, url: str | None = None, header: str = "bearer") -> httpx.Client:
        headers = {}
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
        return gateway_client(url or self.stack.gateway_url, headers=headers)

    def create_key(self, name: str, scopes: list[str], **fields: object) -> str:
        with self.client(BOOTSTRAP_KEY) as admin:
            response = admin.post("/v1/keys", json={"name": name, "scopes": scopes, **fields})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    with running_stack(
        tmp_path_factory.mktemp("auth-stack"),
        {"embedder": "embedder", "reranker": "reranker"},
        {
            "MMRAG_AUTH": "required",
            "MMRAG_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP_KEY,
            "MMRAG_MAX_QUEUED_JOBS": str(MAX_QUEUED_JOBS),
            "MMRAG_MAX_ACTIVE_JOBS_PER_KEY": str(MAX_ACTIVE_JOBS_PER_KEY),
        },
    ) as stack:
        with stack.http(timeout=60) as http:
            http.headers["Authorization"] = f"Bearer {BOOTSTRAP_KEY}"
            images = gallery(8)
            response = http.post(
                f"/v1/collections/{COLLECTION}/images", files=[("files", (n, d, "image/png")) for n, d in images]
            )
            assert response.status_code == 202, response.text
            job = wait_for_job(http, response.json()["id"])
            assert job["status"] == "succeeded", (job, stack.logs())
            page = http.get(f"/v1/collections/{COLLECTION}/images").json()
        yield AuthStack(stack=stack, image_ids=[item["id"] for item in page["items"]])


@contextmanager
def extra_gateway(auth: AuthStack, name: str, **settings: str) -> Iterator[str]:
    """Another gateway process on the same Redis and data (with `settings` on top); yields its URL."""
    port = free_port()
    env = {**auth.stack.env, **settings}
    service = Service(
        name, python_module("services.cli.main", "gateway", "--port", str(port)), env, auth.stack.log_dir
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, name)
        yield url
    finally:
        service.stop()


def _search(http: httpx.Client, *, collection: str = COLLECTION, **headers: str) -> httpx.Response:
    return http.post(
        "/v1/searches",
        files={"image": ("q.png", png_bytes((200, 40, 40)), "image/png")},
        data={"instruction": "the same in blue", "limit": "3", "collection": collection},
        headers=headers,
    )


def _problem(response: httpx.Response, status: int, problem_type: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["type"] == problem_type, body
    return body


# ---- who may call -----------------------------------------------------------------------------------------------


def test_a_request_without_a_key_or_with_an_unknown_one_is_401_with_www_authenticate(auth_stack: AuthStack) -> None:
    for key in (None, "mmrag_not-a-key-anyone-was-given"):
        with auth_stack.client(key) as http:
            for method, path in (("GET", "/v1/collections"), ("GET", "/v1/jobs/" + "0" * 32), ("GET", "/v1/keys")):
                response = http.request(method, path)
                _problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
    with auth_stack.stack.http() as http:
        response = http.get("/v1/collections", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        _problem(response, 401, "unauthorized")


def test_keys_are_accepted_as_bearer_tokens_and_in_x_api_key(auth_stack: AuthStack) -> None:
    key = auth_stack.create_key("reader-both-headers", ["search"])
    for header in ("bearer", "x-api-key"):
        with auth_stack.client(key, header=header) as http:
            response = http.get("/v1/collections")
            assert response.status_code == 200, response.text
            assert [c["name"] for c in response.json()] == [COLLECTION]


def test_open_routes_answer_without_a_key(auth_stack: AuthStack) -> None:
    with auth_stack.client() as http:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/", "/static/js/app.js", "/static/app.css"):
            assert http.get(path).status_code == 200, path


def test_each_scope_allows_its_routes_and_others_get_403(auth_stack: AuthStack) -> None:
    search_key = auth_stack.create_key("scope-search", ["search"])
    index_key = auth_stack.create_key("scope-index", ["index"])
    image_id = auth_stack.image_ids[0]
    upload = [("files", ("a.png", png_bytes((1, 2, 3)), "image/png"))]

    with auth_stack.client(search_key) as http:
        assert _search(http).status_code == 202
        assert http.get(f"/v1/collections/{COLLECTION}/images/{image_id}").status_code == 200
        _problem(http.post("/v1/collections/scoped/images", files=upload), 403, "forbidden")
        _problem(http.delete(f"/v1/collections/{COLLECTION}/images/{image_id}"), 403, "forbidden")
        _problem(http.delete(f"/v1/collections/{COLLECTION}"), 403, "forbidden")
        body = _problem(http.get("/v1/keys"), 403, "forbidden")
        assert "admin" in str(body["detail"])
        _problem(http.post("/v1/keys", json={"name": "x", "scopes": ["admin"]}), 403, "forbidden")

    with auth_stack.client(index_key) as http:
        body = _problem(_search(http), 403, "forbidden")
        assert "search" in str(body["detail"])
        assert http.get(f"/v1/collections/{COLLECTION}").status_code == 200
        response = http.post("/v1/collections/scoped/images", files=upload)
        assert response.status_code == 202, response.text
        assert wait_for_job(http, response.json()["id"])["status"] == "succeeded"
        response = http.delete("/v1/collections/scoped")
        assert response.status_code == 202, response.text
        assert wait_for_job(http, response.json()["id"])["status"] == "succeeded"
        _problem(http.get("/v1/keys"), 403, "forbidden")


def test_a_collection_allow_list_limits_a_key_to_its_collections(auth_stack: AuthStack) -> None:
    key = auth_stack.create_key("only-default", ["search", "index"], collections=[COLLECTION])
    with auth_stack.client(key) as http:
        names = [c["name"] for c in http.get("/v1/collections").json()]
        assert names == [COLLECTION]
        assert _search(http).status_code == 202
        # The same answer whether the collection exists or not: the name alone decides.
        for name in ("scoped", "never_made"):
            _problem(_search(http, collection=name), 403, "forbidden")
            _problem(http.get(f"/v1/collections/{name}"), 403, "forbidden")
            _problem(http.get(f"/v1/collections/{name}/images"), 403, "forbidden")
            _problem(http.delete(f"/v1/collections/{name}"), 403, "forbidden")


# ---- isolation between keys -------------------------------------------------------------------------------------


def _comparable(body: dict[str, object], job_id: str) -> dict[str, object]:
    return {k: str(v).replace(job_id, "<id>") for k, v in body.items()}


def test_another_keys_job_panorama_and_cancel_answer_404_exactly_as_an_unknown_job(auth_stack: AuthStack) -> None:
    owner_key = auth_stack.create_key("tenant-a", ["search"])
    other_key = auth_stack.create_key("tenant-b", ["search", "index"])
    with auth_stack.client(owner_key) as owner, auth_stack.client(other_key) as other:
        response = _search(owner)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # While it is active: the other key's cancel must not touch it.
        cancel = other.delete(f"/v1/jobs/{job_id}")
        job = wait_for_job(owner, job_id)
        assert job["status"] == "succeeded", job
        assert job["result"]["rerank"]["panorama_url"] == f"/v1/jobs/{job_id}/panorama"  # type: ignore[index]

        unknown_id = secrets.token_hex(16)
        cases = [
            ("GET", "/v1/jobs/{id}", {}),
            ("GET", "/v1/jobs/{id}", {"wait": "1"}),
            ("GET", "/v1/jobs/{id}/panorama", {}),
            ("DELETE", "/v1/jobs/{id}", {}),
        ]
        answers = [(cancel, other.delete(f"/v1/jobs/{unknown_id}"))]
        for method, path, params in cases:
            answers.append(
                (
                    other.request(method, path.format(id=job_id), params=params),
                    other.request(method, path.format(id=unknown_id), params=params),
                )
            )
        for theirs, unknown in answers:
            _problem(theirs, 404, "not-found")
            _problem(unknown, 404, "not-found")
            assert _comparable(theirs.json(), job_id) == _comparable(unknown.json(), unknown_id)

        assert owner.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        assert owner.get(f"/v1/jobs/{job_id}/panorama").status_code == 200
    with auth_stack.client(BOOTSTRAP_KEY) as admin:
        assert admin.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
        assert admin.get(f"/v1/jobs/{job_id}/panorama").status_code == 200


def test_the_same_idempotency_key_from_two_api_keys_makes_two_jobs(auth_stack: AuthStack) -> None:
    first = auth_stack.create_key("idem-a", ["search"])
    second = auth_stack.create_key("idem-b", ["search"])
    with auth_stack.client(first) as a, auth_stack.client(second) as b:
        job_a = _search(a, **{"Idempotency-Key": "shared-123"}).json()["id"]
        again = _search(a, **{"Idempotency-Key": "shared-123"})
        assert again.json()["id"] == job_a
        response_b = _search(b, **{"Idempotency-Key": "shared-123"})
        assert response_b.status_code == 202
        assert response_b.json()["id"] != job_a
        for http, job_id in ((a, job_a), (b, response_b.json()["id"])):
            wait_for_job(http, job_id)


# ---- keys over time ---------------------------------------------------------------------------------------------


def test_a_rate_limit_holds_across_two_gateway_processes_on_one_redis(auth_stack: AuthStack) -> None:
    key = auth_stack.create_key("limited", ["search"], rate="6/minute")
    with extra_gateway(auth_stack, "gateway-rate") as second_url:
        clients = [auth_stack.client(key), auth_stack.client(key, url=second_url)]
        try:
            answers = [clients[i % 2].get("/v1/collections") for i in range(12)]
        finally:
            for client in clients:
                client.close()
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 6 + [429] * 6, statuses
    for refused in answers[6:]:
        _problem(refused, 429, "rate-limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_revoked_key_is_refused_within_5_s_by_every_gateway(auth_stack: AuthStack) -> None:
    env = {**auth_stack.stack.env}
    key = auth_stack.create_key("to-revoke", ["search"])
    with extra_gateway(auth_stack, "gateway-revoke") as second_url:
        clients = [auth_stack.client(key), auth_stack.client(key, url=second_url)]
        try:
            # Both gateways have the key in their cache now.
            assert [c.get("/v1/collections").status_code for c in clients] == [200, 200]
            revoke = subprocess.run(
                python_module("services.cli.main", "keys", "revoke", "to-revoke"),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            revoked_at = time.monotonic()
            assert revoke.returncode == 0, revoke.stderr
            refused_after: dict[int, float] = {}
            while len(refused_after) < 2 and time.monotonic() - revoked_at < 10:
                for i, client in enumerate(clients):
                    if i not in refused_after and client.get("/v1/collections").status_code == 401:
                        refused_after[i] = time.monotonic() - revoked_at
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
    assert sorted(refused_after) == [0, 1], refused_after
    assert max(refused_after.values()) <= 5.0, refused_after


def test_keys_are_listed_with_scopes_and_last_use_but_never_the_secret(auth_stack: AuthStack) -> None:
    key = auth_stack.create_key("listed", ["search", "index"], rate="10/second")
    with auth_stack.client(key) as http:
        assert http.get("/v1/collections").status_code == 200
    with auth_stack.client(BOOTSTRAP_KEY) as admin:
        response = admin.get("/v1/keys")
        duplicate = admin.post("/v1/keys", json={"name": "listed", "scopes": ["search"]})
    assert response.status_code == 200
    assert key not in response.text
    listed = {k["name"]: k for k in response.json()}["listed"]
    assert listed["scopes"] == ["search", "index"]
    assert listed["rate"] == "10/second"
    assert listed["last_used"] is not None
    _problem(duplicate, 400, "invalid-request")
    # Only the hash is in Redis: no value nor key name holds the secret.
    client = redis.Redis.from_url(auth_stack.stack.redis_url)
    try:
        for name in client.scan_iter("mmrag:apikey*"):
            assert key.encode() not in name
            value = client.get(name) if client.type(name) == b"string" else str(client.hgetall(name)).encode()
            assert key.encode() not in (value or b"")
    finally:
        client.close()


# ---- limits on work ---------------------------------------------------------------------------------------------


def test_active_jobs_per_key_and_the_search_backlog_are_capped(auth_stack: AuthStack) -> None:
    busy_key = auth_stack.create_key("busy", ["search"])
    other_key = auth_stack.create_key("other", ["search"])
    late_key = auth_stack.create_key("late", ["search"])
    accepted: list[tuple[httpx.Client, str]] = []
    client = redis.Redis.from_url(auth_stack.stack.redis_url)
    wait_until(lambda: client.zcard(PENDING_SEARCHES_KEY) == 0, 60, "the searches of earlier tests")
    with (
        auth_stack.client(busy_key) as busy,
        auth_stack.client(other_key) as other,
        auth_stack.client(late_key) as late,
    ):
        try:
            with paused(auth_stack.stack):
                for _ in range(MAX_ACTIVE_JOBS_PER_KEY):
                    response = _search(busy)
                    assert response.status_code == 202, response.text
                    accepted.append((busy, response.json()["id"]))
                over_cap = _search(busy)
                _problem(over_cap, 429, "rate-limited")
                assert int(over_cap.headers["retry-after"]) >= 1

                response = _search(other)
                assert response.status_code == 202, response.text
                accepted.append((other, response.json()["id"]))
                assert client.zcard(PENDING_SEARCHES_KEY) >= MAX_QUEUED_JOBS
                backlog = _search(late)
                _problem(backlog, 503, "unavailable")
                assert int(backlog.headers["retry-after"]) >= 1
                assert "MMRAG_MAX_QUEUED_JOBS" in backlog.json()["detail"]
        finally:
            finished = [wait_for_job(http, job_id)["status"] for http, job_id in accepted]
            client.close()
        assert finished == ["succeeded"] * len(accepted)
        # Once its jobs have ended the key may start new ones, and the backlog is open again.
        response = _search(busy)
        assert response.status_code == 202, response.text
        assert _search(late).status_code == 202
        wait_for_job(busy, response.json()["id"])


# ---- headers ----------------------------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers_and_the_right_cache_control(auth_stack: AuthStack) -> None:
    key = auth_stack.create_key("headers", ["search"])
    image_id = auth_stack.image_ids[0]
    image_path = f"/v1/collections/{COLLECTION}/images/{image_id}"
    with auth_stack.client(key) as http:
        created = _search(http)
        job = http.get(f"/v1/jobs/{created.json()['id']}")
        answers = {
            "search": created,
            "job": job,
            "image": http.get(image_path),
            "problem": http.get("/v1/jobs/" + "0" * 32),
            "unauthorized": httpx.get(auth_stack.stack.gateway_url + "/v1/collections"),
            "healthz": http.get("/healthz"),
            "app": http.get("/"),
            "static": http.get("/static/js/app.js"),
            "docs": http.get("/docs"),
            "openapi": http.get("/openapi.json"),
            "not-a-route": http.get("/nothing-here"),
        }
        wait_for_job(http, created.json()["id"])
    for name, response in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, response.headers)
    for name in ("search", "job", "problem"):
        assert answers[name].headers["cache-control"] == "no-store", name
    # Behind keys, no shared cache may keep an image for another key.
    assert answers["image"].headers["cache-control"] == "private, max-age=31536000, immutable"
    for name in ("app", "docs"):
        assert "frame-ancestors 'none'" in answers[name].headers["content-security-policy"], name

    with extra_gateway(auth_stack, "gateway-open", MMRAG_AUTH="off") as open_url:
        image = httpx.get(open_url + image_path)
    assert image.status_code == 200
    assert image.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_cors_is_off_by_default_and_allows_only_the_listed_origins(auth_stack: AuthStack) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed, stranger = "https://app.example.com", "https://evil.example.net"
    with auth_stack.client() as http:
        answer = http.options("/v1/searches", headers={"Origin": allowed, **preflight})
        assert "access-control-allow-origin" not in answer.headers
    origins = f"{allowed}, http://localhost:5173"
    with (
        extra_gateway(auth_stack, "gateway-cors", MMRAG_CORS_ORIGINS=origins) as url,
        httpx.Client(base_url=url) as http,
    ):
        ok = http.options("/v1/searches", headers={"Origin": allowed, **preflight})
        refused = http.options("/v1/searches", headers={"Origin": stranger, **preflight})
        simple = http.get("/healthz", headers={"Origin": allowed})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert refused.headers.get("access-control-allow-origin") is None
    assert simple.headers["access-control-allow-origin"] == allowed


# ---- the command line -------------------------------------------------------------------------------------------


def _mmrag(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        python_module("services.cli.main", *args), env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def test_the_cli_creates_keys_and_searches_with_one(auth_stack: AuthStack, tmp_path: Path) -> None:
    env = {**auth_stack.stack.env, "MMRAG_GATEWAY_URL": auth_stack.stack.gateway_url}
    code, out, err = _mmrag(
        env, "keys", "create", "cli-user", "--scopes", "search,index", "--rate", "50/second", "--json"
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["name"] == "cli-user" and created["scopes"] == ["search", "index"] and created["rate"] == "50/second"
    key = created["key"]

    query = tmp_path / "query.png"
    query.write_bytes(png_bytes((10, 200, 30)))
    code, out, err = _mmrag({**env, "MMRAG_API_KEY": key}, "search", str(query), "-i", "greener", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"

    code, out, err = _mmrag(env, "search", str(query), "-i", "greener", "--json", "--api-key", key, "--no-rerank")
    assert code == 0, err

    code, out, err = _mmrag(env, "search", str(query), "-i", "greener")
    assert code == 1
    assert "401" in err and "--api-key" in err

    code, out, err = _mmrag(env, "keys", "list")
    assert code == 0, err
    assert "cli-user" in out and key not in out
    code, out, err = _mmrag(env, "keys", "list", "--json")
    assert code == 0, err
    listed = {k["name"]: k for k in json.loads(out)}["cli-user"]
    assert listed["scopes"] == ["search", "index"] and listed["last_used"] is not None and key not in out

    code, _, err = _mmrag(env, "keys", "revoke", "cli-user")
    assert code == 0, err
    code, _, err = _mmrag(env, "keys", "revoke", "cli-user")
    assert code == 1 and "no key is named" in err


# ---- /docs without network ----------------------------------------------------------------------------------------


def test_docs_reference_only_assets_the_gateway_serves(auth_stack: AuthStack) -> None:
    with auth_stack.client() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(references) >= 3, page.text
        for reference in references:
            assert reference.startswith("/") and not reference.startswith("//"), reference
            asset = http.get(reference)
            assert asset.status_code == 200, reference
            assert asset.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text, "an inline script would be blocked by the page's CSP"


def test_docs_render_every_route_in_a_browser_with_no_network(auth_stack: AuthStack) -> None:
    chromium = os.environ.get("MMRAG_CHROMIUM", "/usr/lib/chromium/chromium")
    if not Path(chromium).exists():
        pytest.fail(f"Chromium is not at {chromium}: `make install` installs it (apt-get install chromium)")
    gateway = auth_stack.stack.gateway_url
    elsewhere: list[str] = []
    problems: list[str] = []

    def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(gateway + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_gateway)
            page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(gateway + "/docs")
            expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            # Open an operation with parameters and the key dialog: what a person does with the page.
            page.locator(".opblock-summary-path", has_text=re.compile(r"^/v1/jobs/\{job_id\}$")).first.click()
            page.get_by_role("button", name="Try it out").click()
            expect(page.locator(".opblock-body input, .opblock-body select").first).to_be_visible()
            page.get_by_role("button", name=re.compile("Authorize")).first.click()
            expect(page.get_by_text("HTTPBearer")).to_be_visible()
            expect(page.get_by_text("APIKeyHeader")).to_be_visible()
        finally:
            browser.close()
    assert elsewhere == []
    assert problems == []
    assert {"/v1/searches", "/v1/jobs/{job_id}", "/v1/keys"} <= {p.strip() for p in paths}, paths


def test_the_web_app_asks_for_a_key_and_searches_with_it_on_the_real_gateway(
    auth_stack: AuthStack, tmp_path: Path
) -> None:
    chromium = os.environ.get("MMRAG_CHROMIUM", "/usr/lib/chromium/chromium")
    if not Path(chromium).exists():
        pytest.fail(f"Chromium is not at {chromium}: `make install` installs it (apt-get install chromium)")
    key = auth_stack.create_key("browser", ["search"])
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes((200, 40, 40)))
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(base_url=auth_stack.stack.gateway_url)
            page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
            page.goto("/")
            dialog = page.get_by_role("dialog", name="API key needed")
            expect(dialog).to_contain_text("requires an API key")
            dialog.get_by_label("API key").fill(key)
            dialog.get_by_role("button", name="Use this key").click()
            page.get_by_label("Collection", exact=True).select_option(COLLECTION)
            page.get_by_label("Query image").set_input_files(query)
            page.get_by_label("Number of results").fill("3")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#job-status")).to_contain_text("Done:", timeout=60_000)
            results = page.get_by_role("list", name="Results").get_by_role("listitem")
            expect(results).to_have_count(3)
            # Images need the key as well: fetched with it, shown from blob: URLs.
            expect(results.get_by_role("img").first).to_have_attribute("src", re.compile("^blob:"))
        finally:
            browser.close()
    assert problems == []
