"""Redis refusing commands for a while is an outage, not a job failure.

These error replies mean that Redis is up, changed nothing, and will run the very same command once
the condition passes; so a job that meets one keeps its lease and waits, backing off as
:data:`~worker.backoff.REDIS` says, for as long as it lasts: it is never failed, dead-lettered or
handed to another delivery for it.

- ``OOM``: out of memory (``maxmemory`` reached under ``noeviction``). Redis refuses every command
  flagged ``denyoom`` (``XADD``, ``HSET``, ``XGROUP CREATE``; a script at its first such write,
  before it has changed anything) and runs the others, the lease renewal (``XCLAIM ... JUSTID``) and
  the ack (``XACK`` + ``XDEL``) included.
- ``BUSY``: a script (or function) has run past ``busy-reply-threshold`` (``lua-time-limit``):
  every other command is refused until it ends or an operator's ``SCRIPT KILL`` stops it.
- ``LOADING``: a restarted Redis is loading its dataset (RDB or AOF) into memory: every command is
  refused until it is loaded. redis-py makes this a :class:`~redis.exceptions.BusyLoadingError`, a
  kind of connection error, so the pools' own retries (three, within a second) try it first.
- ``MISCONF``: snapshots fail under ``stop-writes-on-bgsave-error yes``: writes are refused,
  reads served, until a snapshot succeeds or an operator lifts it.
- ``TRYAGAIN`` (a multi-key command while its slot migrates) and ``CLUSTERDOWN`` (a slot not
  served during a failover) on a Redis Cluster, once redis-py's cluster client, which retries
  them itself for a moment (refreshing its slot map on ``CLUSTERDOWN``), has given up.

Not ``READONLY``: a connection to a replica stays one (redis-py, outside Sentinel, neither drops it
nor looks for the new primary), so waiting on it never helps. Not ``MASTERDOWN`` (a replica too).
None of these is a reply that says the job's keys are unusable (:mod:`worker.unusable`).

Under an outage every job in flight waits, so the waits are logged per outage, not per job or per
try: one warning when the first refused step starts waiting (the reason, that step), one line when
the last waiting step goes through, with how long it took.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import REDIS, Backoff

__all__ = ["OUTAGE", "REASONS", "Outage", "is_outage", "outlast_refusals", "refusal"]

log = structlog.get_logger("tokenwire.redis")

T = TypeVar("T")

REASONS = {
    "OOM": "out of memory (maxmemory reached under noeviction)",
    "BUSY": "busy running a script past busy-reply-threshold",
    "LOADING": "loading its dataset",
    "MISCONF": "refusing writes: it cannot persist (stop-writes-on-bgsave-error)",
    "TRYAGAIN": "a slot is being migrated (TRYAGAIN)",
    "CLUSTERDOWN": "a slot is not served (CLUSTERDOWN)",
}
"""Each passing refusal's error code and the reason logged for it."""

_BY_CLASS: tuple[tuple[type[RedisError], str], ...] = (
    (OutOfMemoryError, "OOM"),
    (BusyLoadingError, "LOADING"),
    (TryAgainError, "TRYAGAIN"),
    (ClusterDownError, "CLUSTERDOWN"),
)
# Redis 6 wraps the error reply of a command a script ran: "Error running script (call to
# f_<sha>): @user_script:2: -OOM command not allowed ..." (Redis 7 passes the reply on as it is)
_IN_SCRIPT = re.compile(r"@user_script:\d+: -([A-Z]+) ")
_OOM_TEXT = "command not allowed when used memory"


def refusal(error: object) -> str | None:
    """Why Redis refuses for now, if ``error`` (an exception or a pipeline's error reply) is one of
    the refusals that pass (see the module docstring); None for any other error or value."""
    if not isinstance(error, RedisError) or isinstance(error, MasterDownError):
        return None
    for cls, code in _BY_CLASS:
        if isinstance(error, cls):
            return REASONS[code]
    if type(error) is not ResponseError:  # READONLY, NOSCRIPT, NOPERM ...: classes of their own
        return None
    text = str(error)
    if text.startswith("Command # "):  # redis-py's pipeline annotation quotes the command's arguments
        text = text.partition(" of pipeline caused error: ")[2] or text
    code = error.status_code or text.partition(" ")[0]  # (the code survives a pipeline's annotation)
    if code in ("ERR", "Error"):  # only a generic error may wrap another (Redis 6's script errors)
        wrapped = _IN_SCRIPT.search(text)
        code = wrapped.group(1) if wrapped is not None else "OOM" if _OOM_TEXT in text else code
    return REASONS.get(code)


def is_outage(error: object) -> bool:
    """Whether ``error`` says Redis is out for now, for every client alike (a refusal that passes,
    or no answer: a lost connection, a timeout), rather than that this command cannot run."""
    return refusal(error) is not None or isinstance(error, (RedisConnectionError, RedisTimeoutError))


class Outage:
    """The steps of this process waiting on a refusal now, so that an outage is logged once: when
    its first step is refused (and again if the reason changes), and when its last goes through."""

    def __init__(self) -> None:
        self.waiting = 0
        self.since = 0.0
        self.reason = ""

    def refused(self, what: str, reason: str, error: BaseException, *, first: bool) -> None:
        """Step ``what`` was refused for ``reason``; ``first``: its first refusal in a row."""
        if first:
            if self.waiting == 0:
                self.since = time.monotonic()
            self.waiting += 1
        if reason != self.reason:
            self.reason = reason
            log.warning(f"Redis refuses for now: {reason}; waiting for it", step=what, error=str(error))

    def ended(self, what: str) -> None:
        """Step ``what`` stopped waiting (it went through, gave up or was cancelled)."""
        self.waiting -= 1
        if self.waiting == 0:
            waited = round(time.monotonic() - self.since, 3)
            log.info("Redis accepts again", reason=self.reason, step=what, waited=waited)
            self.reason = ""


OUTAGE = Outage()
"""This process's (one event loop's: no lock needed)."""


async def outlast_refusals(
    op: Callable[[], Awaitable[T]],
    what: str,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``op()``, retried for as long as Redis refuses it for now (:func:`refusal`); any other error
    is raised. ``what``: the step, for the log.

    Unbounded on purpose: the caller's lease is kept meanwhile (:mod:`worker.lease`), and the
    caller's task is cancelled from outside (a lost lease, a drain) when it must stop waiting.
    """
    backoff = Backoff(REDIS)
    try:
        while True:
            try:
                return await op()
            except RedisError as exc:
                reason = refusal(exc)
                if reason is None:
                    raise
                OUTAGE.refused(what, reason, exc, first=backoff.failures == 0)
                await sleep(backoff.failed())
    finally:
        if backoff.failures:
            OUTAGE.ended(what)
