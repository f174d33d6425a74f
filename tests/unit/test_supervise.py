"""No long-lived task of the worker dies silently: each one that raises is logged with its
exception, counted in tokenwire_task_restarts{task}, restarted with the project's backoff, and
readiness fails while it is down. The Supervisor alone, then each helper of a worker on fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter

from worker import Provider, Settings, Worker
from worker.backoff import RetryPolicy
from worker.redact import Redactor, install, installed
from worker.supervise import Supervisor, cancel_and_wait

BOUND = 10.0
SLOW = RetryPolicy(base=1.0, cap=1.0)
"""A restart waits 0.5-1 s: long enough to see the task down, short enough for a unit test."""


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(BOUND):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


class Flaky:
    """Wraps a coroutine function: the first call raises ``error``, later calls run it."""

    def __init__(self, original: Callable[..., Awaitable[Any]], error: Exception) -> None:
        self.original = original
        self.error = error
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return await self.original(*args, **kwargs)


def _counter() -> Counter:
    return Counter("restarts", "test", ["task"], registry=CollectorRegistry())


async def test_a_task_that_raises_is_logged_counted_down_and_restarted() -> None:
    counter = _counter()
    supervisor = Supervisor(counter, policy=SLOW)
    forever = asyncio.Event()
    flaky = Flaky(forever.wait, RecursionError("maximum recursion depth exceeded"))
    with structlog.testing.capture_logs() as logs:
        task = supervisor.start("reclaim", flaky)
        await until(lambda: counter.labels("reclaim")._value.get() == 1, "counted")
        assert supervisor.down() == (
            "worker task 'reclaim' is down (RecursionError: maximum recursion depth exceeded)"
        )
        await until(lambda: flaky.calls == 2, "restarted")
        assert supervisor.down() is None and not task.done()
    [line] = [entry for entry in logs if entry["event"] == "worker task crashed; restarting it"]
    assert line["task"] == "reclaim" and line["log_level"] == "error"
    assert line["exc_info"] is flaky.error and 0.5 <= line["retry_in"] <= 1.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.down() is None


async def test_a_task_that_returns_is_finished_and_a_cancelled_one_is_not_restarted() -> None:
    counter = _counter()
    supervisor = Supervisor(counter)
    done = asyncio.Event()

    async def returns() -> None:
        done.set()

    await asyncio.wait_for(supervisor.start("cancel", returns), BOUND)
    assert done.is_set() and counter.labels("cancel")._value.get() == 0

    started = asyncio.Event()

    async def blocks() -> None:
        started.set()
        await asyncio.Event().wait()

    task = supervisor.start("leases", blocks)
    await asyncio.wait_for(started.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counter.labels("leases")._value.get() == 0 and supervisor.down() is None


async def test_crashes_in_a_row_back_off_as_the_retry_policy_says() -> None:
    counter = _counter()
    supervisor = Supervisor(counter, policy=RetryPolicy(base=0.01, cap=0.04))
    calls = 0

    async def always() -> None:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise ValueError(f"crash {calls}")

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(supervisor.run("heartbeat", always), BOUND)
    waits = [entry["retry_in"] for entry in logs]
    assert [entry["crashes"] for entry in logs] == [1, 2, 3, 4, 5]
    assert 0.005 <= waits[0] <= 0.01 and all(0.02 <= w <= 0.04 for w in waits[2:])
    assert counter.labels("heartbeat")._value.get() == 5 and supervisor.down() is None


async def test_a_redacted_reason() -> None:
    """/readyz shows why a task is down: never a secret."""
    previous = installed()
    install(Redactor(["s3cret-value-long"]))
    try:
        supervisor = Supervisor(_counter(), policy=SLOW)
        task = supervisor.start(
            "publisher", Flaky(asyncio.Event().wait, RuntimeError("auth s3cret-value-long"))
        )
        await until(lambda: supervisor.down() is not None, "down")
        assert "s3cret" not in (supervisor.down() or "")
        task.cancel()
    finally:
        install(previous)


# -- every helper of a worker, on fakeredis -------------------------------------------------------


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    redis = fakeredis.FakeAsyncRedis()
    settings = Settings(
        prefix="t",
        default_provider="up",
        providers={"up": Provider(native_url="https://up.test/v1/inference/{model}")},
        block_seconds=0.05,
        reclaim_interval_seconds=0.05,
        lease_seconds=0.5,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    w = Worker(settings, redis=redis, reader=redis, http=http)
    w.supervisor.policy = SLOW
    yield w
    await http.aclose()
    await redis.aclose()


def _inject(worker: Worker, task: str) -> Flaky:
    """A fault in ``task``'s code (instance attributes: the worker looks them up as it starts)."""
    error = RuntimeError(f"injected fault in {task}")
    owner: Any
    owner, name = {
        "heartbeat": (worker, "_heartbeat"),
        "publisher": (worker.publisher, "run"),
        "leases": (worker.leases, "renew_once"),
        "reclaim": (worker, "_observe_queue"),  # the stats read of the reclaim pass
        "cancel": (worker, "_cancel_listener"),
        "serve": (worker.queue, "read"),
    }[task]
    flaky = Flaky(getattr(owner, name), error)
    setattr(owner, name, flaky)
    return flaky


@pytest.mark.parametrize("task", ["heartbeat", "publisher", "leases", "reclaim", "cancel", "serve"])
async def test_each_helper_is_restarted_and_readiness_fails_while_it_is_down(
    worker: Worker, task: str
) -> None:
    flaky = _inject(worker, task)
    restarts = worker.metrics.task_restarts.labels(task)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(worker.ready.wait(), BOUND)
        await until(lambda: restarts._value.get() == 1, "counted")
        problem = await worker._not_ready()
        assert problem == f"worker task {task!r} is down (RuntimeError: injected fault in {task})"
        await until(lambda: flaky.calls >= 2, "restarted")
        await until(lambda: worker.supervisor.down() is None, "up again")
        assert await worker._not_ready() is None
        assert not running.done()
        stop.set()
        await asyncio.wait_for(running, BOUND)
    crashed = [entry for entry in logs if entry["event"] == "worker task crashed; restarting it"]
    assert [(entry["task"], entry["exc_info"]) for entry in crashed] == [(task, flaky.error)]
    assert worker.metrics.registry.get_sample_value("tokenwire_task_restarts_total", {"task": task}) == 1


# -- cancel_and_wait: a child's cancel is swallowed, the caller's never --------------------------


async def test_cancel_and_wait_stops_the_task_and_swallows_its_cancel() -> None:
    child = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(child)
    assert child.cancelled()


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    """The demo's second Ctrl-C arrived while it waited for its cancelled follower: swallowed, the
    stop then waited the whole drain grace. The child here takes its time to stop, so the caller's
    cancel lands while it waits."""
    cancelled_seen = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_seen.set()
            await release.wait()
            raise

    child = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(child))
    async with asyncio.timeout(BOUND):
        await cancelled_seen.wait()
    caller.cancel()  # the caller's own cancel, while the child is still stopping
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert child.cancelled()


async def test_cancel_and_wait_swallows_only_the_errors_it_is_told_of() -> None:
    async def fails_when_cancelled(exc: BaseException) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise exc from None

    quiet = asyncio.create_task(fails_when_cancelled(ConnectionError("gone")))
    await asyncio.sleep(0)
    await cancel_and_wait(quiet, ConnectionError)
    loud = asyncio.create_task(fails_when_cancelled(ValueError("a bug")))
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="a bug"):
        await cancel_and_wait(loud, ConnectionError)
