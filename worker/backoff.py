"""The worker's one retry policy: exponential backoff with equal jitter, capped, reset by a success.

The wait after the n-th failure in a row is drawn uniformly from ``[d/2, d]`` where
``d = min(cap, base * 2**(n-1))``: the first wait is at most ``base``, each step doubles the range,
no wait exceeds ``cap``, and none is shorter than half its step (so peers that failed together do
not retry together, and none retries at once). The draw is redis-py's
:class:`~redis.backoff.EqualJitterBackoff`, whose ``compute(n)`` is exactly this wait, so redis-py's
own :class:`~redis.asyncio.retry.Retry` (the connection pools' retries) and every loop of the worker
that retries (upstream requests, event writes, the job stream read, the cancel listener) wait the
same way.

Two parameter sets, because the two things retried fail differently: :data:`REDIS` rides out a
Redis restart or failover (first retry within 0.1 s, never more than 2 s apart), and
:meth:`RetryPolicy.upstream` spaces requests to a provider (``retry_base_seconds``,
``retry_max_seconds``), where a ``Retry-After`` the provider sent wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .settings import Settings

__all__ = ["REDIS", "Backoff", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``base``: the longest first wait; ``cap``: the longest wait (seconds, both > 0)."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap > 0):
            raise ValueError(f"retry policy needs base > 0 and cap > 0, got base={self.base} cap={self.cap}")

    @classmethod
    def upstream(cls, settings: Settings) -> RetryPolicy:
        """Between requests to a provider: ``retry_base_seconds`` doubling to ``retry_max_seconds``."""
        return cls(base=settings.retry_base_seconds, cap=settings.retry_max_seconds)

    def backoff(self) -> EqualJitterBackoff:
        """redis-py's backoff for this policy: ``compute(n)`` is the wait after failure ``n`` (from 1)."""
        # redis-py's step n is base * 2**n; ours is base * 2**(n-1), hence half the base.
        return EqualJitterBackoff(cap=self.cap, base=self.base / 2)

    def redis_retry(self, retries: int) -> Retry:
        """redis-py's retry of a command on a connection error or timeout, ``retries`` times at most."""
        return Retry(self.backoff(), retries, supported_errors=(RedisConnectionError, RedisTimeoutError))


REDIS = RetryPolicy(base=0.1, cap=2.0)
"""Every retry of a Redis operation: the pools' command retries, event writes, the stream read,
consumer group creation, the cancel listener."""


class Backoff:
    """One loop's failures in a row and the wait each earns; a success starts it over."""

    __slots__ = ("_backoff", "failures")

    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = policy.backoff()
        self.failures = 0

    def failed(self, retry_after: float | None = None) -> float:
        """Count a failure; seconds to wait before the next try. ``retry_after`` (what the other
        side asked for, e.g. an HTTP ``Retry-After``) wins over the computed wait when given."""
        self.failures += 1
        if retry_after is not None:
            return max(0.0, retry_after)
        return float(self._backoff.compute(self.failures))

    def succeeded(self) -> None:
        """The operation worked: the next failure waits as little as the first."""
        self.failures = 0  # (equal jitter keeps no state of its own to reset)
