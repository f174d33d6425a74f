"""The worker's upstream client on both transports against a loopback HTTP server: the request on
the wire (request line, every header in order, body) is byte for byte what httpx's own layers send,
for every request of a kept connection; errors and stalls are unchanged (worker/fastpath/httpx_send.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from worker.connect import http_client
from worker.fastpath import httpx_send
from worker.settings import Settings
from worker.upstream.base import UpstreamError
from worker.upstream.client import FastUpstreamClient
from worker.upstream.http import StreamLimits, UpstreamClient, open_sse

pytestmark = pytest.mark.integration

LIMITS = StreamLimits(
    max_event_bytes=64 * 1024, max_stream_bytes=1024 * 1024, max_tokens=100, stall_seconds=1
)
HEADERS = {"Authorization": "Bearer sk-test-0123456789abcdef", "Content-Type": "application/json"}


class Upstream:
    """A loopback server recording each request's line, raw headers and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[tuple[bytes, bytes], ...], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((f"{request.method} {request.raw_path}", tuple(request.raw_headers), body))
        if request.path.endswith("/stall"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await asyncio.sleep(3)  # past the 1 s stall bound: the client gives up first
            return response
        if request.path.endswith("/missing"):
            return web.json_response({"error": "no such model"}, status=404)
        return web.Response(body=b'data: {"a":1}\n\ndata: {"b":2}\n\n', content_type="text/event-stream")


@pytest.fixture
async def upstream(unused_tcp_port: int) -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    server.url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def _client(transport: str, kind: type[UpstreamClient]) -> httpx.AsyncClient:
    built = http_client(Settings(upstream_transport=transport))
    assert isinstance(built, FastUpstreamClient)  # the worker's client takes the fast path
    if kind is FastUpstreamClient:
        return built
    built.__class__ = UpstreamClient  # type: ignore[assignment]  # the same client, httpx's layers
    return built


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_the_wire_is_what_httpx_sends(upstream: Upstream, transport: str) -> None:
    assert httpx_send.probe().available
    wires = []
    for kind in (FastUpstreamClient, UpstreamClient):
        upstream.seen.clear()
        httpx_send._merges.clear()
        async with _client(transport, kind) as client:
            for body in (b'{"input":"one"}', b'{"input":"two, longer"}'):  # one kept connection
                url = f"{upstream.url}/v1/inference/m?alt=sse"
                async with asyncio.timeout(10), open_sse(client, url, body, HEADERS, LIMITS) as events:
                    assert [data async for data in events] == ['{"a":1}', '{"b":2}']
        wires.append(list(upstream.seen))
        assert bool(httpx_send._merges) is (kind is FastUpstreamClient)  # which path each took
    assert wires[0] == wires[1] and len(wires[0]) == 2


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_errors_and_stalls_are_unchanged(upstream: Upstream, transport: str) -> None:
    failures = []
    for kind in (FastUpstreamClient, UpstreamClient):
        async with _client(transport, kind) as client:
            for path in ("missing", "stall"):
                with pytest.raises(UpstreamError) as info:
                    async with asyncio.timeout(10):
                        async with open_sse(
                            client, f"{upstream.url}/v1/{path}", b"{}", HEADERS, LIMITS
                        ) as ev:
                            async for _ in ev:
                                pass
                failures.append((kind.__name__, path, info.value.code, info.value.status))
    assert [f[1:] for f in failures[:2]] == [f[1:] for f in failures[2:]]
    assert [f[2] for f in failures[:2]] == ["model_not_found", "upstream_stalled"]
