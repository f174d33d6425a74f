"""Integration fixtures: real redis-server, the real simulator over loopback, in-process workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from worker import Client, Provider, Settings, Worker
from worker.connect import http_client, redis_client
from worker.redisproc import RedisServer
from worker.sim import SimConfig, serve

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"tw-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with serve(SimConfig(seed=1, tokens_per_second=0)) as url:
        yield url


@pytest.fixture
def settings_for(redis_server: RedisServer, sim_url: str, prefix: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_server.url,
            "prefix": prefix,
            "default_provider": "sim",
            "providers": {"sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}")},
            "concurrency": 64,
            "block_seconds": 0.5,
            "drain_grace_seconds": 5.0,
        }
        base.update(overrides)
        return Settings(**base)

    return make


class RunningWorker:
    def __init__(self, worker: Worker, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.worker = worker
        self.task = task
        self.stop = stop

    async def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        async with asyncio.timeout(timeout):
            await self.task


@pytest.fixture
async def start_worker(
    settings_for: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    running: list[RunningWorker] = []
    closers: list[Any] = []

    async def start(**overrides: Any) -> RunningWorker:
        settings = settings_for(**overrides)
        redis = redis_client(settings.redis_url)
        reader = redis_client(settings.redis_url, block_seconds=settings.block_seconds)
        http = http_client(settings)
        closers.extend([redis.aclose, reader.aclose, http.aclose])
        worker = Worker(settings, redis=redis, reader=reader, http=http)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            await worker.ready.wait()
        handle = RunningWorker(worker, task, stop)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.shutdown()
    for close in closers:
        await close()


@pytest.fixture
async def client(redis_server: RedisServer, prefix: str) -> AsyncIterator[Client]:
    c = Client(redis_client(redis_server.url, block_seconds=2.0), prefix=prefix, block_ms=500)
    yield c
    await c.aclose()
