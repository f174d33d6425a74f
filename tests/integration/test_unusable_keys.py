"""A job whose keys Redis cannot run the job's scripts on is dead-lettered at its first delivery
(real redis-server, the real simulator, an in-process worker): its state hash replaced by a string,
its event stream by a hash, a state hash field no worker wrote (``attempt`` not a number), or the
state hash replaced while the job streams. Every script call on such a job fails on every delivery
(``WRONGTYPE``, a Lua runtime error), and so does the terminal ``error`` a dead letter writes first:
the entry was delivered again every lease, a traceback each time, and never left the queue (once
past ``max_deliveries`` the rejection's own terminal write failed the same way). Now the dead
letter (code ``job_keys_unusable``, Redis's error in the reason) alone records the end, at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from worker import Client, Done, Token
from worker.keys import Keys, as_text

from .conftest import RunningWorker, all_acked

pytestmark = pytest.mark.integration

BOUND = 10.0  # the default lease is 30 s: a dead letter within this came at the first delivery
StartWorker = Callable[..., Awaitable[RunningWorker]]


async def _dead(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(keys.dead)
    return [{as_text(k): as_text(v) for k, v in fields.items()} for _, fields in entries]


async def _wait_dead(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    async with asyncio.timeout(BOUND):
        while not (dead := await _dead(redis, keys)):
            await asyncio.sleep(0.02)
    return dead


async def _spoil(redis: Redis, keys: Keys, job_id: str, how: str) -> None:
    if how == "state_is_a_string":
        await redis.set(keys.state(job_id), "not a hash", px=60_000)
    elif how == "events_is_a_hash":
        await redis.hset(keys.events(job_id), "not", "a stream")
        await redis.pexpire(keys.events(job_id), 60_000)
    else:  # a state hash whose attempt no worker wrote
        await redis.hset(keys.state(job_id), mapping={"state": "queued", "attempt": "one"})
        await redis.pexpire(keys.state(job_id), 60_000)


@pytest.mark.parametrize("how", ["state_is_a_string", "events_is_a_hash"])
async def test_a_job_whose_keys_are_unusable_is_dead_lettered_at_once(
    start_worker: StartWorker, client: Client, redis: Redis, how: str
) -> None:
    keys = client.keys
    job_id = f"spoilt-{how}"
    await _spoil(redis, keys, job_id, how)
    with structlog.testing.capture_logs() as logs:
        running = await start_worker()
        entry = as_text(
            await redis.xadd(
                keys.jobs,
                {"job": b'{"id":"%s","model":"tokenwire/sim;tokens=5","input":"x"}' % job_id.encode()},
            )
        )
        healthy = await client.enqueue(model="tokenwire/sim;tokens=5", input="next to it")
        [record] = await _wait_dead(redis, keys)
        assert isinstance(await client.result(healthy, timeout=BOUND), Done)
        await all_acked(redis, keys.jobs, timeout=BOUND)
    assert (record["entry"], record["job_id"], record["code"]) == (entry, job_id, "job_keys_unusable")
    assert "WRONGTYPE" in record["reason"], record
    assert "no terminal event could be written" in record["reason"], record
    assert not [line for line in logs if line["event"].startswith("job crashed")], logs
    assert running.worker.metrics.takeovers._value.get() == 0  # delivered once
    assert not running.task.done() and running.worker.supervisor.down() is None


async def test_a_lua_runtime_error_is_redelivered_then_dead_lettered_without_a_terminal(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """A Lua runtime error may be a script's fault as well as the keys' (a field no worker wrote):
    not dead-lettered at once (a script bug would take every job), but delivered as a crashed job
    is, up to max_deliveries; then its dead letter's own terminal write, failing the same way, is
    given up on and the dead letter alone records the end."""
    keys = client.keys
    job_id = "spoilt-attempt-not-a-number"
    await _spoil(redis, keys, job_id, "attempt_not_a_number")
    running = await start_worker(lease_seconds=1.0, reclaim_interval_seconds=0.1, max_deliveries=2)
    body = b'{"id":"%s","model":"tokenwire/sim;tokens=5","input":"x"}' % job_id.encode()
    entry = as_text(await redis.xadd(keys.jobs, {"job": body}))
    [record] = await _wait_dead(redis, keys)
    assert (record["entry"], record["job_id"], record["code"]) == (entry, job_id, "max_deliveries_exceeded")
    assert "no terminal event could be written" in record["reason"], record
    assert "user_script" in record["reason"], record
    await all_acked(redis, keys.jobs, timeout=BOUND)
    assert not running.task.done() and running.worker.supervisor.down() is None


async def test_a_state_hash_replaced_while_the_job_streams_dead_letters_it(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """Its terminal meets the string (FINISH: WRONGTYPE), and so does the dead letter's terminal."""
    keys = client.keys
    running = await start_worker()
    job = await client.enqueue(model="tokenwire/sim;tokens=60;tps=50", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token) and item.event.index >= 2:
                break
    await redis.set(keys.state(job), "replaced", px=60_000)
    [record] = await _wait_dead(redis, keys)
    assert (record["job_id"], record["code"]) == (job, "job_keys_unusable")
    assert "WRONGTYPE" in record["reason"], record
    await all_acked(redis, keys.jobs, timeout=BOUND)
    assert not running.worker.jobs and not running.task.done()
