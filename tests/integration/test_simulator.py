"""tokenwire sim over loopback HTTP: native/TGI shapes, pacing, every fault directive, /stats."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from worker.sim import SimConfig, serve
from worker.sim.faults import DirectiveError

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(5.0)
READ_LIMIT = 10.0  # seconds for any one stream read in these tests
MODEL = "tokenwire/sim-small"
NATIVE_KEYS = {"token", "generated_text", "details"}
TOKEN_KEYS = {"id", "text", "logprob", "special"}


def _body(**extra: Any) -> dict[str, Any]:
    return {"input": "Tell me about rivers.", "stream": True, **extra}


async def _events(http: httpx.AsyncClient, url: str, model: str = MODEL, **extra: Any) -> list[str]:
    """The SSE data strings of one native stream (status must be 200)."""
    out: list[str] = []
    async with (
        asyncio.timeout(READ_LIMIT),
        aconnect_sse(http, "POST", f"{url}/v1/inference/{model}", json=_body(**extra)) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream"
        async for sse in source.aiter_sse():
            out.append(sse.data)
    return out


async def _json_events(
    http: httpx.AsyncClient, url: str, model: str = MODEL, **extra: Any
) -> list[dict[str, Any]]:
    return [json.loads(d) for d in await _events(http, url, model, **extra)]


async def _raw(http: httpx.AsyncClient, url: str, model: str, **extra: Any) -> bytes:
    async with (
        asyncio.timeout(READ_LIMIT),
        http.stream("POST", f"{url}/v1/inference/{model}", json=_body(**extra)) as response,
    ):
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_bytes()])


async def _stats(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(f"{url}/stats")
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


async def _until_stats(
    http: httpx.AsyncClient, url: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll /stats until ``check`` holds (bounded)."""
    async with asyncio.timeout(READ_LIMIT):
        while True:
            stats = await _stats(http, url)
            if check(stats):
                return stats
            await asyncio.sleep(0.01)


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["token"]["text"] for e in events if not e["token"]["special"])


# --- shape -----------------------------------------------------------------------------------


async def test_native_event_shape_and_final_event(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};tokens=12", seed=42)
    assert len(events) == 13
    for event in events[:-1]:
        assert set(event) == NATIVE_KEYS
        assert event["generated_text"] is None
        assert event["details"] is None
        token = event["token"]
        assert set(token) == TOKEN_KEYS
        assert isinstance(token["id"], int)
        assert isinstance(token["text"], str)
        assert -4.0 <= token["logprob"] < 0
        assert token["special"] is False
    final = events[-1]
    assert set(final) == NATIVE_KEYS
    assert final["token"]["id"] == 2
    assert final["token"]["text"] == "</s>"
    assert final["token"]["special"] is True
    assert -0.06 < final["token"]["logprob"] < 0
    assert final["generated_text"] == _text(events)
    assert final["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": 13,
        "input_tokens": 6,
        "seed": 42,
    }


async def test_max_new_tokens_ends_with_length(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, max_new_tokens=7)
    assert len(events) == 7
    final = events[-1]
    assert final["token"]["special"] is False
    assert final["details"]["finish_reason"] == "length"
    assert final["details"]["generated_tokens"] == 7
    assert final["details"]["seed"] is None
    assert final["generated_text"] == _text(events)


@pytest.mark.parametrize(
    ("model", "max_new_tokens", "count", "reason"),
    [
        (f"{MODEL};tokens=3", 10, 4, "eos_token"),
        (f"{MODEL};tokens=9", 10, 10, "eos_token"),
        (f"{MODEL};tokens=10", 10, 10, "length"),
        (f"{MODEL};tokens=0", None, 1, "eos_token"),
        (MODEL, None, 65, "eos_token"),  # default_max_tokens content tokens, then EOS
    ],
)
async def test_generation_length(
    sim: str,
    http: httpx.AsyncClient,
    model: str,
    max_new_tokens: int | None,
    count: int,
    reason: str,
) -> None:
    extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    events = await _json_events(http, sim, model, **extra)
    assert len(events) == count
    assert events[-1]["details"]["finish_reason"] == reason
    assert events[-1]["details"]["generated_tokens"] == count


async def test_stop_sequence(sim: str, http: httpx.AsyncClient) -> None:
    text = _text(await _json_events(http, sim, f"{MODEL};tokens=30"))
    stop = text[20:25]
    events = await _json_events(http, sim, f"{MODEL};tokens=30", stop=[stop])
    final = events[-1]
    assert final["details"]["finish_reason"] == "stop_sequence"
    assert stop in final["generated_text"]
    assert final["generated_text"] == _text(events)


async def test_same_request_gives_the_same_bytes(sim: str, http: httpx.AsyncClient) -> None:
    first = await _events(http, sim, f"{MODEL};tokens=40", seed=5)
    second = await _events(http, sim, f"{MODEL};tokens=40", seed=5)
    other_seed = await _events(http, sim, f"{MODEL};tokens=40", seed=6)
    assert first == second
    assert first != other_seed


async def test_top_n_tokens(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};tokens=30", top_n_tokens=3)
    for event in events:
        top = event["top_tokens"]
        assert len(top) == 3
        logprobs = [t["logprob"] for t in top]
        assert logprobs == sorted(logprobs, reverse=True)
        if event["token"]["id"] in {t["id"] for t in top}:
            assert event["token"] in top
    assert list(events[0]) == ["token", "top_tokens", "generated_text", "details"]


async def test_pacing_is_roughly_honoured(sim: str, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    events = await _events(http, sim, f"{MODEL};tps=100", max_new_tokens=20)
    assert len(events) == 20
    assert time.monotonic() - started >= 0.15


async def test_tgi_generate_stream(sim: str, http: httpx.AsyncClient) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "details": True, "seed": 1}}
    async with (
        asyncio.timeout(READ_LIMIT),
        aconnect_sse(http, "POST", f"{sim}/generate_stream", json=body) as source,
    ):
        events = [sse.json() async for sse in source.aiter_sse()]
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5]
    assert "top_tokens" not in events[0]
    assert events[-1]["details"] == {
        "finish_reason": "length",
        "generated_tokens": 5,
        "seed": 1,
        "input_length": 2,
    }
    assert events[-1]["generated_text"] == _text(events)


async def test_tgi_without_details_and_with_directives(sim: str, http: httpx.AsyncClient) -> None:
    body = {"inputs": "Hello", "model": "tgi-model;tokens=2", "parameters": {"top_n_tokens": 2}}
    async with (
        asyncio.timeout(READ_LIMIT),
        aconnect_sse(http, "POST", f"{sim}/generate_stream", json=body) as source,
    ):
        events = [sse.json() async for sse in source.aiter_sse()]
    assert len(events) == 3
    assert events[-1]["details"] is None
    assert events[-1]["generated_text"] == _text(events)
    assert all(len(e["top_tokens"]) == 2 for e in events)


# --- request errors --------------------------------------------------------------------------


async def test_non_streaming_request_is_refused(sim: str, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{sim}/v1/inference/{MODEL}", json={"input": "hi"})
    assert response.status_code == 400
    assert "stream" in response.json()["error"]


async def test_malformed_body_is_a_fastapi_422(sim: str, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{sim}/v1/inference/{MODEL}", json={"stream": True})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input"]


@pytest.mark.parametrize(
    ("model", "named"),
    [(f"{MODEL};colour=blue", "colour"), (f"{MODEL};after=soon", "after")],
)
async def test_bad_directive_is_a_400_naming_it(
    sim: str, http: httpx.AsyncClient, model: str, named: str
) -> None:
    response = await http.post(f"{sim}/v1/inference/{model}", json=_body())
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_bad_default_fault_fails_at_config() -> None:
    with pytest.raises(DirectiveError, match="nonsense"):
        SimConfig(fault="nonsense=1")


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directives", "status", "body"),
    [
        ("status=429", 429, {"error": {"message": "Model busy, retry later"}}),
        ("status=404", 404, {"error": "Model not found"}),
        ("status=500", 500, {"error": "Internal server error"}),
    ],
)
async def test_status_fault_json_bodies(
    sim: str, http: httpx.AsyncClient, directives: str, status: int, body: object
) -> None:
    response = await http.post(f"{sim}/v1/inference/{MODEL};fault=status;{directives}", json=_body())
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == body
    assert "retry-after" not in response.headers


async def test_status_fault_422_is_fastapi_shaped(sim: str, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{sim}/v1/inference/{MODEL};fault=status;status=422", json=_body())
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {"loc", "msg", "type"} <= set(detail[0])


async def test_status_fault_retry_after_seconds(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};fault=status;status=429;retry_after=2"
    response = await http.post(f"{sim}/v1/inference/{model}", json=_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"


async def test_status_fault_html_with_retry_after_date(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};fault=status;status=503;body=html;retry_after=30;retry_after_date=1"
    response = await http.post(f"{sim}/v1/inference/{model}", json=_body())
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>503 Service Unavailable</h1>" in response.text
    when = email.utils.parsedate_to_datetime(response.headers["retry-after"])
    assert when.timestamp() > time.time()


async def test_status_fault_from_the_sim_body_field(sim: str, http: httpx.AsyncClient) -> None:
    body = _body(sim={"fault": "status", "status": 502, "body": "text"})
    response = await http.post(f"{sim}/v1/inference/{MODEL}", json=body)
    assert response.status_code == 502
    assert response.text == "502 Bad Gateway"


async def test_percent_encoded_directives(sim: str, http: httpx.AsyncClient) -> None:
    response = await http.post(f"{sim}/v1/inference/{MODEL}%3Bfault%3Dstatus%3Bstatus%3D404", json=_body())
    assert response.status_code == 404


async def test_fail_first_then_success(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};fault=status;status=503;fail_first=2;tokens=3"
    url = f"{sim}/v1/inference/{model}"
    statuses = [(await http.post(url, json=_body())).status_code for _ in range(2)]
    assert statuses == [503, 503]
    events = await _json_events(http, sim, model)
    assert len(events) == 4
    assert events[-1]["details"]["finish_reason"] == "eos_token"
    stats = await _stats(http, sim)
    assert stats["requests"][model] == 3
    assert stats["faults"]["status"] == 2


async def test_disconnect_aborts_mid_stream(sim: str, http: httpx.AsyncClient) -> None:
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with (
            asyncio.timeout(READ_LIMIT),
            aconnect_sse(
                http,
                "POST",
                f"{sim}/v1/inference/{MODEL};fault=disconnect;after=5",
                json=_body(),
            ) as source,
        ):
            async for sse in source.aiter_sse():
                received.append(sse.data)
    assert len(received) == 5
    assert all('"generated_text":null' in data for data in received)


async def test_disconnect_with_reset(sim: str, http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await _events(http, sim, f"{MODEL};fault=disconnect;after=3;rst=1")


async def test_stall_then_resume(sim: str, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    events = await _json_events(http, sim, f"{MODEL};fault=stall;after=2;stall=0.3;tokens=5")
    assert time.monotonic() - started >= 0.25
    assert len(events) == 6
    assert events[-1]["generated_text"] == _text(events)


async def test_stall_sends_keepalive_pings(sim: str, http: httpx.AsyncClient) -> None:
    raw = await _raw(http, sim, f"{MODEL};fault=stall;after=2;stall=0.3;keepalive=1;tokens=3")
    before, _, after = raw.partition(b": ping\n\n")
    assert before.count(b"data: ") == 2
    assert after.replace(b": ping\n\n", b"").count(b"data: ") == 2


async def test_stall_forever_ends_when_the_client_leaves(sim: str, http: httpx.AsyncClient) -> None:
    received: list[str] = []
    model = f"{MODEL};fault=stall;after=2"
    async with aconnect_sse(http, "POST", f"{sim}/v1/inference/{model}", json=_body()) as source:
        stream = source.aiter_sse()
        async with asyncio.timeout(READ_LIMIT):
            received = [(await anext(stream)).data for _ in range(2)]
        stats = await _stats(http, sim)
        assert stats["active_streams"] == 1
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(stream)
    assert len(received) == 2
    stats = await _until_stats(http, sim, lambda s: s["active_streams"] == 0)
    assert stats["streams_completed"] == 0


async def test_malformed_event_then_continue(sim: str, http: httpx.AsyncClient) -> None:
    data = await _events(http, sim, f"{MODEL};fault=malformed;after=3;tokens=5")
    assert data[3] == "{not json"
    assert len(data) == 7
    assert '"finish_reason":"eos_token"' in data[-1]


async def test_malformed_event_then_end(sim: str, http: httpx.AsyncClient) -> None:
    data = await _events(http, sim, f"{MODEL};fault=malformed;after=3;then=end")
    assert data[-1] == "{not json"
    assert len(data) == 4


async def test_in_stream_error(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};fault=error;after=2")
    assert len(events) == 3
    error = events[-1]
    assert error["error_type"] == "generation"
    assert error["error"].startswith("Request failed during generation")
    assert "token" not in error


async def test_clean_eof_without_final_event(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};fault=eof;after=4")
    assert len(events) == 4
    assert all(e["generated_text"] is None for e in events)


async def test_fault_after_the_end_fires_before_the_final_event(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};fault=eof;after=100;tokens=3")
    assert len(events) == 3
    assert all(e["generated_text"] is None for e in events)


async def test_big_event(sim: str, http: httpx.AsyncClient) -> None:
    data = await _events(http, sim, f"{MODEL};fault=big;after=1;size=200000;tokens=3")
    assert len(data[1]) > 200_000
    assert len(data) == 5
    final = json.loads(data[-1])
    assert final["details"]["generated_tokens"] == 5
    assert len(final["generated_text"]) > 200_000


async def test_done_marker(sim: str, http: httpx.AsyncClient) -> None:
    data = await _events(http, sim, f"{MODEL};tokens=2;done=1")
    assert data[-1] == "[DONE]"
    assert len(data) == 4


async def test_no_done_marker_by_default(sim: str, http: httpx.AsyncClient) -> None:
    raw = await _raw(http, sim, f"{MODEL};tokens=2")
    assert b"[DONE]" not in raw
    assert raw.count(b"data: {") == 3
    assert raw.endswith(b"}\n\n")


async def test_nospace_and_crlf_framing(sim: str, http: httpx.AsyncClient) -> None:
    plain = await _events(http, sim, f"{MODEL};tokens=4")
    raw = await _raw(http, sim, f"{MODEL};tokens=4;nospace=1;crlf=1")
    assert raw.startswith(b"data:{")
    assert b"data: " not in raw
    assert raw.count(b"\r\n\r\n") == 5
    assert b"\n\n" not in raw.replace(b"\r\n", b"")
    assert await _events(http, sim, f"{MODEL};tokens=4;nospace=1;crlf=1") == plain


async def test_utf8_split_tokens(sim: str, http: httpx.AsyncClient) -> None:
    events = await _json_events(http, sim, f"{MODEL};utf8split=1;tokens=400")
    empty = [e for e in events if e["token"]["text"] == ""]
    assert empty
    assert all(3 <= e["token"]["id"] < 259 for e in empty)
    text = events[-1]["generated_text"]
    assert text == _text(events)
    assert any(not ch.isascii() for ch in text)


async def test_stamp_sets_token_ids_to_send_times(sim: str, http: httpx.AsyncClient) -> None:
    plain = await _json_events(http, sim, f"{MODEL};tokens=20", seed=3)
    before = time.time_ns() // 1000
    stamped = await _json_events(http, sim, f"{MODEL};tokens=20;stamp=1", seed=3)
    after = time.time_ns() // 1000
    ids = [e["token"]["id"] for e in stamped]
    assert len(ids) == 21  # the final (EOS) event is stamped too
    assert all(before <= i <= after for i in ids)
    assert ids == sorted(ids)
    assert _text(stamped) == _text(plain)
    assert [e["token"]["logprob"] for e in stamped] == [e["token"]["logprob"] for e in plain]


# --- server ----------------------------------------------------------------------------------


async def test_health_and_stats(sim: str, http: httpx.AsyncClient) -> None:
    health = await http.get(f"{sim}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    await _events(http, sim, f"{MODEL};tokens=3")
    await _events(http, sim, f"{MODEL};tokens=3")
    stats = await _stats(http, sim)
    assert stats["requests"] == {f"{MODEL};tokens=3": 2}
    assert stats["total_requests"] == 2
    assert stats["active_streams"] == 0
    assert stats["streams_started"] == 2
    assert stats["streams_completed"] == 2
    assert stats["events_sent"] == 8


async def test_default_fault_from_config(http: httpx.AsyncClient) -> None:
    config = SimConfig(tokens_per_second=0, fault="fault=status;status=429")
    async with serve(config) as url:
        busy = await http.post(f"{url}/v1/inference/{MODEL}", json=_body())
        assert busy.status_code == 429
        events = await _json_events(http, url, f"{MODEL};fault=eof;after=1")
        assert len(events) == 1


async def test_shutdown_ends_a_stalled_stream(http: httpx.AsyncClient) -> None:
    async def read_stalled(url: str) -> None:
        await _events(http, url, f"{MODEL};fault=stall;after=1")

    async with asyncio.timeout(READ_LIMIT):
        async with serve(SimConfig(tokens_per_second=0)) as url:
            reader = asyncio.create_task(read_stalled(url))
            await _until_stats(http, url, lambda s: s["active_streams"] == 1)
        with pytest.raises(httpx.TransportError):
            await reader
