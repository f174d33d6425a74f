"""httpx-sse's line and event decoders, run straight on the body's bytes (component ``sse``).

They live in ``httpx_sse._decoders``, which the package does not export. Its public reader,
``EventSource.aiter_sse``, runs the same decoders behind httpx's ``aiter_text``: a few async
generators more per chunk and per event. :func:`decoders` gives the decoders when :func:`probe`
found them working, else ``None``, and the caller then reads through ``EventSource``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple, Protocol

from worker.fastpath import Probe, Remembered

__all__ = ["COMPONENT", "Decoders", "decoders", "probe"]

COMPONENT = "sse"
_MODULE = "httpx_sse._decoders"


class Event(Protocol):
    @property
    def event(self) -> str: ...

    @property
    def data(self) -> str: ...


class LineDecoder(Protocol):
    def decode(self, text: str) -> list[str]: ...

    def flush(self) -> list[str]: ...


class EventDecoder(Protocol):
    def decode(self, line: str) -> Event | None: ...


class Decoders(NamedTuple):
    """Factories of a stream's line decoder (text in, lines out) and event decoder (lines in)."""

    lines: Callable[[], LineDecoder]
    events: Callable[[], EventDecoder]


# A self-test of what the reading loop relies on: CR LF split across reads, a trailing CR held back,
# comments, multi-line data, a named event, the last line given by flush().
_SAMPLE = ("data: a\r", "\ndata: b\r\n\r", "\n: ping\nevent: error\ndata:x\n\ndata: y")
_LINES = ["data: a", "data: b", "", ": ping", "event: error", "data:x", "", "data: y"]
_EVENTS = [("message", "a\nb"), ("error", "x")]


def probe() -> Probe:
    """Look for the decoders, check them on :data:`_SAMPLE`, and remember the answer."""
    return _memo.probe()


def decoders() -> Decoders | None:
    """The decoders if the last :func:`probe` (run now if none ran) found them, else ``None``."""
    return _memo.found()


def _resolve() -> tuple[Decoders | None, str]:
    try:
        module = importlib.import_module(_MODULE)
    except ImportError as exc:
        return None, f"cannot import {_MODULE} ({exc})"
    lines, events = getattr(module, "SSELineDecoder", None), getattr(module, "SSEDecoder", None)
    for name, found in (("SSELineDecoder", lines), ("SSEDecoder", events)):
        if not isinstance(found, type):
            return None, f"{_MODULE}.{name} is missing"
    assert isinstance(lines, type) and isinstance(events, type)
    found = Decoders(lines, events)
    try:
        problem = _self_test(found)
    except Exception as exc:  # any failure of a private API means: do not use it
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        return None, f"{_MODULE}'s decoders fail the self-test: {problem}"
    return found, f"{_MODULE}.SSELineDecoder and SSEDecoder read the body's bytes directly"


def _self_test(found: Decoders) -> str | None:
    line_decoder = found.lines()
    lines = [line for text in _SAMPLE for line in line_decoder.decode(text)] + line_decoder.flush()
    if lines != _LINES:
        return f"lines {lines!r}, expected {_LINES!r}"
    event_decoder = found.events()
    decoded = [event_decoder.decode(line) for line in lines]
    events = [(e.event, e.data) for e in decoded if e is not None]
    return None if events == _EVENTS else f"events {events!r}, expected {_EVENTS!r}"


_memo: Remembered[Decoders] = Remembered(COMPONENT, _resolve)
