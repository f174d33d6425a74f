"""The coalescer's contract on fakeredis: calls of one loop turn share a round trip, each caller gets
its own reply or error, a lone call is not held back, NOSCRIPT reloads, and the job store and queue
give the same answers through it as without it."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.unit.dying_cluster import DiesMidRead
from worker.coalesce import Coalescer
from worker.events import Error, Start
from worker.keys import GROUP, Keys, as_text
from worker.queue import JobQueue
from worker.store import JobStore

ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('ERR bad ' .. KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


async def test_one_turn_one_batch_each_its_own_reply_or_error() -> None:
    redis = fakeredis.FakeAsyncRedis()
    coalescer = Coalescer(redis)
    script = redis.register_script(ECHO)
    values = ["bad" if i % 3 == 0 else f"v{i}" for i in range(9)]
    got = await asyncio.gather(
        *(coalescer.run(script, [f"k{i}"], [v]) for i, v in enumerate(values)), return_exceptions=True
    )
    for i, (value, result) in enumerate(zip(values, got, strict=True)):
        if value == "bad":
            assert isinstance(result, ResponseError) and str(result) == f"bad k{i}"
        else:
            assert result == value.encode()
    assert (coalescer.batches, coalescer.calls) == (1, 9)
    await coalescer.aclose()


async def test_a_lone_call_goes_out_and_later_turns_batch_apart() -> None:
    redis = fakeredis.FakeAsyncRedis()
    coalescer = Coalescer(redis)
    script = redis.register_script(ECHO)
    assert await coalescer.run(script, ["a"], ["1"]) == b"1"
    assert await coalescer.run(script, ["b"], ["2"]) == b"2"
    assert coalescer.batches == 2
    await coalescer.aclose()


async def test_noscript_loads_the_script_again() -> None:
    redis = fakeredis.FakeAsyncRedis()
    coalescer = Coalescer(redis)
    script = redis.register_script(ECHO)
    await redis.script_flush()
    assert list(
        await asyncio.gather(coalescer.run(script, ["a"], ["x"]), coalescer.run(script, ["b"], ["y"]))
    ) == [
        b"x",
        b"y",
    ]
    assert await redis.get("a") == b"x"
    await coalescer.aclose()


async def test_an_unencodable_argument_fails_its_caller_only() -> None:
    redis = fakeredis.FakeAsyncRedis()
    coalescer = Coalescer(redis)
    script = redis.register_script(ECHO)
    got: list[Any] = list(
        await asyncio.gather(
            coalescer.run(script, ["a"], ["x"]), coalescer.run(script, ["b"], [None]), return_exceptions=True
        )
    )
    good, bad = got
    assert good == b"x"
    assert isinstance(bad, Exception) and "NoneType" in str(bad)
    await coalescer.aclose()


@pytest.mark.parametrize(
    "error", [RedisConnectionError("Connection closed by server."), RedisTimeoutError("Timeout reading")]
)
async def test_calls_whose_replies_a_dead_connection_lost_run_again_alone(error: Exception) -> None:
    redis = fakeredis.FakeAsyncRedis()
    script = redis.register_script(ECHO)
    await script(keys=["warm"], args=["up"])  # loaded: the pipeline's EVALSHA finds it
    cluster = DiesMidRead(redis, answered=2, error=error)
    coalescer = Coalescer(cluster)  # type: ignore[arg-type]
    values = ["v0", "bad", "v2", "v3", "v4"]
    got = await asyncio.gather(
        *(coalescer.run(script, [f"k{i}"], [v]) for i, v in enumerate(values)), return_exceptions=True
    )
    assert got[0] == b"v0"
    assert isinstance(got[1], ResponseError) and str(got[1]) == "bad k1"  # its own reply: not run again
    assert got[2:] == [b"v2", b"v3", b"v4"]  # lost with the connection: each run again, alone
    assert [await redis.get(f"k{i}") for i in (0, 2, 3, 4)] == [b"v0", b"v2", b"v3", b"v4"]
    assert (coalescer.batches, coalescer.reissued) == (1, 1)
    await coalescer.aclose()


class _Level(enum.IntEnum):
    HIGH = 7


async def test_every_argument_is_sent_as_the_script_call_would_send_it() -> None:
    """Exact str, bytes, int and float are packed by hiredis, anything else by redis-py's encoder:
    each value reaches the script as the uncoalesced call sends it, and a bool fails as it does."""
    redis = fakeredis.FakeAsyncRedis()
    coalescer = Coalescer(redis)
    script = redis.register_script(ECHO)
    values: list[Any] = ["é ü", b"\x00\xff", 0, -12, 10**30, 0.1, 1e20, float("inf"), _Level.HIGH, True]
    got = await asyncio.gather(
        *(coalescer.run(script, [f"k{i}"], [v]) for i, v in enumerate(values)), return_exceptions=True
    )
    alone = await asyncio.gather(
        *(script(keys=[f"alone{i}"], args=[v]) for i, v in enumerate(values)), return_exceptions=True
    )
    for value, ours, theirs in zip(values, got, alone, strict=True):
        if isinstance(theirs, Exception):
            assert type(ours) is type(theirs) and str(ours) == str(theirs), value
        else:
            assert ours == theirs, value
    assert isinstance(got[-1], DataError)  # a bool, as redis-py refuses it
    await coalescer.aclose()


@pytest.mark.parametrize("coalesced", [False, True])
async def test_store_and_queue_answer_the_same_through_it(coalesced: bool) -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys("t")
    coalescer = Coalescer(redis) if coalesced else None
    store = JobStore(redis, keys, coalescer=coalescer)
    queue = JobQueue(redis, redis, keys, "c1", dead_maxlen=10, check_permissions=False, coalescer=coalescer)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    entry = as_text(await redis.xadd(keys.jobs, {"job": b"{}"}))
    await redis.xreadgroup(GROUP, "c1", {keys.jobs: ">"}, count=1)
    assert (await store.create("j1", "m", "native", "sim"))[0] == "new"
    start = Start(job_id="j1", attempt=0, model="m", api="native", provider="sim")
    first, second = await asyncio.gather(  # a redelivery's begin takes the job over
        store.begin("j1", entry, "c1", start), store.begin("j1", entry, "c1", start)
    )
    assert (first.outcome, first.attempt, second.outcome, second.attempt) == ("started", 1, "started", 2)
    stale = Error(job_id="j1", attempt=1, code="x", message="stale", metadata={})
    current = Error(job_id="j1", attempt=2, code="x", message="current", metadata={})
    assert list(
        await asyncio.gather(store.finish("j1", 1, 1, stale, {}), store.finish("j1", 2, 1, current, {}))
    ) == [
        "fenced",
        "ok",
    ]
    await queue.ack(entry)
    assert await redis.xlen(keys.jobs) == 0
    if coalescer is not None:
        assert coalescer.batches == 3  # the two begins together, the two finishes, the ack
        await coalescer.aclose()
