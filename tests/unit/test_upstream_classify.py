"""The one error classification: HTTP statuses, and the refusals of logprobs each provider sends."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.upstream.classify import LOGPROBS_UNSUPPORTED, classify_status, refuses_logprobs
from worker.upstream.http import error_from_response

pytestmark = pytest.mark.unit

OPENAI_REASONING = {
    "error": {
        "message": "Unsupported parameter: 'include' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "include",
        "code": "unsupported_parameter",
    }
}
OPENAI_TOP = {
    "error": {"message": "x", "type": "invalid_request_error", "param": "top_logprobs", "code": None}
}
GEMINI = {
    "error": {
        "code": 400,
        "message": "Logprobs is not supported for the current model.",
        "status": "INVALID_ARGUMENT",
    }
}
GROQ = {"error": {"message": "`logprobs` is not supported with this model", "type": "invalid_request_error"}}
OTHER_400 = {
    "error": {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens"}
}


@pytest.mark.parametrize(
    "body", [OPENAI_REASONING, OPENAI_TOP, GEMINI, GROQ], ids=["openai", "top", "gemini", "groq"]
)
def test_each_providers_refusal_is_logprobs_unsupported(body: object) -> None:
    raw = msgspec.json.encode(body)
    assert refuses_logprobs(400, raw)
    error = error_from_response(400, httpx.Headers({"content-type": "application/json"}), raw)
    assert error.code == LOGPROBS_UNSUPPORTED and not error.retryable and error.status == 400


def test_other_errors_are_not_refusals() -> None:
    assert not refuses_logprobs(400, msgspec.json.encode(OTHER_400))
    assert not refuses_logprobs(500, msgspec.json.encode(GEMINI))  # a server error is not an answer
    assert not refuses_logprobs(400, b"")
    assert refuses_logprobs(400, b"logprobs are not supported for this model")  # plain text
    assert classify_status(400) == ("bad_request", False) and classify_status(503) == (
        "upstream_unavailable",
        True,
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 999), st.binary(max_size=300))
def test_any_body_is_answered(status: int, body: bytes) -> None:
    assert refuses_logprobs(status, body) in (True, False)
