"""Redis out of memory (``maxmemory`` reached under ``noeviction``) is an outage, not a job failure.

Redis then refuses every command flagged ``denyoom`` (``XADD``, ``HSET``, ``HSETNX``,
``XGROUP CREATE``; a script is refused at its first such write, before it has changed anything) and
still runs the others: the lease renewal (``XPENDING`` + ``XCLAIM ... JUSTID``), the ack (``XACK`` +
``XDEL``), ``XREADGROUP``, ``XAUTOCLAIM``, ``PEXPIRE``, ``DEL`` and reads. So a job that meets an
OOM reply keeps its lease and waits, backing off as :data:`~worker.backoff.REDIS` says, until memory
is freed; it is never failed, dead-lettered or handed to another delivery for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import OutOfMemoryError, ResponseError

from .backoff import REDIS, Backoff

__all__ = ["is_oom", "outlast_oom"]

log = structlog.get_logger("tokenwire.redis")

T = TypeVar("T")

_OOM_TEXT = "command not allowed when used memory"


def is_oom(error: object) -> bool:
    """Whether ``error`` (an exception or a pipeline's error reply) is Redis's OOM refusal."""
    if isinstance(error, OutOfMemoryError):
        return True
    return isinstance(error, ResponseError) and (str(error).startswith("OOM ") or _OOM_TEXT in str(error))


async def outlast_oom(
    op: Callable[[], Awaitable[T]],
    what: str,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``op()``, retried for as long as Redis answers it with OOM (any other error is raised).

    Unbounded on purpose: the caller's lease is kept meanwhile (renewals are not ``denyoom``), and
    the caller's task is cancelled from outside (a lost lease, a drain) when it must stop waiting.
    """
    backoff = Backoff(REDIS)
    while True:
        try:
            return await op()
        except ResponseError as exc:
            if not is_oom(exc):
                raise
            pause = backoff.failed()
            if backoff.failures == 1 or backoff.failures % 32 == 0:
                log.warning(
                    "Redis is out of memory; waiting for it",
                    step=what,
                    error=str(exc),
                    tries=backoff.failures,
                    retry_in=round(pause, 3),
                )
            await sleep(pause)
