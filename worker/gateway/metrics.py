"""The gateway's Prometheus metrics (served as the worker's are: ``/metrics``, ``/healthz``, ``/readyz``
on ``metrics_host``:``metrics_port``, see :func:`worker.metrics.serve_metrics`)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """Names are documented in the README's gateway section."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.open_streams = Gauge(
            "tokenwire_gateway_open_streams", "SSE connections open in this process", registry=registry
        )
        self.events_sent = Counter(
            "tokenwire_gateway_events_sent", "Events written to SSE clients", registry=registry
        )
        self.resumes = Counter(
            "tokenwire_gateway_resumes",
            "SSE connections that resumed after an id (Last-Event-ID or after)",
            registry=registry,
        )
        self.auth_failures = Counter(
            "tokenwire_gateway_auth_failures",
            "Requests refused for their credentials, by kind (key, token, missing, origin)",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "tokenwire_gateway_dropped_streams",
            "SSE connections closed by the gateway before the job ended, by reason (behind, expired)",
            ["reason"],
            registry=registry,
        )
        self.jobs = Counter(
            "tokenwire_gateway_jobs", "POST /v1/jobs answers, by outcome", ["outcome"], registry=registry
        )
        self.refused = Counter(
            "tokenwire_gateway_limited",
            "Requests refused with 429, by limit (inflight, streams)",
            ["limit"],
            registry=registry,
        )
        self.redis_reads = Counter(
            "tokenwire_gateway_redis_reads",
            "Multiplexed reads of the hub (XREAD calls or pipelines)",
            registry=registry,
        )
        self.watched_jobs = Gauge(
            "tokenwire_gateway_watched_jobs",
            "Jobs the hub reads for this process's streams",
            registry=registry,
        )
        self.alive_at = time.monotonic()

    def beat(self) -> None:
        self.alive_at = time.monotonic()

    def render(self) -> bytes:
        return generate_latest(self.registry)
