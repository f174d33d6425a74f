"""The hub's ``XREAD`` of many keys: on connections it keeps, the reply taken raw from hiredis.

redis-py turns an ``XREAD`` reply into lists of tuples and one ``dict`` per entry (``pairs_to_dict``:
7-8 % of the gateway's samples at 2,000 watchers, py-spy), and packs the command's arguments one by
one. Here the command is packed by ``hiredis.pack_command``, sent on a connection kept for the
hub's life (one per concurrent read, ``lane``), and the reply is hiredis's own nested lists, taken
from the connection's reader by :func:`worker.fastpath.redis_py.bulk_reader` (which probes the
library internals this relies on). Where that does not apply (a Redis Cluster client, fakeredis, a
redis-py whose internals moved), :meth:`XReader.read` is redis-py's ``xread``: the callers read
either reply shape (:func:`worker.gateway.hub.streams_of`).

A connection that fails in any way (an error, a timeout, a cancelled read) is disconnected and
given back, never reused; every failure reaches the caller as a :class:`redis.exceptions.RedisError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..fastpath.redis_py import bulk_reader

__all__ = ["MARGIN_SECONDS", "XReader"]

MARGIN_SECONDS: Final = 10.0
"""How long past its ``BLOCK`` a read may take before its connection counts as dead (the clients'
socket timeout is set the same way, :func:`worker.connect.redis_client`)."""


class XReader:
    """``XREAD COUNT n [BLOCK ms] STREAMS keys... ids...`` for the hub. No I/O until :meth:`read`."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._conns: dict[int, Any] = {}
        self.raw: bool | None = None  # None: not known yet; False: redis-py's xread is used

    async def read(
        self, keys: Sequence[str], ids: Sequence[str], *, count: int, block_ms: int | None, lane: int = 0
    ) -> Any:
        """The reply (``None`` when a ``BLOCK`` ran out): hiredis's lists on the raw path, redis-py's
        shape otherwise. Reads of different ``lane`` may run at once; one lane, one at a time."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None or self.raw is False:
            return await self._fallback(keys, ids, count, block_ms)
        conn = self._conns.get(lane)
        if conn is None:
            conn = await pool.get_connection()
            if bulk_reader(conn) is None:  # not redis-py's own hiredis connection: its public API
                await pool.release(conn)
                self.raw = False
                return await self._fallback(keys, ids, count, block_ms)
            self.raw = True
            self._conns[lane] = conn
        bulk = bulk_reader(conn)
        head: tuple[Any, ...] = ("XREAD", "COUNT", count)
        if block_ms is not None:
            head += ("BLOCK", block_ms)
        packed = hiredis.pack_command((*head, "STREAMS", *keys, *ids))
        wait = (block_ms or 0) / 1000 + MARGIN_SECONDS
        try:
            if bulk is None:
                raise RedisConnectionError("the kept connection's reader changed")
            async with asyncio.timeout(wait):
                await conn.send_packed_command(packed, check_health=False)
                (reply,) = await bulk.read(1)
        except BaseException as exc:
            del self._conns[lane]
            await conn.disconnect()  # its state is unknown: never reuse it
            await pool.release(conn)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"XREAD took over {wait:g} s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"XREAD failed: {type(exc).__name__}") from None
            if isinstance(exc, Exception) and not isinstance(exc, RedisError):  # e.g. a reader's
                raise RedisConnectionError(f"XREAD failed: {type(exc).__name__}: {exc}") from None
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _fallback(
        self, keys: Sequence[str], ids: Sequence[str], count: int, block_ms: int | None
    ) -> Any:
        return await self.client.xread(dict(zip(keys, ids, strict=True)), count=count, block=block_ms)

    async def aclose(self) -> None:
        """Give the kept connections back to the client's pool."""
        conns, self._conns = self._conns, {}
        pool = getattr(self.client, "connection_pool", None)
        for conn in conns.values():
            if pool is not None:
                await pool.release(conn)
