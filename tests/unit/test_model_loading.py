"""Model selection and loading: tiny-random, devices and dtypes, the offline path, the reference backend."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.embedder import model_loading
from services.embedder.model_loading import (
    MODEL_NAMES,
    ModelUnavailableError,
    load_model,
    resolve_device,
    resolve_dtype,
    warm_up,
)
from services.embedder.model_tiny import build_tiny_random

REPO_ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh process whose Hugging Face hub is a recorder on loopback (HF_ENDPOINT, read at import).
_FINGERPRINT = """
import hashlib, os, sys, urllib.request
import numpy as np
from PIL import Image
from services.embedder.model_loading import load_model

def hub_requests():
    return int(urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/_count").read())

model = load_model("tiny-random", device="cpu")
image = Image.fromarray(np.arange(240 * 320 * 3, dtype=np.uint8).reshape(240, 320, 3) % 251, "RGB")
vectors = model.encode([image, None, image], [None, "a red phone case", "in blue"])
print("hub requests after tiny-random:", hub_requests())
hf_home = os.environ["HF_HOME"]
print("hub cache after tiny-random:", sorted(os.listdir(hf_home)) if os.path.exists(hf_home) else [])
try:
    load_model("bge-visualized-base-en-v1.5", device="cpu")
except Exception as error:
    print("a hub model:", type(error).__name__)
print("hub requests after a hub model:", hub_requests())
print(hashlib.sha256(np.round(vectors, 5).tobytes()).hexdigest())
"""


def _fingerprint_here() -> str:
    model = load_model("tiny-random", device="cpu")
    image = Image.fromarray(np.arange(240 * 320 * 3, dtype=np.uint8).reshape(240, 320, 3) % 251, "RGB")
    vectors = model.encode([image, None, image], [None, "a red phone case", "in blue"])
    return hashlib.sha256(np.round(vectors, 5).tobytes()).hexdigest()


class _HubRecorder(BaseHTTPRequestHandler):
    """Answers every hub request 404 and counts it; GET /_count tells the count."""

    count = 0

    def _answer(self) -> None:
        if self.path == "/_count":
            body = str(type(self).count).encode()
            self.send_response(200)
        else:
            type(self).count += 1
            body = b'{"error": "not found"}'
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Recorder", (_HubRecorder,), {"count": 0}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network and an empty hub cache, as on a fresh CI runner."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


# ---- tiny-random ---------------------------------------------------------------------------------------


def test_tiny_random_is_labelled_random_and_declares_its_dimension() -> None:
    model = load_model("tiny-random", device="cpu")
    assert model.model_name == "tiny-random"
    assert model.is_random is True
    vectors = model.encode([None], ["cat"])
    assert vectors.shape == (1, model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tiny_random_needs_no_download_and_gives_the_same_vectors_in_another_process(
    hub_recorder: str, tmp_path: Path
) -> None:
    """With a hub online (a recorder), tiny-random asks it nothing and writes no cache; a hub model, loaded next in
    the same process, does ask it (so the recorder would have seen tiny-random's requests)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "MMRAG_"))}
    env.update(HF_ENDPOINT=hub_recorder, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    result = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "hub requests after tiny-random: 0" in lines
    assert "hub cache after tiny-random: []" in lines
    assert "a hub model: ModelUnavailableError" in lines
    assert "hub requests after a hub model: 0" not in lines
    assert lines[-1] == _fingerprint_here()


def test_tiny_random_separates_different_inputs() -> None:
    model = build_tiny_random()
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB")
    flat = Image.new("RGB", (224, 224), (200, 30, 30))
    vectors = model.encode([noise, flat, None], [None, None, "a leopard"])
    similarity = vectors @ vectors.T
    assert similarity[np.triu_indices(3, k=1)].max() < 0.99


# ---- device and dtype ----------------------------------------------------------------------------------


def test_auto_device_and_dtype_on_a_cpu_only_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    monkeypatch.setattr(model_loading, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", device) == torch.float32
    monkeypatch.setattr(model_loading, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", device) == torch.bfloat16


def test_auto_dtype_on_cuda_prefers_bf16_where_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.float16


@pytest.mark.parametrize(
    ("name", "dtype"), [("float32", torch.float32), ("bf16", torch.bfloat16), ("half", torch.float16)]
)
def test_explicit_dtypes(name: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(name, torch.device("cpu")) == dtype


def test_unknown_device_and_dtype_are_rejected() -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_cuda_requested_without_a_gpu_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelUnavailableError, match="MMRAG_DEVICE=cpu"):
        resolve_device("cuda:1")


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="tiny-random"):
        load_model("bge-large", device="cpu")
    assert set(MODEL_NAMES) == {"bge-visualized-base-en-v1.5", "bge-visualized-m3", "tiny-random"}


# ---- the offline path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bge-visualized-base-en-v1.5", "bge-visualized-m3"])
def test_offline_without_weights_fails_fast_saying_what_to_set(offline_hub: Path, name: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as error:
        load_model(name, device="cpu")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    weights_file = "Visualized_base_en_v1.5.pth" if name.endswith("v1.5") else "Visualized_m3.pth"
    assert f"MMRAG_MODEL_WEIGHTS=/path/to/{weights_file}" in message
    assert "HF_HOME" in message
    assert "MMRAG_MODEL=tiny-random" in message
    assert "HF_HUB_OFFLINE" in message


def test_weights_path_that_does_not_exist_is_named(offline_hub: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ModelUnavailableError, match=f"weights file {missing} does not exist"):
        load_model("bge-visualized-base-en-v1.5", weights=missing, device="cpu")


def test_reference_backend_without_its_package_says_how_to_install(offline_hub: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="pip install"):
        load_model("bge-visualized-base-en-v1.5", device="cpu", backend="flagembedding")


# ---- warm-up -------------------------------------------------------------------------------------------


def test_warm_up_reports_a_positive_rate() -> None:
    assert warm_up(build_tiny_random(), batch_size=4) > 0
