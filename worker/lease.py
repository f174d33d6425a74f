"""Leases: a job's pending entry is its lease; its idle time is reset while the job runs.

Every ``lease / 3`` the keeper renews every entry this consumer holds, checking that it still owns
each one, in script calls of at most ``RENEW_CHUNK`` entries (a script blocks Redis while it runs:
one call over 1,000 entries held it for 10-20 ms, a stall every client of that Redis would see).
An entry it no longer owns (a peer reclaimed it after this process was stopped or starved) is
reported lost: its job must stop writing and close its upstream request. An entry that is gone from
the stream (an operator's ``XDEL`` or ``XTRIM``) is reported gone instead: nobody else can ever take
it over, so its job ends itself with a terminal event (``entry_deleted``) rather than stop silently.
An entry still in the stream but pending to nobody (an operator's ``XACK`` or ``XGROUP
DELCONSUMER``, a group destroyed and created again) is neither: nobody can claim it, so its job goes
on, unleased, and ends itself (a delivery of the entry to a peer starts a new attempt, fencing it).
If Redis cannot be reached for a whole lease, every job no call could check is reported lost: peers
will have taken them. A renewal Redis refuses for now (a busy script, a dataset loading, failed
snapshots: :mod:`worker.refusals`) is no such silence: Redis refuses the peers' claims alike, so the
leases are kept, and the first renewal it runs again reports what a peer took meanwhile, if anything.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import scripts
from .keys import GROUP, Keys, as_text
from .refusals import is_outage, refusal

__all__ = ["RENEW_CHUNK", "ClaimGate", "LeaseKeeper"]

RENEW_CHUNK = 128
"""Entries renewed per script call (~1-2 ms of Redis time each)."""

log = structlog.get_logger("tokenwire.lease")


class ClaimGate:
    """When this worker's reclaim pass may claim idle entries.

    Redis failing or refusing for a while (an outage: :mod:`worker.refusals`, or no answer at all)
    stops every worker's renewals alike, so once it ends every lease is idle past the lease, the
    live owners' included: a claim then would take jobs that are running. So after any sign of
    trouble (a renewal or a claim failed or refused, a step waiting on a refusal) nothing is claimed
    until Redis has run a claim again (a renewal, or the reclaim pass's claim of nothing) and then
    ``settle`` seconds have passed, time for every owner's renewal round to come (each renews every
    0.9-1.1 intervals: ``settle`` is two)."""

    def __init__(self, settle: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle
        self.troubled = False
        self._clock = clock
        self._open_at = 0.0

    def trouble(self) -> None:
        """Redis failed or refused a step: claims wait until it answers again, and then settle."""
        self.troubled = True

    def answered(self) -> None:
        """Redis ran a claim (a renewal's or a probe's): after trouble, claims may begin in
        ``settle`` seconds."""
        if self.troubled:
            self.troubled = False
            self._open_at = self._clock() + self.settle

    def open(self) -> bool:
        return not self.troubled and self._clock() >= self._open_at


class LeaseKeeper:
    def __init__(self, redis: Redis, keys: Keys, consumer: str, lease_seconds: float) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._held: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {}
        self._renew = redis.register_script(scripts.RENEW)
        self._last_ok = time.monotonic()  # when Redis last answered a renewal (or refused it)
        self._refused = False  # the last renewal was refused for now
        self.gate = ClaimGate(2 * self.interval)  # when the reclaim pass may claim (see ClaimGate)

    def hold(
        self, entry_id: str, on_lost: Callable[[], None], on_gone: Callable[[], None] | None = None
    ) -> None:
        """Renew ``entry_id`` until released; ``on_lost`` when another worker owns it, ``on_gone``
        (``on_lost`` if None) when the entry is no longer in the stream."""
        self._held[entry_id] = (on_lost, on_gone)

    def release(self, entry_id: str) -> None:
        self._held.pop(entry_id, None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * (0.9 + 0.2 * random.random()))
            await self.renew_once()

    async def renew_once(self) -> list[str]:
        """Renew every held entry; returns (and reports) the ones lost. Gone ones are reported to
        their ``on_gone``."""
        entries = list(self._held)
        lost: list[str] = []
        gone: list[str] = []
        renewed = 0  # entries whose ownership a call has checked
        try:
            for start in range(0, len(entries), RENEW_CHUNK):
                chunk = entries[start : start + RENEW_CHUNK]
                reply = await self._renew(keys=[self.keys.jobs], args=[GROUP, self.consumer, *chunk])
                lost += [as_text(e) for e in reply[0]]
                gone += [as_text(e) for e in reply[1]]
                renewed = start + len(chunk)
        except RedisError as exc:
            lost += self._failed(exc, entries[renewed:])
        else:
            self._last_ok = time.monotonic()
            self._refused = False
            if entries:
                self.gate.answered()
        for entry_id in lost:
            held = self._held.pop(entry_id, None)
            if held is not None:
                log.warning("lease lost: another worker owns the job now", entry=entry_id)
                held[0]()
        for entry_id in gone:
            held = self._held.pop(entry_id, None)
            if held is not None:
                log.warning(
                    "job entry gone from the job stream (XDEL or XTRIM): ending the job", entry=entry_id
                )
                (held[1] or held[0])()
        return lost

    def _failed(self, exc: RedisError, unchecked: list[str]) -> list[str]:
        """A renewal failed with ``exc``: the entries of ``unchecked`` to report lost (none, unless
        Redis has been silent for a whole lease)."""
        if is_outage(exc):
            self.gate.trouble()
        reason = refusal(exc)
        if reason is not None:
            # Redis answers, refusing every client alike (worker.refusals): no peer can claim
            # an entry meanwhile, and the first renewal it runs again tells what is still ours
            self._last_ok = time.monotonic()
            if not self._refused:
                log.warning("lease renewals refused for now; the leases are kept", reason=reason)
            self._refused = True
            return []
        silent = time.monotonic() - self._last_ok
        log.warning("lease renewal failed", error=str(exc), silent_for=round(silent, 2))
        return unchecked if silent >= self.lease_seconds else []  # a whole lease: peers own these
