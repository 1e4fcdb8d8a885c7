"""The HTTP side of the CLI: submitting jobs to the gateway and following them to the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}


class GatewayError(RuntimeError):
    """The gateway answered with a problem, or could not be reached."""


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = f"{body.get('title', 'error')} ({response.status_code} {body.get('type')}): {body.get('detail')}"
    except ValueError:
        text = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code == 401:
        text += " (pass --api-key or set MMRAG_API_KEY)"
    return text


class GatewayClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise GatewayError(
                f"cannot reach the gateway at {self.base_url} ({error}): is `mmrag up` running? "
                "(set --url or MMRAG_GATEWAY_URL)"
            ) from None
        if response.status_code >= 400:
            raise GatewayError(_problem_text(response))
        return response

    def submit_search(self, image: bytes | None, filename: str, fields: dict[str, str]) -> dict[str, Any]:
        """Start a search; without an image, a text-only one (`fields` then holds the instruction)."""
        if image is None:
            body: dict[str, Any] = self.request("POST", "/v1/searches", data=fields).json()
            return body
        files = {"image": (filename, image, "application/octet-stream")}
        body = self.request("POST", "/v1/searches", files=files, data=fields).json()
        return body

    def upload_images(
        self, collection: str, files: list[tuple[str, bytes]], metadata_jsonl: bytes | None
    ) -> dict[str, Any]:
        parts: list[tuple[str, tuple[str, bytes, str]]] = [
            ("files", (name, data, "application/octet-stream")) for name, data in files
        ]
        if metadata_jsonl:
            parts.append(("metadata", ("metadata.jsonl", metadata_jsonl, "application/jsonl")))
        body: dict[str, Any] = self.request("POST", f"/v1/collections/{collection}/images", files=parts).json()
        return body

    def index_urls(self, collection: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Start an index job whose images the workers fetch from `items` ({"url", "metadata"} each)."""
        body: dict[str, Any] = self.request(
            "POST", f"/v1/collections/{collection}/images", json={"items": items}
        ).json()
        return body

    def job(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        body: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}", params={"wait": wait_s}).json()
        return body

    def follow(
        self, job: dict[str, Any], on_change: Callable[[dict[str, Any]], None], timeout_s: float = 3600
    ) -> dict[str, Any]:
        """Long-poll a job until it ends, calling `on_change` with each new state."""
        deadline = time.monotonic() + timeout_s
        on_change(job)
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise GatewayError(f"job {job['id']} did not finish within {timeout_s:.0f} s")
            job = self.job(job["id"], wait_s=10)
            on_change(job)
        return job

    def download(self, path: str) -> bytes:
        return self.request("GET", path).content
