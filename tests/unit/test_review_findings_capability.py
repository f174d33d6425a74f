"""Review finding on the logprobs capability memo (issue 15 §1): one job's request-specific
validation error about a logprobs parameter is remembered as "this provider+model gives no
logprobs" for every later job of every tenant. ``xfail(strict=True)``: fails on today's code; see
/work/briefs/review-findings.md."""

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
from worker.upstream.http import StreamLimits
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


@pytest.mark.xfail(
    strict=True,
    reason="classify.refuses_logprobs treats any 400 whose param names logprobs (top_logprobs over a "
    "maximum) as the model refusing logprobs, and fallback.py remembers it per provider+model: one "
    "job's bad top_logprobs takes logprobs away from every job on that model for the memo's TTL",
)
async def test_one_jobs_out_of_range_top_logprobs_does_not_take_logprobs_from_the_next_job() -> None:
    upstream, redis = Upstream(), fakeredis.FakeAsyncRedis()
    memo = LogprobsMemo(redis, Keys("t"), 600.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        await _run(_admitted(top_logprobs=10), http, memo)  # some tenant's job asks for 10
        other = await _run(_admitted(), http, memo)  # another tenant's plain job, next
    assert other.want is True, f"the next job was sent without logprobs: {other.reason}"
    assert "include" in upstream.bodies[-1]
