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


async def cancel_and_wait(task: asyncio.Future[Any], *also: type[BaseException]) -> None:
    """Cancel ``task`` and wait until it has stopped, swallowing its own ``CancelledError`` (and the
    ``also`` exceptions it may end with), but never the caller's: a caller cancelled while it waits
    (a second Ctrl-C, a drain's cancel) is still cancelled. ``contextlib.suppress(CancelledError)``
    around ``await task`` cannot tell the two apart and would swallow the caller's cancel too."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except also:
        pass


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
