"""A cancelled task is never left running, and a caller's cancel is never swallowed.

cancel_and_wait cancels again a task that lost its cancel (it ran on with ``cancelling() == 1``, as
the demo's follower did after Python 3.11's ``wait_for`` returned instead of raising), and a caller
cancelled while it waits stays cancelled whether the task ends cancelled, with an error it was
told to swallow, or normally. tokenwire itself never calls ``asyncio.wait_for``; its Redis clients'
connections are the guarded class; the guard keeps redis-py's read path (the fast path's probe).
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
import structlog
from redis.asyncio.connection import Connection, SSLConnection

import worker
from worker.connect import redis_client
from worker.fastpath import redis_py
from worker.fastpath.redis_cancel import GUARDED, keep_cancels, keeping_cancel
from worker.supervise import cancel_and_wait

BOUND = 10.0


async def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    """The lost cancel's signature: the CancelledError never reaches the task's code (here: caught
    and dropped, as wait_for did), the task runs on with cancelling() == 1."""
    lost = asyncio.Event()

    async def loses_the_first_cancel() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            lost.set()  # dropped: the task reads on
        while True:
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loses_the_first_cancel(), name="follower")
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(BOUND):
            await cancel_and_wait(task, recancel_after=0.05)
    assert lost.is_set() and task.cancelled()
    assert [e["task"] for e in logs if "cancelling it again" in e["event"]] == ["follower"]


async def test_a_task_slow_to_stop_is_not_cancelled_again_before_its_time() -> None:
    stopping, release = asyncio.Event(), asyncio.Event()
    cleanups: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopping.set()
            await release.wait()  # a second cancel would raise here
            cleanups.append("done")
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cancel_and_wait(task, recancel_after=BOUND))
    async with asyncio.timeout(BOUND):
        await stopping.wait()
    release.set()
    async with asyncio.timeout(BOUND):
        await waiter
    assert cleanups == ["done"] and task.cancelled()


@pytest.mark.parametrize("ending", ["returns", "raises-also"])
async def test_a_caller_cancelled_while_it_waits_stays_cancelled_however_the_task_ends(ending: str) -> None:
    """The caller's cancel is passed on to the task; the task treats it as a request to finish (it
    returns, or ends with an error the caller swallows): the caller is still cancelled."""
    cancelled_seen, release = asyncio.Event(), asyncio.Event()

    async def finishes_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_seen.set()
        try:
            await release.wait()
        except asyncio.CancelledError:  # the caller's cancel, passed on
            if ending == "raises-also":
                raise ConnectionError("closed on the way out") from None

    child = asyncio.create_task(finishes_when_cancelled())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(child, ConnectionError))
    async with asyncio.timeout(BOUND):
        await cancelled_seen.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await caller
    assert child.done() and not child.cancelled()


async def test_an_error_the_caller_was_not_told_of_still_raises() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ValueError("a bug") from None

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="a bug"):
        await cancel_and_wait(task, ConnectionError, recancel_after=0.05)


def test_tokenwire_never_calls_asyncio_wait_for() -> None:
    """On Python 3.11 it loses a cancel that lands as what it waits for finishes; tokenwire uses
    ``asyncio.timeout`` instead."""
    root = Path(worker.__file__).parent
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                found = (
                    node.attr == "wait_for"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "asyncio"
                )
            elif isinstance(node, ast.ImportFrom):
                found = node.module == "asyncio" and any(alias.name == "wait_for" for alias in node.names)
            else:
                continue
            if found:
                calls.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert calls == []


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/tw.sock"])
def test_every_client_tokenwire_builds_has_guarded_connections(url: str) -> None:
    client = redis_client(url, block_seconds=1.0)
    cls = client.connection_pool.connection_class
    assert cls is keeping_cancel(cls)  # the guarded class (guarding it again changes nothing)
    assert all(getattr(cls, name) is not getattr(cls.__mro__[1], name) for name in GUARDED)
    # the read path is redis-py's own, so the hub's and publisher's fast path still takes it
    assert cls.read_response is Connection.read_response
    if url.startswith("redis://"):
        assert redis_py.probe_client(client).available


def test_a_cluster_client_guards_its_startup_nodes_and_the_nodes_it_finds() -> None:
    client = redis_client("redis://127.0.0.1:1/0", cluster=True)
    manager = client.nodes_manager  # type: ignore[attr-defined]
    assert manager.connection_kwargs["connection_class"] is keeping_cancel(Connection)
    assert [n.connection_class for n in manager.startup_nodes.values()] == [keeping_cancel(Connection)]


def test_keeping_cancel_makes_one_class_per_connection_class() -> None:
    assert keeping_cancel(Connection) is keeping_cancel(Connection)
    assert keeping_cancel(SSLConnection) is not keeping_cancel(Connection)
    assert issubclass(keeping_cancel(SSLConnection), SSLConnection)


def test_a_client_of_another_shape_is_left_alone_and_said_so() -> None:
    with structlog.testing.capture_logs() as logs:
        assert keep_cancels(object()) is False
    assert any("may be lost" in e["event"] for e in logs)
