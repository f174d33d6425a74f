"""Shared provider budgets (worker.ratelimit) on fakeredis: the AIMD arithmetic of the BUDGET_*
scripts (cut on a 429 once per round, additive growth, floors and ceilings) and the request loop
(a 429 waits and asks again, the deadline ends the wait with ``rate_limited``, a cancelled wait
leaves the queue, unused tokens come back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from worker.admit import Admitted, admit
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.metrics import Metrics
from worker.ratelimit import BETA, MIN_FACTOR, RATE_STEP, Budgets, Permit, Scope
from worker.settings import Provider, Settings, SettingsError, load_settings
from worker.upstream.base import UpstreamError

pytestmark = pytest.mark.unit

BOUND = 10.0


def settings(**limits: Any) -> Settings:
    provider = Provider(native_url="https://up.test/{model}", **limits)
    return Settings(prefix="t", default_provider="up", providers={"up": provider}, retry_base_seconds=0.01)


def job(s: Settings, **fields: Any) -> Admitted:
    verdict = admit("1-0", encode_job(Job(model="m", input="x" * 40, id="j1", **fields)), s)
    assert isinstance(verdict, Admitted), verdict
    return verdict


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


class Rig:
    def __init__(self, redis: fakeredis.FakeAsyncRedis, s: Settings) -> None:
        self.redis = redis
        self.settings = s
        self.budgets = Budgets(redis, Keys("t"), s, Metrics())
        scope = self.budgets.scope_for(job(s))
        assert scope is not None
        self.scope: Scope = scope
        self.n = 0

    async def grant(self) -> Permit:
        self.n += 1
        permit, _, reason = await self.budgets.acquire_once(self.scope, f"t{self.n}", 10, 30_000)
        assert permit is not None, reason
        return permit

    async def limit(self) -> float | None:
        raw = await self.redis.hget(self.scope.keys[0], "limit")
        return None if raw is None else float(raw)

    async def factor(self) -> float:
        raw = await self.redis.hget(self.scope.keys[0], "factor")
        return 1.0 if raw is None else float(raw)


async def test_a_429_cuts_the_limit_to_half_of_what_was_in_use_once_per_round(redis: Any) -> None:
    rig = Rig(redis, settings(max_concurrency=8))
    permits = [await rig.grant() for _ in range(4)]
    assert await rig.limit() is None  # the setting (8) until a 429
    await rig.budgets.throttle(permits[0], 0)
    assert await rig.limit() == BETA * 4  # min(limit 8, in use 4) halved
    await rig.budgets.throttle(permits[1], 0)  # granted before the cut: answers the old budget
    assert await rig.limit() == 2.0
    await rig.budgets.release(rig.scope, permits[2].ticket, "fail", 0.0)  # frees, does not grow
    assert await rig.limit() == 2.0
    await asyncio.sleep(0.002)  # lets Redis's clock pass the cut's millisecond
    fresh = await rig.grant()  # in use: permits[3] and fresh
    await rig.budgets.throttle(fresh, 0)  # granted after the cut: cuts again, to min(2, 2) / 2
    assert await rig.limit() == 1.0
    await rig.budgets.throttle(permits[3], 0)
    assert await rig.limit() == 1.0  # never below one slot


async def test_successes_grow_the_limit_by_one_over_the_limit_back_to_the_setting(redis: Any) -> None:
    rig = Rig(redis, settings(max_concurrency=4))
    first, second = await rig.grant(), await rig.grant()
    await rig.budgets.throttle(first, 0)
    assert await rig.limit() == 1.0
    await rig.budgets.release(rig.scope, second.ticket, "ok", 0.0)
    assert await rig.limit() == 2.0  # 1 + 1/1
    expected = 2.0
    while expected < 4:
        permit = await rig.grant()
        await rig.budgets.release(rig.scope, permit.ticket, "ok", 0.0)
        expected += 1 / expected
        if expected < 4:
            assert await rig.limit() == pytest.approx(expected)
    assert await rig.limit() is None  # back at the setting: the AIMD state is dropped


async def test_the_rate_factor_halves_to_a_floor_and_grows_back_by_a_step(redis: Any) -> None:
    rig = Rig(redis, settings(requests_per_minute=6000))
    assert rig.scope.max_concurrency == 0
    for n in range(10):
        await asyncio.sleep(0.002)  # lets Redis's clock pass the previous cut's millisecond
        permit = await rig.grant()
        await rig.budgets.throttle(permit, 0)
        assert await rig.factor() == pytest.approx(max(MIN_FACTOR, BETA ** (n + 1)))
    assert await rig.factor() == MIN_FACTOR
    permit = await rig.grant()
    await rig.budgets.release(rig.scope, permit.ticket, "ok", 0.0)
    assert await rig.factor() == pytest.approx(MIN_FACTOR + RATE_STEP)


async def test_without_max_concurrency_the_first_429_sets_a_limit_from_what_was_in_use(redis: Any) -> None:
    rig = Rig(redis, settings(tokens_per_minute=1_000_000))
    permits = [await rig.grant() for _ in range(6)]
    assert await rig.limit() is None  # unbounded
    await rig.budgets.throttle(permits[0], 0)
    assert await rig.limit() == 3.0
    _, _, reason = await rig.budgets.acquire_once(rig.scope, "late", 10, 30_000)
    assert reason == "concurrency"  # 5 in use, limit 3


async def test_retry_after_pauses_the_scope_for_everyone(redis: Any) -> None:
    rig = Rig(redis, settings(max_concurrency=8))
    await rig.budgets.throttle(await rig.grant(), 200)
    permit, hint, reason = await rig.budgets.acquire_once(rig.scope, "other", 10, 30_000)
    assert permit is None and reason == "retry_after" and 0 < hint <= 200


async def test_a_429_waits_and_asks_again_without_failing_and_settles(redis: Any) -> None:
    s = settings(max_concurrency=2, tokens_per_minute=3000)
    rig = Rig(redis, s)
    admitted = job(s, params={"max_tokens": 100})
    answers: list[Exception | None] = [
        UpstreamError("rate_limited", "429", status=429, retry_after=0.01),
        None,
    ]
    opened = 0

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        nonlocal opened
        opened += 1
        failure = answers.pop(0)
        if failure is not None:
            raise failure
        yield "stream"

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(BOUND):
        async with rig.budgets.request(admitted, loop.time() + BOUND, opener, lambda: 30) as got:
            assert got == "stream" and rig.budgets.held == 1
        await rig.budgets.settled()
    assert opened == 2 and rig.budgets.held == 0
    assert rig.budgets.metrics.provider_throttled.labels("up")._value.get() == 1
    assert await redis.zcard(rig.scope.keys[1]) == 0  # no slot left held
    # the bucket (500, halved by the 429 to 250) gave 110 (max_tokens 100 + 40 chars / 4); the
    # request used 30, so 80 came back: 220, plus what refilled meanwhile (25 a second)
    level = float(await redis.hget(rig.scope.keys[0], "tl"))
    assert 220 <= level <= 226, level


async def test_the_deadline_ends_a_wait_for_budget_with_rate_limited(redis: Any) -> None:
    s = settings(max_concurrency=1)
    rig = Rig(redis, s)
    await rig.grant()  # the only slot is taken

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        raise AssertionError("no request without a permit")
        yield "never"

    loop = asyncio.get_running_loop()
    with pytest.raises(UpstreamError) as caught:
        async with asyncio.timeout(BOUND):
            async with rig.budgets.request(job(s), loop.time() + 0.3, opener, lambda: 0):
                pass
    assert caught.value.code == "rate_limited" and not caught.value.retryable
    assert "job_deadline_seconds" in caught.value.message and "concurrency" in caught.value.message
    await rig.budgets.settled()
    assert await redis.zcard(rig.scope.keys[2]) == 0  # it left the queue
    assert rig.budgets.waiting == {"up": 0}


async def test_a_cancelled_wait_leaves_the_queue(redis: Any) -> None:
    s = settings(max_concurrency=1)
    rig = Rig(redis, s)
    await rig.grant()

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        yield "never"

    async def wait() -> None:
        async with rig.budgets.request(job(s), asyncio.get_running_loop().time() + BOUND, opener, lambda: 0):
            raise AssertionError("granted")

    task = asyncio.create_task(wait())
    async with asyncio.timeout(BOUND):
        while rig.budgets.waiting.get("up") != 1:
            await asyncio.sleep(0.005)
    assert await redis.zcard(rig.scope.keys[2]) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await rig.budgets.settled()
    assert await redis.zcard(rig.scope.keys[2]) == 0 and rig.budgets.waiting == {"up": 0}


class _Request:
    """An upstream request's context manager that records how it was exited."""

    def __init__(self, suppress: bool = False) -> None:
        self.suppress = suppress
        self.exits: list[type[BaseException] | None] = []

    async def __aenter__(self) -> str:
        return "stream"

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        self.exits.append(kind)
        return self.suppress


@pytest.mark.parametrize("suppress", [False, True])
async def test_the_request_is_exited_as_async_with_exits_it(suppress: bool) -> None:
    s = settings()  # no limits: no scope, no permit, nothing settled
    budgets = Budgets(None, Keys("t"), s)
    request = _Request(suppress)

    def used() -> int:
        raise AssertionError("nothing to settle without a permit")

    deadline = asyncio.get_running_loop().time() + BOUND
    async with budgets.request(job(s), deadline, lambda: request, used) as got:
        assert got == "stream"
    assert request.exits == [None]
    request.exits.clear()
    with contextlib.ExitStack() as raised:
        if not suppress:
            raised.enter_context(pytest.raises(KeyError))
        async with budgets.request(job(s), deadline, lambda: request, used):
            raise KeyError("from the body")
    assert request.exits == [KeyError]  # the body's error reached the request (and it decided)


async def test_without_a_scope_a_429_still_waits_and_opens_anew() -> None:
    s = settings()
    budgets = Budgets(None, Keys("t"), s, Metrics())
    answers: list[Exception | None] = [
        UpstreamError("rate_limited", "429", status=429, retry_after=0.01),
        None,
    ]

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        failure = answers.pop(0)
        if failure is not None:
            raise failure
        yield "stream"

    async with asyncio.timeout(BOUND):
        async with budgets.request(
            job(s), asyncio.get_running_loop().time() + BOUND, opener, lambda: 0
        ) as got:
            assert got == "stream"
    assert answers == [] and budgets.metrics.provider_throttled.labels("up")._value.get() == 1


async def test_without_redis_or_limits_there_is_no_scope() -> None:
    s = settings(max_concurrency=1)
    assert Budgets(None, Keys("t"), s).scope_for(job(s)) is None
    plain = Settings(
        prefix="t", default_provider="up", providers={"up": Provider(native_url="https://u.test/")}
    )
    assert Budgets(fakeredis.FakeAsyncRedis(), Keys("t"), plain).scope_for(job(plain)) is None


def test_per_model_limits_give_each_model_its_own_scope() -> None:
    s = settings(max_concurrency=1, limits_per="model")
    scope = Budgets(fakeredis.FakeAsyncRedis(), Keys("t"), s).scope_for(job(s))
    assert scope is not None and scope.name == "up/m" and scope.keys[0] == "t:budget:{up/m}:state"


@pytest.mark.parametrize(
    ("limit", "named"),
    [
        ("max_concurrency = 0", "providers.up.max_concurrency"),
        ("requests_per_minute = -1", "providers.up.requests_per_minute"),
        ("tokens_per_minute = 1.5", "providers.up.tokens_per_minute"),
        ("limits_per = 'tenant'", "providers.up.limits_per"),
    ],
)
def test_bad_limits_are_named(tmp_path: Path, limit: str, named: str) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text(f"default_provider = 'up'\n[providers.up]\nnative_url = 'https://up.test/'\n{limit}\n")
    with pytest.raises(SettingsError, match=named):
        load_settings({"TOKENWIRE_CONFIG": str(cfg)})


def test_a_limited_provider_needs_a_name_without_braces(tmp_path: Path) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text("[providers.'a}b']\nnative_url = 'https://up.test/'\nmax_concurrency = 2\n")
    with pytest.raises(SettingsError, match="without braces"):
        load_settings({"TOKENWIRE_CONFIG": str(cfg)})


async def test_stats_show_each_scope_in_use(redis: Any) -> None:
    from worker.ratelimit import collect_budgets
    from worker.stats import format_stats

    rig = Rig(redis, settings(max_concurrency=4))
    await rig.budgets.register(rig.scope)
    first, second = await rig.grant(), await rig.grant()
    await rig.budgets.throttle(first, 5_000)
    listed = await collect_budgets(redis, Keys("t"))
    assert listed == [
        {
            "scope": "up",
            "provider": "up",
            "limit": 1.0,  # half of the two in use
            "factor": BETA,
            "in_use": 1,
            "waiting": 0,
            "throttled": 1,
            "granted": 2,
            "paused_ms": listed[0]["paused_ms"],
        }
    ]
    assert 4_000 < listed[0]["paused_ms"] <= 5_000
    stats = {"stream": "s", "length": 0, "group": "g", "group_exists": True, "lag": 0, "pending": 0}
    text = format_stats({**stats, "dead_letters": 0, "consumers": [], "budgets": listed})
    assert "budgets       1" in text
    line = next(line for line in text.splitlines() if line.strip().startswith("up "))
    assert "in use    1" in line and "limit 1.0" in line and "429s 1" in line and "paused" in line
    await rig.budgets.release(rig.scope, second.ticket, "ok", 0.0)
