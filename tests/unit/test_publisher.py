"""The publisher's batching contract, on fakeredis (no stream-semantics questions here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.unit.dying_cluster import DiesMidRead
from worker.publisher import Publisher, Sink


@pytest.fixture
async def running() -> AsyncIterator[tuple[Publisher, list[int], fakeredis.FakeAsyncRedis]]:
    redis = fakeredis.FakeAsyncRedis()
    sizes: list[int] = []
    pub = Publisher(redis, maxlen=1000, on_batch=lambda count, _oldest: sizes.append(count))
    task = asyncio.create_task(pub.run())
    yield pub, sizes, redis
    task.cancel()
    await redis.aclose()


async def test_events_emitted_together_share_one_round_trip(
    running: tuple[Publisher, list[int], fakeredis.FakeAsyncRedis],
) -> None:
    pub, sizes, redis = running
    a, b = Sink("a"), Sink("b")
    for seq in range(1, 6):  # one upstream read's events, and another job's, in one loop turn
        pub.emit(a, b"1-%d" % seq, b"x")
    pub.emit(b, b"1-1", b"y")
    async with asyncio.timeout(5):
        await pub.drained(a)
        await pub.drained(b)
    assert sizes == [6]
    assert await redis.xlen("a") == 5 and await redis.xlen("b") == 1


async def test_a_lone_event_is_written_without_waiting_for_company(
    running: tuple[Publisher, list[int], fakeredis.FakeAsyncRedis],
) -> None:
    pub, sizes, redis = running
    sink = Sink("lone")
    pub.emit(sink, b"1-1", b"only")
    async with asyncio.timeout(5):  # nothing else is ever emitted: it must still go out
        await pub.drained(sink)
    assert sizes == [1] and await redis.xlen("lone") == 1


async def test_a_superseded_attempt_is_fenced_and_a_retried_write_is_not_duplicated(
    running: tuple[Publisher, list[int], fakeredis.FakeAsyncRedis],
) -> None:
    pub, _, redis = running
    await redis.xadd("job", {"event": b"start2"}, id="2-0")  # attempt 2 has started
    old = Sink("job")
    pub.emit(old, b"1-7", b"late token of attempt 1")
    async with asyncio.timeout(5):
        await pub.drained(old)
    assert old.fenced and await redis.xlen("job") == 1

    current = Sink("job")
    pub.emit(current, b"2-1", b"t")
    async with asyncio.timeout(5):
        await pub.drained(current)
    pub.emit(current, b"2-1", b"t")  # the same write again, as after a lost reply
    async with asyncio.timeout(5):
        await pub.drained(current)
    assert current.ok and await redis.xlen("job") == 2


async def test_producers_wait_while_the_queue_is_above_its_high_water_mark() -> None:
    redis = fakeredis.FakeAsyncRedis()
    pub = Publisher(redis, maxlen=1000, high_water=3)
    sink = Sink("bp")
    for seq in range(1, 4):
        pub.emit(sink, b"1-%d" % seq, b"x")
    assert pub.full
    waiter = asyncio.create_task(pub.room())
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing is flushing yet: the producer waits
    flusher = asyncio.create_task(pub.run())
    async with asyncio.timeout(5):
        await waiter
        await pub.drained(sink)
    assert not pub.full and await redis.xlen("bp") == 3
    flusher.cancel()
    await redis.aclose()


async def test_a_backlog_goes_out_in_bounded_round_trips() -> None:
    redis = fakeredis.FakeAsyncRedis()
    sizes: list[int] = []
    pub = Publisher(redis, maxlen=10_000, max_round_trip=4, on_batch=lambda count, _o: sizes.append(count))
    sink = Sink("big")
    for seq in range(1, 11):
        pub.emit(sink, b"1-%d" % seq, b"x")
    await pub.flush()
    assert sizes == [4, 4, 2] and await redis.xlen("big") == 10
    await redis.aclose()


@pytest.mark.parametrize(
    "error", [RedisConnectionError("Connection closed by server."), RedisTimeoutError("Timeout reading")]
)
async def test_a_cluster_connection_lost_under_a_batch_retries_it_without_a_gap_or_duplicate(
    error: Exception,
) -> None:
    """redis-py's cluster pipeline leaves the replies a dead connection lost as errors in its
    results: the round trip failed, as on one server, and is retried whole; the events that had
    landed are found by their ids, not written twice, and the job's sink stays ok."""
    redis = fakeredis.FakeAsyncRedis()
    cluster = DiesMidRead(redis, answered=2, error=error)
    pub = Publisher(cluster, maxlen=1000)  # type: ignore[arg-type]
    task = asyncio.create_task(pub.run())
    try:
        sink = Sink("job")
        for seq in range(1, 6):
            pub.emit(sink, b"1-%d" % seq, b"e%d" % seq)
        async with asyncio.timeout(5):
            await pub.drained(sink)
        assert sink.ok, sink.error
        assert cluster.pipelines == 2  # the failed round trip, then the retry
        entries: Any = await redis.xrange("job")
        assert [(i, f[b"event"]) for i, f in entries] == [(b"1-%d" % n, b"e%d" % n) for n in range(1, 6)]
    finally:
        task.cancel()
        await redis.aclose()
