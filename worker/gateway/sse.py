"""Server-sent events frames for the gateway: one event stream entry becomes one SSE event.

``id:`` is the Redis entry id (what ``Last-Event-ID`` and ``after`` resume from), ``event:`` the
event's ``type``, ``data:`` the event JSON exactly as stored. Every byte comes from Redis, where a
raw ``XADD`` may have written anything: a type that is not a plain name is sent as ``unknown``, and
a line break inside the data continues on a new ``data:`` line (an SSE client joins them with
``\\n``), so no entry can forge a field or another event.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from ..events import TERMINAL_TYPES

__all__ = ["Entry", "chunked", "comment", "entry_of", "frame"]

_TYPE: Final = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
_LINES: Final = re.compile(rb"\r\n|\r|\n")


class _Typed(msgspec.Struct):
    type: str = "unknown"


_TYPED: Final = msgspec.json.Decoder(_Typed)
_HEADS: dict[str, bytes] = {}  # an event type's checked name -> its frame's event and data lines
_MAX_HEADS: Final = 256  # raw XADDs may write any number of types: only so many are remembered


class Entry(msgspec.Struct, frozen=True):
    """One event stream entry: its id, its event type, its JSON as stored (None: no ``event`` field).
    :attr:`wire` is its SSE frame and :attr:`chunk` that frame as one HTTP/1.1 chunk, each made once
    however many clients it is written to."""

    id: str
    type: str
    data: bytes | None
    wire: bytes = b""
    chunk: bytes = b""

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_of(entry_id: object, fields: object) -> Entry:
    """An :class:`Entry` from a raw XREAD/XRANGE item (its fields a ``dict``, or hiredis's flat
    ``[name, value, ...]`` list); total over whatever Redis holds."""
    raw = _event_field(fields)
    if raw is None:
        return _framed(_text(entry_id), "unknown", None)
    try:
        kind = _TYPED.decode(raw).type
    except (msgspec.DecodeError, RecursionError):
        kind = "unknown"
    except Exception:  # total: a decoder failure is the entry's fault
        kind = "unknown"
    return _framed(_text(entry_id), kind, raw)


def _event_field(fields: object) -> bytes | None:
    """The ``event`` field's bytes, or None (no such field, or not bytes). A field named twice
    (a raw ``XADD`` may) counts by its last value, in both shapes (redis-py's ``dict`` keeps it)."""
    raw: object = None
    if isinstance(fields, list):
        if len(fields) == 2 and fields[0] == b"event":  # every entry the workers write
            raw = fields[1]
        else:
            for i in range(0, len(fields) - 1, 2):
                if fields[i] == b"event":
                    raw = fields[i + 1]
    elif isinstance(fields, dict):
        raw = fields.get(b"event")
    return raw if isinstance(raw, bytes) else None


def _framed(entry_id: str, kind: str, data: bytes | None) -> Entry:
    head = _HEADS.get(kind)
    if head is None:  # a type not seen yet: checked once, remembered (a bounded number of them)
        if _TYPE.fullmatch(kind.encode("utf-8", "replace")) is None:
            kind = "unknown"
        head = b"\nevent: %s\ndata: " % kind.encode()
        if len(_HEADS) < _MAX_HEADS:
            _HEADS[kind] = head
    wire = _frame(entry_id, head, data)
    return Entry(entry_id, kind, data, wire, chunked(wire))


def chunked(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body (what aiohttp writes for a streamed response)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(entry: Entry) -> bytes:
    """The SSE bytes of ``entry`` (an entry with no event: a comment naming its id)."""
    return _frame(entry.id, b"\nevent: %s\ndata: " % entry.type.encode(), entry.data)


def _frame(entry_id: str, head: bytes, data: bytes | None) -> bytes:
    """``id: <id>`` + ``head`` (the event line and ``data:``) + the data, one ``data:`` line per line."""
    if data is None:
        return f": entry {entry_id} has no event field\n\n".encode()
    if b"\n" in data or b"\r" in data:
        data = b"\ndata: ".join(_LINES.split(data))
    return b"id: %s%s%s\n\n" % (entry_id.encode(), head, data)


def comment(text: str) -> bytes:
    """An SSE comment line (ignored by clients; heartbeats and close reasons)."""
    return b": " + _LINES.sub(b" ", text.encode()) + b"\n\n"
