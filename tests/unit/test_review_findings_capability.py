"""Review finding on the logprobs capability memo (issue 15 §1): one job's request-specific
validation error about a logprobs parameter is remembered as "this provider+model gives no
logprobs" for every later job of every tenant. Fixed (see /work/briefs/review-findings.md): such an
error ends that job alone with a clear ``bad_request``; only a refusal of logprobs as such is remembered."""

from __future__ import annotations

from typing import Any

import fakeredis
import httpx
import msgspec
import pytest

from worker.admit import Admitted, admit
from worker.capability import LogprobsMemo
from worker.fallback import LogprobsFallback
from worker.keys import Keys
from worker.settings import Provider, Settings
from worker.upstream.base import UpstreamError
from worker.upstream.classify import logprobs_value_error, refuses_logprobs
from worker.upstream.http import StreamLimits, error_from_response
from worker.upstream.responses import ResponsesAdapter

pytestmark = pytest.mark.unit

SETTINGS = Settings(
    providers={"oa": Provider(responses_url="https://api.test/v1/responses")}, default_provider="oa"
)
LIMITS = StreamLimits(max_event_bytes=65536, max_stream_bytes=1 << 20, max_tokens=64, stall_seconds=5.0)
# OpenAI's answer to a top_logprobs over a model's maximum (a property of the request, not the model).
MESSAGE = "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 5, but got 10 instead."
TOO_MANY = {
    "error": {
        "message": MESSAGE,
        "type": "invalid_request_error",
        "param": "top_logprobs",
        "code": "integer_above_max_value",
    }
}
STREAM = (
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,'
    b'"response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
)


def _admitted(**params: Any) -> Admitted:
    job = {
        "model": "gpt-x",
        "api": "responses",
        "messages": [{"role": "user", "content": "Hi"}],
        "params": params,
    }
    verdict = admit("1-0", msgspec.json.encode(job), SETTINGS)
    assert isinstance(verdict, Admitted), verdict
    return verdict


class Upstream:
    """Gives logprobs, but at most 5 alternatives per token."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = msgspec.json.decode(request.content)
        self.bodies.append(body)
        if (body.get("top_logprobs") or 0) > 5:
            return httpx.Response(400, json=TOO_MANY)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=STREAM)


async def _run(admitted: Admitted, http: httpx.AsyncClient, memo: LogprobsMemo) -> LogprobsFallback:
    fallback = LogprobsFallback(
        admitted,
        ResponsesAdapter(),
        http=http,
        settings=SETTINGS,
        limits=LIMITS,
        memo=memo,
        key="sk-test-123",
    )
    await fallback.check()
    async with fallback.open() as events:
        async for _ in events:
            pass
    return fallback


async def test_one_jobs_out_of_range_top_logprobs_does_not_take_logprobs_from_the_next_job() -> None:
    upstream, redis = Upstream(), fakeredis.FakeAsyncRedis()
    memo = LogprobsMemo(redis, Keys("t"), 600.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        with pytest.raises(UpstreamError) as failed:  # some tenant's job asks for 10
            await _run(_admitted(top_logprobs=10), http, memo)
        other = await _run(_admitted(), http, memo)  # another tenant's plain job, next
    # that job alone fails, clearly and for good (the same request would be refused again)
    assert failed.value.code == "bad_request" and not failed.value.retryable
    assert "params.top_logprobs" in failed.value.message and "<= 5" in failed.value.message
    assert await memo.refusal("oa", "gpt-x") is None
    assert other.want is True, f"the next job was sent without logprobs: {other.reason}"
    assert "include" in upstream.bodies[-1]


# -- the class: a logprobs parameter's value is one request's fault, a refusal the model's ---------

VALUE_ERRORS = {
    "openai-above": TOO_MANY,
    "openai-below": {"error": {"message": "x", "param": "top_logprobs", "code": "integer_below_min_value"}},
    "openai-invalid": {"error": {"message": "x", "param": "top_logprobs", "code": "invalid_value"}},
    "vllm": {"object": "error", "message": "top_logprobs must be <= 20, got 50", "code": 400},
    "vllm-detail": {"detail": "Requested top logprobs of 50 exceeds the maximum of 20"},
    "plain-above": {"error": {"message": "'top_logprobs' above 20 is not supported"}},
    "together": {"error": {"message": "logprobs must be between 0 and 5", "param": "logprobs"}},
}
REFUSALS = {
    "openai-include": {
        "error": {
            "message": "Unsupported parameter: 'include' is not supported with this model.",
            "param": "include",
            "code": "unsupported_parameter",
        }
    },
    "openai-top": {
        "error": {"message": "Unsupported parameter: 'top_logprobs'", "param": "top_logprobs", "code": None}
    },
    "gemini": {"error": {"code": 400, "message": "Logprobs is not supported for the current model."}},
    "groq": {"error": {"message": "`logprobs` is not supported with this model"}},
}


@pytest.mark.parametrize("body", VALUE_ERRORS.values(), ids=VALUE_ERRORS.keys())
def test_a_logprobs_value_error_is_a_clear_bad_request_not_a_refusal(body: object) -> None:
    raw = msgspec.json.encode(body)
    assert not refuses_logprobs(400, raw) and logprobs_value_error(400, raw)
    error = error_from_response(400, httpx.Headers({"content-type": "application/json"}), raw)
    assert error.code == "bad_request" and not error.retryable
    assert "params.top_logprobs" in error.message


@pytest.mark.parametrize("body", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refusal_of_logprobs_as_such_is_still_one(body: object) -> None:
    raw = msgspec.json.encode(body)
    assert refuses_logprobs(400, raw) and not logprobs_value_error(400, raw)


@pytest.mark.parametrize("body", VALUE_ERRORS.values(), ids=VALUE_ERRORS.keys())
async def test_no_logprobs_value_error_is_remembered_for_the_model(body: object) -> None:
    """Whatever words a provider uses for a value it does not allow, the memo stays empty and the
    job fails alone (``preferred`` does not silently drop its logprobs either)."""

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    memo = LogprobsMemo(fakeredis.FakeAsyncRedis(), Keys("t"), 600.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        with pytest.raises(UpstreamError) as failed:
            await _run(_admitted(top_logprobs=10), http, memo)
    assert failed.value.code == "bad_request"
    assert await memo.refusal("oa", "gpt-x") is None
