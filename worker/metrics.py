"""Prometheus metrics and the ``/metrics``, ``/healthz``, ``/readyz`` endpoints of a worker.

Each :class:`Metrics` has its own registry, so several workers can live in one process (tests).
Nothing is recorded per token that can be aggregated: token counts are added per write batch and
the latency histogram is observed once per batch (its oldest event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "serve_metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The worker's metrics; names are documented in the README."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.jobs = Counter(
            "tokenwire_jobs", "Jobs that ended here, by outcome", ["outcome"], registry=registry
        )
        self.tokens = Counter("tokenwire_tokens_published", "Token events written", registry=registry)
        self.latency = Histogram(
            "tokenwire_token_latency_seconds",
            "Upstream event received to its token event visible in Redis (oldest event of each write batch)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge("tokenwire_inflight_jobs", "Jobs in flight in this process", registry=registry)
        self.upstream_errors = Counter(
            "tokenwire_upstream_errors",
            "Failed upstream requests, by HTTP status (none for in-stream/transport) and error code",
            ["status", "code"],
            registry=registry,
        )
        self.retries = Counter(
            "tokenwire_retries", "Upstream retries, by error code", ["code"], registry=registry
        )
        self.dead_letters = Counter(
            "tokenwire_dead_letters",
            "Entries moved to the dead-letter stream, by code",
            ["code"],
            registry=registry,
        )
        self.escalations = Counter(
            "tokenwire_escalations", "Jobs escalated to a stronger model", registry=registry
        )
        self.takeovers = Counter("tokenwire_takeovers", "Abandoned jobs taken over", registry=registry)
        # by model: a job names its model, so at most MODEL_LABELS distinct values, then "other"
        self.usage_tokens = Counter(
            "tokenwire_usage_tokens",
            "Tokens used by attempts (the provider's counts, else counted), by model and kind",
            ["model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "tokenwire_cost", "Cost of attempts from the price tables, by model", ["model"], registry=registry
        )
        self.leases_lost = Counter(
            "tokenwire_leases_lost", "Jobs stopped because another worker owns them", registry=registry
        )
        self.queue_lag = Gauge(
            "tokenwire_queue_lag", "Entries of the job stream not yet delivered", registry=registry
        )
        self.queue_pending = Gauge(
            "tokenwire_queue_pending",
            "Entries delivered but not yet acknowledged (all workers)",
            registry=registry,
        )
        self.queue_length = Gauge("tokenwire_queue_length", "Entries on the job stream", registry=registry)
        self.dead_length = Gauge(
            "tokenwire_dead_letter_length", "Entries on the dead-letter stream", registry=registry
        )
        self.fast_path = Gauge(
            "tokenwire_fast_path",
            "1 when the component (sse, aiohttp, redis_reply) runs its fast path, 0 on its fallback "
            "(the start-up log line says why)",
            ["component"],
            registry=registry,
        )
        self.task_restarts = Counter(
            "tokenwire_task_restarts",
            "Long-lived worker tasks (serve, reclaim, leases, publisher, heartbeat, cancel) restarted "
            "after they raised, by task; /readyz fails while one waits to restart",
            ["task"],
            registry=registry,
        )
        self.provider_waiting = Gauge(
            "tokenwire_provider_waiting_jobs",
            "Jobs of this process waiting for their provider's shared budget (worker.ratelimit)",
            ["provider"],
            registry=registry,
        )
        self.provider_budget = Gauge(
            "tokenwire_provider_budget",
            "A provider's shared budget as last read from Redis, by limit: concurrency (the AIMD limit, "
            "+Inf when unbounded), requests_per_minute and tokens_per_minute (scaled by the AIMD factor)",
            ["provider", "limit"],
            registry=registry,
        )
        self.provider_throttled = Counter(
            "tokenwire_provider_throttled",
            "HTTP 429 answers from a provider (each cuts its shared budget; the job waits, no attempt spent)",
            ["provider"],
            registry=registry,
        )
        self.alive_at = time.monotonic()

    def beat(self) -> None:
        """The event loop ran the worker's heartbeat task (once a second): ``/healthz`` fails when
        it has not for ``stale_after`` seconds, i.e. when something blocks the loop."""
        self.alive_at = time.monotonic()

    def batch_written(self, count: int, oldest_received: float | None) -> None:
        """``oldest_received``: loop time (monotonic) at which the batch's first event was queued."""
        if count:
            self.tokens.inc(count)
            if oldest_received is not None:
                self.latency.observe(time.monotonic() - oldest_received)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Exposed(Protocol):
    """What :func:`serve_metrics` serves: a worker's :class:`Metrics`, or the gateway's."""

    alive_at: float

    def render(self) -> bytes: ...


async def serve_metrics(
    metrics: Exposed,
    port: int,
    *,
    host: str,
    ready: Callable[[], Awaitable[str | None]],
    stale_after: float,
) -> web.AppRunner:
    """Start the endpoints on ``host`` (the ``metrics_host`` setting); ``ready()`` returns None when
    ready, else why not."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        silent = time.monotonic() - metrics.alive_at
        if silent > stale_after:
            return web.Response(status=503, text=f"event loop blocked: no heartbeat for {silent:.1f}s\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2.0):  # wait_for can lose a cancel (fastpath/redis_cancel)
                problem = await ready()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            return web.Response(status=503, text=f"{problem}\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
