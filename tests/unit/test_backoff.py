"""The retry policy (worker.backoff): bounds, jitter, growth, reset, and that every retry uses it."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import Settings
from worker.backoff import REDIS, Backoff, RetryPolicy
from worker.connect import redis_client
from worker.publisher import Entry, Publisher, Sink

SAMPLES = 400
POLICY = RetryPolicy(base=1.0, cap=30.0)


def waits(policy: RetryPolicy, failures: int) -> list[float]:
    """``SAMPLES`` draws of the wait after failure number ``failures`` of a fresh loop."""
    out = []
    for _ in range(SAMPLES):
        backoff = Backoff(policy)
        for _ in range(failures - 1):
            backoff.failed()
        out.append(backoff.failed())
    return out


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 5, 6, 7, 20, 2000])
def test_each_wait_lies_in_half_its_step_to_its_step(failures: int) -> None:
    step = min(POLICY.cap, POLICY.base * 2.0 ** min(failures - 1, 64))
    drawn = waits(POLICY, failures)
    assert all(step / 2 <= wait <= step for wait in drawn), (min(drawn), max(drawn), step)


def test_the_jitter_spreads_over_the_whole_range() -> None:
    drawn = waits(POLICY, 3)  # step 4 s: waits in [2, 4]
    assert min(drawn) < 2.2 and max(drawn) > 3.8  # not pinned to one end
    assert any(wait < 3.0 for wait in drawn) and any(wait > 3.0 for wait in drawn)
    assert len(set(drawn)) > SAMPLES // 2  # drawn, not a constant


def test_the_range_doubles_with_each_failure_until_the_cap() -> None:
    backoff = Backoff(RetryPolicy(base=0.5, cap=3.0))
    assert 0.25 <= backoff.failed() <= 0.5
    assert 0.5 <= backoff.failed() <= 1.0
    assert 1.0 <= backoff.failed() <= 2.0
    assert 1.5 <= backoff.failed() <= 3.0  # 4 s capped to 3
    assert all(1.5 <= backoff.failed() <= 3.0 for _ in range(100))  # and it stays capped
    assert backoff.failures == 104


def test_a_success_starts_the_growth_over() -> None:
    backoff = Backoff(POLICY)
    for _ in range(10):
        backoff.failed()
    assert backoff.failures == 10
    backoff.succeeded()
    assert backoff.failures == 0
    assert 0.5 <= backoff.failed() <= 1.0  # as short as a first failure again


def test_a_requested_wait_wins_and_still_counts_as_a_failure() -> None:
    backoff = Backoff(POLICY)
    assert backoff.failed(retry_after=7.5) == 7.5
    assert backoff.failed(retry_after=-3.0) == 0.0  # never negative
    assert backoff.failures == 2
    assert 2.0 <= backoff.failed() <= 4.0  # the third failure's range


def test_the_upstream_policy_comes_from_the_settings() -> None:
    settings = Settings(retry_base_seconds=0.25, retry_max_seconds=4.0)
    assert RetryPolicy.upstream(settings) == RetryPolicy(base=0.25, cap=4.0)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (float("nan"), 1.0)])
def test_a_policy_without_positive_bounds_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base > 0 and cap > 0"):
        RetryPolicy(base=base, cap=cap)


def test_redis_py_retries_wait_as_the_policy_does() -> None:
    """The pools' retry is redis-py's Retry on the same backoff: its ``compute(n)`` is our wait n."""
    retry = REDIS.redis_retry(retries=3)
    assert retry.get_retries() == 3
    ours = Backoff(REDIS)
    for failures in range(1, 8):
        step = min(REDIS.cap, REDIS.base * 2.0 ** (failures - 1))
        theirs = retry._backoff.compute(failures)
        assert step / 2 <= theirs <= step and step / 2 <= ours.failed() <= step


async def test_the_worker_pool_retries_with_the_redis_policy() -> None:
    client = redis_client("redis://localhost:1/0")  # no I/O until first use
    retry = client.connection_pool.connection_kwargs["retry"]
    assert retry == REDIS.redis_retry(retries=3)
    await client.aclose()


async def test_a_write_retries_with_the_policy_within_its_budget() -> None:
    """The publisher's write retries: waits in the REDIS ranges, given up once the budget is spent."""
    slept = await _write_while_redis_is_down(retry_seconds=5.0)
    assert sum(slept[:-1]) < 5.0 <= sum(slept)  # gave up once it had waited its budget
    for failures, wait in enumerate(slept, start=1):
        step = min(REDIS.cap, REDIS.base * 2.0 ** (failures - 1))
        assert step / 2 <= wait <= step, (failures, wait)


async def _write_while_redis_is_down(retry_seconds: float) -> list[float]:
    """The waits of one batch's write retries against a Redis that refuses every connection."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    redis = fakeredis.FakeAsyncRedis()
    pub = _RedisDown(redis, maxlen=100, retry_seconds=retry_seconds, sleep=sleep)
    sink = Sink("k")
    pub.emit(sink, b"1-1", b"x")
    async with asyncio.timeout(5):
        await pub.flush()
    assert isinstance(sink.error, RedisConnectionError)
    await redis.aclose()
    return slept


class _RedisDown(Publisher):
    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        raise RedisConnectionError("connection refused")
