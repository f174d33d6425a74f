"""Integration fixtures: real redis-server, the real simulator over loopback, in-process workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from worker import Client, Provider, Settings, Worker
from worker.connect import http_client, redis_client
from worker.keys import GROUP
from worker.sim import SimConfig, serve

from .gatewaykit import RunningGateway, start_gateway, tenants

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"tw-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def backend() -> str:
    """Which Redis the test runs on; a module overrides this fixture to run on both."""
    return "single"


@pytest.fixture
def redis_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
async def redis(redis_url: str, backend: str) -> AsyncIterator[Redis]:
    client = redis_client(redis_url, cluster=backend == "cluster")
    yield client
    await client.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    """A simulator for the simulator's own tests: flat out, quick keep-alive pings."""
    async with serve(SimConfig(tokens_per_second=0, keepalive_seconds=0.05)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as c:
        yield c


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with serve(SimConfig(seed=1, tokens_per_second=0)) as url:
        yield url


@pytest.fixture
def settings_for(redis_url: str, backend: str, sim_url: str, prefix: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_cluster": backend == "cluster",
            "prefix": prefix,
            "default_provider": "sim",
            "providers": {
                "sim": Provider(
                    native_url=f"{sim_url}/v1/inference/{{model}}",
                    chat_url=f"{sim_url}/v1/openai/chat/completions",
                    completions_url=f"{sim_url}/v1/openai/completions",
                )
            },
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

    async def start(
        *, http: httpx.AsyncClient | None = None, redis_connections: int = 256, **overrides: Any
    ) -> RunningWorker:
        """A worker on ``settings_for(**overrides)``; ``http`` replaces its upstream client,
        ``redis_connections`` caps its command client's pool."""
        settings = settings_for(**overrides)
        cluster = settings.redis_cluster
        redis = redis_client(settings.redis_url, cluster=cluster, max_connections=redis_connections)
        reader = redis_client(settings.redis_url, block_seconds=settings.block_seconds, cluster=cluster)
        http = http or http_client(settings)
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
async def client(redis_url: str, backend: str, prefix: str) -> AsyncIterator[Client]:
    c = Client(
        redis_client(redis_url, block_seconds=2.0, cluster=backend == "cluster"), prefix=prefix, block_ms=500
    )
    yield c
    await c.aclose()


@pytest.fixture
async def gateway(
    settings_for: Callable[..., Settings], start_worker: Callable[..., Awaitable[Any]]
) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """Start a worker and return a factory of gateways (settings overrides as keywords): the
    gateway tests' (test_gateway*.py, test_review_findings_gateway.py)."""
    await start_worker()
    running: list[RunningGateway] = []

    async def start(**overrides: Any) -> RunningGateway:
        base: dict[str, Any] = {"tenants": tenants(), "gateway_port": 0, "gateway_heartbeat_seconds": 15.0}
        base.update(overrides)
        gw = await start_gateway(settings_for(**base))
        running.append(gw)
        return gw

    yield start
    for gw in running:
        if not gw.task.done():
            await gw.shutdown()


async def all_acked(redis: Redis, jobs: str, timeout: float = 30.0) -> None:
    """Wait until the workers' group on ``jobs`` has nothing pending. A job's terminal event is
    visible before its entry is acknowledged (the ack follows it), so a test that has read the end
    of a job waits here before it counts pending entries."""
    pending = -1
    try:
        async with asyncio.timeout(timeout):
            while pending := int((await redis.xpending(jobs, GROUP))["pending"]):
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{pending} entries of {jobs} still pending after {timeout} s")


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Wait (polling) until ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting until {what}")
