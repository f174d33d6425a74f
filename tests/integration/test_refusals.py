"""Redis refusing commands for a while is an outage, not a job failure (worker/refusals.py), on a
private redis-server per test: a script past ``busy-reply-threshold`` (``BUSY``), a restart loading
its dataset (``LOADING``), failed snapshots under ``stop-writes-on-bgsave-error`` (``MISCONF``). Each
outage outlasts two leases while a job streams; the job then ends with exactly one terminal event,
on its first delivery (``max_deliveries=1``: a redelivery would dead-letter it), nothing dead-lettered.
(``OOM`` has its own module, test_oom.py.)"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker import Client
from worker.events import decode_event, event_type, is_terminal
from worker.keys import GROUP, Keys
from worker.redisproc import RedisServer, redis_server_available
from worker.sim import SimConfig, serve

from .conftest import RunningWorker, all_acked, until

pytestmark = pytest.mark.integration

LEASE = 1.0
OUTAGE = 2.5 * LEASE  # how long each outage lasts, at least
TOKENS = 80  # ~3.2 s at 25 tokens/s: the job streams when the outage begins
BOUND = 20.0


class Servers:
    """The test's redis-server, which a test may replace (a restart on the same port)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current = RedisServer(directory=directory).start()

    def restart(self, *extra_args: str) -> None:
        """SIGKILL, then a new server on the same port and data directory (it loads dump.rdb)."""
        self.current.kill()
        self.current = RedisServer(port=self.current.port, directory=self.directory, extra_args=extra_args)
        self.current.start()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    directory = tmp_path / "redis"
    directory.mkdir()
    servers = Servers(directory)
    try:
        yield servers
    finally:
        servers.current.stop()


@pytest.fixture
def redis_url(servers: Servers) -> str:
    return servers.current.url


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with serve(SimConfig(seed=3, tokens_per_second=25)) as url:
        yield url


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    """A connection of the test's own, opened before any outage (redis-py's handshake on a new
    connection is refused during one)."""
    client = Redis.from_url(redis_url, single_connection_client=True)
    await client.ping()
    yield client
    await client.aclose()


async def errors(redis: Redis, code: str) -> int:
    stats: Any = await redis.info("errorstats")
    return int(stats.get(f"errorstat_{code}", {}).get("count", 0))


class Job:
    """One job started on a worker with a one-second lease, its deliveries counted at its ack."""

    def __init__(self, running: RunningWorker, redis: Redis, client: Client, prefix: str) -> None:
        self.running, self.redis, self.client, self.keys = running, redis, client, Keys(prefix)
        self.delivered_at_ack: list[int] = []
        self.id = ""
        queue = running.worker.queue
        ack = queue.ack

        async def counted_ack(entry_id: str) -> None:
            pending: Any = await redis.xpending_range(self.keys.jobs, GROUP, entry_id, entry_id, 1)
            self.delivered_at_ack += [int(p["times_delivered"]) for p in pending]
            await ack(entry_id)

        queue.ack = counted_ack  # type: ignore[method-assign]

    async def start(self) -> None:
        self.id = await self.client.enqueue(model="m", input="a job", params={"max_tokens": TOKENS})

        async def streaming() -> bool:
            return int(await self.redis.xlen(self.keys.events(self.id))) >= 3

        await until(streaming, "the job streams", timeout=BOUND)

    async def ended_once(self) -> None:
        """One start, one terminal (done), the first delivery acked, no dead letter, no takeover."""
        await self.client.result(self.id, timeout=BOUND)
        entries: Any = await self.redis.xrange(self.keys.events(self.id))
        kinds = [event_type(decode_event(f[b"event"])) for _, f in entries]
        assert [k for k in kinds if is_terminal({"type": k})] == ["done"] and kinds[-1] == "done", kinds
        assert kinds.count("start") == 1, kinds
        await all_acked(self.redis, self.keys.jobs, timeout=BOUND)
        assert self.delivered_at_ack == [1]
        assert await self.redis.xlen(self.keys.dead) == 0
        metrics = self.running.worker.metrics
        assert metrics.takeovers._value.get() == 0 and metrics.leases_lost._value.get() == 0


@pytest.fixture
async def job(
    start_worker: Callable[..., Awaitable[RunningWorker]], redis: Redis, client: Client, prefix: str
) -> Job:
    running = await start_worker(lease_seconds=LEASE, reclaim_interval_seconds=0.2, max_deliveries=1)
    return Job(running, redis, client, prefix)


async def busy_script(redis_url: str, admin: Redis, during: Callable[[], Awaitable[None]]) -> None:
    """A script busy past ``busy-reply-threshold`` for :data:`OUTAGE` seconds, then killed; ``during``
    runs once it has started (the outage's length is the point of the sleep: Redis answers nothing
    else meanwhile)."""
    await admin.config_set("busy-reply-threshold", 100)
    runner = Redis.from_url(redis_url, single_connection_client=True)
    try:
        await runner.ping()
        script: Any = runner.eval("while true do end", 0)
        busy: asyncio.Task[Any] = asyncio.create_task(script)
        await during()
        await asyncio.sleep(OUTAGE)
        await admin.script_kill()
        with pytest.raises(ResponseError, match="killed"):
            await busy
    finally:
        await runner.aclose()


async def test_a_job_outlasts_a_script_busy_past_the_threshold(job: Job, admin: Redis) -> None:
    await job.start()
    before = await errors(admin, "BUSY")

    async def nothing() -> None:
        return None

    await busy_script(job.running.worker.settings.redis_url, admin, nothing)
    assert await errors(admin, "BUSY") >= before + 3  # the worker's steps were refused
    await job.ended_once()


async def test_a_job_outlasts_a_restarted_redis_loading_its_dataset(
    job: Job, admin: Redis, servers: Servers
) -> None:
    for start in range(0, 40_000, 2_000):
        await admin.mset({f"filler:{n}": b"x" for n in range(start, start + 2_000)})
    await job.start()
    await admin.client_pause(30_000, all=False)  # WRITE: nothing lands between the SAVE and the kill
    await admin.save()
    # 40,000 keys at 50 us each: ~2 s of LOADING replies (events handled every KiB loaded)
    servers.restart("--key-load-delay", "50", "--loading-process-events-interval-bytes", "1024")
    info = Redis.from_url(servers.current.url)
    try:

        async def loaded() -> bool:
            persistence: Any = await info.info("persistence")
            return int(persistence["loading"]) == 0

        await until(loaded, "Redis has loaded its dataset", timeout=BOUND)
        assert await errors(info, "LOADING") >= 3  # the worker's steps were refused
    finally:
        await info.aclose()
    await job.ended_once()


async def test_a_job_outlasts_writes_refused_for_failed_snapshots(
    job: Job, admin: Redis, servers: Servers
) -> None:
    """The data directory removed under Redis: no snapshot can be written, even by root."""
    await admin.config_set("save", "3600 1")  # MISCONF needs save points
    await job.start()
    shutil.rmtree(servers.directory)
    await admin.bgsave()

    async def failed() -> bool:
        persistence: Any = await admin.info("persistence")
        return bool(
            persistence["rdb_bgsave_in_progress"] == 0 and persistence["rdb_last_bgsave_status"] == "err"
        )

    await until(failed, "the snapshot failed", timeout=BOUND)
    loop = asyncio.get_running_loop()
    since, before = loop.time(), await errors(admin, "MISCONF")

    async def held() -> bool:  # reads are served: the worker's refused writes can be counted
        return loop.time() - since >= OUTAGE and await errors(admin, "MISCONF") >= before + 3

    await until(held, "the worker's writes were refused for the outage's length", timeout=BOUND)
    assert (await job.client.status(job.id)).state == "running"  # type: ignore[union-attr]
    await admin.config_set("stop-writes-on-bgsave-error", "no")  # the operator's way out
    await job.ended_once()
    await admin.config_set("save", "")  # else its shutdown, unable to save, would not stop it


async def test_busy_workers_take_over_no_live_job_after_an_outage(
    start_worker: Callable[..., Awaitable[RunningWorker]],
    redis: Redis,
    client: Client,
    prefix: str,
    admin: Redis,
) -> None:
    """Two workers at full concurrency try no claim during the outage; the one whose job ends first
    must still not claim the other's live job, idle past its lease only because nobody could renew."""
    keys = Keys(prefix)
    options = {
        "lease_seconds": LEASE,
        "reclaim_interval_seconds": 0.05,
        "max_deliveries": 3,
        "concurrency": 1,
    }
    workers = [await start_worker(**options), await start_worker(**options)]
    short = await client.enqueue(model="m", input="short", params={"max_tokens": 20})
    long = await client.enqueue(model="m", input="long", params={"max_tokens": 250})

    async def streaming() -> bool:
        return all([int(await redis.xlen(keys.events(j))) >= 3 for j in (short, long)])

    await until(streaming, "both jobs stream", timeout=BOUND)
    assert [w.worker.free for w in workers] == [0, 0]

    async def both_held_off() -> None:  # from their refused renewals: neither tries a claim
        async def troubled() -> bool:
            return all(w.worker.leases.gate.troubled for w in workers)

        await until(troubled, "both workers hold their claims off", timeout=BOUND)

    await busy_script(workers[0].worker.settings.redis_url, admin, both_held_off)
    assert not any(w.worker.leases.gate.open() for w in workers)  # and for a renewal round after
    for job in (short, long):
        await client.result(job, timeout=BOUND)
        entries: Any = await redis.xrange(keys.events(job))
        kinds = [event_type(decode_event(f[b"event"])) for _, f in entries]
        assert kinds.count("start") == 1 and kinds[-1] == "done", kinds
    metrics = [w.worker.metrics for w in workers]
    assert [m.takeovers._value.get() for m in metrics] == [0, 0]
    assert [m.leases_lost._value.get() for m in metrics] == [0, 0]
