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
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = ["LOGPROBS_UNSUPPORTED", "classify_status", "refuses_logprobs"]

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
_BODY_LIMIT = 64 * 1024


def classify_status(status: int) -> tuple[str, bool]:
    """``(code, retryable)`` for an HTTP error status."""
    if status >= 500:
        return "upstream_unavailable", True
    return _STATUS_CODES.get(status, "upstream_http_error"), status in _RETRYABLE_4XX


def refuses_logprobs(status: int, body: bytes) -> bool:
    """Whether an error response says the provider or model does not give logprobs."""
    if status not in _REFUSAL_STATUSES or not body:
        return False
    text = body[:_BODY_LIMIT]
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return _says_refused(text.decode("utf-8", "replace"))
    errors = value if isinstance(value, list) else [value]
    return any(_error_refuses(item) for item in errors[:4])


def _error_refuses(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    error = value.get("error", value)
    if isinstance(error, str):
        return _says_refused(error)
    if not isinstance(error, dict):
        return False
    param = error.get("param")
    if isinstance(param, str) and (param.strip() == "include" or _LOGPROB_WORD.search(param)):
        return True
    message = error.get("message")
    return isinstance(message, str) and _says_refused(message)


def _says_refused(message: str) -> bool:
    return bool(_LOGPROB_WORD.search(message) and _REFUSAL_WORDS.search(message))
