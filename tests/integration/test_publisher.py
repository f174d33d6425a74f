"""The publisher's writes on a real redis-server: replies matched to entries in order (read in bulk
from the hiredis parser), fencing and lost-reply retries inside one batch, batches larger than a
socket read, and the one connection it keeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from worker.fastpath.redis_py import bulk_reader
from worker.publisher import Publisher, Sink

BOUND = 30.0


@pytest.fixture
def k(prefix: str) -> Callable[[str], str]:
    """Key names of this test only (the server is shared by the session)."""
    return lambda name: f"{prefix}:{name}"


@pytest.fixture
async def publisher(redis: Redis) -> AsyncIterator[Publisher]:
    pub = Publisher(redis, maxlen=100_000)
    yield pub
    await pub.aclose()


async def ids(redis: Redis, key: str) -> list[bytes]:
    entries = await redis.xrange(key) or []
    return [bytes(entry_id) for entry_id, _ in entries if isinstance(entry_id, bytes)]


async def test_the_fast_reply_path_is_the_one_in_use(
    redis: Redis, publisher: Publisher, k: Callable[[str], str]
) -> None:
    """Guards the bulk read against a redis-py upgrade that would silently fall back to the slow
    path: the connection the publisher writes on is a stock one with a hiredis parser."""
    publisher.emit(Sink(k("k")), b"1-1", b"x")
    async with asyncio.timeout(BOUND):
        await publisher.flush()
    conn = publisher._conn
    assert conn is not None and bulk_reader(conn) is not None


async def test_fenced_and_repeated_writes_inside_one_batch(
    redis: Redis, publisher: Publisher, k: Callable[[str], str]
) -> None:
    await redis.xadd(k("old"), {"event": b"attempt 2 began"}, id="2-0")
    await redis.xadd(k("again"), {"event": b"t1"}, id="1-1")
    stale, retried, fresh = Sink(k("old")), Sink(k("again")), Sink(k("fresh"))
    publisher.emit(fresh, b"1-1", b"a")
    publisher.emit(stale, b"1-5", b"late token of attempt 1")  # refused: ids only grow
    publisher.emit(retried, b"1-1", b"t1")  # the same write again, as after a lost reply
    publisher.emit(retried, b"1-2", b"t2")
    publisher.emit(fresh, b"1-2", b"b")
    async with asyncio.timeout(BOUND):
        await publisher.flush()
    assert (stale.fenced, retried.fenced, fresh.fenced) == (True, False, False)
    assert stale.error is None and retried.error is None and fresh.error is None
    assert await ids(redis, k("old")) == [b"2-0"]
    assert await ids(redis, k("again")) == [b"1-1", b"1-2"]
    assert await ids(redis, k("fresh")) == [b"1-1", b"1-2"]


async def test_a_batch_larger_than_a_socket_read_keeps_replies_in_order(
    redis: Redis, publisher: Publisher, k: Callable[[str], str]
) -> None:
    """2,000 entries on 50 keys: the replies span many reads; a fenced key in the middle of the
    batch fences that key only, whatever read its reply arrived in."""
    await redis.xadd(k("k-25"), {"event": b"x"}, id="9-0")
    sinks = [Sink(k(f"k-{i}")) for i in range(50)]
    for seq in range(1, 41):
        for sink in sinks:
            publisher.emit(sink, b"1-%d" % seq, b"p" * 1000)
    async with asyncio.timeout(BOUND):
        await publisher.flush()
    assert [s.key for s in sinks if s.fenced] == [k("k-25")]
    assert all(s.error is None for s in sinks)
    for sink in sinks[:3] + sinks[-3:]:
        assert await ids(redis, sink.key) == [b"1-%d" % seq for seq in range(1, 41)]


async def test_the_connection_is_kept_between_batches_and_given_back(
    redis: Redis, k: Callable[[str], str]
) -> None:
    pub = Publisher(redis, maxlen=1000)
    pool = redis.connection_pool
    for seq in (1, 2, 3):
        pub.emit(Sink(k("k")), b"1-%d" % seq, b"x")
        async with asyncio.timeout(BOUND):
            await pub.flush()
        assert len(pool._in_use_connections) == 1  # the same one, not a checkout per batch
    await pub.aclose()
    assert len(pool._in_use_connections) == 0
    assert await ids(redis, k("k")) == [b"1-1", b"1-2", b"1-3"]


async def test_a_dropped_connection_is_replaced_and_the_batch_retried(
    redis: Redis, k: Callable[[str], str]
) -> None:
    pub = Publisher(redis, maxlen=1000, retry_seconds=10.0)
    sink = Sink(k("k"))
    pub.emit(sink, b"1-1", b"x")
    async with asyncio.timeout(BOUND):
        await pub.flush()
    assert pub._conn is not None
    await redis.client_kill_filter(_id=str(await _client_id(redis, pub)))
    pub.emit(sink, b"1-2", b"y")
    async with asyncio.timeout(BOUND):
        await pub.flush()
    assert sink.ok
    assert await ids(redis, k("k")) == [b"1-1", b"1-2"]
    await pub.aclose()


async def _client_id(redis: Redis, pub: Publisher) -> int:
    """The server-side id of the publisher's connection (found by its local port)."""
    conn = pub._conn
    assert conn is not None
    sock = conn._writer.get_extra_info("sockname")
    for client in await redis.client_list():
        if client["addr"].endswith(f":{sock[1]}"):
            return int(client["id"])
    raise AssertionError("the publisher's connection is not in CLIENT LIST")
