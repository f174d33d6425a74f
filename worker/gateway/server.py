"""Running the gateway: the listener (with a guard against slow request heads), the hub, the metrics.

aiohttp bounds a request head's size (lines, fields, count) but not how long it may take to arrive: a
client sending a byte every few seconds ("slowloris") would hold its connection forever. Every
connection here must complete each request head within :data:`HEAD_TIMEOUT` seconds of its first
byte (or of the connection, for the first); a body is bounded by ``client_max_size`` and must
arrive within :data:`worker.gateway.bounds.BODY_SECONDS` more (a 408, and the connection closes). A
request aiohttp cannot parse is answered in the API's JSON error shape, quoting none of its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError
from aiohttp.web_protocol import RequestHandler

from ..connect import redis_client
from ..metrics import serve_metrics
from ..settings import Settings
from ..supervise import cancel_and_wait
from .app import Gateway, build_app
from .auth import TokenSigner, gateway_secret
from .metrics import GatewayMetrics
from .models import ErrorBody, ErrorDetail

__all__ = ["HEAD_TIMEOUT", "GuardedHandler", "build_gateway", "serve_gateway"]

HEAD_TIMEOUT: Final = 10.0
KEEPALIVE_TIMEOUT: Final = 75.0
MAX_LINE: Final = 8190
MAX_FIELD: Final = 8190
MAX_HEADERS: Final = 64
SHUTDOWN_SECONDS: Final = 5.0

log = structlog.get_logger("tokenwire.gateway")


class GuardedHandler(RequestHandler):
    """aiohttp's request handler, closing a connection whose request head is slower than
    :data:`HEAD_TIMEOUT`."""

    __slots__ = ("_head_since", "_head_timeout", "_head_timer")

    def __init__(self, *args: Any, head_timeout: float = HEAD_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_since: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_timeout = head_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        loop = asyncio.get_running_loop()
        self._head_since = loop.time()
        self._head_timer = loop.call_later(self._head_timeout, self._check_head)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._head_since = None  # a head completed; a new one starts with its first byte
        elif self._head_since is None and self._current_request is None and data:
            self._head_since = asyncio.get_running_loop().time()

    def _check_head(self) -> None:
        loop = asyncio.get_running_loop()
        since = self._head_since
        if since is not None and self._current_request is None and loop.time() - since >= self._head_timeout:
            if self.transport is not None:
                self.transport.close()
            return
        self._head_timer = loop.call_later(self._head_timeout / 2, self._check_head)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (a bad request line, header, chunk size...): answered as
        every error is, ``{"error": {...}}`` in JSON, naming the problem without echoing the bytes
        (aiohttp's own text answer, and its logged traceback, quote the offending line: a key or
        a token in it would be shown). Anything else is aiohttp's."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.info("gateway refused a request it could not parse", status=status, problem=_problem(exc))
        body = ErrorBody(
            error=ErrorDetail(code="bad_request", message=f"not valid HTTP/1.1: {_problem(exc)}")
        )
        response = web.Response(
            status=status, body=msgspec.json.encode(body), content_type="application/json"
        )
        response.force_close()
        return response

    def drop_rest(self) -> None:
        """Close the connection after the current answer without reading what is left of its request
        (aiohttp otherwise lingers, up to 10 s, reading the rest of an unread body: pointless for one
        that arrives too slowly or cannot be decoded, whose stored error the lingering read would
        log as an unhandled exception)."""
        self._lingering_time = 0.0

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def _problem(exc: HttpProcessingError) -> str:
    """What aiohttp found wrong, without the bytes it quotes: its message's first line, up to the
    first quote or colon ("Invalid header value char:" then the header line). An invalid URL's
    message is the URL itself (a read token in its query): never shown."""
    if isinstance(exc, InvalidURLError):
        return "invalid request target"
    first = (exc.message or "").strip().split("\n", 1)[0]
    cut = min((i for i in (first.find(c) for c in ":'\"") if i >= 0), default=len(first))
    return first[:cut].strip()[:100] or type(exc).__name__


def build_gateway(settings: Settings, environ: Mapping[str, str]) -> Gateway:
    """The gateway of ``settings`` (its secret read from ``environ``); no connection is made yet."""
    secret = gateway_secret(settings, environ)
    redis = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    reader = redis_client(settings.redis_url, block_seconds=1.0, cluster=settings.redis_cluster)
    return Gateway(settings, redis=redis, reader=reader, signer=TokenSigner(secret), metrics=GatewayMetrics())


async def serve_gateway(
    settings: Settings,
    stop: asyncio.Event,
    *,
    environ: Mapping[str, str] | None = None,
    ready: Callable[[str], None] | None = None,
    gateway: Gateway | None = None,
) -> None:
    """Serve until ``stop``; ``ready(url)`` once listening (the URL has the bound port).
    ``gateway``: one built by :func:`build_gateway` (tests keep it to read its metrics)."""
    gateway = gateway or build_gateway(settings, os.environ if environ is None else environ)
    redis, reader, metrics = gateway.redis, gateway.hub.reader, gateway.metrics
    app = build_app(gateway)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()

    def protocol() -> GuardedHandler:
        return GuardedHandler(
            server,
            loop=loop,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            head_timeout=HEAD_TIMEOUT,
        )

    listener = await loop.create_server(
        protocol, settings.gateway_host, settings.gateway_port, backlog=4096, reuse_address=True
    )
    hub_stop = asyncio.Event()
    hub = asyncio.create_task(gateway.hub.run(hub_stop), name="gateway-hub")
    beat = asyncio.create_task(_beat(metrics, stop), name="gateway-heartbeat")
    metrics_runner = None
    if settings.metrics_port:

        async def readiness() -> str | None:
            await redis.ping()
            return None if not hub.done() else "the gateway's reader stopped"

        metrics_runner = await serve_metrics(
            metrics,
            settings.metrics_port,
            host=settings.metrics_host,
            ready=readiness,
            stale_after=10.0,
        )
    sock = listener.sockets[0]
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    url = f"http://{shown}:{port}"
    log.info("gateway listening", url=url, tenants=len(settings.tenants), ui=settings.gateway_ui)
    if not settings.tenants:
        log.warning("no tenants configured: every request is refused (add [tenants.NAME] tables)")
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        listener.close()
        gateway.close_streams()
        await runner.cleanup()
        hub_stop.set()
        gateway.hub.wake()
        try:
            await cancel_and_wait(hub)  # raises once the hub stopped when this task was cancelled
        finally:
            beat.cancel()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await reader.aclose()
            await redis.aclose()


async def _beat(metrics: GatewayMetrics, stop: asyncio.Event) -> None:
    while not stop.is_set():
        metrics.beat()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # wait_for can lose a cancel (fastpath/redis_cancel)
                await stop.wait()
