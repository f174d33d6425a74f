"""The gateway's reader: one Redis read per job, shared by every connection watching it.

Each job watched by at least one connection of this process is a :class:`Feed` with a position (the
last entry id the hub has read). The hub reads every feed's new entries with one ``XREAD`` of many
keys per call (``BLOCK`` a short while, chunks of :data:`KEYS_PER_READ` keys read concurrently, each
on a connection kept for it, the reply taken raw from hiredis: :mod:`worker.gateway.xread`), and
hands each feed's new entries to every :class:`Watch` of it as one :class:`Batch`: a watch whose
connection waits with nothing unsent gets the batch's bytes (its frames joined, built once for all
watchers) in one write to its transport, so a read that brings a job several entries costs each of
its clients one send, however many. On Redis Cluster one ``XREAD`` cannot span hash
slots, and each job's keys have their own: the feeds are read by a non-blocking pipeline of one
``XREAD`` per key (redis-py's cluster pipeline groups the commands by node, one round trip per node,
nodes in parallel), polled every :data:`CLUSTER_POLL_SECONDS` while entries flow, and less often
(doubling up to :data:`CLUSTER_IDLE_SECONDS`) while none arrive, so idle watchers cost little.

A watch buffers the entries not yet written to its client: one still holding over its ``limit`` bytes
from earlier reads when a new read arrives has fallen behind and is dropped (:attr:`Watch.dropped`):
its connection closes with a comment saying so (or is cut, when its client reads nothing at all),
and the client resumes by id. A slow client therefore never delays the hub nor another client.

A job first watched while the hub's ``XREAD`` is blocked joins the next read, at most ``block_ms``
(100 ms) later: its client has everything up to then from its own replay, so only an idle gateway's
first live events of a new job can wait that long; while any watched job streams, reads return at
once and new jobs join within a read.

A connection replays a job's history itself (``XRANGE``, written as it is read, so a long history
waits on that client alone), then attaches here at the id it reached (:meth:`Hub.attach`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..backoff import REDIS, Backoff
from ..keys import Keys
from .ids import parse_stream_id
from .sse import Entry, entry_of
from .xread import XReader

__all__ = [
    "CLUSTER_IDLE_SECONDS",
    "CLUSTER_POLL_SECONDS",
    "DIRECT_BELOW",
    "KEYS_PER_READ",
    "Feed",
    "Hub",
    "Sink",
    "Watch",
    "stream_key",
]

KEYS_PER_READ: Final = 1000
READ_COUNT: Final = 256
DIRECT_BELOW: Final = 16_384  # unsent bytes under which an entry goes straight to an idle connection
CLUSTER_POLL_SECONDS: Final = 0.02
CLUSTER_IDLE_SECONDS: Final = 0.08

log = structlog.get_logger("tokenwire.gateway")


def stream_key(text: str) -> tuple[int, int]:
    """An entry id as a sortable pair (ids from Redis are always well formed; junk sorts first)."""
    return parse_stream_id(text) or (0, 0)


class Batch:
    """A feed's new entries from one read, with the bytes an idle watcher gets: their SSE frames
    joined (:attr:`wire`) and as HTTP/1.1 chunks (:attr:`chunk`), built once for every watcher, so
    a read bringing several entries of a job costs each of its connections one write."""

    __slots__ = ("chunk", "entries", "events", "first", "keys", "last", "last_id", "terminal", "wire")

    def __init__(self, entries: list[Entry], keys: list[tuple[int, int]]) -> None:
        self.entries = entries
        self.keys = keys
        self.first, self.last = keys[0], keys[-1]
        self.last_id = entries[-1].id
        self.terminal = entries[-1].terminal
        self.events = sum([e.data is not None for e in entries])
        if len(entries) == 1:
            self.wire, self.chunk = entries[0].wire, entries[0].chunk
        else:
            self.wire = b"".join([e.wire for e in entries])
            self.chunk = b"".join([e.chunk for e in entries])


class Watch:
    """One connection's view of a feed: entries newer than it has, up to ``limit`` bytes of them."""

    __slots__ = (
        "_size",
        "chunked",
        "dropped",
        "ended",
        "feed",
        "finished",
        "gone",
        "last",
        "last_id",
        "limit",
        "on_drop",
        "queue",
        "sink",
        "wake",
    )

    def __init__(self, feed: Feed, last: tuple[int, int], limit: int) -> None:
        self.feed = feed
        self.last = last
        self.limit = limit
        self.queue: deque[Entry] = deque()
        self._size = 0
        self.wake = asyncio.Event()
        self.dropped = False
        self.gone = False
        self.finished = False  # the job's terminal event passed at or before ``last``
        self.on_drop: Callable[[], None] | None = None  # called when it is dropped
        # While its connection waits with nothing queued: the transport a read's entries are
        # written to at once (no task woken, no await), as long as little is unsent; ``chunked``:
        # HTTP/1.1 framing
        self.sink: Sink | None = None
        self.chunked = True
        self.last_id = ""  # the id of the last entry written through ``sink``
        self.ended = False  # the terminal entry was written through ``sink``

    def offer(self, batch: Batch) -> int:
        """Take one read's new entries of the feed (called once per read); returns the events
        written straight to the transport. A watch still holding over ``limit`` bytes from earlier
        reads (its client has not taken them) has fallen behind and is dropped."""
        if self.dropped:
            return 0
        if self._size > self.limit:
            self._drop()
            return 0
        sink = self.sink
        if sink is not None and batch.first > self.last and not self.queue and not sink.is_closing():
            data = batch.chunk if self.chunked else batch.wire
            if sink.get_write_buffer_size() + len(data) <= DIRECT_BELOW:
                sink.write(data)
                self.last = batch.last
                self.last_id = batch.last_id
                if batch.terminal:
                    self.ended = True
                    self.sink = None
                    self.wake.set()
                return batch.events
        for entry, key in zip(batch.entries, batch.keys, strict=True):
            self._add(entry, key)
        return 0

    def _add(self, entry: Entry, key: tuple[int, int]) -> None:
        if key <= self.last:
            if entry.terminal:  # resumed past the end: nothing will ever follow
                self.finished = True
                self.wake.set()
            return
        self.last = key
        self.queue.append(entry)
        self._size += len(entry.data or b"") + 64
        self.wake.set()

    def _drop(self) -> None:
        self.dropped = True
        self.queue.clear()
        self._size = 0
        self.wake.set()
        if self.on_drop is not None:
            self.on_drop()

    def take(self) -> list[Entry]:
        items = list(self.queue)
        self.queue.clear()
        self._size = 0
        self.wake.clear()
        return items

    def expire(self) -> None:
        self.gone = True
        self.wake.set()


class Sink(Protocol):
    """What :attr:`Watch.sink` writes to (an asyncio transport)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Feed:
    """A watched job: its stream key, the hub's position on it, its watches."""

    __slots__ = ("active", "done", "job_id", "key", "position", "watches")

    def __init__(self, job_id: str, key: str, position: str) -> None:
        self.job_id = job_id
        self.key = key
        self.position = position
        self.watches: set[Watch] = set()
        self.done = False
        self.active = False  # an entry arrived since the last expiry sweep

    def deliver(self, entries: Iterable[Entry]) -> int:
        """Hand one read's ``entries`` to every watch; returns the events written straight to
        connections."""
        position = stream_key(self.position)
        fresh: list[Entry] = []
        keys: list[tuple[int, int]] = []
        for entry in entries:
            key = stream_key(entry.id)  # parsed once, for every watch
            if key <= position:
                continue
            position = key
            fresh.append(entry)
            keys.append(key)
            if entry.terminal:
                self.done = True
                break
        if not fresh:
            return 0
        self.position = fresh[-1].id
        self.active = True
        batch = Batch(fresh, keys)
        return sum([watch.offer(batch) for watch in tuple(self.watches)])


class Hub:
    """The reader of every feed of one gateway process. :meth:`run` until ``stop``."""

    def __init__(
        self,
        reader: Redis,
        keys: Keys,
        *,
        cluster: bool = False,
        block_ms: int = 100,
        sweep_seconds: float = 15.0,
        on_read: Any = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.reader = reader
        self.xread = XReader(reader)
        self.keys = keys
        self.cluster = cluster
        self.block_ms = block_ms
        self.sweep_seconds = sweep_seconds
        self.feeds: dict[str, Feed] = {}
        self._changed = asyncio.Event()
        self._on_read = on_read
        self._on_sent = on_sent  # events written straight to connections, once per read

    def wake(self) -> None:
        """End an idle wait now (a new feed, or stopping)."""
        self._changed.set()

    def attach(self, job_id: str, last: str, limit: int, *, start: str | None = None) -> tuple[Watch, str]:
        """Watch ``job_id`` from after ``last``; returns the watch and the feed's position then: the
        caller reads ``(last, position]`` itself (``XRANGE``), the watch gets everything after.
        ``start``: where a new feed begins (a real position of the stream; default ``last``)."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = Feed(job_id, self.keys.events(job_id), start or last)
            self._changed.set()
        position = feed.position
        watch = Watch(feed, max(stream_key(last), stream_key(position)), limit)
        feed.watches.add(watch)
        return watch, position

    def detach(self, watch: Watch) -> None:
        watch.sink = None
        feed = watch.feed
        feed.watches.discard(watch)
        if not feed.watches and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self.xread.aclose()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(REDIS)
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.sweep_seconds
        poll = CLUSTER_POLL_SECONDS
        while not stop.is_set():
            feeds = [f for f in self.feeds.values() if not f.done]
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.sweep_seconds
                    await self.sweep()
                if not feeds:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):  # wait_for can lose a cancel (fastpath/redis_cancel)
                            await self._changed.wait()
                    continue
                got = await self.read_once(feeds)
                backoff.succeeded()
            except RedisError as exc:
                delay = backoff.failed()
                log.warning("gateway read failed; retrying", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            if self.cluster:
                # while entries flow, poll every CLUSTER_POLL_SECONDS; idle, back off to CLUSTER_IDLE_SECONDS
                poll = CLUSTER_POLL_SECONDS if got else min(poll * 2, CLUSTER_IDLE_SECONDS)
                if not got:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(poll):
                            await self._changed.wait()

    async def read_once(self, feeds: list[Feed]) -> int:
        """One read of ``feeds`` (blocking up to ``block_ms`` on a single server); entries handed over."""
        return await (self._read_cluster(feeds) if self.cluster else self._read(feeds))

    async def _read(self, feeds: list[Feed]) -> int:
        chunks = [feeds[i : i + KEYS_PER_READ] for i in range(0, len(feeds), KEYS_PER_READ)]
        if len(chunks) == 1:
            return await self._read_chunk(chunks[0], 0)
        lanes = [asyncio.ensure_future(self._read_chunk(chunk, n)) for n, chunk in enumerate(chunks)]
        try:
            counts = await asyncio.gather(*lanes)
        except BaseException:
            # gather leaves the other lanes reading: stop them, or the next read finds a lane's
            # connection still busy (one connection, one read at a time)
            for lane in lanes:
                lane.cancel()
            await asyncio.wait(lanes)
            raise
        return sum(counts)

    async def _read_chunk(self, feeds: list[Feed], lane: int) -> int:
        by_key = {f.key: f for f in feeds}
        reply = await self.xread.read(
            [f.key for f in feeds],
            [f.position for f in feeds],
            count=READ_COUNT,
            block_ms=self.block_ms,
            lane=lane,
        )
        if self._on_read is not None:
            self._on_read()
        return self._deliver(by_key, streams_of(reply))

    async def _read_cluster(self, feeds: list[Feed]) -> int:
        pipe: Any = self.reader.pipeline(transaction=False)
        for feed in feeds:
            pipe.xread({feed.key: feed.position}, count=READ_COUNT)
        replies = await pipe.execute()
        if self._on_read is not None:
            self._on_read()
        by_key = {f.key: f for f in feeds}
        total = 0
        for reply in replies:
            total += self._deliver(by_key, streams_of(reply))
        return total

    def _deliver(self, by_key: dict[str, Feed], streams: list[tuple[str, list[Any]]]) -> int:
        count = sent = 0
        for key, items in streams:
            feed = by_key.get(key)
            if feed is None or self.feeds.get(feed.job_id) is not feed:
                continue  # no longer watched (or watched anew from another position)
            sent += feed.deliver([entry_of(entry_id, fields) for entry_id, fields in items])
            count += len(items)
        if sent and self._on_sent is not None:
            self._on_sent(sent)
        return count

    async def sweep(self) -> None:
        """Feeds silent since the last sweep whose job's keys are gone (expired, deleted): their
        watches end, instead of waiting forever on a key that will never be written."""
        quiet = [f for f in self.feeds.values() if not f.active and not f.done]
        for feed in self.feeds.values():
            feed.active = False
        if not quiet:
            return
        pipe: Any = self.reader.pipeline(transaction=False)
        for feed in quiet:
            pipe.exists(self.keys.state(feed.job_id), feed.key)
        found = await pipe.execute()
        for feed, alive in zip(quiet, found, strict=True):
            if not alive:
                for watch in tuple(feed.watches):
                    watch.expire()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def streams_of(reply: Any) -> list[tuple[str, list[Any]]]:
    """``[(key, [(id, fields), ...]), ...]`` of an XREAD reply: redis-py's (RESP2 list, or a RESP3
    map of one-element lists) or hiredis's own (lists, or a RESP3 map), fields a ``dict`` or a flat
    list. The entries' lists are the reply's own (not copied)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(_text(k), _entries(v)) for k, v in reply.items()]
    return [(_text(k), items) for k, items in reply]


def _entries(value: Any) -> list[Any]:
    """A RESP3 map's value: the entries, or redis-py's one-element list holding them."""
    first = value[0] if value else None
    if type(first) is list and (not first or type(first[0]) in (list, tuple)):
        return first
    return value  # type: ignore[no-any-return]
