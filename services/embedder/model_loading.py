"""Choose, fetch and load the embedding model named by `MMRAG_MODEL`; warm it up before taking work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from services.embedder.model_tiny import TINY_MODEL_NAME, build_tiny_random
from services.embedder.visualized_bge import EVA02_CLIP_B16, EVA02_CLIP_L14, VisualizedBGE, hub_offline

log = logging.getLogger(__name__)

MODEL_NAMES = ("bge-visualized-base-en-v1.5", "bge-visualized-m3", "tiny-random")
WEIGHTS_REPO = "BAAI/bge-visualized"
# The files a tokenizer and config need; the text model's own weights are never downloaded (the .pth has them).
_TEXT_MODEL_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
]
# Long enough for a slow hub, short enough that a blackholed network fails a worker's start in seconds.
_HUB_TIMEOUT_S = 10.0
_HUB_PROBE_TIMEOUT_S = 5.0

Backend = Literal["native", "flagembedding"]


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here (no weights, no network, missing package); the message says what to set."""


class Encoder(Protocol):
    """What the worker needs from a model, whichever backend serves it."""

    model_name: str
    dim: int
    is_random: bool
    image_size: int  # the side of the square image the model sees; decoding need not keep much more

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(
        self,
        images: Sequence[Image.Image | None],
        texts: Sequence[str | None],
        *,
        batch_size: int | None = None,
        after_batch: Callable[[], object] | None = None,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelSpec:
    weights_file: str
    text_model: str
    vision_config: dict[str, Any]


MODEL_SPECS: dict[str, ModelSpec] = {
    "bge-visualized-base-en-v1.5": ModelSpec("Visualized_base_en_v1.5.pth", "BAAI/bge-base-en-v1.5", EVA02_CLIP_B16),
    "bge-visualized-m3": ModelSpec("Visualized_m3.pth", "BAAI/bge-m3", EVA02_CLIP_L14),
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str) -> torch.device:
    """`auto` → the first CUDA device if there is one, else the CPU; `cpu`, `cuda`, `cuda:N` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        _check_cuda_index(resolved)
    return resolved


def _check_cuda_index(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ModelUnavailableError(f"MMRAG_DEVICE={device}: no CUDA device is visible; set MMRAG_DEVICE=cpu or auto")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ModelUnavailableError(f"MMRAG_DEVICE={device}: only {count} CUDA device(s) are visible")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` → bf16 on CUDA when supported (same range as fp32, no overflow), else fp16; on the CPU bf16 where
    the CPU has bf16 matrix units (about 4× the fp32 rate on 2 cores, bench/encode.py), else float32.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def load_model(
    name: str,
    *,
    weights: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    progress: bool = True,
    text_model: str | Path | None = None,
    backend: Backend = "native",
) -> Encoder:
    """Load `name` (one of MODEL_NAMES) on the resolved device and dtype, in eval mode.

    `text_model` overrides the hub id of the BERT / XLM-R config and tokenizer with another id or a local
    directory. Raises ModelUnavailableError, with what to set, when weights or text files cannot be had.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if name == TINY_MODEL_NAME:
        if backend != "native":
            log.warning("tiny-random exists only in the native encoder; ignoring backend=%s", backend)
        return build_tiny_random(torch_device, torch_dtype)
    spec = MODEL_SPECS[name]
    if backend == "flagembedding":
        return _load_reference(name, spec, weights, text_model, cache_dir, progress, torch_device, torch_dtype)
    if backend != "native":
        raise ValueError(f"backend {backend!r}: expected native or flagembedding")
    weights_path, text_dir = _fetch(name, spec, weights, text_model, cache_dir, progress)
    started = time.perf_counter()
    model = VisualizedBGE.from_checkpoint(
        weights_path,
        text_dir,
        spec.vision_config,
        device=torch_device,
        dtype=torch_dtype,
        model_name=name,
        local_files_only=True,
    )
    log.info("loaded %s on %s (%s) in %.1f s", name, torch_device, torch_dtype, time.perf_counter() - started)
    return model


def _load_reference(
    name: str,
    spec: ModelSpec,
    weights: Path | None,
    text_model: str | Path | None,
    cache_dir: Path | None,
    progress: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Encoder:
    from services.embedder.model_reference import import_reference_modeling, load_reference_model

    # Checked before any download: without the package the weights are of no use.
    try:
        modeling = import_reference_modeling()
    except ImportError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    weights_path, text_dir = _fetch(name, spec, weights, text_model, cache_dir, progress)
    return load_reference_model(modeling, name, weights_path, str(text_dir), device, dtype)


def _fetch(
    name: str,
    spec: ModelSpec,
    weights: Path | None,
    text_model: str | Path | None,
    cache_dir: Path | None,
    progress: bool,
) -> tuple[Path, Path]:
    """Local paths of the checkpoint and the text model files, or one error naming everything missing."""
    problems: list[str] = []
    weights_path = _weights_path(spec, weights, cache_dir, progress, problems)
    text_dir = _text_model_dir(text_model or spec.text_model, cache_dir, problems)
    if weights_path is None or text_dir is None:
        raise ModelUnavailableError(_unavailable_message(name, spec, problems))
    return weights_path, text_dir


def _weights_path(
    spec: ModelSpec, weights: Path | None, cache_dir: Path | None, progress: bool, problems: list[str]
) -> Path | None:
    if weights is not None:
        if Path(weights).is_file():
            return Path(weights)
        problems.append(f"weights file {weights} does not exist")
        return None
    try:
        return Path(_hub_file(WEIGHTS_REPO, spec.weights_file, cache_dir, progress))
    except Exception as exc:  # the hub raises a dozen types (offline, DNS, HTTP, timeouts); all mean "not here"
        problems.append(f"{WEIGHTS_REPO}/{spec.weights_file} could not be fetched ({_short(exc)})")
        return None


def _text_model_dir(text_model: str | Path, cache_dir: Path | None, problems: list[str]) -> Path | None:
    if Path(text_model).is_dir():
        return Path(text_model)
    try:
        return Path(_hub_snapshot(str(text_model), cache_dir))
    except Exception as exc:  # as above: any hub failure means the files are not available here
        problems.append(f"text model {text_model} could not be fetched ({_short(exc)})")
        return None


def _hub_file(repo: str, filename: str, cache_dir: Path | None, progress: bool) -> str:
    """A cached copy first (no network at all), then a download unless the hub is marked offline."""
    from huggingface_hub import hf_hub_download

    try:
        return str(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=True))
    except Exception:
        if hub_offline():
            raise
    _require_hub()
    log.info("downloading %s/%s", repo, filename)
    path = hf_hub_download(
        repo, filename, cache_dir=cache_dir, etag_timeout=_HUB_TIMEOUT_S, tqdm_class=None if progress else _Silent
    )
    return str(path)


def _hub_snapshot(repo: str, cache_dir: Path | None) -> str:
    from huggingface_hub import snapshot_download

    options: dict[str, Any] = {"allow_patterns": _TEXT_MODEL_FILES, "cache_dir": cache_dir}
    try:
        return str(snapshot_download(repo, local_files_only=True, **options))
    except Exception:
        if hub_offline():
            raise
    _require_hub()
    return str(snapshot_download(repo, etag_timeout=_HUB_TIMEOUT_S, **options))


def _require_hub() -> None:
    """One quick request before any download: the hub client retries a dead network for half a minute."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # any transport failure (DNS, refused, timeout, proxy) means no hub from here
        raise ConnectionError(f"{constants.ENDPOINT} is unreachable: {_short(exc)}") from exc


def _silent_tqdm() -> type[Any]:
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


_Silent = _silent_tqdm()


def _short(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:200]


def _unavailable_message(name: str, spec: ModelSpec, problems: list[str]) -> str:
    offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    return (
        f"model {name} is not available{offline}: {'; '.join(problems)}. "
        f"Set MMRAG_MODEL_WEIGHTS=/path/to/{spec.weights_file} and make the text model files of "
        f"{spec.text_model} available in the Hugging Face cache (HF_HOME; e.g. `hf download {spec.text_model}` "
        "on a machine with network), or set MMRAG_MODEL=tiny-random to run with random weights."
    )


def warm_up(model: Encoder, batch_size: int) -> float:
    """Run one small batch, then time one full batch; returns images/s for the start-up log line."""
    images = _warm_up_images(max(1, batch_size))
    texts = [None if i % 2 else "the same object in blue" for i in range(len(images))]
    model.encode(images[:1], texts[:1])
    started = time.perf_counter()
    model.encode(images, texts, batch_size=batch_size)
    return len(images) / max(time.perf_counter() - started, 1e-9)


def _warm_up_images(count: int) -> list[Image.Image]:
    """Noise images (not blank) so no kernel sees a degenerate input; decoded once, shared by every slot."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return [image] * count
