"""The coalescer on a real redis-server and a real Redis Cluster: calls of one loop turn go out as
one round trip, and each caller gets its own reply or its own error, exactly as a lone script call:
error replies, NOSCRIPT (the script is loaded again), a connection lost under a batch (re-issued
one by one), OOM (only the writing script is refused)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from worker.coalesce import Coalescer
from worker.connect import redis_client
from worker.redisproc import RedisServer, redis_server_available

pytestmark = pytest.mark.integration

# sets KEYS[1] to ARGV[1] and answers it; ARGV[1] == "bad" answers an error reply instead
SET_ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('ERR bad argument for ' .. KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
GET = "return redis.call('GET', KEYS[1])"


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def keys_for(prefix: str, n: int) -> list[str]:
    return [f"{prefix}:co:{i}" for i in range(n)]


async def test_one_turn_is_one_batch_each_caller_its_own_reply_or_error(
    redis: Redis, prefix: str, backend: str
) -> None:
    coalescer = Coalescer(redis)
    script = redis.register_script(SET_ECHO)
    names = keys_for(prefix, 40)
    values = ["bad" if i % 7 == 3 else f"v{i}" for i in range(40)]
    try:
        results = await asyncio.gather(
            *(coalescer.run(script, [k], [v]) for k, v in zip(names, values, strict=True)),
            return_exceptions=True,
        )
    finally:
        await coalescer.aclose()
    for name, value, result in zip(names, values, results, strict=True):
        if value == "bad":
            assert isinstance(result, ResponseError) and str(result) == f"bad argument for {name}"
            assert await redis.get(name) is None
        else:
            assert result == value.encode()
            assert await redis.get(name) == value.encode()
    assert coalescer.batches == 1 and coalescer.calls == 40


async def test_noscript_reloads_and_runs_again(redis: Redis, prefix: str, backend: str) -> None:
    coalescer = Coalescer(redis)
    script = redis.register_script(SET_ECHO)
    names = keys_for(prefix, 10)
    try:
        await redis.script_flush()  # on a cluster, every node's cache
        got = await asyncio.gather(*(coalescer.run(script, [k], [f"n{i}"]) for i, k in enumerate(names)))
        assert got == [f"n{i}".encode() for i in range(10)]
        assert [await redis.get(k) for k in names] == [f"n{i}".encode() for i in range(10)]
        again = await asyncio.gather(*(coalescer.run(script, [k], ["x"]) for k in names))  # now loaded
        assert again == [b"x"] * 10
    finally:
        await coalescer.aclose()


async def test_a_connection_lost_under_a_batch_is_reissued_one_by_one(
    redis: Redis, prefix: str, backend: str
) -> None:
    coalescer = Coalescer(redis)
    script = redis.register_script(SET_ECHO)
    names = keys_for(prefix, 12)
    try:
        await asyncio.gather(*(coalescer.run(script, [k], ["first"]) for k in names))
        # every connection of the coalescer's (named by its first command) is killed, behind its back
        killed = await _kill_script_connections(redis)
        assert killed >= 1
        got = await asyncio.gather(*(coalescer.run(script, [k], [f"after{i}"]) for i, k in enumerate(names)))
        assert got == [f"after{i}".encode() for i in range(12)]
        assert [await redis.get(k) for k in names] == [f"after{i}".encode() for i in range(12)]
        if backend == "single":  # (a cluster pipeline retries on its own first)
            assert coalescer.reissued == 1
    finally:
        await coalescer.aclose()


async def _kill_script_connections(redis: Redis) -> int:
    """Kill the coalescer's connection behind its back (the one whose last command was EVALSHA); on
    a cluster, every other connection of every node."""
    killed = 0
    if getattr(redis, "connection_pool", None) is not None:
        for client in await redis.client_list():
            if client.get("cmd") == "evalsha":
                killed += int(await redis.client_kill_filter(_id=client["id"]))
        return killed
    cluster: Any = redis  # its pipeline's connections go back to the pool: kill all but this one
    for node in cluster.get_nodes():
        killed += int(await cluster.client_kill_filter(_type="normal", skipme=True, target_nodes=node))
    return killed


async def test_a_caller_cancelled_before_its_batch_is_not_sent(
    redis: Redis, prefix: str, backend: str
) -> None:
    coalescer = Coalescer(redis)
    script = redis.register_script(SET_ECHO)
    kept, dropped = keys_for(prefix, 2)
    try:
        first = asyncio.ensure_future(coalescer.run(script, [kept], ["kept"]))
        second = asyncio.ensure_future(coalescer.run(script, [dropped], ["dropped"]))
        await asyncio.sleep(0)  # both queued
        second.cancel()
        assert await first == b"kept"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await redis.get(dropped) is None
    finally:
        await coalescer.aclose()


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    args = ["--maxmemory", str(4 * 1024 * 1024), "--maxmemory-policy", "noeviction"]
    with RedisServer(extra_args=args) as server:
        yield server


@pytest.fixture
async def tiny(tiny_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(tiny_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.flushall()
        await client.config_set("maxmemory", str(4 * 1024 * 1024))
        await client.aclose()


async def test_oom_refuses_only_the_writing_script(tiny: Redis) -> None:
    await tiny.set("co:kept", b"there")
    used = int((await tiny.info("memory"))["used_memory"])
    await tiny.config_set("maxmemory", str(max(1, used - 1024 * 1024)))  # every write refused
    coalescer = Coalescer(tiny)
    writer, reader = tiny.register_script(SET_ECHO), tiny.register_script(GET)
    try:
        got: list[Any] = list(
            await asyncio.gather(
                coalescer.run(writer, ["co:new"], ["v"]),
                coalescer.run(reader, ["co:kept"], []),
                return_exceptions=True,
            )
        )
    finally:
        await coalescer.aclose()
    wrote, read = got
    assert isinstance(wrote, OutOfMemoryError)  # the class a lone call raises (worker.refusals.refusal)
    assert read == b"there"
    assert coalescer.batches == 1
    await tiny.config_set("maxmemory", str(64 * 1024 * 1024))
    assert await tiny.get("co:new") is None
