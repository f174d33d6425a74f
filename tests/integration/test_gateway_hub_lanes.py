"""The hub's reads of more feeds than one XREAD takes (worker/gateway/hub.py: lanes of
``KEYS_PER_READ`` keys, each read on a connection the hub keeps for its lane) on a real server: a
lane that fails leaves no other lane's read running, so the next read never finds its lane's
connection still busy (two reads at once on one connection raised RuntimeError out of the hub, which
then stopped reading for every watcher)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.gateway import hub as hub_module
from worker.gateway.hub import Feed, Hub
from worker.keys import Keys

pytestmark = pytest.mark.integration


async def test_a_failed_lane_leaves_no_other_lane_reading(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "KEYS_PER_READ", 1)  # one key a lane: two feeds, two lanes
    keys = Keys(prefix)
    quiet, broken = keys.events(f"{prefix}-quiet"), keys.events(f"{prefix}-broken")
    await redis.set(broken, "not a stream")  # its lane fails at once (WRONGTYPE) ...
    hub = Hub(redis, keys, block_ms=3_000)  # ... while the quiet one's XREAD blocks 3 s
    feeds = [Feed("quiet", quiet, "0-0"), Feed("broken", broken, "0-0")]
    try:
        for _ in range(3):  # the hub's loop reads again at once after its short backoff
            with pytest.raises(RedisError):
                await hub.read_once(feeds)
            lanes = [t for t in asyncio.all_tasks() if "_read_chunk" in repr(t.get_coro())]
            assert not [t for t in lanes if not t.done()], "a lane's read outlived the failed read"
        assert hub.xread.raw is True, "the raw path was not exercised"
    finally:
        await hub.xread.aclose()
