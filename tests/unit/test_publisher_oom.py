"""The publisher under Redis refusing writes for now (out of memory, a busy script, failed snapshots,
a dataset loading), on fakeredis with a pipeline that refuses as Redis does: refused events are
retried (an outage, not a failure of their jobs), one per stream while refusals last, written in
order once Redis accepts again; an event landing after a refused one of its stream fails that
stream (a gap); a stopping publisher gives up after ``retry_seconds``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ResponseError

from worker.publisher import Entry, EventGap, Publisher, Sink

OOM = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
REFUSALS = {
    "OOM": OOM,
    "BUSY": ResponseError(
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
    ),
    "MISCONF": ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"),
}


class Refusing(Publisher):
    """Refuses (OOM) the writes ``refuse(call, index)`` says; writes the others for real."""

    def __init__(
        self, redis: Any, refuse: Callable[[int, int], bool], reply: Exception = OOM, **kwargs: Any
    ) -> None:
        self.sleeps: list[float] = []
        self.reply = reply

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        super().__init__(redis, maxlen=1000, sleep=sleep, **kwargs)
        self.refuse = refuse
        self.sent: list[list[bytes]] = []

    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        call = len(self.sent)
        self.sent.append([i for _, i, _ in entries])
        out: list[object] = []
        for index, entry in enumerate(entries):
            if self.refuse(call, index):
                out.append(self.reply)
            else:
                out += await super()._pipeline([entry])
        return out


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


async def ids(redis: fakeredis.FakeAsyncRedis, key: str) -> list[bytes]:
    entries: Any = await redis.xrange(key)
    return [i for i, _ in entries]


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_refused_events_are_retried_one_per_stream_until_redis_accepts_again(
    redis: fakeredis.FakeAsyncRedis, refusal: str
) -> None:
    pub = Refusing(redis, lambda call, _: call < 4, REFUSALS[refusal])  # four round trips refused
    a, b = Sink("a"), Sink("b")
    for seq in range(1, 4):
        pub.emit(a, b"1-%d" % seq, b"x")
        pub.emit(b, b"1-%d" % seq, b"y")
    await pub.flush()
    assert a.ok and b.ok
    assert await ids(redis, "a") == [b"1-1", b"1-2", b"1-3"] and await ids(redis, "b") == [
        b"1-1",
        b"1-2",
        b"1-3",
    ]
    assert pub.sent[0] == [b"1-1", b"1-1", b"1-2", b"1-2", b"1-3", b"1-3"]
    assert pub.sent[1:4] == [[b"1-1", b"1-1"]] * 3  # while refused: each stream's first event only
    assert len(pub.sleeps) == 4 and all(0 < s <= 2.0 for s in pub.sleeps)  # the REDIS backoff


async def test_an_event_written_after_a_refused_one_of_its_stream_fails_that_stream(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    pub = Refusing(redis, lambda call, index: call == 0 and index == 0)  # memory freed mid-round-trip
    a, b = Sink("a"), Sink("b")
    pub.emit(a, b"1-1", b"x")
    pub.emit(a, b"1-2", b"x")
    pub.emit(b, b"1-1", b"y")
    await pub.flush()
    assert isinstance(a.error, EventGap) and "1-2" in str(a.error)
    assert b.ok and await ids(redis, "b") == [b"1-1"]


async def test_a_stopping_publisher_gives_up_after_retry_seconds(redis: fakeredis.FakeAsyncRedis) -> None:
    pub = Refusing(redis, lambda call, index: True, retry_seconds=5.0)
    task = asyncio.create_task(pub.run())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sink = Sink("a")
    pub.emit(sink, b"1-1", b"x")
    async with asyncio.timeout(5):
        await pub.flush()  # the final flush of a stopping worker: bounded
    assert isinstance(sink.error, OutOfMemoryError) and 5.0 <= sum(pub.sleeps) < 8.0


class Loading(Publisher):
    """Every round trip fails whole with LOADING (redis-py raises it as a connection error) until
    ``refusals`` have been sent; then writes for real."""

    def __init__(self, redis: Any, refusals: int) -> None:
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        super().__init__(redis, maxlen=1000, sleep=sleep, retry_seconds=0.5)
        self.refusals = refusals

    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        if self.refusals:
            self.refusals -= 1
            raise BusyLoadingError("Redis is loading the dataset in memory")
        return await super()._pipeline(entries)


async def test_a_dataset_loading_is_waited_out_past_retry_seconds(redis: fakeredis.FakeAsyncRedis) -> None:
    """``retry_seconds`` bounds the wait for a lost connection, not for a Redis that answers LOADING."""
    pub = Loading(redis, refusals=12)
    sink = Sink("a")
    pub.emit(sink, b"1-1", b"x")
    pub.emit(sink, b"1-2", b"x")
    await pub.flush()
    assert sink.ok and await ids(redis, "a") == [b"1-1", b"1-2"]
    assert len(pub.sleeps) == 12 and sum(pub.sleeps) > pub.retry_seconds
