"""A burst of job starts larger than the Redis connection pool waits for connections; it never
crashes jobs (redis-py's default async pool raises past its limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from worker import Client, Done

from .conftest import RunningWorker

pytestmark = pytest.mark.integration


async def test_more_jobs_in_flight_than_pooled_connections(
    start_worker: Callable[..., Awaitable[RunningWorker]], client: Client
) -> None:
    await start_worker(concurrency=120, redis_connections=6)
    model = "tokenwire/sim;tokens=20;tps=100"
    ids = [await client.enqueue(model=model, input=str(n)) for n in range(100)]
    results = await asyncio.gather(*(client.result(job_id, timeout=60) for job_id in ids))
    assert all(isinstance(r, Done) for r in results)
