"""Tenant limits: jobs in flight across every gateway process (counted in Redis), streams per process.

In-flight jobs of a tenant are the members of the sorted set ``P:gateway:{NAME}:inflight`` (internal
job ids, scored by when each was added or last checked). :data:`ADMIT` adds one atomically unless
the set holds ``max_inflight_jobs`` already (a job already in it is admitted again: re-posting is
never refused). Jobs leave the set lazily, as they end, and a refusal costs Redis constant work
however big the set (a tenant at its limit may post as often as it likes):

- each refusal checks one member, the one checked longest ago (``ADMIT`` names it and moves it to
  the back): a job that ended (or whose keys are gone) is removed and admission is tried once more;
- the whole set is swept of ended jobs at most once every :data:`SWEEP_SECONDS` per tenant, across
  every gateway process: the refusal that finds the marker ``P:gateway:{NAME}:sweep`` absent sets
  it (with that TTL) and sweeps, then tries once more.

So a job slot freed by an ended job is found by the next refusal for a small set, and within
:data:`SWEEP_SECONDS` for any set (the ``Retry-After`` of a refusal is longer). The set's TTL is
renewed on every add.

A member is added before its job's state hash exists (the gateway admits, then enqueues), so a
member without a hash counts as ended only once it has gone :data:`GONE_AFTER_SECONDS` unchecked
(its score, which a check that finds no hash leaves as it was): a refusal or a sweep between a
post's admission and its enqueue must not free the slot, or the tenant runs a job over its limit,
uncounted. A member whose hash never appears (its post failed or was cancelled in between) or
expired is freed that long after it was added or last found running.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from redis.asyncio import Redis

from ..keys import Keys, as_text

__all__ = [
    "ADMIT",
    "GONE_AFTER_SECONDS",
    "SWEEP_SECONDS",
    "InflightLimiter",
    "StreamCounter",
    "inflight_key",
    "sweep_key",
]

SWEEP_SECONDS: Final = 1.0

GONE_AFTER_SECONDS: Final = 120.0
"""How long a member without a state hash still counts (its post may not have enqueued it yet: the
pool wait, socket timeouts and retries of one post stay well under this)."""

# KEYS: the tenant's inflight set, its sweep marker. ARGV: member, now_ms, max, ttl_ms, sweep_ms
# (0: the try after a check or a sweep, which neither sweeps nor checks a member). Returns {1}
# (added), {2} (already in it), {3} (full: sweep now, the marker is set) or {0, member checked
# longest ago, its score before this check} ({0} for an empty set: max is 0).
ADMIT: Final = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {2} end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1}
end
if ARGV[5] == '0' then return {0} end
if redis.call('HSETNX', KEYS[2], 'at', ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return {3}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #oldest == 0 then return {0} end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], oldest[1])
return {0, oldest[1], oldest[2]}
"""

_ENDED: Final = frozenset({"done", "error", "cancelled"})
_ANSWERS: Final[dict[int, Literal["new", "present"]]] = {1: "new", 2: "present"}


def inflight_key(keys: Keys, tenant: str) -> str:
    return f"{keys.prefix}:gateway:{{{tenant}}}:inflight"


def sweep_key(keys: Keys, tenant: str) -> str:
    """The marker of a tenant's last full sweep (same hash slot as its set)."""
    return f"{keys.prefix}:gateway:{{{tenant}}}:sweep"


class InflightLimiter:
    def __init__(
        self, redis: Redis, keys: Keys, *, ttl_seconds: int, sweep_seconds: float = SWEEP_SECONDS
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_seconds * 1000
        self.sweep_ms = max(1, round(sweep_seconds * 1000))
        self.gone_after_ms = round(GONE_AFTER_SECONDS * 1000)
        self._admit = redis.register_script(ADMIT)

    async def admit(
        self, tenant: str, job_id: str, limit: int, now_ms: int
    ) -> Literal["new", "present"] | None:
        """Count ``job_id`` in flight for ``tenant``: ``new``, ``present`` (it was), or None (full)."""
        keys = [inflight_key(self.keys, tenant), sweep_key(self.keys, tenant)]
        reply: Any = await self._admit(keys=keys, args=[job_id, now_ms, limit, self.ttl_ms, self.sweep_ms])
        code = int(reply[0])
        if code == 3:
            await self.prune(tenant, now_ms)
        elif code == 0 and len(reply) > 2:
            checked, score = as_text(reply[1]), float(as_text(reply[2]))
            state = await self.redis.hget(self.keys.state(checked), "state")
            if state is None and now_ms - score < self.gone_after_ms:
                # no hash yet (its post is enqueueing it) or just gone: it counts, and keeps the
                # score it had, so the grace runs from when it was added or last found running
                await self.redis.zadd(keys[0], {checked: score}, xx=True)
                return None
            if state is not None and as_text(state) not in _ENDED:
                return None
            await self.redis.zrem(keys[0], checked)
        else:
            return _ANSWERS.get(code)
        reply = await self._admit(keys=keys, args=[job_id, now_ms, limit, self.ttl_ms, 0])
        return _ANSWERS.get(int(reply[0]))

    async def release(self, tenant: str, job_id: str) -> None:
        await self.redis.zrem(inflight_key(self.keys, tenant), job_id)

    async def prune(self, tenant: str, now_ms: int) -> int:
        """Remove the tenant's members that have ended, or have had no state hash for
        :data:`GONE_AFTER_SECONDS`; how many were removed."""
        key = inflight_key(self.keys, tenant)
        scored: Any = await self.redis.zrange(key, 0, -1, withscores=True)
        members = [(as_text(m), float(score)) for m, score in scored]
        if not members:
            return 0
        pipe: Any = self.redis.pipeline(transaction=False)
        for member, _ in members:
            pipe.hget(self.keys.state(member), "state")
        states = await pipe.execute()
        gone_before = now_ms - self.gone_after_ms
        ended = [
            m
            for (m, score), s in zip(members, states, strict=True)
            if (s is None and score <= gone_before) or (s is not None and as_text(s) in _ENDED)
        ]
        if ended:
            await self.redis.zrem(key, *ended)
        return len(ended)


class StreamCounter:
    """Open SSE connections per tenant in this process."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def acquire(self, tenant: str, limit: int) -> bool:
        count = self.open.get(tenant, 0)
        if count >= limit:
            return False
        self.open[tenant] = count + 1
        return True

    def release(self, tenant: str) -> None:
        count = self.open.get(tenant, 0) - 1
        if count > 0:
            self.open[tenant] = count
        else:
            self.open.pop(tenant, None)
