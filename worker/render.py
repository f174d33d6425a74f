"""The terminal view of a job's events: text as it grows, each token shaded by its probability,
then a summary with the low-confidence spans.

A job with several candidates (worker/candidates_view.py) is shown live too: on a terminal that can
move its cursor (``live``: a TTY whose ``TERM`` is not ``dumb``) as a region of the last lines
redrawn in place, the candidates side by side (one after another when narrow), at most every
:data:`FRAME_SECONDS` (a token arriving sooner is drawn that long after the last frame);
elsewhere (a pipe, a file) as each candidate's complete rows, prefixed ``[k]``. At the ``done``
the region gives way to every candidate in full, the winner marked ★. Drawing uses only CR, LF,
cursor-up (``CSI n A``), erase below (``CSI J``) and autowrap off/on (``CSI ? 7 l``/``h``) around
the region, so a row that a terminal measures wider than the view did is cut, never wrapped into
the next line. Every string of an event is written through :func:`~worker.candidates_view.printable`
(tokens, finish reasons and error messages come from upstream): none writes an escape.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import TextIO

import msgspec

from .candidates_view import CandidatesView, printable
from .events import Cancelled, CandidateDone, Done, Error, Event, Start, Token, UnknownEvent

__all__ = ["FRAME_SECONDS", "TerminalView", "can_redraw", "shade"]

FRAME_SECONDS = 0.05
"""The live region is redrawn at most this often (20 times a second)."""

_NOWRAP, _WRAP, _ERASE_BELOW = "\x1b[?7l", "\x1b[?7h", "\x1b[J"


def can_redraw(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that moves its cursor (a TTY, ``TERM`` not ``dumb``)."""
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


RESET = "\x1b[0m"
# 256-colour foregrounds from red (unlikely) through yellow to green (certain).
_SCALE = (196, 202, 208, 214, 220, 226, 190, 154, 118, 82)


def shade(prob: float | None) -> str:
    if prob is None:
        return "\x1b[38;5;245m"  # grey: no score
    bucket = min(len(_SCALE) - 1, max(0, int(prob * len(_SCALE))))
    return f"\x1b[38;5;{_SCALE[bucket]}m"


def _prob(token: Token) -> float | None:
    if token.logprob is None or token.special:
        return None
    return math.exp(min(0.0, token.logprob))


class TerminalView:
    """Writes events to ``out`` as a person reads them; ``color=False`` for plain text, ``live``
    when ``out`` is a terminal whose lines may be redrawn (:func:`can_redraw`). ``width`` and
    ``height`` default to the terminal's size."""

    def __init__(
        self,
        out: TextIO,
        *,
        color: bool = True,
        width: int | None = None,
        height: int | None = None,
        live: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.color = color
        self.width = width
        self.height = height
        self.live = live
        self.clock = clock
        self.candidates: CandidatesView | None = None  # a job with several (worker/candidates_view.py)
        self._drawn = 0  # rows of the live region on the screen, the cursor below them
        self._drawn_at = -math.inf
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None

    def _candidates(self) -> CandidatesView:
        if self.candidates is None:
            size = shutil.get_terminal_size((100, 24))
            width = self.width if self.width is not None else size.columns
            height = self.height if self.height is not None else size.lines
            self.candidates = CandidatesView(width, height)
        return self.candidates

    def show(self, event: Event | UnknownEvent) -> None:
        """Show ``event``; an event of a type this version does not know shows nothing."""
        if isinstance(event, Token) and event.candidate is not msgspec.UNSET:
            self._candidate_token(event)
        elif isinstance(event, CandidateDone):
            self._candidate_done(event)
        elif isinstance(event, Start):
            self._start(event)
        elif isinstance(event, Token):
            self._token(event)
        elif isinstance(event, Done):
            self._done(event)
        elif isinstance(event, Error):
            self._freeze()
            self._line(f"\n✗ error [{printable(event.code)}] {printable(event.message)}")
        elif isinstance(event, Cancelled):
            self._freeze()
            self._line(f"\n✗ cancelled: {printable(event.reason)}")
        self.out.flush()

    def close(self) -> None:
        """The view is done with (the job ended, or ``tail`` stops): the live region as it
        stands stays on the screen."""
        self._freeze()
        self.out.flush()

    def _start(self, event: Start) -> None:
        self._freeze()
        self.candidates = None  # a new attempt: its candidates start afresh
        again = f" (attempt {event.attempt}, earlier tokens discarded)" if event.attempt > 1 else ""
        why = f": {event.reason}" if event.reason else ""
        self._line(printable(f"▶ {event.model} via {event.provider}/{event.api}{again}{why}"))

    def _token(self, event: Token) -> None:
        if event.special:
            return
        text = printable(event.text)
        if self.color:
            self.out.write(f"{shade(_prob(event))}{text}{RESET}")
        else:
            self.out.write(text)

    # -- several candidates ----------------------------------------------------------------

    def _candidate_token(self, event: Token) -> None:
        view = self._candidates()
        view.token(event)
        if not self.live:
            k = event.candidate
            assert isinstance(k, int)
            for row in view.ready(k):
                self._line(row)
            return
        self._dirty = True
        if self.clock() - self._drawn_at >= FRAME_SECONDS:
            self._draw()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to come back on: draw now
                self._draw()
                return
            self._timer = loop.call_later(FRAME_SECONDS, self._tick)

    def _candidate_done(self, event: CandidateDone) -> None:
        view = self._candidates()
        if not self.live:
            for row in view.ready(event.candidate, ending=True):
                self._line(row)
            self._line(view.closed(event))
            return
        self._erase()
        self._line(view.closed(event))  # above the region, so it stays in the scrollback
        self._draw()

    def _tick(self) -> None:
        self._timer = None
        if self._dirty:
            self._draw()
            self.out.flush()

    def _draw(self) -> None:
        """The live region anew, where it was."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows = self._candidates().live()
        self.out.write(self._erasing() + _NOWRAP + "".join(row + "\n" for row in rows) + _WRAP)
        self._drawn = len(rows)
        self._drawn_at = self.clock()
        self._dirty = False

    def _erasing(self) -> str:
        if not self._drawn:
            return ""
        return f"\r\x1b[{self._drawn}A{_ERASE_BELOW}"

    def _erase(self) -> None:
        """The live region off the screen (the cursor where it began)."""
        self.out.write(self._erasing())
        self._drawn = 0

    def _freeze(self) -> None:
        """The live region, brought up to date, stays where it is; what follows goes below it."""
        if self.live and self._dirty:
            self._draw()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drawn = 0

    # -- the end ---------------------------------------------------------------------------

    def _done(self, event: Done) -> None:
        self._erase()  # the board below shows every candidate in full
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dirty = False
        s = event.summary
        conf = "n/a" if event.confidence is None else f"{event.confidence:.3f}"
        reason = printable(event.finish_reason)
        lines = [
            "",
            "",
            f"✓ done ({reason}): {event.usage.output_tokens} tokens, confidence {conf}",
        ]
        if s.min_prob is not None:
            lines.append(
                f"  min p {s.min_prob:.3f} at token {s.min_index}, perplexity {s.perplexity:.3f}, "
                f"ewma {s.ewma_confidence:.3f}"
            )
        if s.low_spans:
            lines.append(f"  {len(s.low_spans)} low-confidence span(s) to review:")
            for span in s.low_spans:
                lines.append(
                    f"    tokens [{span.start_token},{span.end_token}) chars "
                    f"[{span.char_start},{span.char_end}) min p {span.min_prob:.3f}: {span.text!r}"
                )
        else:
            lines.append("  no low-confidence spans")
        if isinstance(event.candidates, list):
            lines.append(self._candidates().board(event))
        self._line("\n".join(lines))

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
