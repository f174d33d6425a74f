"""Review findings on the shared provider budgets (issue 15 §2), on a real redis-server.

Fixed: the tests pass (findings 4 and 5; see /work/briefs/review-findings.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker.admit import Admitted, admit
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.ratelimit import Budgets
from worker.settings import Provider, Settings
from worker.upstream.openai_compat import Chunk

pytestmark = pytest.mark.integration

TPM = 60_000  # a bucket of 10,000 tokens refilled at 1,000 a second


def test_the_chat_adapter_bounds_usage_numbers_from_upstream() -> None:
    """Once the premise of the test below (a provider's ``usage.prompt_tokens`` was taken
    unbounded into ``Attempt.tokens_used()``); now the chunk itself bounds it on the way in."""
    chunk = msgspec.json.decode(
        b'{"choices": [], "usage": {"prompt_tokens": 1000000000000000, "completion_tokens": 1}}',
        type=Chunk,
    )
    assert chunk.usage is not None and chunk.usage.prompt_tokens is None
    assert chunk.usage.completion_tokens == 1


async def test_one_absurd_usage_report_does_not_starve_the_provider(redis: Redis, prefix: str) -> None:
    provider = Provider(native_url="https://up.test/{model}", tokens_per_minute=TPM)
    settings = Settings(prefix=prefix, default_provider="up", providers={"up": provider})
    verdict = admit("1-0", encode_job(Job(model="m", input="x" * 40, id="j")), settings)
    assert isinstance(verdict, Admitted)
    budgets = Budgets(redis, Keys(prefix), settings)
    scope = budgets.scope_for(verdict)
    assert scope is not None

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[None]:
        yield None

    async with budgets.request(verdict, 1e12, opener, lambda: 10**15):  # what tokens_used() returns
        pass
    await budgets.settled()
    permit, hint_ms, why = await budgets.acquire_once(scope, "next-job", 30, 30_000)
    # A fresh bucket refills in 10 s; no single report may push the wait beyond that.
    assert permit is not None or hint_ms <= 10_000, f"refused ({why}) for {hint_ms / 3.6e6:.0f} hours"


async def _scope(redis: Redis, prefix: str) -> tuple[Budgets, Any]:
    provider = Provider(native_url="https://up.test/{model}", tokens_per_minute=TPM)
    settings = Settings(prefix=prefix, default_provider="up", providers={"up": provider})
    verdict = admit("1-0", encode_job(Job(model="m", input="x" * 40, id="j")), settings)
    assert isinstance(verdict, Admitted)
    budgets = Budgets(redis, Keys(prefix), settings)
    scope = budgets.scope_for(verdict)
    assert scope is not None
    return budgets, scope


@pytest.mark.parametrize(
    "stored", [b"-1e15", b"-inf", b"nan", b"garbage", b"1e400"], ids=["debt", "-inf", "nan", "text", "inf"]
)
async def test_a_bucket_stored_out_of_range_is_floored_and_its_hint_parses(
    redis: Redis, prefix: str, stored: bytes
) -> None:
    """The class behind finding 4: whatever a token bucket holds (a debt left by an older worker, a
    NaN, text written by hand), BUDGET_ACQUIRE floors it to an empty bucket, so the wait is at most
    one refill (10 s), and its hint is an integer ``acquire_once`` parses."""
    budgets, scope = await _scope(redis, prefix)
    assert (await budgets.acquire_once(scope, "first", 30, 30_000))[0] is not None
    await redis.hset(scope.keys[0], mapping={"tl": stored})
    permit, hint_ms, why = await budgets.acquire_once(scope, "next", 9_000, 30_000)
    assert permit is not None or (why == "rate" and 0 <= hint_ms <= 10_000), (why, hint_ms)


@pytest.mark.parametrize("refund", [-1e300, float("-inf"), float("nan"), 1e300])
async def test_a_refund_of_any_size_leaves_the_bucket_within_empty_and_full(
    redis: Redis, prefix: str, refund: float
) -> None:
    """BUDGET_RELEASE itself floors (and caps) the bucket, whatever refund it is given."""
    budgets, scope = await _scope(redis, prefix)
    assert (await budgets.acquire_once(scope, "t", 30, 30_000))[0] is not None
    await budgets.release(scope, "t", "ok", refund)
    level = float((await redis.hget(scope.keys[0], "tl")) or b"0")
    assert 0 <= level <= TPM / 6


@pytest.mark.parametrize("used", [-(10**15), 10**15, 0])
async def test_settling_any_usage_refunds_at_most_the_reservation(
    redis: Redis, prefix: str, used: int
) -> None:
    """``Budgets`` bounds ``used`` (a negative count never refunds more than was reserved)."""
    budgets, scope = await _scope(redis, prefix)
    permit, _, _ = await budgets.acquire_once(scope, "t", 500, 30_000)
    assert permit is not None
    before = float((await redis.hget(scope.keys[0], "tl")) or b"0")
    budgets._settle(permit, ok=True, used=used)
    await budgets.settled()
    after = float((await redis.hget(scope.keys[0], "tl")) or b"0")
    assert 0 <= after <= min(TPM / 6, before + permit.reserved + 1)
