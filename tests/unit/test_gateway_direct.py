"""The hub's direct path: a read's new entries of a job go straight to an idle connection's transport
(their chunks joined once, shared by every watcher, one write), and queue for the connection's own
task once unsent bytes pile up."""

from __future__ import annotations

from worker.gateway.hub import DIRECT_BELOW, Feed, Watch
from worker.gateway.sse import Entry, chunked, entry_of


class _Transport:
    """Records writes; ``unsent`` stands for what the kernel has not taken yet."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.unsent = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.unsent


def _token(i: int) -> Entry:
    return entry_of(f"1-{i}".encode(), {b"event": b'{"type":"token","n":%d}' % i})


def _watched(*, watchers: int = 1) -> tuple[Feed, list[Watch], list[_Transport]]:
    feed = Feed("a/j", "k", "1-0")
    watches, sinks = [], []
    for _ in range(watchers):
        watch, sink = Watch(feed, (1, 0), limit=100_000), _Transport()
        watch.sink = sink
        feed.watches.add(watch)
        watches.append(watch)
        sinks.append(sink)
    return feed, watches, sinks


def test_an_idle_watch_gets_a_reads_entries_in_one_write_of_shared_bytes() -> None:
    feed, watches, sinks = _watched(watchers=3)
    entries = [_token(1), _token(2)]
    sent = feed.deliver(entries)
    assert sent == 6  # counted once per read, for the metrics
    for watch, sink in zip(watches, sinks, strict=True):
        assert sink.written == [entries[0].chunk + entries[1].chunk] and not watch.queue
        assert watch.last_id == "1-2" and not watch.wake.is_set()
    third = _token(3)
    feed.deliver([third])  # a read with one entry: that entry's own chunk, no copy
    assert all(sink.written[1] is third.chunk for sink in sinks)
    assert entries[0].chunk == chunked(entries[0].wire)
    assert entries[0].chunk.startswith(b"%x\r\n" % len(entries[0].wire)) and entries[0].chunk.endswith(
        b"\n\n\r\n"
    )
    # every watcher was handed the very same bytes object: built once per entry
    assert all(sink.written[0] is sinks[0].written[0] for sink in sinks)


def test_unsent_bytes_make_entries_queue_in_order_for_the_connections_task() -> None:
    feed, (watch,), (sink,) = _watched()
    feed.deliver([_token(1)])
    sink.unsent = DIRECT_BELOW
    feed.deliver([_token(2), _token(3)])
    sink.unsent = 0  # drained, but entries are queued: none may overtake them
    feed.deliver([_token(4)])
    assert sink.written == [_token(1).chunk]
    assert [e.id for e in watch.take()] == ["1-2", "1-3", "1-4"] and watch.last_id == "1-1"


def test_a_closing_transport_or_a_busy_connection_gets_nothing_directly() -> None:
    feed, (watch,), (sink,) = _watched()
    sink.closing = True
    feed.deliver([_token(1)])
    watch.sink = None  # its task is writing: the hub must not write around it
    sink.closing = False
    feed.deliver([_token(2)])
    assert sink.written == [] and [e.id for e in watch.take()] == ["1-1", "1-2"]


def test_a_terminal_entry_written_directly_ends_the_watch_and_wakes_its_task() -> None:
    feed, (watch,), (sink,) = _watched()
    done = entry_of(b"1-2", {b"event": b'{"type":"done"}'})
    feed.deliver([_token(1), done, _token(3)])
    assert sink.written == [_token(1).chunk + done.chunk]
    assert watch.ended and watch.wake.is_set() and watch.sink is None and feed.done


def test_an_http_1_0_connection_gets_the_bare_frame() -> None:
    feed, (watch,), (sink,) = _watched()
    watch.chunked = False
    feed.deliver([_token(1), _token(2)])
    assert sink.written == [_token(1).wire + _token(2).wire]


def test_a_batch_that_would_pile_up_unsent_bytes_queues_instead() -> None:
    feed, (watch,), (sink,) = _watched()
    sink.unsent = DIRECT_BELOW - len(_token(1).chunk) + 1  # room for less than the entry
    feed.deliver([_token(1)])
    assert sink.written == [] and [e.id for e in watch.take()] == ["1-1"]


def test_a_watch_resumed_ahead_of_the_feed_gets_only_the_entries_after_its_id() -> None:
    feed = Feed("a/j", "k", "1-0")
    watch, sink = Watch(feed, (1, 2), limit=100_000), _Transport()  # its client had up to 1-2
    watch.sink = sink
    feed.watches.add(watch)
    feed.deliver([_token(1), _token(2), _token(3)])
    assert sink.written == [] and [e.id for e in watch.take()] == ["1-3"]
