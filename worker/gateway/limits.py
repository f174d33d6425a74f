"""Tenant limits: jobs in flight across every gateway process (counted in Redis), streams per process.

In-flight jobs of a tenant are the members of the sorted set ``P:gateway:{NAME}:inflight`` (internal
job ids, scored by enqueue time). :data:`ADMIT` adds one atomically unless the set holds
``max_inflight_jobs`` already (a job already in it is admitted again: re-posting is never refused).
Jobs leave the set lazily: when it is full, the members whose state hash says they ended (or whose
keys are gone) are removed and admission is tried once more. The set's TTL is renewed on every add.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from redis.asyncio import Redis

from ..keys import Keys, as_text

__all__ = ["ADMIT", "InflightLimiter", "StreamCounter", "inflight_key"]

# KEYS: the tenant's inflight set. ARGV: member, now_ms, max, ttl_ms.
# Returns 1 (added), 2 (already in it) or 0 (full).
ADMIT: Final = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 2 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_ENDED: Final = frozenset({"done", "error", "cancelled"})


def inflight_key(keys: Keys, tenant: str) -> str:
    return f"{keys.prefix}:gateway:{{{tenant}}}:inflight"


class InflightLimiter:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_seconds * 1000
        self._admit = redis.register_script(ADMIT)

    async def admit(
        self, tenant: str, job_id: str, limit: int, now_ms: int
    ) -> Literal["new", "present"] | None:
        """Count ``job_id`` in flight for ``tenant``: ``new``, ``present`` (it was), or None (full)."""
        key = inflight_key(self.keys, tenant)
        args: list[str | int] = [job_id, now_ms, limit, self.ttl_ms]
        reply = int(await self._admit(keys=[key], args=args))
        if reply == 0:
            await self.prune(tenant)
            reply = int(await self._admit(keys=[key], args=args))
        return {1: "new", 2: "present"}.get(reply)  # type: ignore[return-value]

    async def release(self, tenant: str, job_id: str) -> None:
        await self.redis.zrem(inflight_key(self.keys, tenant), job_id)

    async def prune(self, tenant: str) -> int:
        """Remove the tenant's members that have ended or expired; how many were removed."""
        key = inflight_key(self.keys, tenant)
        members = [as_text(m) for m in await self.redis.zrange(key, 0, -1)]
        if not members:
            return 0
        pipe: Any = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hget(self.keys.state(member), "state")
        states = await pipe.execute()
        ended = [m for m, s in zip(members, states, strict=True) if s is None or as_text(s) in _ENDED]
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
