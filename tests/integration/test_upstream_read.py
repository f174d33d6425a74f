"""How stream bodies are read: under httpx-aiohttp straight from aiohttp's reader, under httpx's own
transport through httpx. Both give the same events and the same errors, on the real simulator."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from worker.connect import http_client
from worker.fastpath.httpx_aiohttp import aiohttp_content
from worker.settings import Settings
from worker.upstream.base import UpstreamError
from worker.upstream.http import StreamLimits, open_sse

pytestmark = pytest.mark.integration

BOUND = 30.0
LIMITS = StreamLimits(64 * 1024, 1 << 30, 10_000, stall_seconds=1.0)
TRANSPORTS = ("aiohttp", "httpx")


def url(sim_url: str, directives: str) -> str:
    return f"{sim_url}/v1/inference/{quote('tokenwire/sim;' + directives, safe='/;=')}"


async def read(sim_url: str, transport: str, directives: str) -> tuple[list[str], str | None]:
    """The data strings of one stream and the code of the error that ended it, if any."""
    seen: list[str] = []
    body = b'{"input": "same prompt", "stream": true}'
    async with http_client(Settings(upstream_transport=transport)) as http:
        try:
            async with (
                asyncio.timeout(BOUND),
                open_sse(http, url(sim_url, directives), body, {}, LIMITS) as events,
            ):
                async for data in events:
                    seen.append(data)
        except UpstreamError as exc:
            return seen, exc.code
    return seen, None


async def test_the_aiohttp_transport_is_read_straight_from_aiohttp(sim_url: str) -> None:
    """Guards the fast path against an httpx or httpx-aiohttp upgrade that would silently fall
    back to httpx's generators: the default transport's responses expose aiohttp's reader."""
    found: dict[str, bool] = {}
    for transport in TRANSPORTS:
        async with (
            http_client(Settings(upstream_transport=transport)) as http,
            http.stream("POST", url(sim_url, "tokens=3"), content=b'{"input":"x","stream":true}') as response,
        ):
            content = aiohttp_content(response)
            found[transport] = content is not None
            if content is not None:  # a stream faster than the worker buffers at most this much
                assert content.get_read_buffer_limits()[1] <= 128 * 1024
            await response.aread()
    assert found == {"aiohttp": True, "httpx": False}


@pytest.mark.parametrize(
    "directives",
    [
        "tokens=50",
        "tokens=20;crlf=1;nospace=1;done=1",
        "tokens=20;utf8split=1;tps=400;keepalive=1;ping=0.01",
        "tokens=20;fault=malformed;after=5",
        "tokens=20;fault=disconnect;after=7",
        "tokens=20;fault=disconnect;after=7;rst=1",
        "tokens=20;fault=error;after=4",
        "tokens=20;fault=stall;after=4",
        "tokens=3;fault=big;size=100000;then=end",
        "fault=status;status=404",
    ],
)
async def test_both_transports_read_the_same_events_and_errors(sim_url: str, directives: str) -> None:
    aiohttp_read, httpx_read = [await read(sim_url, t, directives) for t in TRANSPORTS]
    assert aiohttp_read == httpx_read
    events, error = aiohttp_read
    if "fault" not in directives:
        assert error is None and len(events) >= 20
    elif "status" in directives:
        assert (events, error) == ([], "model_not_found")
    elif "disconnect" in directives:
        assert error == "upstream_connection_error" and len(events) == 7
    elif "stall" in directives:
        assert error == "upstream_stalled" and len(events) == 4
    elif "big" in directives:
        assert error == "upstream_event_too_large"
