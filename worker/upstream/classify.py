"""The one classification of upstream failures: an HTTP status, or a refusal of logprobs.

:func:`classify_status` maps an HTTP error status to ``(code, retryable)``; every adapter's
errors and the reader's (:mod:`worker.upstream.http`, :mod:`worker.upstream.errors`) use it.

:func:`refuses_logprobs` recognises a provider or model that refuses logprobs (a 400/422 whose
body says so), which the worker answers by the job's ``logprobs`` policy instead of failing blind:

* OpenAI (reasoning models, Responses and chat): ``{"error": {"code": "unsupported_parameter",
  "param": "include" | "logprobs" | "top_logprobs", ...}}`` (any error whose ``param`` is
  ``include`` or names logprobs);
* Gemini: ``400 {"error": {"code": 400, "message": "Logprobs is not supported for the current
  model.", "status": "INVALID_ARGUMENT"}}``;
* Groq and OpenAI-compatible servers: a 400 whose message names ``logprobs`` and says it is not
  supported (``"logprobs" is not supported with this model``, ``... must be false``).

A refusal is a property of the provider+model (the worker remembers it for every job,
:mod:`worker.fallback`), so only an error about logprobs *as such* is one. An error about a
logprobs parameter's *value* (OpenAI ``400 {"param": "top_logprobs", "code":
"integer_above_max_value"}``, ``top_logprobs must be <= 5``, ``... above 20 is not supported``) is a
property of one job's request: :func:`logprobs_value_error` recognises it, and it ends that job
alone with a non-retryable ``bad_request`` naming ``params.top_logprobs``
(:func:`worker.upstream.http.error_from_response`).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = ["LOGPROBS_UNSUPPORTED", "classify_status", "logprobs_value_error", "refuses_logprobs"]

LOGPROBS_UNSUPPORTED = "logprobs_unsupported"

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "model_not_found",
    408: "upstream_timeout",
    409: "conflict",
    413: "payload_too_large",
    422: "bad_request",
    423: "model_locked",
    429: "rate_limited",
}
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_REFUSAL_STATUSES = frozenset({400, 422})
_REFUSAL_WORDS = re.compile(
    r"not (?:yet )?supported|unsupported|not available|not allowed|must be false|cannot be used",
    re.IGNORECASE,
)
_LOGPROB_WORD = re.compile(r"log[ _-]?prob", re.IGNORECASE)
_REFUSAL_CODES = frozenset({"unsupported_parameter", "unsupported"})
# a value outside what the model allows: OpenAI's codes, and the words of other servers' messages
_VALUE_CODE = re.compile(r"above|below|max|min|range|invalid_value|invalid_type|integer|too_", re.I)
_VALUE_WORDS = re.compile(
    r"maximum|minimum|above|below|greater than|less than|at most|at least|<=|>=|between|"
    r"out of range|exceed|too (?:large|big|high|many)|expected a value",
    re.IGNORECASE,
)
_BODY_LIMIT = 64 * 1024


def classify_status(status: int) -> tuple[str, bool]:
    """``(code, retryable)`` for an HTTP error status."""
    if status >= 500:
        return "upstream_unavailable", True
    return _STATUS_CODES.get(status, "upstream_http_error"), status in _RETRYABLE_4XX


def refuses_logprobs(status: int, body: bytes) -> bool:
    """Whether an error response says the provider or model does not give logprobs (as such: not
    a logprobs parameter's value, :func:`logprobs_value_error`)."""
    return any(kind == "refused" for kind in _kinds(status, body))


def logprobs_value_error(status: int, body: bytes) -> bool:
    """Whether an error response says a logprobs parameter's *value* (``top_logprobs`` above the
    model's maximum) is wrong: one request's fault, never the model's capability."""
    return any(kind == "value" for kind in _kinds(status, body))


def _kinds(status: int, body: bytes) -> list[str]:
    """What each (of at most four) errors in the body says about logprobs: ``refused``,
    ``value`` or ``other``."""
    if status not in _REFUSAL_STATUSES or not body:
        return []
    text = body[:_BODY_LIMIT]
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return [_message_kind(text.decode("utf-8", "replace"))]
    errors = value if isinstance(value, list) else [value]
    return [_error_kind(item) for item in errors[:4]]


def _error_kind(value: Any) -> str:
    if not isinstance(value, dict):
        return "other"
    error = value.get("error", value)
    if isinstance(error, str):
        return _message_kind(error)
    if not isinstance(error, dict):
        return "other"
    param, code = error.get("param"), error.get("code")
    message = error.get("message", error.get("detail"))  # FastAPI servers answer {"detail": ...}
    message = message if isinstance(message, str) else ""
    code = code if isinstance(code, str) else ""
    if isinstance(param, str) and (param.strip() == "include" or _LOGPROB_WORD.search(param)):
        if code not in _REFUSAL_CODES and (_VALUE_CODE.search(code) or _VALUE_WORDS.search(message)):
            return "value"
        return "refused"  # the parameter itself is refused (unsupported_parameter, ...)
    return _message_kind(message)


def _message_kind(message: str) -> str:
    if not _LOGPROB_WORD.search(message):
        return "other"
    if _VALUE_WORDS.search(message):
        return "value"
    return "refused" if _REFUSAL_WORDS.search(message) else "other"
