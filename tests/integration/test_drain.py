"""The drain is bounded: a job whose task ignores its cancellation cannot hold a worker's stop (real
redis-server, the real simulator paced slowly, in-process workers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import structlog
from redis.asyncio import Redis

from worker import Client, Done, Start, Token
from worker.keys import GROUP

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
SLOW_LEASE = {"lease_seconds": 30.0, "reclaim_interval_seconds": 0.2}  # a takeover cannot explain a fast end


class _StubbornBody(httpx.AsyncByteStream):
    """An upstream body whose reader, once cancelled, ignores the cancellation until released (as
    a library that swallows ``CancelledError`` while it cleans up would)."""

    def __init__(self, inner: httpx.AsyncByteStream, transport: _Stubborn) -> None:
        self.inner = inner
        self.transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            self.transport.holding.set()
            await self.transport.released.wait()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Stubborn(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.holding = asyncio.Event()
        self.released = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_StubbornBody(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_job_ignoring_its_cancellation_cannot_hold_the_stop(
    start_worker: StartWorker, client: Client
) -> None:
    stubborn = _Stubborn()
    grace, bound = 0.2, 0.5
    first = await start_worker(
        http=httpx.AsyncClient(transport=stubborn), drain_grace_seconds=grace, **SLOW_LEASE
    )
    first.worker.abandon_after = bound
    job_id = await client.enqueue(model="tokenwire/sim;tokens=80;tps=20", input="slow")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    [task] = first.worker.inflight
    await start_worker(**SLOW_LEASE)  # the peer the abandoned job is handed to

    with structlog.testing.capture_logs() as logs:
        # Unbounded, this waits until the body is released (only after the assertions below), so
        # the shutdown's own timeout is the test of the bound; no wall-clock assertion, which a
        # loaded machine stretches (5.72 s against 5.7 s seen with both cores busy).
        await first.shutdown(timeout=30.0)
    try:
        assert stubborn.holding.is_set(), "the job's task was never cancelled"
        assert not task.done(), "the task stopped by itself: nothing was abandoned"
        abandoned = [r for r in logs if r["event"] == "job did not stop when cancelled; abandoning it"]
        assert [(r["job_id"], r["waited"]) for r in abandoned] == [(job_id, bound)]
        assert any(r["event"] == "handed a job back for a peer" for r in logs)

        items = [item async for item in client.subscribe(job_id, timeout=60)]
        starts = [i.event.attempt for i in items if isinstance(i.event, Start)]
        assert starts == [1, 2] and isinstance(items[-1].event, Done) and items[-1].event.attempt == 2
    finally:
        stubborn.released.set()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await task


async def test_jobs_that_stop_when_cancelled_are_handed_back_without_the_wait(
    start_worker: StartWorker, client: Client
) -> None:
    """The bound is a limit, not a pause: cancelled jobs that stop at once end the drain at once."""
    first = await start_worker(drain_grace_seconds=0.2, **SLOW_LEASE)
    first.worker.abandon_after = 60.0
    job_id = await client.enqueue(model="tokenwire/sim;tokens=80;tps=20", input="slow")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    with structlog.testing.capture_logs() as logs:
        await first.shutdown(timeout=30.0)
    assert not any(r["event"] == "job did not stop when cancelled; abandoning it" for r in logs)
    assert any(r["event"] == "handed a job back for a peer" for r in logs)


async def test_a_forced_stop_cancels_the_jobs_and_hands_them_back(
    start_worker: StartWorker, client: Client
) -> None:
    """A second Ctrl-C cancels the worker's task while it drains (a 60 s grace here): its jobs must
    not run on without it (the demo's forced stop waited for its job to finish), and each is
    handed back, so a peer finishes it as a new attempt at once, not after the lease."""
    first = await start_worker(drain_grace_seconds=60.0, **SLOW_LEASE)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=400;tps=20", input="slow")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    [job_task] = first.worker.inflight
    with structlog.testing.capture_logs() as logs:
        first.stop.set()  # the graceful stop: the drain now waits up to 60 s for the job
        async with asyncio.timeout(10):
            while not any(r["event"] == "draining" for r in logs):
                await asyncio.sleep(0.01)
        first.task.cancel()  # the forced stop
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):  # 400 tokens at 20/s would take 20 s
                await first.task
    assert job_task.done(), "the job ran on after its worker was stopped"
    assert any(r["event"] == "handed a job back for a peer" for r in logs)
    await start_worker(**SLOW_LEASE)
    items = [item async for item in client.subscribe(job_id, timeout=60)]
    starts = [i.event.attempt for i in items if isinstance(i.event, Start)]
    assert starts == [1, 2] and isinstance(items[-1].event, Done)


async def test_a_job_whose_lease_was_lost_is_not_handed_back(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """A job already stopping on its own when the drain ends (here: its lease lost, another worker
    took its entry over, and its task is slow to stop) is another worker's: the drain waits for it
    but neither cancels it again nor hands it back. A hand-back acknowledged and deleted the entry
    the new owner holds (whose lease renewal then finds it gone: its healthy job ends with
    ``entry_deleted``) and added a second entry for the job."""
    stubborn = _Stubborn()
    first = await start_worker(
        http=httpx.AsyncClient(transport=stubborn), drain_grace_seconds=0.2, **SLOW_LEASE
    )
    first.worker.abandon_after = 0.5
    job_id = await client.enqueue(model="tokenwire/sim;tokens=80;tps=20", input="slow")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    keys = first.worker.keys
    [(entry_id, job)] = first.worker.jobs.items()
    # a peer's takeover (XAUTOCLAIM), then what the lease keeper does when its renewal sees it
    await redis.xclaim(keys.jobs, GROUP, "peer", 0, [entry_id], justid=True)
    first.worker._interrupt(entry_id, "fence")
    async with asyncio.timeout(10):
        await stubborn.holding.wait()  # the job's task is stopping, slowly
    entries_before = await redis.xlen(keys.jobs)
    try:
        with structlog.testing.capture_logs() as logs:
            await first.shutdown(timeout=30.0)
        assert not any(r["event"] == "handed a job back for a peer" for r in logs), logs
        pending: Any = await redis.xpending_range(keys.jobs, GROUP, min="-", max="+", count=10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_id.encode(), b"peer")]
        assert await redis.xlen(keys.jobs) == entries_before, "a second entry for the job"
    finally:
        stubborn.released.set()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await job.task


async def test_a_forced_stop_leaves_no_read_of_the_job_stream_behind(
    start_worker: StartWorker, redis: Redis
) -> None:
    """A worker cancelled while it waits for jobs (a forced stop when idle) stops its blocking read
    too: left running, the read went on blocking in Redis and took the next job as this (stopped)
    worker's, where nobody worked it until a peer's reclaim after the lease."""
    first = await start_worker(block_seconds=30.0, **SLOW_LEASE)

    async def blocked_reads() -> int:
        clients: Any = await redis.client_list()
        return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))

    async with asyncio.timeout(10):
        while not await blocked_reads():
            await asyncio.sleep(0.02)
    first.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await first.task
    async with asyncio.timeout(5):  # the read's connection is closed: Redis unblocks it at once
        while await blocked_reads():
            await asyncio.sleep(0.02)
