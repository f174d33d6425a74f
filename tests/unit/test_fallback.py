"""LogprobsFallback on httpx.MockTransport and fakeredis: a refusal of logprobs is retried once
without them (preferred) or fails (required), is remembered, and the next request skips it."""

from __future__ import annotations

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
from worker.upstream.http import StreamLimits
from worker.upstream.responses import ResponsesAdapter

pytestmark = pytest.mark.unit

SETTINGS = Settings(
    providers={"oa": Provider(responses_url="https://api.test/v1/responses")}, default_provider="oa"
)
LIMITS = StreamLimits(max_event_bytes=65536, max_stream_bytes=1 << 20, max_tokens=64, stall_seconds=5.0)
REFUSAL = {"error": {"message": "Unsupported parameter: 'include'", "type": "invalid_request_error",
                     "param": "include", "code": "unsupported_parameter"}}  # fmt: skip
STREAM = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
    b'"delta":"Hi","logprobs":[]}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,'
    b'"response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
)


def _admitted(policy: str = "preferred") -> Admitted:
    job = {
        "model": "o3",
        "api": "responses",
        "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": policy,
    }
    verdict = admit("1-0", msgspec.json.encode(job), SETTINGS)
    assert isinstance(verdict, Admitted)
    return verdict


class Upstream:
    """Refuses every request that asks for logprobs; streams the others."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = msgspec.json.decode(request.content)
        self.bodies.append(body)
        if "include" in body:
            return httpx.Response(400, json=REFUSAL)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=STREAM)


async def _read(fallback: LogprobsFallback) -> list[str]:
    await fallback.check()
    out = []
    async with fallback.open() as events:
        async for data in events:
            out += [r.text for r in fallback.parser.parse(data).tokens]
    return out


def _fallback(admitted: Admitted, http: httpx.AsyncClient, memo: LogprobsMemo) -> LogprobsFallback:
    return LogprobsFallback(
        admitted,
        ResponsesAdapter(),
        http=http,
        settings=SETTINGS,
        limits=LIMITS,
        memo=memo,
        key="sk-test-123",
    )


async def test_preferred_retries_once_without_logprobs_and_the_next_request_skips_the_refusal() -> None:
    upstream, redis = Upstream(), fakeredis.FakeAsyncRedis()
    memo = LogprobsMemo(redis, Keys("t"), 60.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        first = _fallback(_admitted(), http, memo)
        assert await _read(first) == ["Hi"]
        assert [("include" in b) for b in upstream.bodies] == [True, False]
        assert first.want is False and first.reason is not None
        assert first.reason.startswith(
            "provider 'oa' gives no logprobs for model 'o3': HTTP 400 from upstream"
        )
        assert await redis.get(Keys("t").no_logprobs("oa", "o3")) == first.reason.encode()
        other = LogprobsMemo(redis, Keys("t"), 60.0)  # another worker
        second = _fallback(_admitted(), http, other)
        assert await _read(second) == ["Hi"]
        assert [("include" in b) for b in upstream.bodies] == [True, False, False]  # no refused request
        assert second.reason == f"{first.reason} (remembered)"


async def test_required_fails_with_logprobs_unsupported_and_is_remembered() -> None:
    upstream, redis = Upstream(), fakeredis.FakeAsyncRedis()
    memo = LogprobsMemo(redis, Keys("t"), 60.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        with pytest.raises(UpstreamError) as caught:
            await _read(_fallback(_admitted("required"), http, memo))
        assert caught.value.code == "logprobs_unsupported" and not caught.value.retryable
        assert "logprobs: required" in caught.value.message and "sk-test-123" not in caught.value.message
        with pytest.raises(UpstreamError):  # at once, from the memo: no request sent
            await _fallback(_admitted("required"), http, memo).check()
        assert len(upstream.bodies) == 1


async def test_other_errors_are_not_retried_here() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": {"message": "max_output_tokens too large", "param": "max_output_tokens"}}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        fallback = _fallback(_admitted(), http, LogprobsMemo(fakeredis.FakeAsyncRedis(), Keys("t"), 60.0))
        with pytest.raises(UpstreamError) as caught:
            await _read(fallback)
        assert caught.value.code == "bad_request" and fallback.want is True
