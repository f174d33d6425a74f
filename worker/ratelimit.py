"""Shared provider budgets: concurrency, requests and tokens per minute, across every worker.

A provider that sets ``max_concurrency``, ``requests_per_minute`` or ``tokens_per_minute`` (see
:class:`~worker.settings.Provider`) has a budget scope in Redis (the provider, or each of its models
with ``limits_per = "model"``), kept by the ``BUDGET_*`` scripts of :mod:`worker.scripts` on the
four keys of :meth:`worker.keys.Keys.budget`, all in one hash slot:

- Before each upstream request an attempt asks for a **permit**: a concurrency slot (a lease that
  expires by itself unless its worker renews it, so a crashed worker's slots come back), one request
  and its worst-case tokens (:func:`request_tokens`: ``max_tokens`` for each answer it asks for,
  ``n`` for a job's candidates on one chat or completions request, plus the prompt at four
  characters a token) from two continuously refilled buckets. Two Redis calls a request
  (acquire, settle), never one a token.
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
import time
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
from .upstream.choices import TOKENS_OF

__all__ = [
    "BETA",
    "MAX_RETRY_AFTER",
    "MIN_FACTOR",
    "RATE_STEP",
    "WAIT",
    "BudgetWait",
    "Budgets",
    "Permit",
    "Scope",
    "collect_budgets",
    "estimate_tokens",
    "no_budget",
    "request_tokens",
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
MAX_LISTED = 1000
"""Budget scopes ``tokenwire stats`` shows at most."""


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


class BudgetWait:
    """Why a request is waiting for budget right now (``why``; None while it is not): its attempt
    holds one, so a job deadline that passes during the wait is told as ``rate_limited``
    (:func:`no_budget`), not as a generic ``deadline_exceeded``, whichever timer fires first."""

    __slots__ = ("why",)

    def __init__(self) -> None:
        self.why: str | None = None


def no_budget(provider: str, settings: Settings, why: str) -> UpstreamError:
    """The error of a request that found no budget before its job's deadline."""
    return UpstreamError(
        "rate_limited",
        f"provider {provider!r} had no budget for the request before the job's deadline "
        f"(job_deadline_seconds={settings.job_deadline_seconds}; {why})",
        status=429,
        retryable=False,
    )


class _Waiting:
    """One request's wait for budget, counted in ``tokenwire_provider_waiting_jobs`` (and
    :attr:`Budgets.waiting`) from its first refusal until it is granted or gives up."""

    __slots__ = ("budgets", "on", "provider")

    def __init__(self, budgets: Budgets, provider: str) -> None:
        self.budgets, self.provider, self.on = budgets, provider, False

    def start(self) -> None:
        if not self.on:
            self.on = True
            self.budgets.waiting[self.provider] = self.budgets.waiting.get(self.provider, 0) + 1
            self.budgets.metrics.provider_waiting.labels(self.provider).inc()

    def stop(self) -> None:
        if self.on:
            self.on = False
            self.budgets.waiting[self.provider] -= 1
            self.budgets.metrics.provider_waiting.labels(self.provider).dec()


def estimate_tokens(admitted: Admitted, settings: Settings) -> tuple[int, int]:
    """``(prompt, completion)`` worst-case tokens of a request: the prompt at four characters a
    token, and the capped ``max_tokens`` it asks for."""
    job = admitted.job
    completion = min(job.params.max_tokens or settings.default_max_tokens, settings.max_tokens_cap)
    return math.ceil(job.prompt_chars / 4), completion


def request_tokens(admitted: Admitted, settings: Settings) -> int:
    """The worst-case tokens of one request of ``admitted``: its prompt, and ``max_tokens`` for each
    answer it asks for: ``n`` when it is the one chat or completions request for a job's
    ``candidates`` (the adapter sends ``"n"``; worker/candidates.py), else one (a candidate's own
    request is a job without candidates)."""
    prompt, completion = estimate_tokens(admitted, settings)
    job = admitted.job
    wanted = job.candidates
    answers = wanted.n if wanted is not None and wanted.n > 1 and job.api in TOKENS_OF else 1
    return prompt + completion * answers


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
        self._registered: dict[str, float] = {}  # scope -> when this process last listed it
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
        wait: BudgetWait | None = None,
    ) -> AsyncIterator[T]:
        """Enter ``opener()`` (the upstream request) within the provider's budget.

        Waits for a permit first; a 429 on entry cuts the budget, waits (``Retry-After``, else the
        upstream backoff, then for a permit again) and opens anew: no attempt is spent. Raises
        :class:`UpstreamError` ``rate_limited`` (not retryable) when the wait would outlast
        ``deadline`` (loop time). ``used()``: tokens the request used (settled at its end).
        ``wait``: kept saying why the request waits, while it does (:class:`BudgetWait`)."""
        scope = self.scope_for(admitted)
        provider = admitted.provider_name
        cost = 0 if scope is None else request_tokens(admitted, self.settings)
        backoff: Backoff | None = None  # from the first 429 on
        wait = BudgetWait() if wait is None else wait
        waiting = _Waiting(self, provider)
        try:
            while True:
                permit = None
                if scope is not None:
                    permit = await self._wait_for_permit(scope, cost, deadline, waiting, wait)
                wait.why = None
                request = opener()  # entered and exited by hand: an exit stack costs ~2 us a request
                try:
                    entered = await request.__aenter__()
                except UpstreamError as exc:
                    if exc.status != 429 and exc.code != "rate_limited":
                        self._settle(permit, ok=False, used=0)
                        raise
                    if backoff is None:
                        backoff = Backoff(RetryPolicy.upstream(self.settings))
                    delay = backoff.failed(_retry_after(exc))
                    self._throttled(provider, permit, exc)
                    log.info(
                        "provider refused the request (HTTP 429): waiting for budget, no attempt spent",
                        provider=provider,
                        retry_in=round(delay, 3),
                        refusals=backoff.failures,
                    )
                    wait.why = "HTTP 429 from the provider"
                    self._check_deadline(provider, deadline, delay, wait.why)
                    waiting.start()
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    self._settle(permit, ok=False, used=0)
                    raise
                break
        finally:
            waiting.stop()
        try:
            try:
                yield entered
            except BaseException as exc:
                if not await request.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await request.__aexit__(None, None, None)
        finally:
            if permit is not None:  # without one, nothing to settle: used() is not needed
                self._settle(permit, ok=True, used=used())

    async def acquire_once(
        self, scope: Scope, ticket: str, cost: int, waiter_ttl_ms: int
    ) -> tuple[Permit | None, int, str]:
        """One ask for a permit: ``(permit, 0, "granted")`` (held until settled), or ``(None,
        wait hint ms (0: unknown), why)``. Raises :class:`RedisError`."""
        reply = await self._acquire(
            keys=list(scope.keys),
            args=[
                ticket,
                self.slot_ttl_ms,
                waiter_ttl_ms,
                scope.max_concurrency,
                scope.requests_per_minute,
                scope.tokens_per_minute,
                cost,
                KEY_TTL_MS,
            ],
        )
        self._observe(scope, as_text(reply[3]), _number(reply[8], 1.0, MIN_FACTOR, 1.0))
        if int(reply[0]) != 1:
            hint = int(_number(reply[1], 0.0, 0.0, MAX_RETRY_AFTER * 1000))
            return None, hint, as_text(reply[2])
        permit = Permit(scope, ticket, int(reply[6]), _number(reply[7], 0.0, 0.0, float(cost)))
        self._held[ticket] = permit
        return permit, 0, "granted"

    async def _wait_for_permit(
        self, scope: Scope, cost: int, deadline: float, waiting: _Waiting, wait: BudgetWait
    ) -> Permit:
        ticket = uuid.uuid4().hex
        self._register(scope)
        polls, redis_errors = Backoff(WAIT), Backoff(REDIS)
        waiter_ttl = self.slot_ttl_ms
        permit: Permit | None = None
        try:
            while True:
                try:
                    permit, hint, reason = await self.acquire_once(scope, ticket, cost, waiter_ttl)
                except RedisError as exc:
                    delay, reason, wake = redis_errors.failed(), f"Redis ({exc})", False
                else:
                    redis_errors.succeeded()
                    if permit is not None:
                        return permit
                    wake = hint == 0
                    delay = polls.failed() if wake else hint / 1000 * (1 + 0.1 * random.random())
                    delay = min(delay, MAX_RETRY_AFTER)
                waiter_ttl = self.slot_ttl_ms + int(delay * 1000)
                wait.why = f"waiting for {reason}"
                self._check_deadline(scope.provider, deadline, delay, wait.why)
                waiting.start()
                await self._pause(scope, delay, wake)
        finally:
            if permit is None and self.redis is not None:  # leave the queue (cancelled, deadline)
                self._spawn(self.release(scope, ticket, "fail", 0.0))

    async def _pause(self, scope: Scope, delay: float, wake: bool) -> None:
        """Sleep ``delay``; with ``wake``, less when a slot of ``scope`` frees in this process."""
        if not wake:
            await asyncio.sleep(delay)
            return
        event = self._freed.setdefault(scope.name, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()

    def _check_deadline(self, provider: str, deadline: float, delay: float, why: str) -> None:
        if asyncio.get_running_loop().time() + delay < deadline:
            return
        raise no_budget(provider, self.settings, why)

    def _register(self, scope: Scope) -> None:
        """List ``scope`` in ``P:budgets`` (for ``tokenwire stats``): once, then every half TTL."""
        now = asyncio.get_running_loop().time()
        if now - self._registered.get(scope.name, -math.inf) < KEY_TTL_MS / 2000:
            return
        self._registered[scope.name] = now
        self._spawn(self.register(scope))

    async def register(self, scope: Scope) -> None:
        """List ``scope`` in ``P:budgets`` with the index's TTL."""
        assert self.redis is not None
        index = self.keys.budget_scopes()
        await self.redis.hset(index, scope.name, scope.provider)
        await self.redis.pexpire(index, KEY_TTL_MS)

    # -- settling ------------------------------------------------------------------------------

    def _settle(self, permit: Permit | None, *, ok: bool, used: int) -> None:
        if permit is None:
            return
        self._held.pop(permit.ticket, None)
        refund = 0.0
        if permit.scope.tokens_per_minute:
            # ``used`` counts what a provider reported (bounded by the adapters): never more than
            # a minute's budget is taken back (the script floors the bucket at empty anyway)
            taken = min(max(0.0, float(used)), permit.reserved + permit.scope.tokens_per_minute)
            refund = permit.reserved - taken
        self._spawn(self.release(permit.scope, permit.ticket, "ok" if ok else "fail", refund))
        self._wake(permit.scope)

    def _throttled(self, provider: str, permit: Permit | None, exc: UpstreamError) -> None:
        self.metrics.provider_throttled.labels(provider).inc()
        if permit is None:
            return
        self._held.pop(permit.ticket, None)
        retry_after = _retry_after(exc)
        self._spawn(self.throttle(permit, 0 if retry_after is None else int(retry_after * 1000)))

    def _wake(self, scope: Scope) -> None:
        event = self._freed.pop(scope.name, None)
        if event is not None:
            event.set()

    async def release(self, scope: Scope, ticket: str, outcome: str, refund: float) -> None:
        """Settle ``ticket``: free its slot or queue place, refund tokens, grow on ``ok``."""
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
        self._observe(scope, as_text(reply[0]), _number(reply[3], 1.0, MIN_FACTOR, 1.0))

    async def throttle(self, permit: Permit, retry_after_ms: int) -> None:
        """``permit``'s request got a 429: free its slot, cut the budget, pause for Retry-After."""
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
            try:
                await self.renew_once()
            except RedisError as exc:
                log.warning("could not renew provider slot leases", error=str(exc))

    async def renew_once(self) -> int:
        """Renew every held slot now; how many Redis renewed. Raises :class:`RedisError`."""
        by_scope: dict[str, tuple[Scope, list[str]]] = {}
        for ticket, permit in list(self._held.items()):
            by_scope.setdefault(permit.scope.name, (permit.scope, []))[1].append(ticket)
        renewed = 0
        for scope, tickets in by_scope.values():
            for start in range(0, len(tickets), RENEW_CHUNK):
                chunk = tickets[start : start + RENEW_CHUNK]
                reply = await self._renew(keys=[scope.keys[1]], args=[self.slot_ttl_ms, KEY_TTL_MS, *chunk])
                renewed += int(reply)
        return renewed


async def collect_budgets(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every budget scope listed in ``P:budgets``, as ``tokenwire stats`` shows it: its AIMD limit
    (None: as configured), rate factor, slots in use, requests waiting, 429s and grants counted,
    and how long it is paused for a ``Retry-After``."""
    index: dict[Any, Any] = await redis.hgetall(keys.budget_scopes())
    now_ms = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    for raw_scope, raw_provider in sorted(index.items())[:MAX_LISTED]:
        scope = as_text(raw_scope)
        state, slots, queue, _ = keys.budget(scope)
        fields = await redis.hmget(state, ["limit", "factor", "throttled", "granted", "blocked"])
        limit, factor, throttled, granted, blocked = (None if f is None else as_text(f) for f in fields)
        out.append(
            {
                "scope": scope,
                "provider": as_text(raw_provider),
                "limit": None if limit is None else float(limit),
                "factor": 1.0 if factor is None else float(factor),
                "in_use": int(await redis.zcount(slots, now_ms, "+inf")),
                "waiting": int(await redis.zcard(queue)),
                "throttled": int(throttled or 0),
                "granted": int(granted or 0),
                "paused_ms": max(0, int(blocked or 0) - now_ms),
            }
        )
    return out


def _number(raw: Any, default: float, low: float, high: float) -> float:
    """A number from a script's reply, parsed defensively (Lua may render a float as
    ``9.99e+14``): ``default`` when it is not a finite number, else clamped to ``low..high``."""
    try:
        value = float(as_text(raw))
    except (TypeError, ValueError):
        return default
    if not math.isfinite(value):
        return default
    return min(max(value, low), high)
