"""Fuzz targets: the upstream parsers fed arbitrary bytes, each checking the invariant itself.

The invariant, for every input: nothing escapes but an :class:`UpstreamError` whose code is one of
:data:`worker.upstream.errors.CODES`, and nothing over its bound is buffered or passed on (the SSE
reader asks for no more bytes once an event, the bytes between two data events or the stream
exceed their bounds; no data event is longer than an event may be; messages stay short).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import httpx
import msgspec

from worker.jobs import ChatMessage, Job, Params
from worker.upstream.base import UpstreamError
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.errors import CODES, stream_error
from worker.upstream.gemini import GeminiAdapter
from worker.upstream.http import GAP_SLACK, StreamLimits, message_from_body, open_sse
from worker.upstream.native import NativeAdapter
from worker.upstream.responses import ResponsesAdapter
from worker.upstream.sglang import SGLangAdapter

__all__ = [
    "LIMITS",
    "MESSAGE_LIMIT",
    "TARGETS",
    "chat",
    "completions",
    "errors",
    "gemini",
    "native",
    "responses",
    "sglang",
    "sse",
]

LIMITS = StreamLimits(max_event_bytes=4096, max_stream_bytes=256 * 1024, max_tokens=64, stall_seconds=5.0)
MESSAGE_LIMIT = 2048
"""No error message built from upstream bytes is longer than this."""

_URL = "https://upstream.test/v1/inference/m"


def _check(exc: UpstreamError) -> None:
    assert exc.code in CODES, f"undocumented code {exc.code!r}"
    assert len(exc.message) <= MESSAGE_LIMIT, f"message of {len(exc.message)} characters"


# --- SSE framing ----------------------------------------------------------------------------------


def sse(data: bytes) -> None:
    """``data[0]`` picks the chunk size (1..256 bytes, or 64 KiB when 0); ``data[1]`` is unused (it
    picked one of two readers once: the committed seeds keep their layout); the rest is the body."""
    if len(data) < 2:
        return
    size = data[0] or 64 * 1024
    body = data[2:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    asyncio.run(_read(chunks, size))


async def _read(chunks: list[bytes], size: int) -> None:
    consumed = delivered_at = 0
    max_gap = LIMITS.max_event_bytes + GAP_SLACK

    async def body() -> AsyncGenerator[bytes, None]:
        nonlocal consumed
        for chunk in chunks:
            # the reader asks for more only while every bound still holds
            assert consumed - delivered_at <= max_gap + 2 * size, "read on past the gap bound"
            assert consumed <= LIMITS.max_stream_bytes, "read on past the stream bound"
            consumed += len(chunk)
            yield chunk

    stream = body()

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        try:
            async with open_sse(client, _URL, b"{}", {}, LIMITS) as events:
                async for item in events:
                    assert item and not item.isspace()
                    assert len(item) <= LIMITS.max_event_bytes, "a data event over the event bound"
                    delivered_at = consumed
        except UpstreamError as exc:
            _check(exc)
        finally:
            await stream.aclose()


# --- each dialect's event parser ------------------------------------------------------------------


def _parser(parse: Callable[[str], object]) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        try:
            parse(data.decode("utf-8", "replace"))
        except UpstreamError as exc:
            _check(exc)

    return target


native = _parser(NativeAdapter().parse)
chat = _parser(ChatAdapter().parse)
completions = _parser(CompletionsAdapter().parse)


def _stream(new_parser: Callable[[], Callable[[str], object]]) -> Callable[[bytes], None]:
    """A stateful dialect: each line of the input is one event of one stream, read in order."""

    def target(data: bytes) -> None:
        parse = new_parser()
        try:
            for line in data.decode("utf-8", "replace").split("\n")[:64]:
                parse(line)
        except UpstreamError as exc:
            _check(exc)

    return target


_STREAM_JOB = Job(model="m", api="chat", messages=[ChatMessage(role="user", content="x")])
_TOP_JOB = Job(
    model="m", api="gemini", messages=[ChatMessage(role="user", content="x")], params=Params(top_logprobs=2)
)
responses = _stream(lambda: ResponsesAdapter().parser(_STREAM_JOB).parse)
gemini = _stream(lambda: GeminiAdapter().parser(_TOP_JOB).parse)
sglang = _stream(lambda: SGLangAdapter().parser(_STREAM_JOB).parse)


def errors(data: bytes) -> None:
    """Error bodies and in-stream error objects: a message always, short, never an exception."""
    message = message_from_body(data, "application/json")
    assert len(message) <= MESSAGE_LIMIT
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return
    fields = value if isinstance(value, dict) else {"error": value}
    found = stream_error(
        fields.get("error"), error_type=fields.get("error_type"), error_message=fields.get("error_message")
    )
    _check(found)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "sse": sse,
    "native": native,
    "chat": chat,
    "completions": completions,
    "errors": errors,
    "responses": responses,
    "gemini": gemini,
    "sglang": sglang,
}
