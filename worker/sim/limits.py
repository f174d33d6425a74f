"""A rate limit the simulator enforces, as a provider does: the ``limit`` directives.

``limit=N`` admits at most N streams at once, ``limit_rps=R`` at most R requests a second (a
sliding one-second window, or ``1/R`` seconds when R < 1); both count per base model
(``limit_scope=model``, the default) or over the whole server (``limit_scope=server``). A request
beyond either is refused with HTTP 429 in its dialect's error shape, with ``Retry-After`` (whole
seconds, rounded up) and ``retry-after-ms`` (``limit_retry_after`` seconds; OpenAI sends both).
What each scope admitted and refused, its streams now and at most, is served in ``GET /stats``
under ``limits``.
"""

from __future__ import annotations

import collections
import math
import time

import msgspec

from worker.sim.faults import Directives

__all__ = ["LimitCounts", "Limiter", "refusal_headers"]


class LimitCounts(msgspec.Struct, kw_only=True):
    """One scope's counts (``model:<base>`` or ``server``)."""

    limit: int | None = None
    limit_rps: float | None = None
    admitted: int = 0
    refused: int = 0
    active: int = 0
    peak: int = 0  # the most streams admitted at once


class Limiter:
    """The limits of one simulator; ``counts`` is the dict ``/stats`` serves."""

    def __init__(self, counts: dict[str, LimitCounts]) -> None:
        self.counts = counts
        self._recent: dict[str, collections.deque[float]] = {}

    def admit(self, model: str, directives: Directives, now: float | None = None) -> str | None:
        """The scope a request counts against once admitted, ``""`` when it has no limit, or None
        when it is refused (answer 429). An admitted request must be :meth:`release`-d."""
        if directives.limit is None and directives.limit_rps is None:
            return ""
        scope = "server" if directives.limit_scope == "server" else f"model:{model}"
        counts = self.counts.setdefault(scope, LimitCounts())
        counts.limit, counts.limit_rps = directives.limit, directives.limit_rps
        now = time.monotonic() if now is None else now
        if directives.limit is not None and counts.active >= directives.limit:
            counts.refused += 1
            return None
        if directives.limit_rps is not None and not self._rate_ok(scope, directives.limit_rps, now):
            counts.refused += 1
            return None
        counts.admitted += 1
        counts.active += 1
        counts.peak = max(counts.peak, counts.active)
        return scope

    def _rate_ok(self, scope: str, rps: float, now: float) -> bool:
        window = max(1.0, 1.0 / rps)
        allowed = max(1, math.floor(rps * window))
        recent = self._recent.setdefault(scope, collections.deque())
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= allowed:
            return False
        recent.append(now)
        return True

    def release(self, scope: str) -> None:
        """An admitted request ended (its stream finished, failed or was cut)."""
        if scope:
            self.counts[scope].active -= 1


def refusal_headers(directives: Directives) -> dict[str, str]:
    """``Retry-After`` and ``retry-after-ms`` for a refused request."""
    wait = directives.limit_retry_after
    return {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(round(wait * 1000))}
