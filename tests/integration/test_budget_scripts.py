"""The BUDGET_* scripts (worker.scripts, driven through worker.ratelimit.Budgets) on a real
redis-server and a real Redis Cluster (each scope's keys share one slot): the FIFO queue and its
window, waiters and slots that stop being renewed (a crashed worker) freeing themselves, renewal,
the request and token buckets, the fairness hold and Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from worker.admit import Admitted, admit
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.ratelimit import Budgets, Permit, Scope
from worker.settings import Provider, Settings

pytestmark = pytest.mark.integration

BOUND = 10.0


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def budgets_for(redis: Redis, prefix: str, *, lease: float = 30.0, **limits: Any) -> tuple[Budgets, Scope]:
    provider = Provider(native_url="https://up.test/{model}", **limits)
    settings = Settings(prefix=prefix, default_provider="up", providers={"up": provider}, lease_seconds=lease)
    verdict = admit("1-0", encode_job(Job(model="m", input="x", id="j")), settings)
    assert isinstance(verdict, Admitted)
    budgets = Budgets(redis, Keys(prefix), settings)
    scope = budgets.scope_for(verdict)
    assert scope is not None
    return budgets, scope


async def ask(
    budgets: Budgets, scope: Scope, ticket: str, cost: int = 1, ttl: int = 30_000
) -> tuple[Permit | None, int, str]:
    return await budgets.acquire_once(scope, ticket, cost, ttl)


async def eventually(predicate: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(BOUND):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_freed_slots_go_to_the_front_of_the_queue(redis: Redis, prefix: str) -> None:
    budgets, scope = budgets_for(redis, prefix, max_concurrency=1)
    first, _, _ = await ask(budgets, scope, "t1")
    assert first is not None
    for ticket in ("t2", "t3", "t4", "t5"):  # queued in this order
        assert (await ask(budgets, scope, ticket))[2] == "concurrency"
    assert await redis.zcard(scope.keys[2]) == 4
    await budgets.release(scope, "t1", "ok", 0.0)
    # one slot free: only the first two waiters (ranks 0 and 1) may take it
    assert (await ask(budgets, scope, "t5"))[2] == "concurrency"
    assert (await ask(budgets, scope, "t4"))[2] == "concurrency"
    assert (await ask(budgets, scope, "t3"))[0] is not None
    assert (await ask(budgets, scope, "t2"))[2] == "concurrency"  # the head waits for the next one
    assert await redis.zrange(scope.keys[2], 0, -1) == [b"t2", b"t4", b"t5"]


async def test_a_waiter_that_stops_asking_loses_its_place(redis: Redis, prefix: str) -> None:
    budgets, scope = budgets_for(redis, prefix, max_concurrency=1)
    assert (await ask(budgets, scope, "t1"))[0] is not None
    assert (await ask(budgets, scope, "gone", ttl=50))[2] == "concurrency"  # then its worker dies
    for ticket in ("t3", "t4"):
        assert (await ask(budgets, scope, ticket))[2] == "concurrency"
    await budgets.release(scope, "t1", "ok", 0.0)

    async def t4_granted() -> bool:  # once "gone" expires, t4 is within the first two
        return (await ask(budgets, scope, "t4"))[0] is not None

    await eventually(t4_granted)
    assert await redis.zrange(scope.keys[2], 0, -1) == [b"t3"]


async def test_a_crashed_workers_slot_frees_itself_and_a_renewed_one_does_not(
    redis: Redis, prefix: str
) -> None:
    budgets, scope = budgets_for(redis, prefix, lease=0.2, max_concurrency=2)
    kept, _, _ = await ask(budgets, scope, "kept")
    crashed, _, _ = await ask(budgets, scope, "crashed")
    assert kept is not None and crashed is not None
    del budgets._held["crashed"]  # its worker stops renewing it (as a crashed one does)

    async def one_free() -> bool:
        assert await budgets.renew_once() == 1  # "kept" is renewed every round
        permit, _, _ = await ask(budgets, scope, "next")
        return permit is not None

    await eventually(one_free)  # the crashed slot expired; the renewed one did not
    assert set(await redis.zrange(scope.keys[1], 0, -1)) == {b"kept", b"next"}
    assert (await ask(budgets, scope, "more"))[2] == "concurrency"


async def test_the_request_bucket_holds_ten_seconds_of_requests(redis: Redis, prefix: str) -> None:
    budgets, scope = budgets_for(redis, prefix, requests_per_minute=60)  # 1 a second, burst 10
    granted = [(await ask(budgets, scope, f"r{n}"))[0] is not None for n in range(12)]
    assert granted == [True] * 10 + [False] * 2
    _, hint, reason = await ask(budgets, scope, "r10")
    assert reason == "rate" and 0 < hint <= 1000


async def test_tokens_are_reserved_refunded_and_a_big_request_is_not_starved(
    redis: Redis, prefix: str
) -> None:
    budgets, scope = budgets_for(redis, prefix, tokens_per_minute=600)  # 10 a second, bucket of 100
    big_first, _, _ = await ask(budgets, scope, "a", cost=40)
    second, _, _ = await ask(budgets, scope, "b", cost=40)
    assert big_first is not None and second is not None and second.reserved == 40
    _, hint, reason = await ask(budgets, scope, "big", cost=60)  # 20 left: short of 40 tokens
    assert reason == "rate" and 3000 <= hint <= 4100  # 40 tokens at 10 a second
    # the head holds the rate budget: a small request behind it may not take the 20 left
    assert (await ask(budgets, scope, "small", cost=5))[2] == "fairness"
    await budgets.release(scope, "a", "ok", 30.0)  # used 10 of its 40
    await budgets.release(scope, "b", "ok", 20.0)
    granted, _, _ = await ask(budgets, scope, "big", cost=60)
    assert granted is not None and granted.reserved == 60
    huge, _, _ = await ask(budgets, scope, "huge", cost=10_000)  # more than the bucket holds
    assert huge is None  # (10 left after "big")
    level = float(await redis.hget(scope.keys[0], "tl") or 0)
    assert 9 <= level <= 12


async def test_retry_after_pauses_every_request_of_the_scope(redis: Redis, prefix: str) -> None:
    budgets, scope = budgets_for(redis, prefix, max_concurrency=4)
    permit, _, _ = await ask(budgets, scope, "t1")
    assert permit is not None
    await budgets.throttle(permit, 150)
    _, hint, reason = await ask(budgets, scope, "t2")
    assert reason == "retry_after" and 0 < hint <= 150

    async def resumed() -> bool:
        return (await ask(budgets, scope, "t2"))[0] is not None

    await eventually(resumed)
    assert int(await redis.hget(scope.keys[0], "throttled") or 0) == 1


async def test_every_key_of_a_scope_has_a_ttl(redis: Redis, prefix: str) -> None:
    budgets, scope = budgets_for(redis, prefix, max_concurrency=1, tokens_per_minute=6000)
    await budgets.register(scope)
    await ask(budgets, scope, "t1")
    await ask(budgets, scope, "t2")
    for key in (*scope.keys, Keys(prefix).budget_scopes()):
        assert 0 < await redis.pttl(key) <= 3_600_000, key
