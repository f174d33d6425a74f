"""The in-flight limit's Redis work (worker/gateway/limits.py) on a real server: a refusal at the
limit costs constant work however many jobs are in flight (one script call and one ``HGET``; the
whole set is read at most once per sweep interval), and a slot freed by an ended job is found."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from worker.gateway.limits import GONE_AFTER_SECONDS, InflightLimiter, inflight_key, sweep_key
from worker.keys import Keys

pytestmark = pytest.mark.integration

IN_FLIGHT = 60


async def _calls(redis: Redis) -> dict[str, int]:
    stats: Any = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def _full(redis: Redis, keys: Keys, limiter: InflightLimiter) -> None:
    for i in range(IN_FLIGHT):
        await redis.hset(keys.state(f"t/run-{i}"), "state", "running")
        assert await limiter.admit("t", f"t/run-{i}", IN_FLIGHT, i) == "new"


async def test_a_refusal_at_the_limit_costs_constant_redis_work(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    limiter = InflightLimiter(redis, keys, ttl_seconds=600, sweep_seconds=600)
    await _full(redis, keys, limiter)
    before = await _calls(redis)
    assert await limiter.admit("t", "t/over-0", IN_FLIGHT, 100) is None  # sweeps the whole set once
    first = _delta(before, await _calls(redis))
    assert first.get("hget", 0) == IN_FLIGHT, first
    before = await _calls(redis)
    for n in range(1, 41):
        assert await limiter.admit("t", f"t/over-{n}", IN_FLIGHT, 100 + n) is None
    burst = _delta(before, await _calls(redis))
    # per refusal: the script (its ZSCORE, ZCARD, HSETNX, ZRANGE of one, ZADD) and one HGET; no
    # ZREM, and nothing that grows with the 60 jobs in flight
    assert burst.get("hget", 0) == 40 and burst.get("evalsha", 0) == 40, burst
    assert burst.get("zrange", 0) == 40 and "zrem" not in burst, burst


async def test_a_slot_freed_by_an_ended_job_is_found_by_later_refusals(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    limiter = InflightLimiter(redis, keys, ttl_seconds=600, sweep_seconds=600)
    await _full(redis, keys, limiter)
    assert await limiter.admit("t", "t/next", IN_FLIGHT, 100) is None  # the sweep, now marked
    await redis.hset(keys.state("t/run-37"), "state", "done")
    tries = 1
    while (got := await limiter.admit("t", "t/next", IN_FLIGHT, 100 + tries)) is None:
        tries += 1
        assert tries <= IN_FLIGHT, "each refusal checks another member: all are checked in turn"
    assert got == "new"
    await redis.delete(keys.state("t/run-3"))  # keys gone (expired) count as ended too, once
    await redis.delete(sweep_key(keys, "t"))  # the sweep interval has passed
    later = 500 + int(GONE_AFTER_SECONDS * 1000)  # ... they have been gone that long
    assert await limiter.admit("t", "t/after", IN_FLIGHT, later) == "new", "the sweep finds it at once"


async def test_the_sweep_runs_at_most_once_an_interval_across_limiters(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    one, two = (InflightLimiter(redis, keys, ttl_seconds=600, sweep_seconds=0.3) for _ in range(2))
    await _full(redis, keys, one)
    before = await _calls(redis)
    for n in range(10):
        assert await (one if n % 2 else two).admit("t", f"t/o-{n}", IN_FLIGHT, 100 + n) is None
    calls = _delta(before, await _calls(redis))
    assert calls.get("hget", 0) <= 2 * (IN_FLIGHT + 10), calls  # one or two sweeps (if 0.3 s passed)
    async with asyncio.timeout(5):
        while await redis.exists(sweep_key(keys, "t")):
            await asyncio.sleep(0.02)  # the marker's TTL: the next refusal sweeps again
    await redis.hset(keys.state("t/run-50"), "state", "error")
    assert await two.admit("t", "t/o-x", IN_FLIGHT, 300) == "new"


async def test_a_job_admitted_but_not_yet_created_still_counts(redis: Redis, prefix: str) -> None:
    """A gateway admits a job (ADMIT) and only then creates its state hash (ENQUEUE): between the
    two, another gateway's refusal that checks the member (the oldest, or the sweep) finds no hash.
    It must not take that for an ended job, or the tenant runs one job over its limit (again at
    every sweep), the job it removed running uncounted."""
    keys = Keys(prefix)
    now = 1_000_000_000
    one = InflightLimiter(redis, keys, ttl_seconds=600, sweep_seconds=600)
    two = InflightLimiter(redis, keys, ttl_seconds=600, sweep_seconds=600)
    assert await one.admit("t", "t/first", 1, now) == "new"  # its ENQUEUE has not run yet
    assert await two.admit("t", "t/second", 1, now + 5) is None, "the sweep took it for ended"
    assert await two.admit("t", "t/second", 1, now + 10) is None, "the check took it for ended"
    assert await redis.zrange(inflight_key(keys, "t"), 0, -1) == [b"t/first"]
    # a member whose hash never appears (its gateway died in between) is freed after the grace
    later = now + int(GONE_AFTER_SECONDS * 1000) + 1
    assert await two.admit("t", "t/second", 1, later) == "new"
    await redis.hset(keys.state("t/second"), "state", "running")
    # ... and one whose hash appeared is counted for as long as it runs, however old
    assert await one.admit("t", "t/third", 1, later + 10 * int(GONE_AFTER_SECONDS * 1000)) is None
