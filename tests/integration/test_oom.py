"""Redis out of memory (maxmemory + noeviction, filled while jobs stream) is an outage, not a job
failure: the jobs wait with their leases kept, none is dead-lettered or redelivered for it, and once
memory is freed every job ends with exactly one terminal event and nothing is left pending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from worker import Client
from worker.events import decode_event, event_type, is_terminal
from worker.keys import GROUP, Keys
from worker.lease import LeaseKeeper
from worker.redisproc import RedisServer, redis_server_available
from worker.sim import SimConfig, serve

from .conftest import RunningWorker, all_acked, until

pytestmark = pytest.mark.integration

JOBS = 20
TOKENS = 60
LEASE = 2.0
BOUND = 90.0
MAXMEMORY = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def oom_server() -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    args = ["--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"]
    with RedisServer(extra_args=args) as server:
        yield server


@pytest.fixture
def redis_url(oom_server: RedisServer) -> str:
    return oom_server.url


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with serve(SimConfig(seed=3, tokens_per_second=25)) as url:  # paced: ~2.4 s a job
        yield url


async def oom_refusals(redis: Redis) -> int:
    stats: Any = await redis.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def fill(redis: Redis) -> list[str]:
    """Write filler keys until Redis refuses a write for memory, then lower ``maxmemory`` 2 MB
    under what is used so that every later write is refused (at the limit itself, the ups and
    downs of client buffers let some writes through); the fillers' names."""
    names: list[str] = []
    for size in (256 * 1024, 16 * 1024):  # (a large value's own query buffer counts in its check)
        for _ in range(10_000):
            name = f"filler:{len(names)}"
            try:
                await redis.set(name, b"x" * size)
            except OutOfMemoryError:
                break
            names.append(name)
        else:
            raise AssertionError("Redis never ran out of memory: is maxmemory set?")
    used: Any = await redis.info("memory")
    await redis.config_set("maxmemory", int(used["used_memory"]) - 2 * 1024 * 1024)
    return names


async def free(redis: Redis, names: list[str]) -> None:
    """Delete the fillers and restore ``maxmemory``."""
    await redis.config_set("maxmemory", MAXMEMORY)
    for start in range(0, len(names), 1000):
        await redis.delete(*names[start : start + 1000])


async def test_jobs_outlast_redis_running_out_of_memory(
    start_worker: Callable[..., Awaitable[RunningWorker]], client: Client, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    running = await start_worker(lease_seconds=LEASE, reclaim_interval_seconds=0.2, max_deliveries=2)
    ids = [
        await client.enqueue(model="m", input=f"job {i}", params={"max_tokens": TOKENS}) for i in range(JOBS)
    ]

    async def streaming() -> bool:  # every job has begun and written tokens
        lengths = [await redis.xlen(keys.events(i)) for i in ids]
        return all(n >= 3 for n in lengths)

    await until(streaming, "every job streams", timeout=BOUND)
    fillers = await fill(redis)
    try:
        refused_at_fill = await oom_refusals(redis)
        loop = asyncio.get_running_loop()
        since = loop.time()

        async def outage_held() -> bool:  # the worker's writes keep being refused for two leases
            return await oom_refusals(redis) > refused_at_fill + 3 and loop.time() - since > 2 * LEASE

        await until(outage_held, "the worker's writes were refused for two leases", timeout=BOUND)
        assert running.worker.metrics.leases_lost._value.get() == 0
        assert running.worker.metrics.takeovers._value.get() == 0
        assert await redis.xlen(keys.dead) == 0
        for job_id in ids:  # each waits, neither failed nor ended
            state = await client.status(job_id)
            assert state is not None and state.state == "running", (job_id, state)
    finally:
        await free(redis, fillers)

    for job_id in ids:
        await client.result(job_id, timeout=BOUND)
    for job_id in ids:
        entries: Any = await redis.xrange(keys.events(job_id))
        kinds = [event_type(decode_event(f[b"event"])) for _, f in entries]
        ends = [k for k in kinds if is_terminal({"type": k})]
        assert ends == ["done"], f"{job_id}: {ends}"
        assert kinds[-1] == "done", f"{job_id}: events after its terminal"
        assert kinds.count("start") == 1, f"{job_id} was run again: {kinds.count('start')} starts"
        state = await client.status(job_id)
        assert state is not None and state.state == "done"
    await all_acked(redis, keys.jobs)  # the ack follows the done
    assert await redis.xlen(keys.dead) == 0
    assert running.worker.metrics.takeovers._value.get() == 0


async def test_lease_renewals_succeed_while_redis_is_out_of_memory(redis: Redis, prefix: str) -> None:
    """XCLAIM is not denyoom: the renewal script runs (and keeps the lease) under OOM."""
    keys = Keys(prefix)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    entry: Any = await redis.xadd(keys.jobs, {"job": b"{}"})
    await redis.xreadgroup(GROUP, "me", {keys.jobs: ">"})
    keeper = LeaseKeeper(redis, keys, "me", lease_seconds=30.0)
    lost: list[str] = []
    keeper.hold(entry.decode(), lambda: lost.append("lost"))
    fillers = await fill(redis)
    try:
        with pytest.raises(OutOfMemoryError):
            await redis.xadd(keys.jobs, {"job": b"{}"})  # still out of memory
        before = await oom_refusals(redis)
        assert await keeper.renew_once() == [] and lost == []
        assert await oom_refusals(redis) == before  # the renewal itself was not refused
        info: Any = await redis.xpending_range(keys.jobs, GROUP, "-", "+", 1)
        assert info[0]["consumer"] == b"me" and info[0]["times_delivered"] == 1
    finally:
        await free(redis, fillers)
