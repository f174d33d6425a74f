"""Supervision of the worker's long-lived tasks: none dies silently.

A supervised task that raises is logged with its exception, counted (``tokenwire_task_restarts``,
by task) and started again after the wait :data:`~worker.backoff.REDIS` gives (the project's one
retry policy); while it waits it is *down*, and :meth:`Supervisor.down` says so, so ``/readyz``
fails. A task that returns has finished (a stop); a cancelled one is cancelled, not restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import Counter

from .backoff import REDIS, Backoff, RetryPolicy
from .redact import redact

__all__ = ["Supervisor", "cancel_and_wait"]

log = structlog.get_logger("tokenwire.worker")


RECANCEL_SECONDS = 1.0
"""How long :func:`cancel_and_wait` waits for a cancelled task before cancelling it again."""


async def cancel_and_wait(
    task: asyncio.Future[Any], *also: type[BaseException], recancel_after: float = RECANCEL_SECONDS
) -> None:
    """Cancel ``task`` and wait until it has stopped, swallowing its own ``CancelledError`` (and the
    ``also`` exceptions it may end with), but never the caller's: a caller cancelled while it waits
    (a second Ctrl-C, a drain's cancel) passes the cancel on to ``task`` and is still cancelled once
    it has stopped, however it stopped. (``contextlib.suppress(CancelledError)`` around ``await
    task`` cannot tell the two apart and would swallow the caller's cancel too.)

    A cancel can be lost: Python 3.11's ``asyncio.wait_for`` returns instead of raising when the
    cancel lands as what it waits for finishes (redis-py writes every command through it, see
    :mod:`worker.fastpath.redis_cancel`), and the task then runs on as if never cancelled. So a task
    still running ``recancel_after`` seconds after its cancel is cancelled again (with a warning),
    and again after as long each time: it stops, it is never left running."""
    task.cancel()
    caller_cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,), timeout=recancel_after)
        except asyncio.CancelledError:
            caller_cancelled = True  # the caller's own: passed on, raised once the task has stopped
            task.cancel()
            continue
        if not task.done():
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("task still running after its cancel; cancelling it again", task=name)
            task.cancel()
    current = asyncio.current_task()
    if task.cancelled():
        if caller_cancelled or (current is not None and current.cancelling()):
            raise asyncio.CancelledError
        return
    error = task.exception()
    if caller_cancelled:
        raise asyncio.CancelledError from error
    if error is not None and not isinstance(error, also):
        raise error


class Supervisor:
    """Runs named tasks, restarting each one that raises. ``restarts``: the counter (by ``task``)."""

    stable_after: float = 30.0
    """Seconds a restarted task must run before its next crash again waits as little as the first."""

    def __init__(self, restarts: Counter, policy: RetryPolicy = REDIS) -> None:
        self.restarts = restarts
        self.policy = policy
        self._down: dict[str, str] = {}

    def down(self) -> str | None:
        """None when every supervised task is up; else which are down and why."""
        if not self._down:
            return None
        return "; ".join(f"worker task {name!r} is down ({why})" for name, why in sorted(self._down.items()))

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """``run()`` as a task named ``tokenwire-<name>``, restarted whenever it raises."""
        return asyncio.create_task(self.run(name, run), name=f"tokenwire-{name}")

    async def run(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Await ``run()`` until it returns, starting it again (after a backoff) each time it raises."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.policy)
        while True:
            began = loop.time()
            try:
                await run()
                return
            except Exception as exc:
                if loop.time() - began >= self.stable_after:
                    backoff.succeeded()
                delay = backoff.failed()
                self._down[name] = redact(f"{type(exc).__name__}: {exc}")[:300]  # /readyz shows it
                self.restarts.labels(name).inc()
                log.error(
                    "worker task crashed; restarting it",
                    task=name,
                    retry_in=round(delay, 3),
                    crashes=backoff.failures,
                    exc_info=exc,
                )
            try:
                await asyncio.sleep(delay)
            finally:
                self._down.pop(name, None)
