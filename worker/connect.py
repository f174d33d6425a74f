"""Building the Redis and HTTP clients a worker or a CLI command uses (no I/O until first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import REDIS
from .fastpath.redis_cancel import keep_cancels
from .settings import Settings

if TYPE_CHECKING:  # imported where used: a producer's Client.from_url loads no HTTP client
    import httpx

__all__ = ["http_client", "redis_client"]


def redis_client(
    url: str, *, block_seconds: float = 0.0, cluster: bool = False, max_connections: int = 256
) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, passwords in the URL all work).

    ``block_seconds``: the longest blocking command this client will run; its socket timeout is set
    above it, so a blocking read never trips the timeout while a dead connection still does.
    ``cluster``: ``url`` names any node of a Redis Cluster. Every command and script tokenwire
    sends touches keys of one hash slot, so the cluster client serves the same code unchanged.
    Its connections keep a cancel that lands while a command is written
    (:mod:`worker.fastpath.redis_cancel`).
    """
    if cluster:
        client = RedisCluster.from_url(url, socket_timeout=block_seconds + 10.0, socket_connect_timeout=10.0)
        keep_cancels(client)
        return cast(Redis, client)
    pool = BlockingConnectionPool.from_url(
        url,
        # past this many connections, a command waits for a free one (redis-py's default pool
        # raises instead, which a burst of job starts easily hits)
        max_connections=max_connections,
        timeout=30,
        socket_timeout=block_seconds + 10.0,
        socket_connect_timeout=10.0,
        health_check_interval=30,
        # a pooled connection found dead after a Redis restart is replaced and the command retried
        # (tokenwire's writes are idempotent: explicit event ids, fenced scripts, enqueue dedup)
        retry=REDIS.redis_retry(retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    redis = Redis.from_pool(pool)
    keep_cancels(redis)
    return redis


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The upstream HTTP client. It has no read timeout: stalls are detected per stream by
    :mod:`worker.upstream.stall` (``stall_timeout_seconds``), which costs no timer per chunk."""
    import httpx

    from .upstream.client import FastUpstreamClient as UpstreamClient  # no cookies; lean requests

    timeout = httpx.Timeout(
        connect=settings.connect_timeout_seconds,
        read=None,
        write=30.0,
        pool=settings.connect_timeout_seconds,
    )
    limits = httpx.Limits(
        max_connections=settings.concurrency * 2,
        max_keepalive_connections=settings.concurrency,
    )
    if settings.upstream_transport == "aiohttp":
        # httpx's API and httpx-sse on aiohttp's HTTP parser (far cheaper per small chunk)
        transport = _aiohttp_transport(limits)
        return UpstreamClient(timeout=timeout, transport=transport, follow_redirects=False)
    return UpstreamClient(timeout=timeout, limits=limits, follow_redirects=False)


READ_BUFSIZE = 64 * 1024
"""aiohttp's read buffer per upstream stream. Reading pauses at twice this, so a stream faster than
the worker holds at most ~128 KiB here. (aiohttp's default, 256 KiB, let 200 flat-out streams hold
over 100 MiB, and the text and lines decoded from each read as much again; the CPU per event was
the same within the benchmark's noise.)"""


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx-aiohttp's transport on a session with a bounded read buffer (created on first use,
    inside the running loop; the transport closes it)."""
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=transport.ssl_context,
        )
        # never decompressed by aiohttp's parser (unbounded): open_sse asks for identity and
        # refuses any other coding before reading a byte (httpx-aiohttp also asks per request)
        return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE, auto_decompress=False)

    transport = AiohttpTransport(limits=limits, client=session)
    return transport
