"""The start-up probe of every fast path: one log line, and ``tokenwire_fast_path{component}`` 1/0."""

from __future__ import annotations

import structlog
from prometheus_client import Gauge
from redis.asyncio import Redis

from worker.fastpath import Probe, httpx_aiohttp, redis_py

__all__ = ["COMPONENTS", "probe_all", "report"]

COMPONENTS = (httpx_aiohttp.COMPONENT, redis_py.COMPONENT)

log = structlog.get_logger("tokenwire.fastpath")


def probe_all(*, upstream_transport: str, redis: Redis) -> tuple[Probe, ...]:
    """Run every probe (each remembers its answer for the hot path) and say which path each
    component takes in a worker with this transport and this Redis client."""
    aiohttp, replies = httpx_aiohttp.probe(), redis_py.probe_client(redis)
    if upstream_transport != "aiohttp":
        reason = f"upstream_transport is {upstream_transport!r}: bodies are read through httpx"
        aiohttp = Probe(httpx_aiohttp.COMPONENT, False, reason)
    return aiohttp, replies


def report(probes: tuple[Probe, ...], gauge: Gauge) -> None:
    """Set ``gauge`` (labelled by ``component``) and log every component's path in one line: a
    warning when any takes its fallback."""
    for probe in probes:
        gauge.labels(component=probe.component).set(1 if probe.available else 0)
    paths = {probe.component: f"{probe.path}: {probe.reason}" for probe in probes}
    if all(probe.available for probe in probes):
        log.info("fast paths in use", **paths)
    else:
        fallback = [probe.component for probe in probes if not probe.available]
        log.warning("some components run their slower fallback", fallback=fallback, **paths)
