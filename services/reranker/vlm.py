"""Asking the vision LLM: one chat completion with the panorama, retried within a hard deadline.

Works with OpenAI, Azure OpenAI (when `llm_api_version` is set) and any OpenAI-compatible server (vLLM, Ollama,
LM Studio) at `llm_base_url`. The client's own retries are off (`max_retries=0`): this module owns the retry loop
so that every attempt, every back-off sleep and every Retry-After wait is cut to the time left before the deadline.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from services.common.settings import Settings
from services.reranker.prompt import RESPONSE_FORMAT, Prompt

logger = logging.getLogger(__name__)

# Local servers ignore the key, but the client refuses to start without one.
PLACEHOLDER_API_KEY: Final = "not-needed"
# Room for the answer: 50 indices as JSON plus a paragraph of reasons (the tutorial's 300 cut long answers short).
MAX_ANSWER_TOKENS: Final = 800
# Retries after the first attempt, for 429, 5xx, timeouts and connection errors.
MAX_RETRIES: Final = 3
BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 8.0
# A Retry-After longer than this is not a hint we can follow inside a job (a quota reset, a misconfigured proxy).
MAX_RETRY_AFTER_S: Final = 60.0
# An attempt with less time than this left cannot get a VLM answer back; fail instead of starting it.
MIN_ATTEMPT_S: Final = 0.2
# Seconds an abandoned attempt thread may outlive its deadline; it ends by itself on its own socket timeout.
_WATCHDOG_SLACK_S: Final = 0.05

# Request timeout and conflict (lock contention on the server side): worth another try, like 5xx.
_TRANSIENT_CLIENT_STATUSES: Final = frozenset({408, 409})

T = TypeVar("T")


class VlmError(Exception):
    """The VLM gave no answer we can use; `str(error)` is the reason shown to the user."""


class VlmRefused(VlmError):
    """The VLM declined to answer (OpenAI's `message.refusal`)."""


@dataclass(frozen=True)
class VlmReply:
    content: str
    model: str | None
    attempts: int
    structured: bool  # whether the answer came under the JSON schema (False after the plain-request fallback)


_clients: dict[tuple[str | None, str | None, str, int], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def client_for(settings: Settings) -> openai.OpenAI:
    """One client per endpoint and process: its connection pool is reused across jobs (HTTP keep-alive)."""
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else PLACEHOLDER_API_KEY
    # Keyed by pid too: a client created before a fork must not be shared with the child (its sockets would be).
    key = (settings.llm_base_url, settings.llm_api_version, api_key, os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if settings.llm_api_version:
                if not settings.llm_base_url:
                    raise VlmError(
                        "MMRAG_LLM_API_VERSION selects Azure OpenAI but MMRAG_LLM_BASE_URL (its endpoint) is unset"
                    )
                client = openai.AzureOpenAI(
                    api_key=api_key,
                    azure_endpoint=settings.llm_base_url,
                    api_version=settings.llm_api_version,
                    max_retries=0,
                    timeout=settings.llm_timeout_s,
                )
            else:
                client = openai.OpenAI(
                    api_key=api_key, base_url=settings.llm_base_url, max_retries=0, timeout=settings.llm_timeout_s
                )
            _clients[key] = client
        return client


def messages_for(prompt: Prompt, jpeg: bytes) -> list[ChatCompletionMessageParam]:
    """The instructions as the system message; the request's data (instruction, item details, picture) as the user
    message, so that nothing a third party wrote sits in the same message as what the model is told to do."""
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return [
        {"role": "system", "content": prompt.system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt.user},
                # "high" detail: the VLM sees the panorama at up to 768 px on its short side, labels included.
                {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}},
            ],
        },
    ]


def _retry_after_s(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return float(email.utils.mktime_tz(parsed) - time.time())
    return None


def _backoff_s(retry: int, rng: random.Random) -> float:
    # Full jitter keeps several workers that failed together from retrying together.
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retry) * rng.uniform(0.5, 1.0))


def _before(deadline: float, call: Callable[[], T]) -> T:
    """Run `call` but return (or raise TimeoutError) by `deadline`, whatever the server does.

    The HTTP timeouts bound each socket operation, not a whole response: a server that trickles bytes could keep
    a request alive far past them. The call runs in a daemon thread; past the deadline it is abandoned (it ends
    by itself at its next socket timeout) and the caller moves on.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as error:  # handed over to the waiting caller as is
            future.set_exception(error)

    threading.Thread(target=run, name="vlm-request", daemon=True).start()
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()) + _WATCHDOG_SLACK_S)
    except FutureTimeout:
        raise TimeoutError("the VLM request outlived the rerank deadline") from None


def _is_schema_rejection(error: openai.APIStatusError) -> bool:
    return error.status_code in (400, 422)


def _describe_status(error: openai.APIStatusError) -> str:
    """The status alone, for the job that clients read. The server's own words (which may echo the request, part of
    the key or the account) go to the log, with the job id the worker's log context adds."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    logger.warning("the VLM answered HTTP %d: %s", error.status_code, message if isinstance(message, str) else error)
    return f"HTTP {error.status_code}"


def ask(prompt: Prompt, jpeg: bytes, *, settings: Settings, deadline: float, seed: int | None = None) -> VlmReply:
    """One answer from the VLM, or VlmError with the reason once retries or the deadline are spent.

    `seed` fixes the back-off jitter (tests); left out, jitter is random so that workers do not retry in step.
    """
    client = client_for(settings)
    messages = messages_for(prompt, jpeg)
    rng = random.Random(seed)
    structured = True
    retries = 0
    attempts = 0
    last_problem = "the VLM was not asked"
    while True:
        remaining = deadline - time.monotonic()
        if remaining < MIN_ATTEMPT_S:
            raise VlmError(f"rerank budget exhausted after {attempts} attempt(s); last problem: {last_problem}")
        timeout = min(settings.llm_timeout_s, remaining)
        attempts += 1
        extra: dict[str, Any] = {"response_format": RESPONSE_FORMAT} if structured else {}

        def call(timeout: float = timeout, extra: dict[str, Any] = extra) -> ChatCompletion:
            completion = client.chat.completions.create(
                model=settings.llm_model,
                messages=messages,
                max_tokens=MAX_ANSWER_TOKENS,
                # Deterministic answers make cached and fresh rankings agree.
                temperature=0,
                timeout=timeout,
                **extra,
            )
            return cast(ChatCompletion, completion)

        delay: float
        try:
            completion = _before(time.monotonic() + timeout, call)
        except openai.RateLimitError as error:
            if error.code == "insufficient_quota":
                # OpenAI's 429 for an exhausted quota: no wait within a job makes it pass.
                raise VlmError(f"the VLM account is out of quota ({_describe_status(error)})") from error
            last_problem = f"rate limited ({_describe_status(error)})"
            hinted = _retry_after_s(error)
            delay = hinted if hinted is not None and 0 <= hinted <= MAX_RETRY_AFTER_S else _backoff_s(retries, rng)
        except openai.APIStatusError as error:
            if structured and _is_schema_rejection(error):
                # Many compatible servers (older vLLM, Ollama) reject json_schema: ask once more in plain text.
                logger.info("VLM rejected the JSON schema (%s); asking without it", _describe_status(error))
                structured = False
                last_problem = f"the VLM rejected the request ({_describe_status(error)})"
                continue
            if error.status_code < 500 and error.status_code not in _TRANSIENT_CLIENT_STATUSES:
                raise VlmError(f"the VLM rejected the request ({_describe_status(error)})") from error
            last_problem = f"the VLM failed ({_describe_status(error)})"
            delay = _backoff_s(retries, rng)
        except (openai.APITimeoutError, TimeoutError):
            last_problem = f"the VLM did not answer within {timeout:.1f} s"
            delay = _backoff_s(retries, rng)
        except openai.APIConnectionError as error:
            logger.warning("the VLM is unreachable: %s", error.__cause__ or error)
            last_problem = "the VLM is unreachable"
            delay = _backoff_s(retries, rng)
        except openai.OpenAIError as error:
            logger.warning("the VLM call failed: %s: %s", type(error).__name__, error)
            raise VlmError(f"the VLM call failed ({type(error).__name__})") from error
        else:
            return _reply(completion, attempts, structured)
        if retries >= MAX_RETRIES:
            raise VlmError(f"{last_problem}; gave up after {attempts} attempts")
        if time.monotonic() + delay + MIN_ATTEMPT_S > deadline:
            raise VlmError(f"{last_problem}; no rerank budget left to retry")
        retries += 1
        logger.info("VLM attempt %d failed (%s); retrying in %.2f s", attempts, last_problem, delay)
        time.sleep(delay)


def _reply(completion: ChatCompletion, attempts: int, structured: bool) -> VlmReply:
    if not completion.choices:
        raise VlmError("the VLM answered with no choices")
    message = completion.choices[0].message
    refusal = cast(str | None, getattr(message, "refusal", None))
    if refusal:
        raise VlmRefused(f"the VLM refused: {refusal}")
    if not message.content or not message.content.strip():
        raise VlmError(f"the VLM answered nothing (finish reason: {completion.choices[0].finish_reason})")
    return VlmReply(content=message.content, model=completion.model, attempts=attempts, structured=structured)
