"""Open a provider's SSE stream: status and content type checked first, sizes bounded, errors typed.

:func:`open_sse` POSTs a JSON body and yields the ``data`` strings of the stream's events. Every
failure, before or during the stream, is an :class:`UpstreamError` whose message carries the
provider's own words and never a request header (header values that look secret are redacted).

Size bounds are enforced on the bytes as they arrive, before a line is buffered: an event
(bytes since the last blank line) longer than ``max_event_bytes``, more than ``max_event_bytes``
(plus :data:`GAP_SLACK`) between two data events (blank lines, comments, skipped named events), or
a stream longer than ``max_stream_bytes`` fails at once, whatever the chunking. A compressed body
(any ``Content-Encoding`` but ``identity``, which is what is asked for) is refused before a byte of
it is read or decompressed: its decompressed size is unbounded. The reader lets the event loop run
every :data:`LINES_PER_TURN` lines, so no read stalls other jobs. Any other failure of the request
(an HTTP parser's, a decoder's) is an ``upstream_protocol_error``, never an unmapped exception.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import html
import math
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from worker.fastpath.httpx_aiohttp import aiohttp_content, aiohttp_errors
from worker.redact import MIN_SECRET, Redactor
from worker.settings import Settings
from worker.upstream.base import UpstreamError
from worker.upstream.classify import (
    LOGPROBS_UNSUPPORTED,
    classify_status,
    logprobs_value_error,
    refuses_logprobs,
)
from worker.upstream.sse import SSEReader
from worker.upstream.stall import StallGuard

__all__ = [
    "StreamLimits",
    "UpstreamClient",
    "error_from_response",
    "message_from_body",
    "open_sse",
    "parse_retry_after",
]

ERROR_BODY_LIMIT = 64 * 1024
"""At most this many bytes of a non-SSE response body are read for its error message."""

EVENT_SLACK = 64

GAP_SLACK = 64 * 1024
"""Bytes allowed beyond ``max_event_bytes`` between two data events (keep-alive comments, pings)."""

LINES_PER_TURN = 1024
"""At most this many lines are parsed before the reader lets the event loop run."""

MAX_READ = GAP_SLACK
"""The most bytes one read hands the parser (longer reads are cut): with the gap's slack, a read of
many small events never looks like bytes without a data event."""

_CODING_LIMIT = 64
"""Data events allowed beyond ``max_tokens`` (role, finish, usage and ``[DONE]`` events)."""

_TEXT_LIMIT = 300
_JSON_MESSAGE_LIMIT = 1000

# A blank line (an event boundary) is two line terminators in a row; CRLF counts as one terminator,
# so the pairs LF LF, CR CR and LF CR always contain one, and CR LF never does on its own.
_BOUNDARY = re.compile(rb"\n\n|\r\r|\n\r")
_BOUNDARY_PAIRS = frozenset({b"\n\n", b"\r\r", b"\n\r"})
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|session", re.IGNORECASE)
_MIN_SECRET = 6
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


class StreamLimits(msgspec.Struct, frozen=True):
    """Bounds on one upstream stream.

    ``max_tokens`` bounds the number of non-empty data events at ``max_tokens + EVENT_SLACK``
    (an upstream that ignores its own token limit); the runner may also count tokens itself.
    ``stall_seconds``: the longest the reader waits for bytes, response headers included.
    """

    max_event_bytes: int
    max_stream_bytes: int
    max_tokens: int
    stall_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings, *, max_tokens: int) -> StreamLimits:
        return cls(
            settings.max_event_bytes, settings.max_stream_bytes, max_tokens, settings.stall_timeout_seconds
        )


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    limits: StreamLimits,
    *,
    event_prefix: str | None = None,
) -> AsyncIterator[AsyncIterator[str]]:
    """POST ``body`` (JSON); check the status before reading; yield an iterator of SSE ``data``.

    Empty and whitespace-only data are skipped; an ``event: error`` raises, and other named events
    are skipped. A protocol that names every event (its JSON naming it again: the OpenAI Responses
    API, ``event_prefix="response."``) gets the data of the events named with ``event_prefix``
    and of ``event: error`` (which it reads itself); other names (``ping``) are still skipped. Raises
    :class:`UpstreamError` on entry (HTTP status, content type, connection) and from the iterator
    (transport failures, stalls, size bounds). The response is closed on every path. No bytes for
    ``limits.stall_seconds`` while waiting for them (headers included) is a stall (:mod:`.stall`).
    """

    def secrets() -> tuple[str, ...]:  # found only when an error's message must be redacted (~6 µs)
        return _secrets(client.headers.items(), headers.items())

    request_headers = {"Accept-Encoding": "identity", **headers, "Content-Type": "application/json"}
    parsed = _parsed(url)  # parsed once per URL (provider and model), not once per request
    host = "(invalid URL)" if parsed is None else parsed.host or "(no host)"
    target: Any = url if parsed is None else parsed  # aconnect_sse hands it to client.stream (str | URL)
    async with contextlib.AsyncExitStack() as stack:
        guard = await stack.enter_async_context(StallGuard(limits.stall_seconds, host).watching())
        try:
            source = await stack.enter_async_context(
                aconnect_sse(client, "POST", target, content=body, headers=request_headers)
            )
            await _check_response(source.response)
        except UpstreamError as exc:
            raise _redacted(exc, secrets()) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _redacted(_transport_error(exc, host), secrets()) from None
        except Exception as exc:  # an HTTP parser's own error (aiohttp's oversized headers, ...)
            raise _redacted(_protocol_error(exc, host), secrets()) from None
        events = _data_events(source.response, limits, secrets, host, guard, event_prefix)
        yield await stack.enter_async_context(contextlib.aclosing(events))


async def _data_events(
    response: httpx.Response,
    limits: StreamLimits,
    secrets: Callable[[], tuple[str, ...]],
    host: str,
    guard: StallGuard,
    event_prefix: str | None = None,
) -> AsyncGenerator[str, None]:
    """The non-empty ``data`` of each event, with every failure as an :class:`UpstreamError`.

    One generator from the body's bytes to the events (:func:`_chunks`), read by
    :class:`~worker.upstream.sse.SSEReader`: each read is decoded, cut into lines and read into
    events in one pass, then its events are handed out one by one. While the consumer holds them
    the stall guard is held: the reader waits for bytes only once they are all taken.
    """
    bounds, take = _Bounds(limits), _DataFilter(limits, event_prefix)
    chunks, mapped_errors = _chunks(response)
    reader = SSEReader()
    try:
        with mapped_errors:
            decode = codecs.getincrementaldecoder("utf-8")("replace").decode  # SSE is UTF-8, always
            async for chunk in chunks:
                if not chunk:
                    continue
                guard.progress()
                bounds.count(chunk)
                text = decode(chunk)
                if not text:
                    continue
                batch = reader.lines(text)
                whole = len(batch) <= LINES_PER_TURN
                for start in range(0, len(batch), LINES_PER_TURN):
                    if start:  # a chunk of many short lines (a flood): let other jobs run
                        await asyncio.sleep(0)
                    events = reader.events(batch if whole else batch[start : start + LINES_PER_TURN])
                    if not events:
                        continue
                    guard.hold()
                    for name, data in events:
                        if (found := take(name, data)) is not None:
                            bounds.delivered()
                            yield found
                    guard.resume()
            guard.hold()  # the body has ended: nothing is awaited from the upstream any more
            tail = decode(b"", True)
            for name, data in reader.events([*(reader.lines(tail) if tail else ()), *reader.flush()]):
                if (found := take(name, data)) is not None:
                    yield found
    except Exception as exc:
        raise _redacted(_classified(exc, host), secrets()) from None
    finally:
        await _aclose(chunks)


class _DataFilter:
    """Events in, the ``data`` of each non-empty unnamed (or ``message``) event out; other named
    events (``ping``, ``message_start``, ...) carry no tokens and are skipped; an ``event: error``
    and more events than ``max_tokens`` allows raise."""

    __slots__ = ("_count", "_max_events", "_max_tokens", "_prefix")

    def __init__(self, limits: StreamLimits, event_prefix: str | None = None) -> None:
        self._prefix = event_prefix
        self._count = 0
        self._max_tokens = limits.max_tokens
        self._max_events = limits.max_tokens + EVENT_SLACK

    def __call__(self, name: str, data: str) -> str | None:
        """``data`` of an event named ``name`` (``"message"`` when unnamed), or None to skip it."""
        if name != "message":
            prefix = self._prefix
            if prefix is None:
                if name == "error":
                    raise _error_event(data)
                return None
            if name != "error" and not name.startswith(prefix):
                return None
        if not data or data.isspace():
            return None
        self._count += 1
        if self._count > self._max_events:
            raise UpstreamError(
                "upstream_too_many_events",
                f"upstream sent more than {self._max_events} events for at most {self._max_tokens} tokens",
            )
        return data


def _chunks(
    response: httpx.Response,
) -> tuple[AsyncIterator[bytes], contextlib.AbstractContextManager[None]]:
    """The body's bytes as they arrive, and the context that turns the reader's errors into httpx's.

    Under httpx-aiohttp, straight from aiohttp's reader (httpx's path adds four async generators
    between the socket and the parser), with aiohttp's exceptions mapped as httpx-aiohttp's own
    stream maps them (:mod:`worker.fastpath.httpx_aiohttp`); otherwise httpx's ``aiter_bytes`` (its
    errors are httpx's already), which also serves a body a transport already read. An encoded body
    never gets here (:func:`_check_response` refuses it), so nothing is decompressed.
    """
    content = aiohttp_content(response)
    if content is not None:
        return content.iter_chunked(MAX_READ), aiohttp_errors()  # each read at most MAX_READ
    return _cut(response.aiter_bytes()), contextlib.nullcontext()


async def _cut(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """``chunks``, each at most :data:`MAX_READ` bytes (a transport may hand over any size)."""
    try:
        async for chunk in chunks:
            if len(chunk) <= MAX_READ:
                yield chunk
                continue
            for start in range(0, len(chunk), MAX_READ):
                yield chunk[start : start + MAX_READ]
    finally:
        await _aclose(chunks)


# --- response checks ---------------------------------------------------------------------------


async def _check_response(response: httpx.Response) -> None:
    """Raise unless the response is an unencoded 2xx ``text/event-stream``. An encoded body is
    never read: an error status is reported without its body, a stream is refused."""
    coding = _content_coding(response.headers)
    if not response.is_success:
        body = await _read_bounded(response) if coding is None else b""
        raise error_from_response(response.status_code, response.headers, body)
    if coding is not None:
        raise UpstreamError(
            "upstream_protocol_error",
            f"HTTP {response.status_code} from upstream with Content-Encoding {coding!r} though "
            "identity was asked for: compressed streams are refused (their decompressed size is "
            "unbounded)",
            status=response.status_code,
        )
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type.partition(";")[0].lower():
        body = await _read_bounded(response)
        detail = message_from_body(body, content_type)
        raise UpstreamError(
            "bad_content_type",
            f"HTTP {response.status_code} from upstream with content type "
            f"{content_type or 'none'!r} instead of text/event-stream: {detail or '(empty body)'}",
            status=response.status_code,
        )


def _content_coding(headers: httpx.Headers) -> str | None:
    """The body's content codings other than ``identity`` (``"gzip"``, ``"br, gzip"``), clipped;
    ``None`` for an unencoded body."""
    codings = [c.strip().lower() for c in ",".join(headers.get_list("content-encoding")).split(",")]
    found = ", ".join(c for c in codings if c and c != "identity")
    return _clip(found, _CODING_LIMIT) if found else None


async def _read_bounded(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """Up to ``limit`` bytes of the decoded body; a body that fails mid-read gives what arrived."""
    parts: list[bytes] = []
    size = 0
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except httpx.HTTPError:
        pass
    finally:
        await _aclose(chunks)
    return b"".join(parts)[:limit]


def error_from_response(status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
    """The error for a non-2xx response, e.g. ``HTTP 404 from upstream: Model not found``; a
    refusal of logprobs is ``logprobs_unsupported``, a logprobs parameter's value the model does not
    allow a ``bad_request`` that says so (:mod:`worker.upstream.classify`)."""
    code, retryable = classify_status(status)
    about = ""
    if refuses_logprobs(status, body):
        code, retryable = LOGPROBS_UNSUPPORTED, False
    elif logprobs_value_error(status, body):
        code, retryable = "bad_request", False
        about = "the job's params.top_logprobs is outside what this model allows (lower it): "
    detail = message_from_body(body, headers.get("content-type", ""))
    if not detail:
        detail = httpx.codes.get_reason_phrase(status) or "(empty body)"
    return UpstreamError(
        code,
        f"HTTP {status} from upstream: {about}{detail}",
        status=status,
        retryable=retryable,
        retry_after=parse_retry_after(headers),
    )


def parse_retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date), ≥ 0."""
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000.0, 0.0)
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _finite(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- error bodies ------------------------------------------------------------------------------


def message_from_body(body: bytes, content_type: str = "") -> str:
    """The provider's message in an error body (JSON, HTML or plain text), or ``""``."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if text[0] in "{[":
        try:
            message = _json_message(msgspec.json.decode(body))
        except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deep
            message = None
        if message:
            return _clip(_collapse(message), _JSON_MESSAGE_LIMIT)
    if "html" in content_type.lower() or _looks_html(text):
        return _clip(_html_text(text), _TEXT_LIMIT)
    return _clip(_collapse(text), _TEXT_LIMIT)


def _json_message(value: Any) -> str | None:
    """From ``error`` (string or ``{message}``), ``error_message``, ``detail``, ``message``."""
    if isinstance(value, list):
        return _detail_list(value)
    if not isinstance(value, dict):
        return None
    for key in ("error", "error_message", "detail", "message", "msg"):
        item = value.get(key)
        message = item.strip() if isinstance(item, str) else _json_message(item)
        if message:
            return message
    return None


def _detail_list(items: list[Any]) -> str | None:
    """FastAPI's ``[{loc, msg, type}]`` as ``body.input: field required; ...``."""
    parts: list[str] = []
    for item in items[:5]:
        if isinstance(item, dict) and isinstance(item.get("msg"), str):
            loc = item.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, list) and loc else ""
            parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        elif isinstance(item, str):
            parts.append(item)
        elif (message := _json_message(item)) is not None:
            parts.append(message)
    return "; ".join(parts) or None


def _looks_html(text: str) -> bool:
    head = text[:512].lower()
    return head.startswith("<!doctype html") or "<html" in head


def _html_text(text: str) -> str:
    """The page's ``<title>``, else its text without tags."""
    title = _TITLE.search(text)
    if title and title.group(1).strip():
        return _collapse(html.unescape(title.group(1)))
    return _collapse(html.unescape(_TAG.sub(" ", _SCRIPT.sub(" ", text))))


def _collapse(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_event(data: str) -> UpstreamError:
    detail = message_from_body(data.encode("utf-8"), "application/json")
    return UpstreamError("upstream_error", f"upstream error event: {detail or '(no message)'}")


# --- transport failures and secrets ------------------------------------------------------------


def _transport_error(exc: httpx.HTTPError | httpx.InvalidURL, host: str) -> UpstreamError:
    """Classify an httpx failure; the message names the host and the failure, never headers."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ReadTimeout):
        after = _read_timeout(exc)
        within = f" for {after:g}s" if after is not None else ""
        message = f"upstream {host} sent no data{within}: stalled"
        return UpstreamError("upstream_stalled", message, retryable=True)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return UpstreamError("upstream_connection_error", f"bad upstream URL: {detail}")
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"timed out connecting to upstream {host}"
    elif isinstance(exc, httpx.ConnectError):
        message = f"cannot connect to upstream {host}: {detail}"
    elif isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        message = f"connection to upstream {host} broke: {detail}"
    else:
        message = f"upstream {host} request failed: {type(exc).__name__}: {detail}"
    return UpstreamError("upstream_connection_error", message, retryable=True)


def _classified(exc: Exception, host: str) -> UpstreamError:
    """Every failure while reading the stream as an :class:`UpstreamError`."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return _transport_error(exc, host)
    return _protocol_error(exc, host)  # a parser's or decoder's own error


def _protocol_error(exc: Exception, host: str) -> UpstreamError:
    """Any other failure reading the response (an HTTP parser's: an oversized header line, too
    many headers; a decoder's): the request failed, named by the error's type and words."""
    detail = _collapse(str(getattr(exc, "message", None) or exc)) or "(no detail)"
    return UpstreamError(
        "upstream_protocol_error",
        f"the response from upstream {host} could not be read: {type(exc).__name__}: "
        f"{_clip(detail, _TEXT_LIMIT)}",
    )


def _read_timeout(exc: httpx.HTTPError) -> float | None:
    try:
        timeout = exc.request.extensions.get("timeout", {})
    except RuntimeError:  # no request attached
        return None
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if isinstance(value, int | float) else None


class _NoCookies(httpx.Cookies):
    """An always-empty cookie store: a response's ``Set-Cookie`` is dropped, not kept."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class UpstreamClient(httpx.AsyncClient):
    """httpx's client keeping no cookies: one tenant's request never carries a cookie an upstream
    set on another's, and no response pays for cookie parsing (~3 % of a short job's samples).
    Providers' APIs authenticate by header; nothing tokenwire sends relies on cookies."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


_NO_COOKIES = _NoCookies()


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL | None:
    """``url`` parsed (httpx's URL is immutable, so one parse serves every request to it), or None
    when httpx refuses it (the request then raises httpx's own error, classified as before)."""
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        return None


def _secrets(*header_sets: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """Values of headers that look secret, and their credential part (after ``Bearer``)."""
    found: set[str] = set()
    for items in header_sets:
        for name, value in items:
            if not _SECRET_HEADER.search(name):
                continue
            found.add(value.strip())
            found.add(value.strip().partition(" ")[2].strip())
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True))


def _redacted(exc: UpstreamError, secrets: tuple[str, ...]) -> UpstreamError:
    """``exc``, or a copy whose message has every secret of the request's headers redacted too
    (by :mod:`worker.redact`, as every ``UpstreamError`` message is)."""
    message = Redactor(s for s in secrets if len(s) >= MIN_SECRET).redact(exc.message)
    if message == exc.message:
        return exc
    return UpstreamError(
        exc.code,
        message,
        status=exc.status,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
    )


# --- size bounds -------------------------------------------------------------------------------


class _Bounds:
    """Counts the body's bytes: in all, and since the last event boundary (blank line).

    An event may hold ``max_event_bytes``, or more by as many bytes as the stream had delivered
    before it: a final event that repeats the whole answer (the native stream's ``generated_text``)
    is never refused for a length the stream was allowed to reach token by token, while the first
    events, and every flood, stay bounded; everything stays under ``max_stream_bytes``."""

    __slots__ = ("_earned", "_event", "_gap", "_last", "_max_event", "_max_gap", "_max_stream", "_total")

    def __init__(self, limits: StreamLimits) -> None:
        self._max_event = limits.max_event_bytes
        self._max_stream = limits.max_stream_bytes
        self._max_gap = limits.max_event_bytes + GAP_SLACK
        self._total = 0
        self._earned = 0
        self._event = 0
        self._gap = 0
        self._last = b""

    def delivered(self) -> None:
        """A data event was taken: the bytes since the last one start again at zero."""
        self._gap = 0

    def count(self, chunk: bytes) -> None:
        size = len(chunk)
        self._earned = self._total - self._gap  # bytes up to the last data event taken
        self._total += size
        if self._total > self._max_stream:
            raise UpstreamError(
                "upstream_stream_too_large", f"upstream stream exceeds {self._max_stream} bytes"
            )
        self._gap += size
        if self._gap > self._max_gap + self._earned:
            raise UpstreamError(
                "upstream_event_too_large",
                f"upstream sent more than {self._max_gap + self._earned} bytes without a data event "
                "(blank lines, comments or events that carry no tokens)",
            )
        if self._event + size > self._max_event + self._earned:
            self._scan(chunk)  # an event in this chunk may be too large: measure each one
        elif chunk[-2:] in _BOUNDARY_PAIRS:  # the usual read: it ends with a blank line
            self._event = 0
        else:
            cut = max(chunk.rfind(b"\n\n"), chunk.rfind(b"\r\r"), chunk.rfind(b"\n\r"))
            if cut >= 0:
                self._event = size - cut - 2
            elif self._last + chunk[:1] in _BOUNDARY_PAIRS:
                self._event = size - 1
            else:
                self._event += size
        self._last = chunk[-1:]

    def _scan(self, chunk: bytes) -> None:
        run, pos = self._event, 0
        if self._last + chunk[:1] in _BOUNDARY_PAIRS:
            run, pos = 0, 1
        for match in _BOUNDARY.finditer(chunk, pos):
            self._check_event(run + match.start() - pos)
            run, pos = 0, match.end()
        self._event = run + len(chunk) - pos
        # line terminators ending the chunk may be the first half of the blank line that ends the
        # event, not its content: the next chunk tells (and counts them if they are not)
        pending = min(len(chunk) - len(chunk.rstrip(b"\r\n")), 2)
        self._check_event(self._event - pending)

    def _check_event(self, size: int) -> None:
        if size > self._max_event + self._earned:
            allowed = self._max_event + self._earned
            raise UpstreamError("upstream_event_too_large", f"upstream event exceeds {allowed} bytes")


async def _aclose(source: AsyncIterable[bytes]) -> None:
    """Close a byte stream or an async generator left before its end (aiohttp's reader is closed
    with its response)."""
    if isinstance(source, httpx.AsyncByteStream | AsyncGenerator):
        await source.aclose()
