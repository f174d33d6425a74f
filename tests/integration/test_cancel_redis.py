"""A task cancelled during a Redis command stops: the cancel is never lost (real redis-server).

redis-py writes each command through ``asyncio.wait_for``, which on Python 3.11 returns instead of
raising when the cancel lands as the write finishes (worker/fastpath/redis_cancel.py): the demo's
follower and a job task read on after their cancel. Here a task cancels itself 0, 1, ... loop
iterations after starting a command (the write's task finishes within about two), on asyncio's loop
and on uvloop (the CLI's), through every way tokenwire sends commands; each must end cancelled, and
the client must answer the next commands with their own replies. Without the guard the first hops
are lost every time. Then the demo's shape: a reader in XREAD BLOCK on a stream written every 2 ms,
cancelled at random moments, 100 rounds, each must stop within 2 s.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from redis.asyncio import Redis

from worker.connect import redis_client
from worker.gateway.xread import XReader
from worker.redisproc import RedisClusterServers, RedisServer

pytestmark = pytest.mark.integration

HOPS = 8
"""Loop iterations after the command starts at which the cancel lands (0 .. HOPS-1)."""
RUN_ON = 50
"""Iterations a task that lost its cancel would go on for before the test calls it lost."""
BOUND = 10.0


def _loops() -> list[Any]:
    loops: list[Any] = [pytest.param(None, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the CLI's extra
        loops.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop missing")))
    else:
        loops.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return loops


def _run(factory: Callable[[], asyncio.AbstractEventLoop] | None, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _cancel_after(hops: int) -> None:
    """Cancel the current task ``hops`` loop iterations from now."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def step(left: int) -> None:
        if left:
            loop.call_soon(step, left - 1)
        else:
            task.cancel()

    loop.call_soon(step, hops)


Command = Callable[[Redis, str], Awaitable[object]]


async def _ping(r: Redis, key: str) -> object:
    return await r.ping()


async def _xread(r: Redis, key: str) -> object:
    return await r.xread({key: "$"}, count=10, block=20)


async def _pipeline(r: Redis, key: str) -> object:
    async with r.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"f": "v"}, maxlen=100)
        pipe.xlen(key)
        return await pipe.execute()


def _raw_xread() -> Command:
    """The gateway hub's read: a kept connection, hiredis-packed XREAD, replies from its reader."""
    readers: dict[int, XReader] = {}

    async def read(r: Redis, key: str) -> object:
        xread = readers.setdefault(id(r), XReader(r))
        return await xread.read([key], ["$"], count=10, block_ms=20)

    return read


async def _sweep(r: Redis, command: Command, key: str) -> list[int]:
    """Every hop at which the cancel was lost (the task ran to its end)."""
    lost = []
    for hops in range(HOPS):

        async def body(hops: int = hops) -> None:
            await command(r, key)  # warm: a connection is open and idle
            _cancel_after(hops)
            await command(r, key)
            for _ in range(RUN_ON):  # a kept cancel raises at the first of these at the latest
                await asyncio.sleep(0)

        task = asyncio.create_task(body())
        async with asyncio.timeout(BOUND):
            await asyncio.wait({task})
        if not task.cancelled():
            task.result()  # an error is the test's failure, not a lost cancel
            lost.append(hops)
    return lost


async def _still_answers(r: Redis, key: str) -> None:
    """Each reply is its own command's: no reply left unread on a pooled connection."""
    for n in range(5):
        await r.set(f"{key}:v", str(n))
        assert await r.get(f"{key}:v") == str(n).encode()
        assert await r.ping() is True


COMMANDS: list[Any] = [
    pytest.param(lambda: _ping, id="ping"),
    pytest.param(lambda: _xread, id="xread-block"),
    pytest.param(lambda: _pipeline, id="pipeline"),
    pytest.param(_raw_xread, id="gateway-raw-xread"),
]


@pytest.mark.parametrize("factory", _loops())
@pytest.mark.parametrize("make_command", COMMANDS)
def test_a_cancel_landing_while_a_command_is_sent_is_never_lost(
    redis_server: RedisServer, factory: Any, make_command: Callable[[], Command]
) -> None:
    async def main() -> None:
        r = redis_client(redis_server.url, block_seconds=1.0)
        try:
            lost = await _sweep(r, make_command(), "cancel:single")
            assert lost == [], f"cancel lost at hops {lost}: the task ran on after its cancel"
            await _still_answers(r, "cancel:single")
        finally:
            await r.aclose()

    _run(factory, main())


@pytest.mark.parametrize("factory", _loops())
@pytest.mark.parametrize("make_command", COMMANDS[:3])
def test_a_cancel_is_never_lost_on_a_cluster(
    redis_cluster: RedisClusterServers, factory: Any, make_command: Callable[[], Command]
) -> None:
    async def main() -> None:
        r = redis_client(redis_cluster.url, block_seconds=1.0, cluster=True)
        try:
            lost = await _sweep(r, make_command(), "{cancel}:cluster")
            assert lost == [], f"cancel lost at hops {lost}: the task ran on after its cancel"
            await _still_answers(r, "{cancel}:cluster")
        finally:
            await r.aclose()

    _run(factory, main())


ROUNDS = 100


@pytest.mark.parametrize("factory", _loops()[1:])
def test_a_reader_in_xread_block_stops_at_every_cancel(redis_server: RedisServer, factory: Any) -> None:
    """The demo's follower: XREAD BLOCK in a loop on a stream another task writes every 2 ms, cancelled
    at a random moment, 100 times (uvloop, where the demo lost about 1 cancel in 15)."""
    rng = random.Random(20261207)

    async def main() -> None:
        writer = redis_client(redis_server.url)
        reader = redis_client(redis_server.url, block_seconds=1.0)
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                await writer.xadd("cancel:demo", {"f": "x"}, maxlen=1000)
                await asyncio.sleep(0.002)

        async def follow() -> None:
            last = "$"
            while True:
                reply: Any = await reader.xread({"cancel:demo": last}, count=512, block=1000)
                if reply:
                    last = reply[0][1][-1][0]

        producer = asyncio.create_task(produce())
        lost = 0
        try:
            for _ in range(ROUNDS):
                task = asyncio.create_task(follow())
                await asyncio.sleep(rng.uniform(0.005, 0.03))  # a random moment of its reads
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=2.0)
                if not done:
                    lost += 1
                    task.cancel()
                    await asyncio.wait({task}, timeout=BOUND)
                assert task.cancelled()
            assert lost == 0, f"{lost} of {ROUNDS} cancels lost: the reader read on"
        finally:
            stop.set()
            await producer
            await writer.aclose()
            await reader.aclose()

    _run(factory, main())
