"""Shared provider budgets: concurrency, requests and tokens per minute, across every worker.

A provider that sets ``max_concurrency``, ``requests_per_minute`` or ``tokens_per_minute`` (see
:class:`~worker.settings.Provider`) has a budget scope in Redis (the provider, or each of its models
with ``limits_per = "model"``), kept by the ``BUDGET_*`` scripts of :mod:`worker.scripts` on the
four keys of :meth:`worker.keys.Keys.budget`, all in one hash slot:

- Before each upstream request an attempt asks for a **permit**: a concurrency slot (a lease that
  expires by itself unless its worker renews it, so a crashed worker's slots come back), one request
  and its worst-case tokens (``max_tokens`` plus the prompt at four characters a token) from two
  continuously refilled buckets. Two Redis calls a request (acquire, settle), never one a token.
- Requests refused a permit wait in a FIFO queue in Redis: only the first may take a free slot, and
  the first one short of rate budget holds it for itself, so nobody starves. A waiter polls with the
  :data:`WAIT` backoff (woken early when a slot of its scope frees in this process), or sleeps the
  time the script says the rates need.
- When the request ends its permit is settled: the slot freed, the unused tokens given back.
- **AIMD.** An HTTP 429 cuts the scope's budget for every worker at once: the concurrency limit to
  :data:`BETA` times what was in use, the rates' factor by :data:`BETA`, and ``Retry-After`` pauses
  the whole scope. Each accepted request grows them back additively (the limit by ``1/limit``, about
  one a round; the factor by :data:`RATE_STEP`), up to the settings. A 429 never spends an attempt:
  the job waits (leased, cancellable) and fails with ``rate_limited`` only when its
  ``job_deadline_seconds`` would run out first.

A provider without limits has no Redis state; its 429s still wait (``Retry-After``, else the upstream
backoff) without spending attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import scripts
from .admit import Admitted
from .backoff import REDIS, Backoff, RetryPolicy
from .keys import Keys, as_text
from .metrics import Metrics
from .settings import Settings
from .upstream.base import UpstreamError

__all__ = [
    "BETA",
    "MAX_RETRY_AFTER",
    "MIN_FACTOR",
    "RATE_STEP",
    "WAIT",
    "Budgets",
    "Permit",
    "Scope",
    "estimate_tokens",
]

T = TypeVar("T")

log = structlog.get_logger("tokenwire.ratelimit")

BETA = 0.5
"""The multiplicative cut on a 429: the concurrency limit and the rates' factor are halved."""
RATE_STEP = 0.05
"""The rates' factor grows by this much per accepted request (back to 1 after 10-20 successes)."""
MIN_FACTOR = 1 / 64
"""The rates never shrink below this fraction of their settings."""
WAIT = RetryPolicy(base=0.05, cap=0.5)
"""How a request refused a concurrency slot polls again (woken early when one frees here)."""
MAX_RETRY_AFTER = 600.0
"""The longest ``Retry-After`` honoured (a hostile or broken header cannot park a job for days)."""
KEY_TTL_MS = 3_600_000
"""A scope's keys expire an hour after their last use (its AIMD state starts over)."""
RENEW_CHUNK = 128
"""Slot leases renewed per script call."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One shared budget: a provider's (``name`` is the provider) or one model's (``name/model``)."""

    provider: str
    name: str
    keys: tuple[str, str, str, str]
    max_concurrency: int  # 0: none
    requests_per_minute: float  # 0: none
    tokens_per_minute: int  # 0: none


@dataclass(slots=True)
class Permit:
    """A granted request: its ticket (its slot in Redis), when Redis granted it, what it reserved."""

    scope: Scope
    ticket: str
    granted_ms: int
    reserved: float


def estimate_tokens(admitted: Admitted, settings: Settings) -> tuple[int, int]:
    """``(prompt, completion)`` worst-case tokens of a request: the prompt at four characters a
    token, and the capped ``max_tokens`` it asks for."""
    job = admitted.job
    completion = min(job.params.max_tokens or settings.default_max_tokens, settings.max_tokens_cap)
    return math.ceil(job.prompt_chars / 4), completion


def _retry_after(exc: UpstreamError) -> float | None:
    wait = exc.retry_after
    if wait is None or not math.isfinite(wait):
        return None
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


class Budgets:
    """Every shared budget of one worker process. ``redis`` None: no shared budget (429s still wait)."""

    def __init__(
        self, redis: Redis | None, keys: Keys, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.slot_ttl_ms = int(settings.lease_seconds * 1000)
        self._held: dict[str, Permit] = {}
        self._freed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.waiting: dict[str, int] = {}
        if redis is not None:
            self._acquire = redis.register_script(scripts.BUDGET_ACQUIRE)
            self._release = redis.register_script(scripts.BUDGET_RELEASE)
            self._throttle = redis.register_script(scripts.BUDGET_THROTTLE)
            self._renew = redis.register_script(scripts.BUDGET_RENEW)

    # -- scopes --------------------------------------------------------------------------------

    def scope_for(self, admitted: Admitted) -> Scope | None:
        """The budget ``admitted``'s requests draw on, or None (no limits, or no Redis)."""
        provider = admitted.provider
        if self.redis is None or not provider.limited:
            return None
        name = admitted.provider_name
        if provider.limits_per == "model":
            name = f"{name}/{admitted.job.model}"
        return Scope(
            provider=admitted.provider_name,
            name=name,
            keys=self.keys.budget(name),
            max_concurrency=provider.max_concurrency or 0,
            requests_per_minute=provider.requests_per_minute or 0.0,
            tokens_per_minute=provider.tokens_per_minute or 0,
        )

    @property
    def held(self) -> int:
        """Permits this process holds (requests in flight on a shared budget)."""
        return len(self._held)

    # -- one request ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def request(
        self,
        admitted: Admitted,
        deadline: float,
        opener: Callable[[], AbstractAsyncContextManager[T]],
        used: Callable[[], int],
    ) -> AsyncIterator[T]:
        """Enter ``opener()`` (the upstream request) within the provider's budget.

        Waits for a permit first; a 429 on entry cuts the budget, waits (``Retry-After``, else the
        upstream backoff, then for a permit again) and opens anew: no attempt is spent. Raises
        :class:`UpstreamError` ``rate_limited`` (not retryable) when the wait would outlast
        ``deadline`` (loop time). ``used()``: tokens the request used (settled at its end)."""
        scope = self.scope_for(admitted)
        prompt, completion = estimate_tokens(admitted, self.settings)
        backoff = Backoff(RetryPolicy.upstream(self.settings))
        while True:
            permit = (
                None if scope is None else await self._wait_for_permit(scope, prompt + completion, deadline)
            )
            stack = contextlib.AsyncExitStack()
            try:
                entered = await stack.enter_async_context(opener())
            except UpstreamError as exc:
                if exc.status != 429:
                    self._settle(permit, ok=False, used=0)
                    raise
                delay = backoff.failed(_retry_after(exc))
                self._throttled(admitted.provider_name, permit, exc)
                log.info(
                    "provider refused the request (HTTP 429): waiting for budget, no attempt spent",
                    provider=admitted.provider_name,
                    retry_in=round(delay, 3),
                    refusals=backoff.failures,
                )
                self._check_deadline(admitted.provider_name, deadline, delay, "HTTP 429 from the provider")
                await self._waiting(admitted.provider_name, asyncio.sleep(delay))
                continue
            except BaseException:
                self._settle(permit, ok=False, used=0)
                raise
            break
        try:
            async with stack:
                yield entered
        finally:
            self._settle(permit, ok=True, used=used())

    async def _wait_for_permit(self, scope: Scope, cost: int, deadline: float) -> Permit:
        ticket = uuid.uuid4().hex
        polls, redis_errors = Backoff(WAIT), Backoff(REDIS)
        waiter_ttl = self.slot_ttl_ms
        granted = False
        try:
            while True:
                try:
                    reply = await self._acquire(
                        keys=list(scope.keys),
                        args=[
                            ticket,
                            self.slot_ttl_ms,
                            waiter_ttl,
                            scope.max_concurrency,
                            scope.requests_per_minute,
                            scope.tokens_per_minute,
                            cost,
                            KEY_TTL_MS,
                        ],
                    )
                except RedisError as exc:
                    delay, reason = redis_errors.failed(), f"Redis ({exc})"
                    wake = False
                else:
                    redis_errors.succeeded()
                    self._observe(scope, as_text(reply[3]), float(as_text(reply[8])))
                    if int(reply[0]) == 1:
                        granted = True
                        permit = Permit(scope, ticket, int(reply[6]), float(as_text(reply[7])))
                        self._held[ticket] = permit
                        return permit
                    hint, reason = int(as_text(reply[1])), as_text(reply[2])
                    wake = hint == 0
                    delay = polls.failed() if wake else hint / 1000 * (1 + 0.1 * random.random())
                    delay = min(delay, MAX_RETRY_AFTER)
                waiter_ttl = self.slot_ttl_ms + int(delay * 1000)
                self._check_deadline(scope.provider, deadline, delay, f"waiting for {reason}")
                await self._waiting(scope.provider, self._pause(scope, delay, wake))
        finally:
            if not granted and self.redis is not None:  # leave the queue (cancelled, deadline)
                self._spawn(self._call_release(scope, ticket, "fail", 0.0))

    async def _pause(self, scope: Scope, delay: float, wake: bool) -> None:
        """Sleep ``delay``; with ``wake``, less when a slot of ``scope`` frees in this process."""
        if not wake:
            await asyncio.sleep(delay)
            return
        event = self._freed.setdefault(scope.name, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()

    async def _waiting(self, provider: str, pause: Coroutine[Any, Any, None]) -> None:
        """Run ``pause`` counted as a job waiting for ``provider``'s budget."""
        gauge = self.metrics.provider_waiting.labels(provider)
        self.waiting[provider] = self.waiting.get(provider, 0) + 1
        gauge.inc()
        try:
            await pause
        finally:
            self.waiting[provider] -= 1
            gauge.dec()

    def _check_deadline(self, provider: str, deadline: float, delay: float, why: str) -> None:
        if asyncio.get_running_loop().time() + delay < deadline:
            return
        raise UpstreamError(
            "rate_limited",
            f"provider {provider!r} had no budget for the request before the job's deadline "
            f"(job_deadline_seconds={self.settings.job_deadline_seconds}; {why})",
            status=429,
            retryable=False,
        )

    # -- settling ------------------------------------------------------------------------------

    def _settle(self, permit: Permit | None, *, ok: bool, used: int) -> None:
        if permit is None:
            return
        self._held.pop(permit.ticket, None)
        refund = permit.reserved - used if permit.scope.tokens_per_minute else 0.0
        self._spawn(self._call_release(permit.scope, permit.ticket, "ok" if ok else "fail", refund))
        self._wake(permit.scope)

    def _throttled(self, provider: str, permit: Permit | None, exc: UpstreamError) -> None:
        self.metrics.provider_throttled.labels(provider).inc()
        if permit is None:
            return
        self._held.pop(permit.ticket, None)
        retry_after = _retry_after(exc)
        self._spawn(self._call_throttle(permit, 0 if retry_after is None else int(retry_after * 1000)))

    def _wake(self, scope: Scope) -> None:
        event = self._freed.pop(scope.name, None)
        if event is not None:
            event.set()

    async def _call_release(self, scope: Scope, ticket: str, outcome: str, refund: float) -> None:
        reply = await self._release(
            keys=list(scope.keys),
            args=[
                ticket,
                outcome,
                refund,
                scope.max_concurrency,
                scope.tokens_per_minute,
                KEY_TTL_MS,
                RATE_STEP,
            ],
        )
        self._observe(scope, as_text(reply[0]), float(as_text(reply[3])))

    async def _call_throttle(self, permit: Permit, retry_after_ms: int) -> None:
        scope = permit.scope
        reply = await self._throttle(
            keys=list(scope.keys),
            args=[
                permit.ticket,
                permit.granted_ms,
                retry_after_ms,
                scope.max_concurrency,
                scope.tokens_per_minute,
                permit.reserved,
                KEY_TTL_MS,
                BETA,
                MIN_FACTOR,
            ],
        )
        if int(reply[0]):
            log.warning(
                "provider budget cut after HTTP 429",
                provider=scope.provider,
                scope=scope.name,
                limit=as_text(reply[1]) or None,
                paused_ms=int(reply[2]),
            )

    def _spawn(self, call: Coroutine[Any, Any, None]) -> None:
        """Run a settling call in the background: a job never waits for it, and a cancelled job
        still frees its slot (if the call fails, the slot's lease ends by itself)."""
        task = asyncio.get_running_loop().create_task(self._quietly(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        except RedisError as exc:
            log.warning("could not settle a provider budget (its slot lease ends by itself)", error=str(exc))

    async def settled(self) -> None:
        """Wait for the settling calls in flight (a stopping worker, tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _observe(self, scope: Scope, limit: str, factor: float) -> None:
        gauge = self.metrics.provider_budget
        gauge.labels(scope.provider, "concurrency").set(float(limit) if limit else math.inf)
        if scope.requests_per_minute:
            gauge.labels(scope.provider, "requests_per_minute").set(scope.requests_per_minute * factor)
        if scope.tokens_per_minute:
            gauge.labels(scope.provider, "tokens_per_minute").set(scope.tokens_per_minute * factor)

    # -- slot leases ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew the slot leases of this process's requests in flight, every third of a lease."""
        interval = self.slot_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval * (0.9 + 0.2 * random.random()))
            await self.renew_once()

    async def renew_once(self) -> int:
        """Renew every held slot now; how many Redis renewed."""
        by_scope: dict[str, tuple[Scope, list[str]]] = {}
        for ticket, permit in list(self._held.items()):
            by_scope.setdefault(permit.scope.name, (permit.scope, []))[1].append(ticket)
        renewed = 0
        for scope, tickets in by_scope.values():
            for start in range(0, len(tickets), RENEW_CHUNK):
                chunk = tickets[start : start + RENEW_CHUNK]
                try:
                    renewed += int(
                        await self._renew(keys=[scope.keys[1]], args=[self.slot_ttl_ms, KEY_TTL_MS, *chunk])
                    )
                except RedisError as exc:
                    log.warning("could not renew provider slot leases", scope=scope.name, error=str(exc))
        return renewed
