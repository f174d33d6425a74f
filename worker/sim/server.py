"""The simulator's HTTP server: routes, pacing, fault injection and SSE framing (aiohttp.web).

Every streaming route is a :class:`Route` binding a path to a :class:`Dialect`, which parses the
request (into a dialect-neutral :class:`~worker.sim.faults.SimRequest` plus an :class:`Encoder`) and
shapes each event's JSON. The stream loop here is shared: it paces tokens on an absolute schedule,
fires the request's fault and frames every event as its own ``data: ...`` write (one HTTP chunk per
event, like real providers). :data:`DEFAULT_ROUTES` serves DeepInfra native, TGI, and the OpenAI-style
chat and legacy completions routes, whose wire shape (OpenAI, Together, vLLM, llama.cpp) each request
picks with its ``dialect`` directive (:mod:`worker.sim.openai_api`), the OpenAI Responses API
(:mod:`worker.sim.responses`), Gemini's ``streamGenerateContent`` (:mod:`worker.sim.gemini`) and
SGLang's ``/generate`` (:mod:`worker.sim.sglang`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Protocol

import msgspec
from aiohttp import web

from worker.sim import native
from worker.sim.faults import (
    GENERATION_ERROR,
    HEADER_FAULTS,
    Directives,
    Fault,
    RequestError,
    SimRequest,
    StatusReply,
    echo_key_pieces,
    echo_key_reply,
    echo_key_text,
    fault_applies,
    parse_directives,
)
from worker.sim.gemini import GEMINI
from worker.sim.generate import SimToken, TokenSource, filler_token, stream_seed
from worker.sim.labelled import labelled_events
from worker.sim.limits import LimitCounts, Limiter, refusal_headers
from worker.sim.openai_api import CHAT, COMPLETIONS
from worker.sim.responses import RESPONSES
from worker.sim.sglang import SGLANG

__all__ = [
    "DEFAULT_ROUTES",
    "Dialect",
    "Encoder",
    "Route",
    "SimConfig",
    "SimStats",
    "create_app",
    "run",
    "serve",
    "serve_forever",
]

_YIELD_EVERY = 64  # flat-out streams yield to the loop this often so others keep flowing
_FLUSH_TIMEOUT = 2.0  # seconds to let sent events leave before a simulated disconnect
_SHUTDOWN_TIMEOUT = 5.0
_MAX_BODY = 16 * 1024 * 1024
_FLOOD_BLOCK = 64 * 1024  # bytes per write of a flood or a bomb
_ECHO_ID = 900_000  # token ids of echo=tokens' pieces


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide settings; every request may override pacing and faults with directives.

    ``fault`` is a default directive string (``"fault=stall;after=3"``) applied under each request's
    own directives.
    """

    seed: int = 0
    tokens_per_second: float = 50.0  # per stream; 0 = as fast as possible
    default_max_tokens: int = 64  # content tokens before EOS when a request gives no limit
    keepalive_seconds: float = 15.0  # ": ping" interval while idle (directive keepalive=1)
    fault: str | None = None

    def __post_init__(self) -> None:
        if not self.tokens_per_second >= 0:
            raise ValueError("tokens_per_second must be >= 0")
        if self.default_max_tokens < 0:
            raise ValueError("default_max_tokens must be >= 0")
        if not self.keepalive_seconds > 0:
            raise ValueError("keepalive_seconds must be > 0")
        parse_directives(self.fault)  # a bad default fails here, not on the first request


class SimStats(msgspec.Struct, kw_only=True):
    """Counters served by ``GET /stats``."""

    total_requests: int = 0
    requests: dict[str, int] = msgspec.field(default_factory=dict)  # per model string as sent
    active_streams: int = 0
    streams_started: int = 0
    streams_completed: int = 0  # final event sent
    events_sent: int = 0
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    limits: dict[str, LimitCounts] = msgspec.field(default_factory=dict)  # the limit directives

    def count_request(self, key: str) -> int:
        self.total_requests += 1
        n = self.requests[key] = self.requests.get(key, 0) + 1
        return n


class Encoder(Protocol):
    """Shapes one stream's events; each method returns SSE ``data`` payloads (JSON bytes)."""

    @property
    def done_by_default(self) -> bool:
        """Whether the dialect ends its streams with ``data: [DONE]``."""
        ...

    def start(self) -> Sequence[bytes]: ...

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        """The event for ``token``, or ``None`` when the dialect holds it back (several tokens per
        chunk, partial UTF-8 a server does not send)."""
        ...

    def flush(self) -> Sequence[bytes]:
        """Events for tokens held back so far (called before a fault fires)."""
        ...

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]: ...

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        """The in-stream error event(s) ending the stream (``[DONE]`` included where sent)."""
        ...


class Dialect(Protocol):
    """One provider protocol: parses its request body and shapes its events and errors."""

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, Encoder]:
        """``model`` is the route's ``{model}`` segment (``None`` when the path has none);
        ``default`` is ``SimConfig.fault``. Raises :class:`RequestError` to refuse."""
        ...

    def status_reply(self, directives: Directives) -> StatusReply: ...


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    dialect: Dialect


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/inference/{model:.+}", native.DEEPINFRA),
    Route("POST", "/generate_stream", native.TGI),
    Route("POST", "/v1/openai/chat/completions", CHAT),
    Route("POST", "/v1/openai/completions", COMPLETIONS),
    Route("POST", "/v1/chat/completions", CHAT),
    Route("POST", "/v1/completions", COMPLETIONS),
    Route("POST", "/v1/responses", RESPONSES),
    Route("POST", "/v1beta/models/{model:.+}:streamGenerateContent", GEMINI),
    Route("POST", "/generate", SGLANG),
)


@dataclass(slots=True)
class _State:
    """What the handlers share, stored on the application."""

    config: SimConfig
    stats: SimStats = dataclass_field(default_factory=SimStats)
    streams: set[asyncio.Task[Any]] = dataclass_field(default_factory=set)  # for shutdown
    bombs: asyncio.Lock = dataclass_field(default_factory=asyncio.Lock)  # one bomb built at a time
    limiter: Limiter = dataclass_field(init=False)  # the limit directives (counts in stats.limits)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.stats.limits)


_STATE = web.AppKey("tokenwire_sim_state", _State)


def _relabel(payloads: Sequence[bytes], k: int) -> list[bytes]:
    """Choice 0's chunks as choice ``k``'s (its ``"index":0`` made ``k``); for ``k > 0`` a chunk
    without a choice (the usage chunk) is left out: the stream carries one."""
    if k == 0:
        return list(payloads)
    return [p.replace(b'"index":0', b'"index":%d' % k, 1) for p in payloads if b'"index":0' in p]


def _lengths(request: SimRequest, directives: Directives, default_max: int) -> tuple[int, bool]:
    """Content tokens to generate, and whether an EOS token follows them.

    The natural length is ``tokens=``, else ``max_new_tokens``, else the default; when it does not
    leave room for EOS under ``max_new_tokens``, the stream stops at the limit with ``length``.
    """
    cap = None if directives.overrun else request.max_new_tokens
    natural = directives.tokens
    if natural is None:
        natural = cap if cap is not None else default_max
    if cap is not None and natural >= cap:
        return cap, False
    return natural, True


class _Stream:
    """One SSE response: paced token events, the request's fault, the final event."""

    def __init__(
        self,
        request: web.Request,
        sim: SimRequest,
        encoder: Encoder,
        fault: Fault | None,
    ) -> None:
        state = request.app[_STATE]
        config = state.config
        d = sim.directives
        self.request = request
        self.sim = sim
        self.directives = d
        self.encoder = encoder
        self.config = config
        self.stats = state.stats
        self.streams = state.streams
        self.bombs = state.bombs
        self.fault = fault
        tps = config.tokens_per_second if d.tps is None else d.tps
        self.interval = 1.0 / tps if tps > 0 else 0.0
        self.ping = d.ping or (config.keepalive_seconds if d.keepalive else None)
        self.prefix = b"data:" if d.nospace else b"data: "
        self.sep = b"\r\n\r\n" if d.crlf else b"\n\n"
        self.sent = 0  # token events sent
        self.parts: list[str] = []
        self.t0 = 0.0
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

    async def run(self) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)  # so shutdown can end it
        self.stats.active_streams += 1
        self.stats.streams_started += 1
        try:
            if self.fault in HEADER_FAULTS:
                fault, self.fault = self.fault, None
                if await self._head_fault(fault):
                    return self.response
            await self.response.prepare(self.request)
            self.t0 = asyncio.get_running_loop().time()
            await self._generate()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.stats.active_streams -= 1
            self.streams.discard(task)
        return self.response

    async def _generate(self) -> None:
        sim, d = self.sim, self.directives
        if sim.choices > 1:
            await self._generate_choices()
            return
        await self._send_all(self.encoder.start())
        source = TokenSource(
            stream_seed(self.config.seed, sim.model, sim.prompt, sim.seed),
            force_utf8_split=d.utf8split,
            lang=d.lang,
            fixed_logprob=d.lp,
            low_at=d.low_at,
            low_run=d.low_run,
            low_logprob=d.low_lp,
        )
        n_content, eos = _lengths(sim, d, self.config.default_max_tokens)
        events = source.events(n_content, eos=eos, stop=sim.stop)
        if d.labelled is not None:  # known ground truth for calibration (worker.sim.labelled)
            events = labelled_events(events, sim.prompt, d.labelled, d.correct_rate)
        for token, reason in events:
            if self.fault is not None and (self.sent >= d.after or reason is not None):
                fault, self.fault = self.fault, None
                if await self._fire(fault, source):
                    return
            await self._pace()
            if d.stamp:  # the send time, taken just before the event is encoded and written
                token = msgspec.structs.replace(token, id=time.time_ns() // 1000)
            top = source.alternatives(token, sim.top_n) if sim.top_n else None
            self._record(token)
            if reason is None:
                payload = self.encoder.token(token, top)
                if payload is not None:
                    await self._send(payload)
                continue
            finals = self.encoder.final(
                token,
                top,
                finish_reason=reason,
                generated_text="".join(self.parts),
                generated_tokens=self.sent,
            )
            await self._send_all(finals)
        self.stats.streams_completed += 1
        if d.done or self.encoder.done_by_default:
            await self._send(b"[DONE]")

    async def _generate_choices(self) -> None:
        """Chat's or completions' ``n`` choices in one stream: choice ``k`` from its own source
        (the request's seed plus ``k``, or ``k`` without one, as the worker varies the seeds of
        separate candidates), one token of each in turn, each chunk with its choice's ``index``;
        the usage (choice 0's encoder counts its own tokens) and ``[DONE]`` once. ``drop_choice``
        breaks one off after ``after`` tokens without a finish reason. In-stream faults do not
        apply."""
        sim, d = self.sim, self.directives
        n_content, eos = _lengths(sim, d, self.config.default_max_tokens)
        sources, encoders, streams = [], [], []
        for k in range(sim.choices):
            request_seed = k if sim.seed is None else sim.seed + k
            source = TokenSource(
                stream_seed(self.config.seed, sim.model, sim.prompt, request_seed),
                force_utf8_split=d.utf8split,
                lang=d.lang,
                fixed_logprob=d.lp,
                low_at=d.low_at,
                low_run=d.low_run,
                low_logprob=d.low_lp,
            )
            sources.append(source)
            encoders.append(self.encoder if k == 0 else copy.deepcopy(self.encoder))
            streams.append(iter(source.events(n_content, eos=eos, stop=sim.stop)))
        for k, encoder in enumerate(encoders):
            await self._send_all(_relabel(encoder.start(), k))
        parts: list[list[str]] = [[] for _ in encoders]
        sent = [0] * len(encoders)
        active = list(range(len(encoders)))
        while active:
            for k in list(active):
                item = next(streams[k], None)
                if item is None or (d.drop_choice == k and sent[k] >= d.after):
                    active.remove(k)
                    continue
                token, reason = item
                await self._pace()
                top = sources[k].alternatives(token, sim.top_n) if sim.top_n else None
                self.sent += 1
                sent[k] += 1
                if not token.special:
                    parts[k].append(token.text)
                encoder = encoders[k]
                if reason is None:
                    payload = encoder.token(token, top)
                    if payload is not None:
                        await self._send_all(_relabel((payload,), k))
                    continue
                finals = encoder.final(
                    token,
                    top,
                    finish_reason=reason,
                    generated_text="".join(parts[k]),
                    generated_tokens=sent[k],
                )
                await self._send_all(_relabel(finals, k))
                active.remove(k)
        self.stats.streams_completed += 1
        if d.done or self.encoder.done_by_default:
            await self._send(b"[DONE]")

    def _record(self, token: SimToken) -> None:
        self.sent += 1
        if not token.special:
            self.parts.append(token.text)

    async def _send(self, payload: bytes) -> None:
        head = b""
        if payload.startswith(b"event: "):  # a named event (worker.sim.responses): its name first
            name, _, payload = payload.partition(b"\n")
            head = name + (b"\r\n" if self.directives.crlf else b"\n")
        await self.response.write(head + self.prefix + payload + self.sep)
        self.stats.events_sent += 1

    async def _send_all(self, payloads: Sequence[bytes]) -> None:
        for payload in payloads:
            await self._send(payload)

    async def _pace(self) -> None:
        if self.interval:
            await self._sleep_until(self.t0 + self.sent * self.interval)
        elif self.sent and self.sent % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep (absolute schedule, no drift), sending ``: ping`` comments if keep-alive is on."""
        loop = asyncio.get_running_loop()
        while (delay := deadline - loop.time()) > 0:
            if self.ping is not None and delay > self.ping:
                await asyncio.sleep(self.ping)
                await self.response.write(b": ping" + self.sep)
            else:
                await asyncio.sleep(min(delay, 3600.0))

    async def _head_fault(self, fault: Fault) -> bool:
        """A fault of the response's head; returns whether the response is complete."""
        d, headers = self.directives, self.response.headers
        if fault == "bigheader":  # one header line of about `size` bytes
            headers["X-Sim-Padding"] = "a" * d.size
            return False
        if fault == "manyheaders":
            for i in range(d.headers):
                headers.add(f"X-Sim-{i}", "x")
            return False
        # gzipbomb: `size` newlines, compressed (built off the loop once, then cached)
        async with self.bombs:  # concurrent requests wait for the first build, then share it
            body = await asyncio.to_thread(_bomb, d.coding, d.size)
        headers["Content-Encoding"] = d.coding
        await self.response.prepare(self.request)
        await self._flood(body)
        return True

    async def _flood(self, data: bytes) -> None:
        for start in range(0, len(data), _FLOOD_BLOCK):
            await self.response.write(data[start : start + _FLOOD_BLOCK])

    async def _fire(self, fault: Fault, source: TokenSource) -> bool:
        """Inject ``fault``; returns whether the stream ends here."""
        d = self.directives
        await self._send_all(self.encoder.flush())
        if fault == "disconnect":
            await self._disconnect()
            return True
        if fault == "stall":
            await self._stall()
        elif fault == "echo_key" and d.echo == "tokens":  # the key as generated text
            await self._echo_tokens()
        elif fault in ("malformed", "error", "echo_key"):
            return await self._bad_event(fault)
        elif fault == "eof":
            return True
        elif fault == "blankflood":  # `size` bytes of blank lines
            block = b"\n" * min(d.size, _FLOOD_BLOCK)
            for start in range(0, d.size, len(block)):
                await self.response.write(block[: d.size - start])
            return d.then == "end"
        elif fault == "deepjson":  # an event nested `depth` levels deep
            await self._send(b'{"z":' + b"[" * d.depth + b"]" * d.depth + b"}")
            return d.then == "end"
        elif fault == "named":  # a token-shaped event under a name that carries no tokens
            payload = self.encoder.token(filler_token(24), None) or next(iter(self.encoder.flush()), None)
            if payload is not None:
                newline = b"\r\n" if d.crlf else b"\n"
                await self.response.write(
                    b"event: " + d.event.encode() + newline + self.prefix + payload + self.sep
                )
            return False
        elif fault == "big":
            token = filler_token(d.size)
            top = source.alternatives(token, self.sim.top_n) if self.sim.top_n else None
            self._record(token)
            payload = self.encoder.token(token, top)
            await self._send_all(self.encoder.flush() if payload is None else (payload,))
            return d.then == "end"
        return False

    async def _echo_tokens(self) -> None:
        """``echo=tokens``: the request's key (Bearer form and bare) as ordinary tokens, split small."""
        for i, piece in enumerate(echo_key_pieces(_credential(self.request))):
            token = SimToken(_ECHO_ID + i, piece, -0.25, False, piece.encode())
            self._record(token)
            payload = self.encoder.token(token, None)
            if payload is not None:
                await self._send(payload)

    async def _bad_event(self, fault: Fault) -> bool:
        """``malformed``, ``error`` or ``echo_key``'s event (``echo=error`` or ``malformed``: the
        others are answered in the head); returns whether the stream ends here."""
        d = self.directives
        echo = None
        if fault == "echo_key":
            echo = echo_key_text(_credential(self.request))
        if fault == "malformed" or (echo is not None and d.echo == "malformed"):
            await self._send(b"{not json" if echo is None else b"{not json: " + echo.encode())
            return d.then == "end"
        if echo is not None:
            await self._send_all(self.encoder.error(echo, "validation"))
        else:
            await self._send_all(self.encoder.error(GENERATION_ERROR, d.error_type))
        return True

    async def _stall(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stall = self.directives.stall
        await self._sleep_until(float("inf") if stall is None else started + stall)
        self.t0 += loop.time() - started  # resume the schedule where it paused

    async def _disconnect(self) -> None:
        """Drop the connection mid-body: the client sees a read/protocol error, not a clean end."""
        transport = self.request.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FLUSH_TIMEOUT
        # Let the events already written leave first; abort() would discard them. There is no
        # event to wait on for an empty transport buffer, so poll it briefly.
        while transport.get_write_buffer_size() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        sock = transport.get_extra_info("socket")
        if self.directives.rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


@functools.lru_cache(maxsize=4)
def _bomb(coding: str, size: int) -> bytes:
    """``size`` newlines compressed as ``coding`` (gzip or zlib-wrapped deflate, as HTTP's)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    block = b"\n" * min(size, 1 << 20)
    parts = [compressor.compress(block[: size - start]) for start in range(0, size, len(block))]
    return b"".join([*parts, compressor.flush()])


def _credential(request: web.Request) -> str:
    """The request's credential as sent: ``Authorization``, else Gemini's ``x-goog-api-key``."""
    return request.headers.get("Authorization") or request.headers.get("x-goog-api-key") or ""


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(payload), content_type="application/json")


async def _handle(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    state = request.app[_STATE]
    config, stats = state.config, state.stats
    try:
        model = request.match_info.get("model") or request.query.get("model")  # sglang: ?model=
        sim, encoder = dialect.parse(await request.read(), model, config.fault)
    except RequestError as exc:
        stats.total_requests += 1
        return _json(exc.payload, exc.status)
    n = stats.count_request(sim.key)
    scope = state.limiter.admit(sim.model, sim.directives)
    if scope is None:  # beyond the limit: 429, as the provider would
        limited = msgspec.structs.replace(sim.directives, status=429, body="json", retry_after=None)
        reply = dialect.status_reply(limited)
        headers = {**reply.headers, **refusal_headers(sim.directives), "Content-Type": reply.content_type}
        return web.Response(status=429, body=reply.body, headers=headers)
    try:
        return await _serve(request, dialect, sim, encoder, n)
    finally:
        state.limiter.release(scope)


async def _serve(
    request: web.Request, dialect: Dialect, sim: SimRequest, encoder: Encoder, n: int
) -> web.StreamResponse:
    stats = request.app[_STATE].stats
    if sim.refusal is not None:  # the model refuses logprobs (the nologprobs directive)
        stats.faults["nologprobs"] = stats.faults.get("nologprobs", 0) + 1
        reply = sim.refusal
        headers = {**reply.headers, "Content-Type": reply.content_type}
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    if sim.ignored_n:  # `n` asked for and ignored: one choice streams (the ignore_n directive)
        stats.faults["ignore_n"] = stats.faults.get("ignore_n", 0) + 1
    fault = sim.directives.fault if fault_applies(sim.directives, n) else None
    if fault is not None:
        stats.faults[fault] = stats.faults.get(fault, 0) + 1
    if fault == "echo_key" and sim.directives.echo in ("status", "header"):
        reply = echo_key_reply(sim.directives, _credential(request))
        headers = {**reply.headers, "Content-Type": reply.content_type}
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    if fault == "status":
        reply = dialect.status_reply(sim.directives)
        headers = {**reply.headers, "Content-Type": reply.content_type}
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    return await _Stream(request, sim, encoder, fault).run()


def _route_handler(dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, dialect)

    return handle


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    return _json(request.app[_STATE].stats)


async def _cancel_streams(app: web.Application) -> None:
    """On shutdown, end streams at once (a stall may otherwise wait forever)."""
    for task in list(app[_STATE].streams):
        task.cancel()


def create_app(config: SimConfig, routes: Sequence[Route] = DEFAULT_ROUTES) -> web.Application:
    """The simulator as an aiohttp application (serve it with :func:`serve`)."""
    app = web.Application(client_max_size=_MAX_BODY)
    app[_STATE] = _State(config)
    for route in routes:
        app.router.add_route(route.method, route.path, _route_handler(route.dialect))
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    app.on_shutdown.append(_cancel_streams)
    return app


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the simulator on ``host:port`` (0 = a free port); yields its base URL, then stops it."""
    runner = web.AppRunner(
        create_app(config),
        handle_signals=False,
        handler_cancellation=True,  # a stalled stream ends when its client goes away
        access_log=None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield _base_url(host, bound_port)
    finally:
        await runner.cleanup()


async def serve_forever(
    config: SimConfig,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``ready`` gets the base URL once the port is open."""
    async with serve(config, host, port) as url:
        if ready is not None:
            ready(url)
        await stop.wait()


def run(config: SimConfig, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Blocking: serve until the process is interrupted (installs no signal handlers of its own;
    Ctrl-C ends ``asyncio.run`` with ``KeyboardInterrupt`` after a clean stop)."""
    asyncio.run(serve_forever(config, host, port, asyncio.Event(), ready))
