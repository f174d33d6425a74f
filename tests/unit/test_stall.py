"""Stall detection (worker.upstream.stall) through ``open_sse`` on ``httpx.MockTransport``.

The client has no read timeout (as the worker's has none): only the guard can end these streams.
Time is the loop's fake clock (looptime): silences take no real time and a loaded machine cannot
stretch them, so the bounds below are exact; every test is bounded by ``BOUND`` (loop time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import looptime
import pytest

from worker.upstream.base import UpstreamError
from worker.upstream.http import StreamLimits, open_sse

URL = "https://upstream.test/v1/inference/org/model"
SSE = {"content-type": "text/event-stream"}


def on_fake_clock(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a loop whose clock jumps ahead whenever the loop is idle (looptime).
    (looptime's pytest plugin is off in pyproject.toml: it disturbs the loops of other tests.)"""

    def run() -> None:
        started = time.monotonic()
        with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
            runner.run(test())
        assert time.monotonic() - started < STALL / 2, "the loop's clock was not fake"

    run.__doc__ = test.__doc__
    return run


STALL = 30.0
BOUND = 1000.0
LIMITS = StreamLimits(64 * 1024, 1 << 30, 1000, stall_seconds=STALL)


def client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, timeout=httpx.Timeout(5.0, read=None))


async def read_all(transport: httpx.MockTransport, on_event: float = 0.0) -> list[str]:
    """Every data string; ``on_event`` seconds spent holding each (a consumer under backpressure)."""
    seen: list[str] = []
    async with (
        asyncio.timeout(BOUND),
        client(transport) as http,
        open_sse(http, URL, b"{}", {}, LIMITS) as events,
    ):
        async for data in events:
            seen.append(data)
            if on_event:
                await asyncio.sleep(on_event)
    return seen


def body_then_silence(events: int, silence: asyncio.Event) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(events):
                yield b"data: %d\n\n" % i
            await silence.wait()  # never set: the upstream goes quiet with the connection open
            yield b"data: never\n\n"

        return httpx.Response(200, headers=SSE, content=body())

    return httpx.MockTransport(handler)


@on_fake_clock
async def test_silence_mid_stream_is_a_stall_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async with (
            asyncio.timeout(BOUND),
            client(body_then_silence(3, asyncio.Event())) as http,
            open_sse(http, URL, b"{}", {}, LIMITS) as events,
        ):
            async for data in events:
                seen.append(data)
    waited = loop.time() - started
    err = info.value
    assert seen == ["0", "1", "2"]  # what arrived before the silence was delivered
    assert (err.code, err.retryable) == ("upstream_stalled", True)
    assert err.message == f"upstream upstream.test sent no data for {STALL:g}s: stalled"
    assert STALL <= waited <= STALL * 1.01  # reported once the silence reaches the timeout


@on_fake_clock
async def test_headers_that_never_come_are_a_stall() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    with pytest.raises(UpstreamError) as info:
        await read_all(httpx.MockTransport(handler))
    assert info.value.code == "upstream_stalled"


@on_fake_clock
async def test_a_consumer_holding_events_longer_than_the_timeout_is_not_a_stall() -> None:
    """Backpressure: the worker waits to publish; the upstream is not silent, it is not being read."""

    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(4):
                yield b"data: %d\n\n" % i

        return httpx.Response(200, headers=SSE, content=body())

    seen = await read_all(httpx.MockTransport(handler), on_event=STALL * 1.5)
    assert seen == ["0", "1", "2", "3"]


@on_fake_clock
async def test_bytes_trickling_into_one_event_keep_the_stream_alive() -> None:
    """Progress is any bytes, not whole events: a slow large event is not a stall."""

    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for part in (b"data: ab", b"cd", b"ef", b"gh", b"\n\n"):
                yield part
                await asyncio.sleep(STALL * 0.6)  # each gap under the timeout, the whole event over

        return httpx.Response(200, headers=SSE, content=body())

    assert await read_all(httpx.MockTransport(handler)) == ["abcdefgh"]


@on_fake_clock
async def test_an_outer_deadline_is_not_reported_as_a_stall() -> None:
    """The job deadline's TimeoutError passes through the guard unchanged."""
    limits = StreamLimits(64 * 1024, 1 << 30, 1000, stall_seconds=BOUND)
    with pytest.raises(TimeoutError):
        async with (
            asyncio.timeout(STALL),
            client(body_then_silence(1, asyncio.Event())) as http,
            open_sse(http, URL, b"{}", {}, limits) as events,
        ):
            async for _ in events:
                pass


@on_fake_clock
async def test_holding_the_events_that_end_the_body_is_not_a_stall() -> None:
    """The last event may be complete only at the end of the body (a trailing CR); once the body
    has ended there is nothing left to wait for, however long the consumer holds it."""

    async def handler(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: a\n\ndata: b\r\r"

        return httpx.Response(200, headers=SSE, content=body())

    assert await read_all(httpx.MockTransport(handler), on_event=STALL * 1.5) == ["a", "b"]
