"""The hub's XREAD (worker/gateway/xread.py) where the raw path does not apply: fakeredis's
connections are not redis-py's hiredis ones, so it reads through redis-py's ``xread``, whose reply
the hub reads the same way."""

from __future__ import annotations

import fakeredis

from worker.gateway.hub import streams_of
from worker.gateway.sse import entry_of
from worker.gateway.xread import XReader


async def test_a_client_without_redis_pys_hiredis_connections_reads_through_xread() -> None:
    redis = fakeredis.FakeAsyncRedis()
    await redis.xadd("a", {"event": b'{"type":"token"}'}, id="1-1")
    await redis.xadd("b", {"event": b'{"type":"done"}'}, id="1-1")
    reader = XReader(redis)
    reply = await reader.read(["a", "b"], ["0-0", "0-0"], count=10, block_ms=None)
    assert reader.raw is False
    streams = streams_of(reply)
    assert [(key, [entry_of(i, f).type for i, f in items]) for key, items in streams] == [
        ("a", ["token"]),
        ("b", ["done"]),
    ]
    assert await reader.read(["a"], ["1-1"], count=10, block_ms=None) in ([], None, {})
    await reader.aclose()
    await redis.aclose()
