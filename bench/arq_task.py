"""The naive worker's task run by arq (the Python job queue a team would pick instead of tokenwire):
the same upstream request and the same events as ``bench.naive`` (httpx + httpx-sse, ``json.loads``
per event, one awaited ``XADD`` per token, then ``done``), on arq's queue, workers and job records.

It runs in its own environment (``bench/arq/requirements.txt``: arq needs redis<6):
``arq bench.arq_task.WorkerSettings`` with ``SHORT_REDIS_URL``, ``SHORT_SIM_URL``, ``SHORT_PREFIX``.
arq's settings are its defaults except ``max_jobs`` (as many jobs at once as tokenwire's
``concurrency``) and ``poll_delay`` (0.5 s by default: a queue polled twice a second would measure
the poll, not the worker; 5 ms here).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

from bench.jobloop import BenchJob
from bench.naive import run_job

__all__ = ["WorkerSettings"]

_PREFIX = os.environ.get("SHORT_PREFIX", "tokenwire")
_SIM_URL = os.environ.get("SHORT_SIM_URL", "http://127.0.0.1:8080")


async def _startup(ctx: dict[str, Any]) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    ctx["http"] = httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits)


async def _shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


async def short_job(ctx: dict[str, Any], raw: str) -> None:
    job = json.loads(raw)
    bench_job = BenchJob(
        entry_id=b"",
        job_id=job["id"],
        events_key=f"{_PREFIX}:job:{{{job['id']}}}:events",
        url=f"{_SIM_URL}/v1/inference/{quote(job['model'], safe='/')}",
        body={"input": job["input"], "stream": True},
    )
    await run_job(ctx["redis"], ctx["http"], bench_job)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [short_job]
    on_startup = _startup
    on_shutdown = _shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("SHORT_REDIS_URL", "redis://127.0.0.1:6379"))
    max_jobs = int(os.environ.get("SHORT_MAX_JOBS", "256"))
    poll_delay = 0.005
