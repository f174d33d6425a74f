"""Leases, takeover, fencing, retries, cancellation and drain, with in-process workers on a real
redis-server and the simulator (the process-level faults live in tests/faults)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from worker import Cancelled, Client, Done, Error, Job, JobStatus, Start, Token
from worker.client import Received
from worker.keys import GROUP, Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """These tests run on a single redis-server and on a real three-master Redis Cluster."""
    return str(request.param)


StartWorker = Callable[..., Awaitable[RunningWorker]]
FAST = {
    "lease_seconds": 1.0,
    "reclaim_interval_seconds": 0.2,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
}


async def collect(client: Client, job_id: str, timeout: float = 30) -> list[Received]:
    return [item async for item in client.subscribe(job_id, timeout=timeout)]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def state_of(client: Client, job_id: str) -> JobStatus:
    status = await client.status(job_id)
    assert status is not None, f"no job {job_id!r}"
    return status


async def sim_stats(sim_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        return dict((await http.get(f"{sim_url}/stats")).json())


async def test_a_job_abandoned_by_a_dead_consumer_is_taken_over(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    keys = Keys(client.keys.prefix)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=10", input="orphan")
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "ghost-consumer", {keys.jobs: ">"}, count=1)  # it dies holding it
    await start_worker(**FAST)
    items = await collect(client, job_id)
    assert isinstance(items[-1].event, Done)

    async def acked() -> bool:
        return bool((await redis.xpending(keys.jobs, GROUP))["pending"] == 0)

    await wait_for(acked)  # the ack follows the terminal event


async def test_a_job_delivered_too_often_is_dead_lettered(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    keys = Keys(client.keys.prefix)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=10", input="poison")
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    reply: Any = await redis.xreadgroup(GROUP, "ghost-1", {keys.jobs: ">"}, count=1)
    entry = reply[0][1][0][0]
    await redis.xclaim(keys.jobs, GROUP, "ghost-2", 0, [entry])  # delivery 2, and it dies again
    await redis.xclaim(keys.jobs, GROUP, "ghost-3", 0, [entry])  # delivery 3
    await start_worker(max_deliveries=3, **FAST)  # its reclaim would be delivery 4
    items = await collect(client, job_id)
    assert len(items) == 1 and isinstance(items[0].event, Error)
    assert items[0].event.code == "max_deliveries_exceeded" and "max_deliveries=3" in items[0].event.message
    async with asyncio.timeout(10):  # the terminal is written first, then the entry dead-lettered
        while not await redis.xlen(keys.dead):
            await asyncio.sleep(0.02)
    dead: Any = await redis.xrange(keys.dead)
    assert [f[b"code"] for _, f in dead] == [b"max_deliveries_exceeded"]
    assert dead[0][1][b"job_id"].decode() == job_id


async def test_a_worker_that_lost_its_lease_stops_writing_and_the_job_runs_again(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    keys = Keys(client.keys.prefix)
    await start_worker(**FAST)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=150;tps=50", input="steal me")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token) and item.event.index >= 3:
                break
    entry = (await state_of(client, job_id)).entry
    assert entry is not None
    await redis.xclaim(keys.jobs, GROUP, "thief", 0, [entry])  # a peer took it over
    items = await collect(client, job_id, timeout=40)
    starts = [i for i in items if isinstance(i.event, Start)]
    assert [s.event.attempt for s in starts] == [1, 2] and starts[1].restarted
    second = items.index(starts[1])
    assert all(i.event.attempt == 2 for i in items[second:])  # nothing from attempt 1 after it
    assert isinstance(items[-1].event, Done) and items[-1].event.attempt == 2


@pytest.mark.parametrize(
    ("directives", "starts"),
    [
        ("fault=status;status=503;fail_first=2", 1),  # retried before any token: the same attempt
        ("fault=status;status=429;retry_after=0.3;fail_first=1", 1),
        ("fault=disconnect;after=5;fail_first=1", 2),  # tokens were published: a new attempt
        ("fault=stall;after=3;fail_first=1", 2),
    ],
)
async def test_retryable_upstream_failures_are_retried(
    start_worker: StartWorker, client: Client, directives: str, starts: int
) -> None:
    await start_worker(stall_timeout_seconds=1.0, **FAST)
    began = time.monotonic()
    job_id = await client.enqueue(model=f"tokenwire/sim;tokens=12;{directives}", input="retry")
    items = await collect(client, job_id)
    done = items[-1].event
    assert isinstance(done, Done), done
    start_events = [i.event for i in items if isinstance(i.event, Start)]
    assert len(start_events) == starts
    if starts == 2:
        assert start_events[1].reason is not None and start_events[1].reason.startswith("retry after")
    if "retry_after" in directives:
        assert time.monotonic() - began >= 0.3


async def test_other_4xx_are_not_retried(start_worker: StartWorker, client: Client, sim_url: str) -> None:
    await start_worker(**FAST)
    model = "tokenwire/sim;fault=status;status=400;tokens=5"
    job_id = await client.enqueue(model=model, input="bad")
    items = await collect(client, job_id)
    assert len([i for i in items if isinstance(i.event, Error)]) == 1
    assert isinstance(items[-1].event, Error) and items[-1].event.code == "bad_request"
    assert (await sim_stats(sim_url))["requests"][model] == 1


async def test_retries_stop_at_max_attempts(start_worker: StartWorker, client: Client, sim_url: str) -> None:
    await start_worker(max_attempts=3, **FAST)
    model = "tokenwire/sim;fault=status;status=503;tokens=5"
    job_id = await client.enqueue(model=model, input="always down")
    items = await collect(client, job_id)
    error = items[-1].event
    assert isinstance(error, Error) and error.code == "upstream_unavailable"
    assert "max_attempts=3" in error.message
    assert (await sim_stats(sim_url))["requests"][model] == 3


async def test_cancel_a_running_job_closes_upstream_within_a_second(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    await start_worker(**FAST)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=500;tps=50", input="long")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    asked = time.monotonic()
    assert await client.cancel(job_id, "user pressed stop") == "requested"
    items = await collect(client, job_id)
    assert time.monotonic() - asked < 1.0
    last = items[-1].event
    assert isinstance(last, Cancelled) and last.reason == "user pressed stop"
    assert (await state_of(client, job_id)).state == "cancelled"
    await wait_for(lambda: _no_active_streams(sim_url), timeout=5)
    assert await client.cancel(job_id) == "terminal"


async def _no_active_streams(sim_url: str) -> bool:
    return bool((await sim_stats(sim_url))["active_streams"] == 0)


async def test_cancel_a_queued_job_ends_it_at_once(client: Client) -> None:
    job_id = await client.enqueue(Job(model="m", input="never runs"))
    assert await client.cancel(job_id) == "cancelled"
    items = await collect(client, job_id, timeout=5)
    assert len(items) == 1 and isinstance(items[0].event, Cancelled)
    assert await client.cancel("no-such-job") == "unknown"


async def test_drain_hands_unfinished_jobs_to_a_peer_at_once(
    start_worker: StartWorker, client: Client
) -> None:
    slow_lease = {**FAST, "lease_seconds": 30.0}  # "at once" must beat a lease by far
    first = await start_worker(drain_grace_seconds=0.3, **slow_lease)
    quick = await client.enqueue(model="tokenwire/sim;tokens=5", input="quick")
    assert isinstance((await collect(client, quick))[-1].event, Done)
    long_job = await client.enqueue(model="tokenwire/sim;tokens=60;tps=40", input="long")
    async with asyncio.timeout(10):
        async for item in client.subscribe(long_job):
            if isinstance(item.event, Token):
                break
    await start_worker(**slow_lease)
    stopped = time.monotonic()
    await first.shutdown()
    items = await collect(client, long_job)
    starts = [i.event for i in items if isinstance(i.event, Start)]
    assert [s.attempt for s in starts] == [1, 2]
    assert isinstance(items[-1].event, Done) and items[-1].event.attempt == 2
    assert time.monotonic() - stopped < 15  # far less than the 30 s lease
