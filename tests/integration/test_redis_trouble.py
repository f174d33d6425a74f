"""A running job under Redis trouble the fault suite does not deal (real redis-server, the real
simulator, an in-process worker with a one-second lease): each job ends with exactly one terminal
event, nothing is left pending, and the worker serves the next job.

- Its entry left pending to nobody (an operator's ``XACK`` or ``XGROUP DELCONSUMER``, the group
  destroyed and created again at ``$``): no consumer can claim it and the group has delivered past
  it. The renewal took that for "another worker owns it", the job stopped silently and stayed
  ``running`` with no terminal, for good; now it goes on and ends itself.
- The group destroyed (the worker creates it again from the start of the stream), the job's state
  hash or event stream deleted, Redis paused (``CLIENT PAUSE``) for longer than the lease, Redis
  restarted empty (no persistence): the job ends once (a new attempt where its keys were lost), or,
  with every key gone, writes nothing that would re-create one, and the worker is ready again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from worker import Client, Done, Token
from worker.client import JobNotFound
from worker.connect import redis_client
from worker.events import decode_event, event_type
from worker.keys import GROUP, as_text
from worker.redisproc import RedisServer

from .conftest import RunningWorker, all_acked

pytestmark = pytest.mark.integration

BOUND = 15.0
StartWorker = Callable[..., Awaitable[RunningWorker]]
FAST = {"lease_seconds": 1.0, "reclaim_interval_seconds": 0.1}
TERMINALS = ("done", "error", "cancelled")


async def _streaming(client: Client, job: str) -> None:
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token) and item.event.index >= 2:
                return


async def _ended(client: Client, job: str) -> list[tuple[str, str]]:
    """Once the job's state is terminal and its entry acknowledged: its events' (id, type) but tokens."""
    async with asyncio.timeout(BOUND):
        while (status := await client.status(job)) is None or status.state not in TERMINALS:
            await asyncio.sleep(0.02)
    await all_acked(client.redis, client.keys.jobs, timeout=BOUND)
    raw: Any = await client.redis.xrange(client.keys.events(job))
    events = [(as_text(entry_id), event_type(decode_event(fields[b"event"]))) for entry_id, fields in raw]
    return [(entry_id, kind) for entry_id, kind in events if kind != "token"]


async def _serves_the_next_job(client: Client) -> None:
    job = await client.enqueue(model="tokenwire/sim;tokens=5", input="next")
    assert isinstance(await client.result(job, timeout=BOUND), Done)


@pytest.mark.parametrize("orphan", ["xack", "delconsumer", "group_created_again_at_dollar"])
async def test_a_job_whose_entry_is_left_pending_to_nobody_goes_on_and_ends_once(
    start_worker: StartWorker, client: Client, redis: Redis, orphan: str
) -> None:
    running = await start_worker(**FAST)
    keys = client.keys
    job = await client.enqueue(model="tokenwire/sim;tokens=100;tps=50", input="x")  # 2 s
    await _streaming(client, job)
    status = await client.status(job)
    assert status is not None and status.entry is not None
    if orphan == "xack":
        assert await redis.xack(keys.jobs, GROUP, status.entry) == 1
    elif orphan == "delconsumer":
        assert await redis.xgroup_delconsumer(keys.jobs, GROUP, running.worker.consumer) == 1
    else:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xgroup_destroy(keys.jobs, GROUP)
            pipe.xgroup_create(keys.jobs, GROUP, id="$")
            await pipe.execute()
    assert await _ended(client, job) == [("1-0", "start"), ("1-102", "done")]
    async with asyncio.timeout(BOUND):  # its ack, which follows the done, deletes the entry
        while await redis.xlen(keys.jobs):
            await asyncio.sleep(0.02)
    assert running.worker.metrics.leases_lost._value.get() == 0
    await _serves_the_next_job(client)


async def test_a_group_destroyed_mid_job_is_created_again_and_the_job_ends_once(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    running = await start_worker(**FAST)
    job = await client.enqueue(model="tokenwire/sim;tokens=100;tps=50", input="x")
    await _streaming(client, job)
    assert await redis.xgroup_destroy(client.keys.jobs, GROUP) == 1
    events = await _ended(client, job)
    assert [kind for _, kind in events].count("done") == 1 and events[-1][1] == "done", events
    assert not running.task.done()
    await _serves_the_next_job(client)


@pytest.mark.parametrize("lost", ["state_hash", "event_stream"])
async def test_a_job_key_deleted_mid_job_runs_again_and_ends_once(
    start_worker: StartWorker, client: Client, redis: Redis, lost: str
) -> None:
    """Its terminal (state hash gone: FINISH fenced) or its next token (stream gone: NOMKSTREAM)
    stops the attempt without an ack; the entry, idle a lease, is taken again: attempt 2."""
    await start_worker(**FAST)
    job = await client.enqueue(model="tokenwire/sim;tokens=50;tps=50", input="x")
    await _streaming(client, job)
    key = client.keys.state(job) if lost == "state_hash" else client.keys.events(job)
    assert await redis.delete(key) == 1
    events = await _ended(client, job)
    assert [kind for _, kind in events].count("done") == 1, events
    assert events[-1] == ("2-52", "done") and ("2-0", "start") in events, events
    for key in (client.keys.state(job), client.keys.events(job)):
        assert int(await redis.pttl(key)) > 0


async def test_redis_paused_past_the_lease_the_job_ends_once(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """``CLIENT PAUSE`` (every command waits) for 2.5 leases: the worker's own reclaim then finds
    its running job's entry idle past the lease and claims it; that is no takeover."""
    running = await start_worker(**FAST)
    job = await client.enqueue(model="tokenwire/sim;tokens=100;tps=50", input="x")
    await _streaming(client, job)
    with structlog.testing.capture_logs() as logs:
        await redis.execute_command("CLIENT", "PAUSE", 2500, "ALL")  # type: ignore[no-untyped-call]
        events = await _ended(client, job)
    assert [kind for _, kind in events].count("done") == 1 and events[-1][1] == "done", events
    assert running.worker.metrics.takeovers._value.get() == 0
    assert not [line for line in logs if line["event"] == "took over an abandoned job"], logs
    await _serves_the_next_job(client)


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, without persistence, to restart empty."""
    with RedisServer() as server:
        yield server


async def test_redis_restarted_empty_mid_job_the_worker_recovers(
    own_server: RedisServer, start_worker: StartWorker, prefix: str
) -> None:
    """Every key is gone (the queue, the group, the job's keys, the scripts): the job's next write
    finds its stream gone and stops (nothing re-creates a job key), the worker creates the group
    again, reports ready and serves the next job, without an error loop in its log."""
    redis = redis_client(own_server.url)
    client = Client(redis_client(own_server.url, block_seconds=2.0), prefix=prefix, block_ms=500)
    try:
        with structlog.testing.capture_logs() as logs:
            running = await start_worker(redis_url=own_server.url, **FAST)
            job = await client.enqueue(model="tokenwire/sim;tokens=100;tps=50", input="x")
            await _streaming(client, job)
            assert own_server.process is not None and own_server.process.stderr is not None
            own_server.kill()
            own_server.process.stderr.close()
            own_server.process = (
                RedisServer(port=own_server.port, directory=own_server.directory).start().process
            )

            async def job_stopped() -> bool:
                return not running.worker.jobs

            async with asyncio.timeout(BOUND):
                while not await job_stopped():
                    await asyncio.sleep(0.02)
            await _serves_the_next_job(client)
            assert await running.worker._not_ready() is None
        assert await client.status(job) is None
        with pytest.raises(JobNotFound):
            await client.result(job, timeout=1.0)
        async for key in redis.scan_iter(match=f"{prefix}:job:*"):
            assert int(await redis.pttl(key)) > 0, key
        assert not running.task.done() and running.worker.supervisor.down() is None
        warnings = [line for line in logs if line["log_level"] in ("warning", "error")]
        assert len(warnings) < 30, warnings
    finally:
        await client.aclose()
        await redis.aclose()
