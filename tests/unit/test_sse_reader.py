"""worker.upstream.sse.SSEReader reads what httpx-sse's decoders read: the same lines from the same
text however it is cut (CRLF split between reads, a lone CR last), and the same events (name, data)
from those lines, for any text. httpx-sse's own line and event decoders are the oracle here."""

from __future__ import annotations

from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.upstream.sse import SSEReader

PIECES = [
    "data: ",
    "data:",
    "data",
    "event: ",
    "event:",
    "id: ",
    "id:",
    "retry: ",
    "retry:",
    ": ping",
    ":",
    " ",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\0",
    "5",
    "x",
    "é→🚀",
    "message",
    "error",
    "ping",
    "{}",
    "other: ",
]
texts = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
cuts = st.lists(st.integers(0, 400), max_size=12)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut at ``cuts`` (empty pieces dropped, as the reader never gets one)."""
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [p for p in (text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)) if p]


def _oracle(pieces: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    lines_decoder, events_decoder = SSELineDecoder(), SSEDecoder()
    lines = [line for piece in pieces for line in lines_decoder.decode(piece)] + lines_decoder.flush()
    events = [(e.event, e.data) for e in map(events_decoder.decode, lines) if e is not None]
    return lines, events


def _ours(pieces: list[str], per_line: bool) -> tuple[list[str], list[tuple[str, str]]]:
    reader = SSEReader()
    lines: list[str] = []
    events: list[tuple[str, str]] = []
    for piece in [*pieces, None]:
        got = reader.flush() if piece is None else reader.lines(piece)
        lines += got
        if per_line:  # the events of each line as it comes, or of each read's lines at once
            for line in got:
                events += reader.events([line])
        else:
            events += reader.events(got)
    return lines, events


@settings(max_examples=2000)
@given(texts, cuts, st.booleans())
@example("data: a\r", [], False)
@example("data: a\r\ndata: b\r\n\r\n", [8], False)  # CR | LF
@example("id: 1\n\n\n", [], False)  # an id makes every blank line dispatch
@example("retry: x\n\nretry: 5\n\n", [], False)
@example("event: error\n\n", [], True)
@example("data: \0\nid: \0\n\n", [3], True)
def test_the_reader_gives_the_lines_and_events_httpx_sse_gives(
    text: str, cuts: list[int], per_line: bool
) -> None:
    pieces = _pieces(text, cuts)
    assert _ours(pieces, per_line) == _oracle(pieces)


def test_the_usual_stream_is_read_event_by_event() -> None:
    reader = SSEReader()
    lines = reader.lines('data: {"a":1}\n\ndata: {"a"')
    assert lines == ['data: {"a":1}', ""]
    assert reader.events(lines) == [("message", '{"a":1}')]
    lines = reader.lines(":2}\n\nevent: ping\ndata:x\ndata: y\n\n")
    assert reader.events(lines) == [("message", '{"a":2}'), ("ping", "x\ny")]
    assert reader.flush() == []


def test_one_leading_byte_order_mark_is_ignored() -> None:
    """WHATWG event stream: "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
    present." httpx-sse keeps it, so the first line's field is "\\ufeffdata" and the stream's first
    event (a provider's first token) was silently lost. Only the stream's first character is one."""
    reader = SSEReader()
    lines = reader.lines("\ufeffdata: first\n\n")
    assert reader.events(lines) == [("message", "first")]
    lines = reader.lines("\ufeffdata: second\n\n")  # not the stream's start: an unknown field
    assert reader.events(lines) == []
    reader = SSEReader()
    assert reader.lines("\ufeff") == []  # a read holding the mark alone
    assert reader.events(reader.lines("data: x\n\n")) == [("message", "x")]


def test_a_long_line_in_many_reads_is_joined_once() -> None:
    """A line arriving in many small reads is kept as its pieces and joined when it ends (a string
    grown read by read copies it whole each time: quadratic in the line, a 1 MiB event in 64-byte
    reads took 2.3 s of CPU)."""
    reader = SSEReader()
    assert reader.lines("data: ") == []
    for _ in range(1000):
        assert reader.lines("x" * 7) == []
    assert isinstance(reader._partial, list) and len(reader._partial) == 1001
    assert reader.events(reader.lines("\n\n")) == [("message", "x" * 7000)]
    assert reader._partial == []
