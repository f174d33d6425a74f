"""Lease renewal on a real redis-server: ownership checked per entry, idle times reset, and many
held entries renewed in bounded script calls (a script blocks Redis while it runs)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.keys import GROUP, Keys
from worker.lease import RENEW_CHUNK, LeaseKeeper
from worker.redisproc import RedisServer

pytestmark = pytest.mark.integration

HELD = 2 * RENEW_CHUNK + 44  # three script calls
STOLEN = (0, RENEW_CHUNK - 1, RENEW_CHUNK, 200, HELD - 1)  # at the edges of the calls
LONG_IDLE_MS = 100_000


@pytest.fixture
async def own_redis() -> AsyncIterator[Redis]:
    """A private server: the test reads its command statistics."""
    with RedisServer() as server:
        client = Redis.from_url(server.url)
        yield client
        await client.aclose()


async def _held_entries(redis: Redis, keys: Keys, consumer: str, n: int) -> list[str]:
    """``n`` job entries delivered to ``consumer`` and idle for a long time."""
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    for i in range(n):
        await redis.xadd(keys.jobs, {"job": f"job-{i}"})
    reply: Any = await redis.xreadgroup(GROUP, consumer, {keys.jobs: ">"}, count=n)
    ids: list[Any] = [entry_id.decode() for entry_id, _ in reply[0][1]]
    assert len(ids) == n
    await redis.xclaim(keys.jobs, GROUP, consumer, 0, ids, idle=LONG_IDLE_MS, justid=True)
    return ids


async def _idle_ms(redis: Redis, keys: Keys) -> dict[str, tuple[str, int]]:
    pending: Any = await redis.xpending_range(keys.jobs, GROUP, "-", "+", 10_000)
    return {p["message_id"].decode(): (p["consumer"].decode(), p["time_since_delivered"]) for p in pending}


def _recorder(reported: list[str], entry_id: str) -> Callable[[], None]:
    return lambda: reported.append(entry_id)


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_many_held_entries_are_renewed_in_bounded_calls_and_lost_ones_reported(
    own_redis: Redis,
) -> None:
    redis, keys = own_redis, Keys("lease-test")
    ids = await _held_entries(redis, keys, "me", HELD)
    stolen: list[Any] = [ids[i] for i in STOLEN]
    await redis.xclaim(keys.jobs, GROUP, "peer", 0, stolen, justid=True)  # a peer took these over

    keeper = LeaseKeeper(redis, keys, "me", lease_seconds=30.0)
    reported: list[str] = []
    for entry_id in ids:
        keeper.hold(entry_id, _recorder(reported, entry_id))
    await keeper._renew(keys=[keys.jobs], args=[GROUP, "me"])  # loads the script: count calls after
    await redis.config_resetstat()

    lost = await keeper.renew_once()

    assert await _script_calls(redis) == math.ceil(HELD / RENEW_CHUNK) == 3
    assert sorted(lost) == sorted(stolen) and sorted(reported) == sorted(stolen)
    assert keeper.held == HELD - len(stolen)
    idle = await _idle_ms(redis, keys)
    for entry_id in ids:
        owner, ms = idle[entry_id]
        if entry_id in stolen:
            assert owner == "peer"  # never claimed back
        else:
            assert owner == "me" and ms < LONG_IDLE_MS // 10, (entry_id, ms)


async def test_a_call_failing_mid_renewal_reports_what_earlier_calls_found_lost(own_redis: Redis) -> None:
    redis, keys = own_redis, Keys("lease-test")
    ids = await _held_entries(redis, keys, "me", HELD)
    await redis.xclaim(keys.jobs, GROUP, "peer", 0, [ids[3]], justid=True)  # in the first call
    keeper = LeaseKeeper(redis, keys, "me", lease_seconds=30.0)
    reported: list[str] = []
    for entry_id in ids:
        keeper.hold(entry_id, _recorder(reported, entry_id))
    real: Any = keeper._renew
    calls = 0

    async def second_call_fails(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RedisConnectionError("connection reset by peer")
        return await real(**kwargs)

    keeper._renew = second_call_fails  # type: ignore[assignment]
    # Redis answered recently (within the lease): only what a call found is lost
    assert await keeper.renew_once() == [ids[3]] and reported == [ids[3]]
    assert keeper.held == HELD - 1

    # Silent for a whole lease: every entry no call could check is lost (peers own them by now)
    calls = 0
    keeper._last_ok -= 31.0
    lost = await keeper.renew_once()
    # the first call checked ids[0..RENEW_CHUNK] but ids[3] (no longer held); the second failed
    assert lost == ids[RENEW_CHUNK + 1 :]
    assert keeper.held == RENEW_CHUNK
