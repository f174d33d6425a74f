"""DeepInfra native inference API (``/v1/inference/{model}``) and TGI ``/generate_stream`` events.

One event carries one token. The last event has ``generated_text`` or ``details`` set; its token
is a real generated token (often the special EOS) and is kept. These protocols send no ``[DONE]``:
EOF after the final event is the end. Errors arrive in the stream at HTTP 200 as
``{"error", "error_type"}`` (TGI) or ``{"error_type", "error_message"}`` (DeepInfra gateway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import (
    Candidate,
    Parsed,
    StreamEnd,
    TokenRecord,
    UpstreamError,
    output_count,
    prompt_count,
)
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.request import bearer, max_tokens, model_path, sampling, with_model

__all__ = ["NativeAdapter", "model_path"]


class _Token(msgspec.Struct, gc=False):
    id: int | None = None
    text: str | None = None
    logprob: float | None = None
    special: bool | None = None  # tri-state: absent means the provider said nothing


class _Details(msgspec.Struct, gc=False):
    finish_reason: str | None = None
    generated_tokens: int | None = None
    input_length: int | None = None
    input_tokens: int | None = None
    prompt_tokens: int | None = None


class _Status(msgspec.Struct, gc=False):
    tokens_input: int | None = None
    tokens_generated: int | None = None


class _Event(msgspec.Struct, gc=False):
    """A native/TGI stream event; unknown keys (``index``, ``seed``, costs) are ignored."""

    token: _Token | None = None
    top_tokens: list[_Token] | None = None
    generated_text: str | None = None
    details: _Details | None = None
    num_input_tokens: int | None = None
    num_tokens: int | None = None
    inference_status: _Status | None = None
    error: Any = None
    error_type: Any = None
    error_message: Any = None


_DECODER = msgspec.json.Decoder(_Event, strict=False)
_ENCODER = msgspec.json.Encoder()


class NativeAdapter:
    """Build DeepInfra native requests and parse native/TGI stream events (no stream state)."""

    api = "native"
    event_prefix = None

    def build_request(
        self,
        job: Job,
        *,
        model_url: str,
        settings: Settings,
        provider: Provider,
        logprobs: bool = True,
    ) -> tuple[str, bytes]:
        """``(url, JSON body)`` of a streaming request; only the params the job set are sent. The
        sampled token's logprob always comes; ``logprobs=False`` asks for no alternatives."""
        if job.input is None:
            raise UpstreamError("bad_request", "the native API needs `input`")
        body: dict[str, Any] = {
            "input": job.input,
            "stream": True,
            "max_new_tokens": max_tokens(job, settings),
            **sampling(job),
        }
        top_n = min(job.params.top_logprobs or 0, provider.max_top_n_tokens)
        if logprobs and provider.supports_top_n_tokens and top_n > 0:
            body["top_n_tokens"] = top_n
            body["details"] = True
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer(key)

    def parser(self, job: Job, *, logprobs: bool = True) -> NativeAdapter:
        return self

    def parse(self, data: str) -> Parsed:
        """One SSE data payload → :class:`Parsed`; ``[DONE]`` and status-only events → empty."""
        if data == "[DONE]":
            return Parsed()
        try:
            event = _DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError; nested too deep
            if data.strip() == "[DONE]":
                return Parsed()
            raise malformed_event(data, exc) from None
        token = event.token
        if token is None:
            if _has_error(event):
                raise stream_error(
                    event.error, error_type=event.error_type, error_message=event.error_message
                )
            if event.generated_text is None and event.details is None:
                return Parsed()
            return _final(event, [])
        tokens = [_record(token, event.top_tokens)]
        if event.generated_text is None and event.details is None:
            return Parsed(tokens)
        return _final(event, tokens)


def _record(token: _Token, top: list[_Token] | None) -> TokenRecord:
    candidates = None if top is None else [_candidate(t) for t in top]
    # positional (once per token): text, logprob, token_id, special, bytes, top
    return TokenRecord(token.text or "", token.logprob, token.id, token.special, None, candidates)


def _candidate(token: _Token) -> Candidate:
    return Candidate(token=token.text or "", logprob=token.logprob, token_id=token.id)


def _final(event: _Event, tokens: list[TokenRecord]) -> Parsed:
    """The final event: its token (if any) plus the :class:`StreamEnd`.

    Without ``details.finish_reason`` (TGI sends ``details`` only when asked), the reason is
    ``eos_token`` when the final token is special, else ``unknown``.
    """
    details = event.details or _Details()
    status = event.inference_status or _Status()
    input_tokens = _first(
        prompt_count,
        details.input_length,
        details.input_tokens,
        details.prompt_tokens,
        event.num_input_tokens,
        status.tokens_input,
    )
    output_tokens = _first(output_count, details.generated_tokens, event.num_tokens, status.tokens_generated)
    reason = details.finish_reason
    if not reason:
        reason = "eos_token" if tokens and tokens[-1].special is True else "unknown"
    end = StreamEnd(reason, event.generated_text, input_tokens, output_tokens)
    return Parsed(tokens, end, input_tokens, output_tokens, closed=True)


def _first(bound: Callable[[Any], int | None], *values: int | None) -> int | None:
    """The first of ``values`` that is a plausible count (``bound``: nonsense is not reported)."""
    return next((n for n in map(bound, values) if n is not None), None)


def _has_error(event: _Event) -> bool:
    return not (event.error is None and event.error_type is None and event.error_message is None)
