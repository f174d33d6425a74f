"""The terminal view of a job with several candidates (``tokenwire tail``, issue 16 §2).

Candidates interleave on the stream, so their text is never written as it comes: each token goes
to its candidate's lane, which wraps it into rows as it grows (each character once; a lane is
wrapped anew only when the layout changes, as a further candidate appears). What is shown live
depends on the output:

- a terminal (:meth:`CandidatesView.live`): a region redrawn in place (worker/render.py), the
  candidates side by side in columns when the terminal is wide enough, one after another
  otherwise, each under a heading (streaming with its token count, done with its confidence, or
  failed) showing its last rows;
- anything else, a pipe or a file (:meth:`CandidatesView.ready`): each row of a candidate's text
  once it is complete, prefixed ``[k]``, and a line when a candidate ends.

The ``done`` shows every candidate in full (:meth:`CandidatesView.board`), side by side when they
fit, the winner marked ★ and each headed by its rank, score and confidence (or its error).

Text from upstream is hostile: control characters are shown as ``�`` (a tab as a space), so a
token cannot move the cursor; rows are measured in terminal cells (East Asian wide characters take
two, combining marks none). Every other string ``tail`` prints from an event (a finish reason is
the provider's own, an error's code and message, a start's reason: anyone who can ``XADD`` to the
job's stream writes them too) goes through :func:`printable`.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from dataclasses import dataclass, field

from .events import CandidateDone, Done, Token

__all__ = ["MIN_COLUMN", "PREFIX", "CandidatesView", "cells", "printable", "visible"]

MIN_COLUMN = 24
"""The narrowest column of the side-by-side layout; a terminal narrower than ``n`` of them (and the
gaps) gets the candidates one after another."""

PREFIX = "[{k}] "
"""What each row of candidate ``k``'s text starts with when the output is not a terminal."""

_GAP = " │ "
_LIVE_ROWS = 8  # at most this many rows of each candidate's text in the side-by-side region
_STACKED_ROWS = 3  # ... and one after another


def visible(ch: str) -> str:
    """``ch`` as the view writes it: a control character (other than a newline) as ``�``, a tab
    as a space, so upstream text never moves the cursor."""
    if ch == "\t":
        return " "
    if ch != "\n" and unicodedata.category(ch) == "Cc":
        return "\ufffd"
    return ch


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # category Cc but a tab and a newline


def printable(text: str) -> str:
    """``text`` as ``tail`` writes it: every control character but a newline or a tab as ``�``,
    a carriage return dropped (a CRLF is its LF), so no string from an event writes an escape or
    moves the cursor."""
    if text.isprintable():
        return text
    if "\r" in text:
        text = text.replace("\r", "")
    return _CONTROL.sub("\ufffd", text)


def _cell(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cells(text: str) -> int:
    """The terminal cells ``text`` takes."""
    return sum(_cell(ch) for ch in text)


def _crop(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` cells."""
    used = 0
    for i, ch in enumerate(text):
        used += _cell(ch)
        if used > width:
            return text[:i]
    return text


def _pad(text: str, width: int) -> str:
    text = _crop(text, width)
    return text + " " * (width - cells(text))


class _Rows:
    """Text wrapped into rows of at most ``width`` cells as it grows: at the last space when the
    row has one, else where the row is full; a newline ends a row."""

    __slots__ = ("cells", "line", "rows", "taken", "width", "wrapped")

    def __init__(self, width: int) -> None:
        self.width = max(1, width)
        self.rows: list[str] = []
        self.line = ""
        self.cells = 0
        self.wrapped = False  # the current row began where a full one was cut at a space
        self.taken = 0  # complete rows handed out by CandidatesView.ready

    def add(self, text: str) -> None:
        for raw in text:
            ch = visible(raw)
            if ch == "\n":
                self._push(self.line)
                self.line, self.cells, self.wrapped = "", 0, False
                continue
            if ch == " " and not self.line and (self.wrapped or not self.rows):
                continue  # neither the text nor a row cut at a space begins with one
            width = _cell(ch)
            if self.cells + width > self.width and self.line:
                if ch == " ":  # the row is full at a space: the break is here
                    self._push(self.line)
                    self.line, self.cells, self.wrapped = "", 0, True
                    continue
                self._wrap()
            self.line += ch
            self.cells += width

    def _wrap(self) -> None:
        cut = self.line.rfind(" ")
        if cut > 0:
            self._push(self.line[:cut].rstrip(" "))
            self.line = self.line[cut + 1 :]
        else:
            self._push(self.line)
            self.line = ""
        self.cells = cells(self.line)
        self.wrapped = True

    def _push(self, row: str) -> None:
        self.rows.append(row)

    def finish(self) -> None:
        """End the row being written (the text ended)."""
        if self.line:
            self._push(self.line)
            self.line, self.cells, self.wrapped = "", 0, False

    def tail(self, count: int) -> list[str]:
        """The last ``count`` rows, the one being written included."""
        rows = self.rows + ([self.line] if self.line or not self.rows else [])
        return rows[-count:] if count > 0 else []


@dataclass(slots=True)
class _Lane:
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    done: CandidateDone | None = None
    rows: _Rows | None = None


class CandidatesView:
    """What ``tail`` shows of a job's candidates; ``width`` and ``height`` are the terminal's."""

    def __init__(self, width: int, height: int = 24) -> None:
        self.width = max(20, width)
        self.height = max(4, height)
        self.lanes: dict[int, _Lane] = {}
        self._rows_width = 0  # the width the lanes' rows are wrapped at

    # -- what arrives ------------------------------------------------------------------------

    def token(self, event: Token) -> None:
        k = event.candidate
        assert isinstance(k, int)
        lane = self._lane(k)
        lane.tokens += 1
        if not event.special and event.channel == "content":
            lane.parts.append(event.text)
            if lane.rows is not None:
                lane.rows.add(event.text)

    def closed(self, event: CandidateDone) -> str:
        """The line that says candidate ``k`` ended."""
        self._lane(event.candidate).done = event
        if event.error is not None:
            message = "".join(visible(ch) for ch in event.error.message)
            return f"  candidate {event.candidate} failed [{printable(event.error.code)}] {message}"
        conf = "n/a" if event.confidence is None else f"{event.confidence:.3f}"
        reason = printable(str(event.finish_reason))
        return f"  candidate {event.candidate} done ({reason}), confidence {conf}"

    def _lane(self, k: int) -> _Lane:
        lane = self.lanes.get(k)
        if lane is None:
            lane = self.lanes[k] = _Lane()
            self._rows_width = 0  # a further candidate: the layout may change
        return lane

    # -- the layout ----------------------------------------------------------------------------

    def _columns(self) -> int | None:
        """The width of each column side by side for the candidates seen so far; None when they
        do not fit (one after another). One cell is kept free so that no row reaches the margin."""
        n = max(self.lanes, default=0) + 1
        column = (self.width - 1 - len(_GAP) * (n - 1)) // n
        return column if column >= MIN_COLUMN else None

    def _wrap_at(self, width: int) -> None:
        if self._rows_width == width:
            return
        self._rows_width = width
        for lane in self.lanes.values():
            lane.rows = _Rows(width)
            lane.rows.add("".join(lane.parts))

    # -- a terminal: the live region -----------------------------------------------------------

    def live(self) -> list[str]:
        """The rows of the live region: every candidate seen so far under its heading, with its
        last rows of text (as many as the longest has, up to a bound); each row shorter than the
        terminal's width, and fewer rows than its height."""
        ks = range(max(self.lanes, default=-1) + 1)
        column = self._columns()
        rows: list[str] = []
        if column is not None:
            self._wrap_at(column)
            limit = max(1, min(_LIVE_ROWS, self.height - 4))
            texts = [self._text(k, limit) for k in ks]
            depth = max(1, max(len(t) for t in texts))
            blocks = [[self._heading(k), *texts[k]] for k in ks]
            for i in range(1 + depth):
                cut = [_pad(block[i] if i < len(block) else "", column) for block in blocks]
                rows.append(_GAP.join(cut).rstrip())
        else:
            self._wrap_at(self.width - 5)
            limit = max(0, min(_STACKED_ROWS, (self.height - 2) // max(1, len(ks)) - 1))
            for k in ks:
                rows.append(_crop(self._heading(k), self.width - 1))
                rows.extend("    " + row for row in self._text(k, limit))
        return rows[: self.height - 1]

    def _heading(self, k: int) -> str:
        lane = self.lanes.get(k)
        if lane is None:
            return f"candidate {k}: waiting"
        done = lane.done
        if done is None:
            return f"candidate {k}: {lane.tokens} tokens..."
        if done.error is not None:
            return f"candidate {k}: failed"
        conf = "n/a" if done.confidence is None else f"{done.confidence:.3f}"
        return f"candidate {k}: done, conf {conf}"

    def _text(self, k: int, depth: int) -> list[str]:
        """Candidate ``k``'s last rows, at most ``depth`` (a failed one's error last)."""
        lane = self.lanes.get(k)
        if lane is None or depth <= 0:
            return []
        error: list[str] = []
        if lane.done is not None and lane.done.error is not None:
            failed = lane.done.error
            message = "".join(visible(ch) for ch in failed.message)
            code = "".join(visible(ch) for ch in failed.code)
            error = _wrap(f"✗ [{code}] {message}", self._rows_width)[: max(1, depth // 2)]
        rows = [] if lane.rows is None else lane.rows.tail(depth - len(error))
        return [*rows, *error][-depth:]

    # -- anything else: complete rows, prefixed ------------------------------------------------

    def ready(self, k: int, *, ending: bool = False) -> list[str]:
        """Candidate ``k``'s rows completed since the last call, each prefixed ``[k]`` (with
        ``ending``, the row being written too: the candidate ended)."""
        lane = self.lanes.get(k)
        if lane is None:
            return []
        prefix = PREFIX.format(k=k)
        if lane.rows is None:  # rows for this output: the whole width less the prefix
            lane.rows = _Rows(self.width - 1 - len(prefix))
            lane.rows.add("".join(lane.parts))
        rows = lane.rows
        if ending:
            rows.finish()
        out = [prefix + row for row in rows.rows[rows.taken :]]
        rows.taken = len(rows.rows)
        return out

    # -- the done ------------------------------------------------------------------------------

    def board(self, done: Done) -> str:
        """Every candidate of ``done``, the winner marked; side by side when they fit."""
        if isinstance(done.candidates, list):
            results = done.candidates
        else:
            return ""
        blocks: list[tuple[str, str]] = []
        for c in results:
            if c.error is not None:
                head, body = f"  candidate {c.index}: failed [{printable(c.error.code)}]", c.error.message
            else:
                mark = "★ " if c.rank == 1 else "  "
                score = "n/a" if c.score is None else f"{c.score:.3f}"
                conf = "n/a" if c.confidence is None else f"{c.confidence:.3f}"
                head = f"{mark}candidate {c.index}: rank {c.rank}, score {score}, confidence {conf}"
                lane = self.lanes.get(c.index)
                body = c.text if c.text or lane is None else "".join(lane.parts)
            blocks.append((head, "".join(visible(ch) for ch in body)))
        agreement = "" if not isinstance(done.agreement, float) else f", agreement {done.agreement:.2f}"
        title = f"{len(results)} candidates{agreement} (★ the winner: done.text)"
        n = len(blocks)
        column = (self.width - len(_GAP) * (n - 1)) // max(1, n)
        if column < MIN_COLUMN:
            lines = [title]
            for head, body in blocks:
                lines.append(head)
                lines.extend("    " + line for line in _wrap(body, self.width - 4))
            return "\n".join(lines)
        columns = [[head[:column], *_wrap(body, column)] for head, body in blocks]
        height = max(len(c) for c in columns)
        rows = [
            _GAP.join((c[i] if i < len(c) else "").ljust(column) for c in columns).rstrip()
            for i in range(height)
        ]
        return "\n".join([title, *rows])


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for para in text.splitlines() or [""]:
        out.extend(
            textwrap.wrap(para, width=max(1, width), replace_whitespace=False, drop_whitespace=True) or [""]
        )
    return out
