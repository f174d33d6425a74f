"""structlog set-up, called once by the entry point (never at import).

JSON lines when stderr is not a terminal (production), a readable console otherwise. Contextvars carry
the job id onto every line a job's task logs. Every string of every line, tracebacks included, passes
:func:`worker.redact.log_processor` last, just before it is rendered; the libraries' stdlib logging
(asyncio's "Task exception was never retrieved", aiohttp's warnings) is printed as Python's last-resort
handler prints it, redacted.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, TextIO

import msgspec
import structlog

from .redact import installed, redact
from .term import use_color

__all__ = ["configure_logging"]

_JSON = msgspec.json.Encoder()


def _dumps(obj: Any, default: Any = None) -> str:
    return _JSON.encode(obj).decode()


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=use_color(out), exception_formatter=_redacted_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else _identity,
            RedactFields(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # one write a line (print writes the line and its newline apart: two syscalls unbuffered)
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    if not root.handlers:  # what logging.lastResort would print, redacted
        handler = logging.StreamHandler(out)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_RedactingFormatter("%(message)s"))
        root.addHandler(handler)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _redacted_traceback(sio: TextIO, exc_info: Any) -> None:
    """The console's traceback, plain and redacted (the console renders exceptions itself)."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(redact(text.getvalue()))


class RedactFields:
    """A structlog processor: :func:`worker.redact.log_processor`'s redaction (every string of every
    field, nested, through the process's Redactor; ``exc_info`` left to the renderer), with the
    result for short strings remembered: the event names, models and reasons every job's lines
    repeat are redacted once, not once a line. The Redactor is pure, and the memo is dropped
    whenever another one is installed. ``timestamp`` and ``level`` are the processors' own output
    (they overwrite any caller's), so they are not scanned."""

    __slots__ = ("_for", "_memo")

    MAX_LENGTH = 256  # longer strings are redacted every time (ids, messages)
    MAX_ENTRIES = 4096  # the memo is cleared when it holds this many

    def __init__(self) -> None:
        self._for: object = None
        self._memo: dict[str, str] = {}

    def __call__(self, logger: Any, method: str, event_dict: Any) -> dict[str, Any]:
        redactor = installed()
        if redactor is not self._for:
            self._for, self._memo = redactor, {}
        memo = self._memo
        out: dict[str, Any] = {}
        for key, value in event_dict.items():
            if key in _OWN or type(value) in _PLAIN:
                out[key] = value
            elif isinstance(value, str):
                done = memo.get(value)
                if done is None:
                    done = redactor.redact(value)
                    if len(value) <= self.MAX_LENGTH:
                        if len(memo) >= self.MAX_ENTRIES:
                            memo.clear()
                        memo[value] = done
                out[key] = done
            else:
                out[key] = redactor.redact_value(value)
        return out


_OWN = frozenset({"exc_info", "timestamp", "level"})
_PLAIN = frozenset({int, float, bool, type(None)})
"""Exact types that hold no string: nothing in them to redact (a subclass is scanned as before)."""


def _identity(logger: Any, method: str, event_dict: Any) -> Any:
    return event_dict
