"""Teacher models for Self-Instruct: any OpenAI-compatible endpoint, or a local transformers model.

A teacher answers a batch of chat prompts and returns one text per prompt, or ``None`` for a
prompt that failed for good. The endpoint teacher bounds everything and reports it: at most
``concurrency`` requests in flight, a timeout per request, and up to ``max_retries`` retries with
exponential backoff (plus jitter) on rate limits (429), server errors (5xx), timeouts and dropped
connections; other errors (400, 401, 404) are not retried. Counts land in :class:`TeacherStats`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ..infer.chat_model import load_chat_model
from ..infer.generate import generate


@dataclass
class TeacherStats:
    requests: int = 0
    succeeded: int = 0
    retries: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error kind -> count (retried or not)
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "succeeded": self.succeeded, "retries": self.retries,
                    "failed": self.failed, "errors": dict(self.errors), "completion_tokens": self.completion_tokens}


class Teacher(Protocol):
    stats: TeacherStats

    def complete(self, prompts: Sequence[list[dict]], *, max_tokens: int, temperature: float,
                 seed: int | None = None) -> list[str | None]: ...


@dataclass(frozen=True)
class EndpointSettings:
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable; it is never logged
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry waits about this long; doubles each time
    max_backoff_s: float = 30.0


def _retryable(exc: BaseException) -> str | None:
    """The error kind if worth retrying, else None."""
    import openai

    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return f"http_{exc.status_code}"
    return None


class TeacherRefused(ValueError):
    """The endpoint refused the key or the model: every later call would be refused too, so the run stops."""


class EndpointTeacher:
    def __init__(self, settings: EndpointSettings, *, sleep: Callable[[float], None] = time.sleep):
        from openai import OpenAI

        self.settings = settings
        self.stats = TeacherStats()
        self.sleep = sleep
        key = os.environ.get(settings.api_key_env) or "not-needed"  # local servers accept any key
        # Retries are ours (bounded, counted, with jitter), so the client's own are off.
        self.client = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s, max_retries=0)

    def _one(self, messages: list[dict], max_tokens: int, temperature: float, seed: int | None) -> str | None:
        import openai

        options: dict[str, Any] = {"seed": seed} if seed is not None else {}
        for attempt in range(self.settings.max_retries + 1):
            self.stats.count(requests=1)
            try:
                reply = self.client.chat.completions.create(model=self.settings.model, messages=messages,
                                                            max_tokens=max_tokens, temperature=temperature, **options)
            except openai.OpenAIError as exc:
                if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)):
                    self.stats.error(type(exc).__name__)
                    raise TeacherRefused(
                        f"the teacher ({self.settings.model} at {self.settings.base_url}) refused the request: "
                        f"{type(exc).__name__}: {exc}"[:400] + f". Check --teacher-model and the key in "
                        f"${self.settings.api_key_env}; what was generated so far is kept (re-run to resume)") from exc
                kind = _retryable(exc)
                self.stats.error(kind or type(exc).__name__)
                if kind is None or attempt == self.settings.max_retries:
                    self.stats.count(failed=1)
                    return None
                self.stats.count(retries=1)
                wait = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** attempt)
                self.sleep(wait * random.uniform(0.5, 1.0))
                continue
            self.stats.count(succeeded=1, completion_tokens=getattr(reply.usage, "completion_tokens", 0) or 0)
            return reply.choices[0].message.content or ""
        return None

    def complete(self, prompts: Sequence[list[dict]], *, max_tokens: int, temperature: float,
                 seed: int | None = None) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures = [pool.submit(self._one, p, max_tokens, temperature, None if seed is None else seed + i)
                       for i, p in enumerate(prompts)]
            return [f.result() for f in futures]

    def close(self) -> None:
        self.client.close()


class LocalTeacher:
    """A local model (folder, hub id, adapter or 'sandbox') generating in batches with its own template."""

    def __init__(self, spec: str, *, batch_size: int = 16, trust_remote_code: bool = False, device: str = "auto"):
        self.chat = load_chat_model(spec, trust_remote_code=trust_remote_code, device=device)
        self.batch_size = batch_size
        self.stats = TeacherStats()

    def complete(self, prompts: Sequence[list[dict]], *, max_tokens: int, temperature: float,
                 seed: int | None = None) -> list[str | None]:
        ids = []
        for messages in prompts:
            prompt = self.chat.prompt_ids(messages)
            ids.append(prompt[-(self.chat.context_length - max_tokens):])  # keep the end: the question is there
        outputs = generate(self.chat.model, self.chat.tokenizer, ids, stop_ids=self.chat.stop_ids,
                           max_new_tokens=max_tokens, batch_size=self.batch_size, do_sample=temperature > 0,
                           temperature=temperature or 1.0, seed=seed or 0)
        self.stats.count(requests=len(prompts), succeeded=len(prompts),
                         completion_tokens=sum(len(o.token_ids) for o in outputs))
        return [o.text for o in outputs]

    def close(self) -> None:
        pass
