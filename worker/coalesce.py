"""Script calls of many jobs in flight sent together: one pipelined write, replies read in bulk.

A short job costs a few Redis scripts (begin, finish, ack) and almost nothing else; sent one at a
time, each is a syscall, a pool checkout and a reply read of its own. :meth:`Coalescer.run` only
queues the call; one flusher sends everything queued at that loop turn (and whatever queued while
a batch was out) as one write of ``EVALSHA`` commands, and gives each caller its own reply, or
raises its own error, exactly as the script call would have:

- an error reply (``OOM``, ``READONLY``, a script's ``error_reply``) is that caller's exception,
  of the class redis-py's parser gives it (``OutOfMemoryError`` ...): the others are unaffected;
- ``NOSCRIPT`` (a restarted or flushed Redis, a failover): that call is re-issued through the
  script object, which loads the script and runs it again;
- a batch that fails as a whole (a connection lost or a timeout mid-batch) is re-issued call by
  call through the client, whose own retry policy then applies as it always did (the scripts are
  fenced and idempotent, as redis-py's retry of a lost reply already assumes). So is a call whose
  reply is a connection error or a timeout: a cluster pipeline run with ``raise_on_error=False``
  hands those back as results, one per command read after its connection died, without retrying
  them. Nothing is dropped and nothing raises that a lone call would not have raised.

On a single server the write goes out on one connection the coalescer keeps (a pool checkout costs
~90 µs); on a Redis Cluster through redis-py's cluster pipeline, which groups the calls per node.
A caller cancelled before its batch goes out is not sent. Nothing waits for company: a lone call
goes out at the next loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .fastpath.redis_py import bulk_reader

__all__ = ["Coalescer"]

log = structlog.get_logger("tokenwire.coalesce")


class _Call:
    __slots__ = ("args", "future", "keys", "script")

    def __init__(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script, self.keys, self.args, self.future = script, keys, args, future


class Coalescer:
    """Runs script calls issued close together as one round trip; see the module docstring."""

    def __init__(self, redis: Redis, *, max_batch: int = 512, timeout: float = 10.0) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.timeout = timeout
        self._pending: list[_Call] = []
        self._flusher: asyncio.Task[None] | None = None
        self._conn: Any = None  # the pooled connection batches go out on (single server), once taken
        self.batches = 0  # round trips sent (for tests and metrics)
        self.calls = 0  # calls sent in them
        self.reissued = 0  # batches that failed as a whole, their calls re-issued one by one

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)``, sent with the other calls of this loop turn."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(script, keys, args, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="coalesce")
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = [call for call in self._pending[: self.max_batch] if not call.future.done()]
                del self._pending[: self.max_batch]
                if batch:
                    await self._send(batch)
        finally:
            self._flusher = None
            for call in self._pending:  # only when the flusher itself was cancelled
                if not call.future.done():
                    call.future.cancel()
            self._pending.clear()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            try:
                replies = await self._round_trip(batch)
            except Exception as exc:  # lost connection, timeout, a cluster's moved slots ...
                log.info("batched script calls failed as a whole; re-issued one by one", error=repr(exc))
                self.reissued += 1
                await asyncio.gather(*(self._alone(call) for call in batch))
                return
            self.batches += 1
            self.calls += len(batch)
            redo = []
            lost = False
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    redo.append(call)
                elif isinstance(reply, _LOST):
                    redo.append(call)
                    lost = True
                elif isinstance(reply, Exception):
                    _settle(call, error=reply)
                else:
                    _settle(call, reply=reply)
            if redo:
                self.reissued += lost
                await asyncio.gather(*(self._alone(call) for call in redo))
        except BaseException as exc:  # cancelled, or a bug: no caller is left waiting
            for call in batch:
                if not call.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        call.future.cancel()
                    else:
                        call.future.set_exception(exc)
            raise

    async def _alone(self, call: _Call) -> None:
        """The call on its own, as it would have run without the coalescer."""
        try:
            reply = await call.script(keys=call.keys, args=call.args)
        except Exception as exc:
            _settle(call, error=exc)
        else:
            _settle(call, reply=reply)

    async def _round_trip(self, batch: list[_Call]) -> list[object]:
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None:
            return await self._cluster(batch)
        conn = self._conn
        if conn is None:
            conn = self._conn = await pool.get_connection()
        try:
            if not conn.is_connected:
                await conn.connect()
            encoder = conn.encoder
            encode = encoder.encode
            # hiredis packs str (UTF-8), bytes, int and float exactly as redis-py's encoder
            # writes them (~5 us less a call); anything else, or another encoding, goes through it
            direct = encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
            packed: list[bytes] = []
            sent: list[_Call] = []
            for call in batch:
                try:
                    parts = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                    if not (direct and all(type(part) in _PACKED_AS_ENCODED for part in parts)):
                        parts = tuple(encode(part) for part in parts)
                    packed.append(hiredis.pack_command(parts))
                except Exception as exc:  # a caller's unencodable argument is its own error
                    _settle(call, error=exc)
                else:
                    sent.append(call)
            batch[:] = sent
            if not sent:
                return []
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(b"".join(packed), check_health=False)
                bulk = bulk_reader(conn)
                if bulk is not None:
                    return await bulk.read(len(sent))
                return [await _reply(conn) for _ in sent]
        except BaseException:
            self._conn = None
            await conn.disconnect()  # its state is unknown: never reuse it
            await pool.release(conn)
            raise

    async def _cluster(self, batch: list[_Call]) -> list[object]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Let the last batch finish, then give the connection back to the pool."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.wait([flusher], timeout=self.timeout)
        conn, self._conn = self._conn, None
        pool = getattr(self.redis, "connection_pool", None)
        if conn is not None and pool is not None:
            await pool.release(conn)


_LOST = (RedisConnectionError, RedisTimeoutError)
"""Replies that say nothing of the call itself, only that its connection failed: it runs again."""

_PACKED_AS_ENCODED = frozenset({str, bytes, int, float})
"""Exact types (no bool, no subclass) hiredis.pack_command writes as redis-py's Encoder does."""


def _settle(call: _Call, *, reply: object = None, error: BaseException | None = None) -> None:
    if call.future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        call.future.set_exception(error)
    else:
        call.future.set_result(reply)


async def _reply(conn: Any) -> object:
    try:
        return await conn.read_response(timeout=None)
    except ResponseError as exc:
        return exc
