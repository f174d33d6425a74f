"""Writes token events to the jobs' event streams, batched across every job in flight.

``emit`` only queues; a single flusher task writes everything queued at each loop turn, pipelined in
round trips of at most ``max_round_trip`` events. Events that arrive together (one upstream read, or
many jobs at once) therefore share a round trip, and a lone event goes out at the next loop turn:
nothing ever waits for company.

Entries carry explicit ids ``<attempt>-<seq>``, so a batch retried after a lost reply cannot duplicate
an event, and a superseded attempt's writes are refused by Redis (the sink is then marked fenced): a
newer attempt's ``start``, or a terminal event at ``<attempt>-TERMINAL_SEQ``
(:data:`worker.scripts.TERMINAL_SEQ`), is above every id the stale writer can use. A refused write
counts as landed only when this very event (same id, same bytes) is in the stream.
A job's sink writes with ``NOMKSTREAM``: its stream was created, with its TTL, by the attempt's
``start``; a stream that is gone (expired, flushed, deleted) is never re-created without one.
"""

from __future__ import annotations

import asyncio
import math
import operator
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import REDIS, Backoff
from .fastpath.redis_py import bulk_reader
from .refusals import OUTAGE, refusal

__all__ = ["EventGap", "Publisher", "Sink"]

log = structlog.get_logger("tokenwire.publisher")

_TOO_SMALL = "equal or smaller"
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)  # a round trip lost, not refused


class Sink:
    """One attempt's handle on its event stream: where it writes and whether it may go on.

    ``existing_only``: write with ``NOMKSTREAM`` (every job's sink does): when the stream is gone
    the write creates nothing and the sink is fenced (the job's keys expired or were removed)."""

    __slots__ = ("batch", "error", "existing_only", "fenced", "head", "key")

    def __init__(self, key: str, *, existing_only: bool = False) -> None:
        self.key = key
        self.existing_only = existing_only
        self.fenced = False
        self.error: BaseException | None = None
        self.batch: asyncio.Future[None] | None = None
        self.head: bytes | None = None  # this key's packed ``XADD key [NOMKSTREAM] MAXLEN ~ n``

    @property
    def ok(self) -> bool:
        return not self.fenced and self.error is None


Entry = tuple[Sink, bytes, bytes]  # (sink, entry id as ASCII bytes, payload)


class EventGap(Exception):
    """An event of a stream was written after an earlier one that Redis refused for now (out of
    memory, say, then memory freed within one round trip): the refused one can never be written, so
    the attempt cannot go on (a new attempt starts the job again)."""

    def __init__(self, key: str, entry_id: bytes) -> None:
        super().__init__(f"{key}: event {entry_id.decode()} was written after an earlier event was refused")


def _first_per_sink(entries: list[Entry]) -> list[Entry]:
    """Each sink's first entry, in order."""
    seen: set[int] = set()
    out = []
    for entry in entries:
        if id(entry[0]) not in seen:
            seen.add(id(entry[0]))
            out.append(entry)
    return out


class Publisher:
    """Batching writer; run :meth:`run` as a task, then :meth:`emit` from any job."""

    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int,
        retry_seconds: float = 10.0,
        write_timeout: float = 10.0,
        high_water: int = 20_000,
        max_round_trip: int = 2_000,
        on_batch: Callable[[int, float | None], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.retry_seconds = retry_seconds
        self.write_timeout = write_timeout
        self.high_water = high_water
        self.max_round_trip = max_round_trip
        self._room = asyncio.Event()
        self._room.set()
        self.on_batch = on_batch
        self._sleep = sleep
        self._pending: list[Entry] = []
        self._batch: asyncio.Future[None] | None = None
        self._oldest: float | None = None
        self._wake = asyncio.Event()
        self._conn: Any = None  # the pooled connection batches go out on, once taken
        self._stopping = False

    def emit(self, sink: Sink, entry_id: bytes, payload: bytes) -> None:
        if self._batch is None:  # the first event since the flusher took the queue: wake it
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            self._oldest = loop.time()
            self._wake.set()
        self._pending.append((sink, entry_id, payload))
        sink.batch = self._batch

    @property
    def full(self) -> bool:
        """More events are queued than one round trip should carry: producers should wait."""
        return len(self._pending) >= self.high_water

    async def room(self) -> None:
        """Wait until the queue is below its high-water mark (backpressure on fast upstreams: while
        their readers wait, TCP flow control slows the providers' streams instead of memory
        growing without bound)."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    async def drained(self, sink: Sink) -> None:
        """Wait until everything emitted so far for ``sink`` is written (or failed)."""
        batch = sink.batch
        if batch is not None and not batch.done():
            await asyncio.shield(batch)

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self.flush()
        finally:
            self._stopping = True  # the last flush waits out a refusal for retry_seconds at most

    async def flush(self) -> None:
        while self._pending:
            batch, done, oldest = self._pending, self._batch, self._oldest
            self._pending, self._batch, self._oldest = [], None, None
            self._room.set()
            try:
                await self._write(batch, oldest)
            except Exception as exc:  # never lose track of a batch: its sinks learn why
                log.exception("event batch failed", size=len(batch))
                for sink, _, _ in batch:
                    sink.error = sink.error or exc
            finally:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _write(self, batch: list[Entry], oldest: float | None) -> None:
        if all(sink.ok for sink in set(map(_SINK, batch))):  # the usual case: a few sinks, all ok
            live = batch
        else:
            live = [e for e in batch if e[0].ok]
        step = self.max_round_trip
        for start in range(0, len(live), step):  # a backlog goes out in bounded round trips
            await self._write_chunk(live[start : start + step], oldest)

    async def _write_chunk(self, live: list[Entry], oldest: float | None) -> None:
        """Write ``live``, retrying a lost connection as :data:`~worker.backoff.REDIS` says for up to
        ``retry_seconds`` of waiting (the explicit ids make a retried write idempotent).

        Events Redis refuses for now (out of memory, a busy script, a dataset loading, failed
        snapshots: :mod:`worker.refusals`) are an outage, not a failure of their jobs: they are
        retried with the same backoff for as long as it lasts (the jobs keep their leases; a full
        queue holds their producers back), bounded by ``retry_seconds`` only once the publisher is
        stopping. While refusals last, a round trip carries one event per stream, so no event can
        land after a refused one of its stream (which would leave a gap that no retry could fill)."""
        backoff, waited, written, outage = Backoff(REDIS), 0.0, 0, False
        refused_for, joined = 0.0, False  # seconds waited on refusals; counted in the OUTAGE
        error: BaseException | None = None  # the last refusal
        try:
            while live:
                send = _first_per_sink(live) if outage else live
                try:
                    results = await self._pipeline(send)
                except (RedisError, OSError) as exc:
                    reason = refusal(exc)  # LOADING: one reply for all, raised as a connection error
                    if reason is None:
                        if not isinstance(exc, _LOST) or waited >= self.retry_seconds:
                            raise
                        pause = backoff.failed()
                        log.warning("redis write failed, retrying", error=str(exc), retry_in=round(pause, 3))
                        await self._sleep(pause)
                        waited += pause
                        continue
                    refused, error = send, exc
                else:
                    refused, error = await self._settle(send, results)
                    reason = refusal(error) if refused else None
                    written += len(send) - len(refused)
                    if send is not live or refused:
                        again = {id(e) for e in refused}
                        sent = {id(e) for e in send}
                        live = [e for e in live if e[0].ok and (id(e) in again or id(e) not in sent)]
                    else:
                        live = []
                if reason is None or error is None:
                    backoff.succeeded()
                    outage = False
                    if joined:
                        OUTAGE.ended("write events")
                        joined = False
                    continue
                if self._stopping and refused_for >= self.retry_seconds:
                    raise error
                OUTAGE.refused("write events", reason, error, first=not joined)
                outage = joined = True
                pause = backoff.failed()
                await self._sleep(pause)
                refused_for += pause
        finally:
            if joined:
                OUTAGE.ended("write events")
        if self.on_batch is not None and written:
            self.on_batch(written, oldest)

    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        """One round trip for the batch: every XADD packed by hiredis and sent at once, the replies
        read without a timer each (one deadline covers the batch). On a cluster client, redis-py's
        pipeline (which groups the commands by node)."""
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None:
            return await self._cluster_pipeline(entries)
        pieces: list[bytes] = []
        extend = pieces.extend
        for sink, entry_id, payload in entries:  # XADD <head> <id> event <payload>, as RESP
            size, id_size = len(payload), len(entry_id)
            extend(
                (
                    sink.head or self._head(sink),
                    _BULK[id_size] if id_size < _BULK_SIZES else b"$%d\r\n" % id_size,
                    entry_id,
                    _EVENT_FIELD,
                    _BULK[size] if size < _BULK_SIZES else b"$%d\r\n" % size,
                    payload,
                    b"\r\n",
                )
            )
        packed = b"".join(pieces)
        conn = self._conn
        if conn is None:  # one connection for the publisher's life: the pool costs ~90 µs a checkout
            conn = self._conn = await pool.get_connection()
        try:
            async with asyncio.timeout(self.write_timeout):
                await conn.send_packed_command(packed, check_health=False)
                return await _replies(conn, len(entries))
        except BaseException:
            self._conn = None
            await conn.disconnect()  # its state is unknown: never reuse it
            await pool.release(conn)
            raise

    async def aclose(self) -> None:
        """Give the publisher's connection back to the pool (after the last :meth:`flush`)."""
        conn, self._conn = self._conn, None
        pool = getattr(self.redis, "connection_pool", None)
        if conn is not None and pool is not None:
            await pool.release(conn)

    def _head(self, sink: Sink) -> bytes:
        """``XADD key [NOMKSTREAM] MAXLEN ~ n`` packed by hiredis, as the start of an 8-part (with
        NOMKSTREAM 9-part) command."""
        parts = ("XADD", sink.key, *_NOMK[sink.existing_only], "MAXLEN", "~", self.maxlen)
        packed = _pack(parts)
        sink.head = head = b"*%d" % (len(parts) + 3) + packed[packed.index(b"\r\n") :]
        return head

    async def _cluster_pipeline(self, entries: list[Entry]) -> list[object]:
        maxlen = self.maxlen
        async with self.redis.pipeline(transaction=False) as pipe:
            for sink, entry_id, payload in entries:
                nomk = _NOMK[sink.existing_only]
                pipe.execute_command(
                    "XADD", sink.key, *nomk, "MAXLEN", "~", maxlen, entry_id, "event", payload
                )
            results: list[object] = await pipe.execute(raise_on_error=False)
        # a node's connection that died while its replies were read leaves them as errors in
        # the results (redis-py does not retry those): the round trip failed, as on one server,
        # and is retried whole (an event that had landed is found by its id, not duplicated)
        lost = next((r for r in results if isinstance(r, RedisConnectionError | RedisTimeoutError)), None)
        if lost is not None:
            raise lost
        return results

    async def _settle(
        self, entries: list[Entry], results: list[object]
    ) -> tuple[list[Entry], BaseException | None]:
        """Mark each entry's sink by its reply; the entries Redis refused for now, to be retried,
        and the first such refusal (a stream's events after its refused one landing in the same
        round trip is a gap: that sink fails)."""
        if set(map(type, results)) == _IDS_ONLY:  # the usual case: every event written
            return [], None
        refused: list[Entry] = []
        first: BaseException | None = None
        holed: set[int] = set()  # the sinks with a refused event in this round trip
        for entry, result in zip(entries, results, strict=True):
            sink, entry_id, payload = entry
            if result is None:  # NOMKSTREAM on a stream that is gone: nothing was created
                if not sink.fenced:
                    log.warning("event stream gone (expired, flushed or deleted): stop", key=sink.key)
                sink.fenced = True
                continue
            if not isinstance(result, Exception):
                if id(sink) in holed:
                    sink.error = sink.error or EventGap(sink.key, entry_id)
                continue
            if refusal(result) is not None:
                holed.add(id(sink))
                refused.append(entry)
                first = first if first is not None else result
            elif isinstance(result, ResponseError) and _TOO_SMALL in str(result):
                if sink.fenced or not await self._already_written(sink.key, entry_id, payload):
                    sink.fenced = True  # a newer attempt's start or the terminal is above this id
                # else: a retry of a write that had landed: nothing was duplicated
            else:
                sink.error = sink.error or result
        return [e for e in refused if e[0].ok], first

    async def _already_written(self, key: str, entry_id: bytes, payload: bytes) -> bool:
        """Whether this very event (``entry_id`` holding ``payload``) is in the stream: only a
        retried write of our own finds it; an id taken by another writer's event is a fence."""
        found: Any = await self.redis.xrange(key, entry_id, entry_id, count=1)
        if not found:
            return False
        fields = found[0][1]
        return bool(fields.get(b"event", fields.get("event")) == payload)


_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # the stub types one-element tuples
_NOMK: dict[bool, tuple[str, ...]] = {True: ("NOMKSTREAM",), False: ()}
# the rest of ``XADD key MAXLEN ~ n <id> event <payload>`` after the sink's head, as RESP bulk
# strings: each one's length header (``$<n>\r\n``) taken from a table for the usual sizes
_BULK_SIZES = 4096
_BULK = [b"$%d\r\n" % n for n in range(_BULK_SIZES)]
_EVENT_FIELD = b"\r\n$5\r\nevent\r\n"
_SINK = operator.itemgetter(0)
_IDS_ONLY = {bytes}  # the reply types of a round trip in which every XADD wrote its entry


async def _replies(conn: Any, count: int) -> list[object]:
    """``count`` replies in order, errors as :class:`ResponseError` values.

    On redis-py's own connections with its hiredis parser they are taken from the parser's reader
    in bulk (:mod:`worker.fastpath.redis_py`; ``read_response`` costs ~4 µs a reply, about what
    Redis spends on the XADD). Any other connection or parser (fakeredis, the pure-Python parser, a
    redis-py whose internals no longer look as expected) gets ``read_response`` per reply.
    """
    bulk = bulk_reader(conn)
    if bulk is None:
        return [await _reply(conn) for _ in range(count)]
    return await bulk.read(count)


async def _reply(conn: Any) -> object:
    try:
        return await conn.read_response(timeout=math.inf)
    except ResponseError as exc:
        return exc
