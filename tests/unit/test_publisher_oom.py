"""The publisher under Redis out of memory, on fakeredis with a pipeline that refuses as Redis does:
refused events are retried (an outage, not a failure of their jobs), one per stream while refusals
last, written in order once memory is back; an event landing after a refused one of its stream
fails that stream (a gap); a stopping publisher gives up after ``retry_seconds``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
from redis.exceptions import OutOfMemoryError

from worker.publisher import Entry, EventGap, Publisher, Sink

OOM = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")


class Refusing(Publisher):
    """Refuses (OOM) the writes ``refuse(call, index)`` says; writes the others for real."""

    def __init__(self, redis: Any, refuse: Callable[[int, int], bool], **kwargs: Any) -> None:
        self.sleeps: list[float] = []

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
                out.append(OOM)
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


async def test_refused_events_are_retried_one_per_stream_until_memory_is_back(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    pub = Refusing(redis, lambda call, _: call < 4)  # four round trips refused, then memory is back
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
