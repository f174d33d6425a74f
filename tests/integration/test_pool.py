"""A burst of job starts larger than the Redis connection pool waits for connections; it never
crashes jobs (redis-py's default async pool raises past its limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from worker import Client, Done, Settings, Worker
from worker.connect import http_client, redis_client

pytestmark = pytest.mark.integration


async def test_more_jobs_in_flight_than_pooled_connections(
    settings_for: Callable[..., Settings], client: Client
) -> None:
    settings = settings_for(concurrency=120)
    redis = redis_client(settings.redis_url, max_connections=6)
    reader = redis_client(settings.redis_url, block_seconds=settings.block_seconds)
    async with http_client(settings) as http:
        worker = Worker(settings, redis=redis, reader=reader, http=http)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            model = "tokenwire/sim;tokens=20;tps=100"
            ids = [await client.enqueue(model=model, input=str(n)) for n in range(100)]
            results = await asyncio.gather(*(client.result(job_id, timeout=60) for job_id in ids))
            assert all(isinstance(r, Done) for r in results)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
            await reader.aclose()
            await redis.aclose()
