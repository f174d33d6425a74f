"""Hostile upstreams: compressed bodies, floods, named events, unmapped parser failures, deep JSON.

The property tests drive the fuzz targets of :mod:`tests.fuzz.targets`.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Iterable

import httpx
import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from worker.upstream.base import UpstreamError
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.errors import CODES, stream_error
from worker.upstream.http import GAP_SLACK, LINES_PER_TURN, StreamLimits, message_from_body, open_sse
from worker.upstream.native import NativeAdapter

URL = "https://upstream.test/v1/inference/org/model"
SSE = "text/event-stream"
LIMITS = StreamLimits(max_event_bytes=64 * 1024, max_stream_bytes=64 * 1024 * 1024, max_tokens=100)
TOKEN = b'data: {"token": {"text": "a"}}\n\n'
DEEP = "[" * 5000 + "]" * 5000


class Body:
    """An in-memory body that counts what the reader took (it never waits: a fast upstream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk


def reply(body: Body, *, status: int = 200, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": SSE, **(headers or {})}, content=body)

    return httpx.MockTransport(respond)


async def collect(transport: httpx.AsyncBaseTransport, limits: StreamLimits = LIMITS) -> list[str]:
    async with (
        httpx.AsyncClient(transport=transport) as client,
        open_sse(client, URL, b"{}", {"Authorization": "Bearer sk-secret-123456"}, limits) as events,
    ):
        return [data async for data in events]


async def fails(transport: httpx.AsyncBaseTransport, limits: StreamLimits = LIMITS) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await collect(transport, limits)
    assert info.value.code in CODES
    assert "sk-secret-123456" not in info.value.message
    return info.value


def blocks(pattern: bytes, total: int, size: int = 64 * 1024) -> Iterable[bytes]:
    block = pattern * (size // len(pattern))
    for _ in range(total // len(block)):
        yield block


# --- compressed bodies (item 3) --------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "identity, gzip", "GZIP"])
async def test_a_compressed_stream_is_refused_before_a_byte_is_read(coding: str) -> None:
    bomb = Body([gzip.compress(b"\n" * 10_000_000)])
    err = await fails(reply(bomb, headers={"content-encoding": coding}))
    assert (err.code, err.retryable) == ("upstream_protocol_error", False)
    assert "Content-Encoding" in err.message and "refused" in err.message
    assert bomb.read == 0


async def test_an_encoded_error_body_is_not_decompressed() -> None:
    bomb = Body([zlib.compress(b'{"error": "x"}' + b" " * 10_000_000)])
    transport = reply(
        bomb, status=429, headers={"content-encoding": "deflate", "content-type": "application/json"}
    )
    err = await fails(transport)
    assert (err.code, err.status, err.message) == (
        "rate_limited",
        429,
        "HTTP 429 from upstream: Too Many Requests",
    )
    assert bomb.read == 0


@pytest.mark.parametrize("coding", ["identity", ""])
async def test_an_identity_body_is_read(coding: str) -> None:
    assert await collect(reply(Body([TOKEN]), headers={"content-encoding": coding})) == [
        '{"token": {"text": "a"}}'
    ]


# --- floods (item 3) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filler",
    [
        b"\n",
        b"\r\n",
        b"\r",
        b": keep-alive\n",
        b"event: ping\ndata: x\n\n",
        b"id: 1\n\n",
        b"data:\n\n",
        b"retry: 5\n\n",
    ],
)
async def test_a_flood_without_data_events_ends_at_the_gap_bound(filler: bytes) -> None:
    flood = Body([TOKEN, *blocks(filler, 50 * 1024 * 1024)])
    err = await fails(reply(flood))
    assert err.code == "upstream_event_too_large"  # one long event, or too much between two
    assert flood.read <= LIMITS.max_event_bytes + GAP_SLACK + 2 * 64 * 1024


async def test_keep_alives_below_the_gap_bound_pass() -> None:
    pings = b": ping\n\n" * ((LIMITS.max_event_bytes + GAP_SLACK) // 8 - 8)
    assert len(await collect(reply(Body([TOKEN, pings, TOKEN, pings, TOKEN])))) == 3


async def test_a_flood_lets_the_event_loop_run() -> None:
    """A fast upstream's blank lines never hold the loop: other jobs keep running while it is read."""
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    total = 1024 * 1024
    limits = StreamLimits(max_event_bytes=64 * 1024 * 1024, max_stream_bytes=1 << 30, max_tokens=10)
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    assert await collect(reply(Body([TOKEN, *blocks(b"\n", total), TOKEN])), limits) != []
    stop.set()
    await ticker
    assert ticks - before >= total // LINES_PER_TURN // 2


# --- named events (item 10) ----------------------------------------------------------------------------


async def test_only_unnamed_and_message_events_carry_data() -> None:
    wire = [
        b'data: {"n": 1}\n\n',
        b'event: ping\ndata: {"token": {"text": "PING"}}\n\n',
        b'event: message\ndata: {"n": 2}\n\n',
        b'event: message_start\ndata: {"n": "start"}\n\n',
        b'event:\ndata: {"n": 3}\n\n',
        b'event: Message\ndata: {"n": "other case"}\n\n',
        b'data: {"n": 4}\n\n',
    ]
    assert await collect(reply(Body(wire))) == ['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}']


async def test_an_error_event_still_fails_the_stream() -> None:
    wire = [b'data: {"n": 1}\n\n', b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n']
    err = await fails(reply(Body(wire)))
    assert (err.code, err.message) == ("upstream_error", "upstream error event: overloaded")


# --- unmapped failures (item 9) ------------------------------------------------------------------------


class ParserFailure(Exception):
    """Stands for an HTTP library's own error that httpx does not map (aiohttp's, h11's)."""


@pytest.mark.parametrize(
    "exc",
    [ParserFailure("Got more than 8190 bytes when reading"), RecursionError("too deep"), ValueError("x")],
)
async def test_a_transport_failure_httpx_does_not_map_is_a_protocol_error(exc: Exception) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    err = await fails(httpx.MockTransport(respond))
    assert err.code == "upstream_protocol_error"
    assert err.message.startswith("the response from upstream upstream.test could not be read: ")
    assert type(exc).__name__ in err.message and str(exc) in err.message


async def test_a_body_failure_httpx_does_not_map_is_a_protocol_error() -> None:
    class Broken(Body):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield TOKEN
            raise ParserFailure("Too many headers received")

    err = await fails(reply(Broken([])))
    assert (err.code, err.retryable) == ("upstream_protocol_error", False)
    assert "ParserFailure: Too many headers received" in err.message


async def test_cancellation_is_not_taken_for_a_failure() -> None:
    class Cancelled(Body):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield TOKEN
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await collect(reply(Cancelled([])))


# --- deep JSON (item 9) --------------------------------------------------------------------------------

ADAPTERS = [NativeAdapter(), ChatAdapter(), CompletionsAdapter()]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.api)
@pytest.mark.parametrize(
    "data",
    [
        '{"z": ' + DEEP + "}",
        '{"error": ' + DEEP + "}",
        '{"choices": [{"delta": {"content": "x"}, "z": ' + DEEP + "}]}",
        '{"token": {"text": "a"}, "details": ' + '{"x":' * 3000 + "1" + "}" * 3000 + "}",
    ],
)
def test_an_event_nested_too_deep_is_malformed(adapter: NativeAdapter, data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        adapter.parse(data)
    assert (info.value.code, info.value.retryable) == ("upstream_malformed_event", True)
    assert "recursion" in info.value.message and len(info.value.message) < 400


def test_error_bodies_nested_too_deep_still_give_a_message() -> None:
    deep = ('{"error": ' * 3000 + '"x"' + "}" * 3000).encode()
    assert message_from_body(deep, "application/json").startswith('{"error": {"error"')
    nested: dict[str, object] = {}
    for _ in range(100_000):
        nested = {"type": None, "x": nested}
    err = stream_error(nested)
    assert err.code == "upstream_error" and "nested too deep" in err.message


# --- properties: the fuzz targets, driven by hypothesis ---------------------------------------------


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "token",
                        "text",
                        "logprob",
                        "id",
                        "special",
                        "top_tokens",
                        "details",
                        "generated_text",
                        "finish_reason",
                        "error",
                        "error_type",
                        "error_message",
                        "message",
                        "type",
                        "code",
                        "status",
                        "choices",
                        "delta",
                        "content",
                        "logprobs",
                        "tokens",
                        "token_logprobs",
                        "top_logprobs",
                        "token_ids",
                        "bytes",
                        "usage",
                        "object",
                        "index",
                        "reasoning_content",
                    ]
                )
                | st.text(max_size=8),
                inner,
                max_size=6,
            )
        ),
        max_leaves=30,
    )


FAST = settings(max_examples=150, deadline=None)


@FAST
@given(value=_json_values())
def test_each_dialect_parser_raises_only_documented_errors(value: object) -> None:
    data = msgspec.json.encode(value)
    for name in ("native", "chat", "completions", "errors", "responses", "gemini", "sglang"):
        targets.TARGETS[name](data)


@FAST
@given(data=st.binary(max_size=2000))
@example(data=b"[DONE]")
@example(data=b'{"choices": [{"logprobs": {"content": [{"bytes": [256, -1]}]}}]}')
@example(data=b'{"token": {"id": 99999999999999999999999}}')
def test_each_dialect_parser_takes_any_bytes(data: bytes) -> None:
    for name in ("native", "chat", "completions", "errors", "responses", "gemini", "sglang"):
        targets.TARGETS[name](data)


_SSE_PIECES = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"event: ping\n",
        b"event: error\n",
        b"event: message\n",
        b": c\n",
        b"id: 1\n",
        b"retry: 99999999999999999999\n",
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b'{"a":1}',
        b"\xff\xfe",
        b"\x00",
        b"x" * 300,
        b"[" * 40,
    ]
)


@FAST
@given(
    size=st.integers(0, 255),
    fallback=st.booleans(),
    body=st.lists(_SSE_PIECES | st.binary(max_size=50), max_size=60).map(b"".join),
)
def test_the_sse_reader_raises_only_documented_errors_and_buffers_within_bounds(
    size: int, fallback: bool, body: bytes
) -> None:
    targets.sse(bytes([size, int(fallback)]) + body)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_the_committed_fuzz_seeds_pass(target: str) -> None:
    from tests.fuzz.harness import replay

    assert replay(target) >= 5


async def test_the_aiohttp_session_never_decompresses() -> None:
    from worker.connect import _aiohttp_transport

    transport = _aiohttp_transport(httpx.Limits(max_connections=2))
    session = transport.client() if callable(transport.client) else transport.client  # type: ignore[attr-defined]
    try:
        assert session.auto_decompress is False
    finally:
        await session.close()


async def test_many_small_events_in_one_huge_read_pass() -> None:
    """A transport may hand over megabytes at once: the reader cuts them, so small events read
    together never look like bytes without a data event (nor block the loop for the whole read)."""
    wire = TOKEN * (2 * 1024 * 1024 // len(TOKEN))
    limits = StreamLimits(max_event_bytes=4096, max_stream_bytes=64 * 1024 * 1024, max_tokens=100_000)
    assert len(await collect(reply(Body([wire])), limits)) == wire.count(b"\n\n")
