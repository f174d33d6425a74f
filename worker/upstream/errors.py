"""In-stream error events and malformed events → :class:`UpstreamError`, for every adapter.

Providers send errors inside the stream, often at HTTP 200: TGI ``{"error": "…", "error_type"}``,
DeepInfra's gateway ``{"error_type", "error_message"}``, OpenAI, vLLM, Together and llama.cpp
``{"error": {"message", "type", "param", "code"}}`` (``code`` a string, an HTTP status or null),
older vLLM a top-level ``{"object": "error", "message", "type", "code"}``. The error's kind
(``error_type``, then ``error.type``, then a string ``error.code``) picks the code; an HTTP-like
status in ``error.code``/``error.status`` decides when no kind is known.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.upstream.base import UpstreamError
from worker.upstream.classify import LOGPROBS_UNSUPPORTED, classify_status

__all__ = ["CODES", "malformed_event", "stream_error"]

_RATE_LIMITED = ("rate_limited", True)
_BAD_REQUEST = ("bad_request", False)
_UNAVAILABLE = ("upstream_unavailable", True)
_GENERATION = ("upstream_generation_error", True)

# A normalised error kind (see ``_normal``) → (code, retryable).
_KINDS = {
    "overloaded": _RATE_LIMITED,  # TGI
    "rate_limit": _RATE_LIMITED,
    "rate_limited": _RATE_LIMITED,
    "rate_limit_exceeded": _RATE_LIMITED,  # OpenAI `code`
    "ratelimit": _RATE_LIMITED,  # openai SDK-style `RateLimitError`
    "too_many_requests": _RATE_LIMITED,
    "validation": _BAD_REQUEST,  # TGI, DeepInfra
    "invalid_request": _BAD_REQUEST,  # OpenAI, Together
    "bad_request": _BAD_REQUEST,
    "badrequest": _BAD_REQUEST,  # vLLM `BadRequestError`
    "exceed_context_size": _BAD_REQUEST,  # llama.cpp
    "context_length_exceeded": _BAD_REQUEST,  # OpenAI `code`
    "server": _UNAVAILABLE,  # OpenAI `server_error`
    "internal_server": _UNAVAILABLE,
    "internalserver": _UNAVAILABLE,  # vLLM `InternalServerError`
    "unavailable": _UNAVAILABLE,  # llama.cpp `unavailable_error`
    "service_unavailable": _UNAVAILABLE,
    "generation": _GENERATION,  # TGI
    "incomplete_generation": _GENERATION,
    "incomplete_generation_stream": _GENERATION,
}

CODES: frozenset[str] = frozenset(
    {
        # the request and its response (worker.upstream.http)
        *(code for code, _ in map(classify_status, range(400, 600))),
        "bad_content_type",
        LOGPROBS_UNSUPPORTED,  # a 400/422 refusing logprobs (worker.upstream.classify)
        "upstream_connection_error",  # connect, read or transport failure (retryable)
        "upstream_protocol_error",  # an unreadable response: oversized or too many headers, a
        # compressed body, any other parser failure
        "upstream_stalled",
        # the stream's bounds
        "upstream_event_too_large",  # one event, or the bytes between two data events
        "upstream_stream_too_large",
        "upstream_too_many_events",
        # the events (here)
        "upstream_error",
        "upstream_malformed_event",  # not the protocol's JSON, or nested too deep to decode
        *(code for code, _ in _KINDS.values()),
    }
)
"""Every code an :class:`UpstreamError` from reading one upstream stream (``open_sse`` and the
adapters' ``parse``) carries; nothing else escapes them (fuzzed in ``tests/fuzz``)."""

_MALFORMED_PREVIEW = 200
_MESSAGE_LIMIT = 1000
_ENCODER = msgspec.json.Encoder()


def stream_error(error: Any, *, error_type: Any = None, error_message: Any = None) -> UpstreamError:
    """An in-stream error → :class:`UpstreamError` carrying the provider's message.

    ``error`` is the event's ``error`` value (a string or an object); ``error_type`` and
    ``error_message`` are the TGI/DeepInfra top-level fields. The message reads
    ``upstream error (<kind>): <provider message>``; ``status`` stays ``None`` (the HTTP status
    of an in-stream error is the stream's 200).
    """
    kinds = _kinds(error, error_type)
    code, retryable = _classify(kinds, _status(error))
    prefix = f"upstream error ({kinds[0]})" if kinds else "upstream error"
    return UpstreamError(code, f"{prefix}: {_text(error_message, error)}", retryable=retryable)


def malformed_event(data: str, exc: msgspec.DecodeError | RecursionError) -> UpstreamError:
    """An event that is not the JSON the protocol promises, or nested deeper than the decoder
    goes (retryable: streams glitch)."""
    preview = data[:_MALFORMED_PREVIEW]
    return UpstreamError(
        "upstream_malformed_event",
        f"upstream sent a malformed event ({exc}): {preview!r}",
        retryable=True,
    )


def _kinds(error: Any, error_type: Any) -> list[str]:
    """The error's kind words, most specific first: ``error_type``, ``error.type``, ``error.code``."""
    values = [error_type]
    if isinstance(error, dict):
        values += [error.get("type"), error.get("code")]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _classify(kinds: list[str], status: int | None) -> tuple[str, bool]:
    for kind in kinds:
        known = _KINDS.get(_normal(kind))
        if known is not None:
            return known
    if status is not None:
        return classify_status(status)
    return "upstream_error", False


def _normal(kind: str) -> str:
    """``server_error`` → ``server``, ``BadRequestError`` → ``badrequest``.

    Lower case, ``-``/space as ``_``, and a trailing ``_error`` or ``error`` removed.
    """
    word = kind.lower().replace("-", "_").replace(" ", "_").removesuffix("_error")
    return word.removesuffix("error") if word != "error" else word


def _status(error: Any) -> int | None:
    """An HTTP-like status in an OpenAI-style error object (``status`` or ``code``), if any."""
    if not isinstance(error, dict):
        return None
    for key in ("status", "code"):
        value = error.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return None


def _text(*values: Any) -> str:
    """The first non-empty message: a string, an object's ``message``, else the object as JSON."""
    for value in values:
        if isinstance(value, str) and value.strip():
            return _clip(value.strip())
        if isinstance(value, dict):
            message = value.get("message")
            if isinstance(message, str) and message.strip():
                return _clip(message.strip())
            try:
                return _clip(_ENCODER.encode(value).decode())
            except RecursionError:  # nested deeper than the encoder goes
                return "(an error object nested too deep to show)"
    return "(no message)"


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"
