"""What a provider+model can give: a refusal of logprobs, or ``n`` ignored, remembered for every worker.

When a provider or model refuses logprobs (``logprobs_unsupported``, :mod:`worker.upstream.classify`),
the worker remembers it in Redis (``P:nolp:{provider}:{digest}``, :meth:`worker.keys.Keys.no_logprobs`)
for ``logprobs_refusal_ttl_seconds``, so the next job for that pair, on any worker, asks without
logprobs at once (policy ``preferred``) or fails at once (``required``) instead of paying the
refused request again. Likewise a provider+model seen to ignore chat's or completions' ``n`` (it
answered fewer choices than a job's candidates asked for, :mod:`worker.candidates`) is remembered
(``P:no_n:{provider}:{digest}``, :meth:`worker.keys.Keys.no_n`, for the same TTL), so the next job
with candidates asks for each on its own request at once. Each worker also keeps what it read for
a few seconds (:data:`LOCAL_SECONDS`), so a busy worker does not read Redis for every job. A Redis
failure never fails a job: the memo is an optimisation, and a job that finds none just pays the
refused request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .keys import Keys, as_text

__all__ = ["LOCAL_SECONDS", "LogprobsMemo"]

LOCAL_SECONDS = 5.0
"""How long a worker trusts what it read from Redis before it reads again."""

_REASON_LIMIT = 500
_LOCAL_LIMIT = 4096

log = structlog.get_logger("tokenwire.capability")


class LogprobsMemo:
    """Refusals of logprobs (and of ``n``) per provider+model, shared through Redis; no I/O until
    called."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(int(ttl_seconds * 1000), 1)
        self._clock = clock
        self._local: dict[tuple[str, str, str], tuple[float, str | None]] = {}

    async def refusal(self, provider: str, model: str) -> str | None:
        """Why ``provider`` refuses logprobs for ``model``, if it was seen to; else ``None``."""
        return await self._read(self._keys.no_logprobs, ("nolp", provider, model))

    async def remember(self, provider: str, model: str, reason: str) -> None:
        """Record that ``provider`` refused logprobs for ``model`` (for the TTL, on every worker)."""
        await self._write(self._keys.no_logprobs(provider, model), ("nolp", provider, model), reason)

    async def ignores_n(self, provider: str, model: str) -> str | None:
        """What ``provider`` answered when ``model`` was asked for ``n`` choices, if it was seen to
        answer fewer; else ``None``."""
        return await self._read(self._keys.no_n, ("no_n", provider, model))

    async def remember_ignores_n(self, provider: str, model: str, reason: str) -> None:
        """Record that ``provider`` ignores ``n`` for ``model`` (for the TTL, on every worker)."""
        await self._write(self._keys.no_n(provider, model), ("no_n", provider, model), reason)

    async def _read(self, key_of: Callable[[str, str], str], local: tuple[str, str, str]) -> str | None:
        """The memo ``local`` names (kind, provider, model), from this worker's copy while it is
        fresh, else from Redis at ``key_of(provider, model)`` (its digest made only then)."""
        now = self._clock()
        cached = self._local.get(local)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            raw = await self._redis.get(key_of(local[1], local[2]))
        except RedisError as exc:
            log.warning("could not read the capability memo", memo=local[0], error=repr(exc))
            return None
        reason = None if raw is None else as_text(raw)[:_REASON_LIMIT]
        self._keep(local, now, reason)
        return reason

    async def _write(self, key: str, local: tuple[str, str, str], reason: str) -> None:
        reason = reason[:_REASON_LIMIT]
        self._keep(local, self._clock(), reason)
        try:
            await self._redis.set(key, reason, px=self._ttl_ms)
        except RedisError as exc:
            log.warning("could not record the capability memo", memo=local[0], error=repr(exc))

    def _keep(self, local: tuple[str, str, str], now: float, reason: str | None) -> None:
        if len(self._local) >= _LOCAL_LIMIT:
            self._local.clear()  # bounded: many models only cost reads again
        self._local[local] = (now + LOCAL_SECONDS, reason)
