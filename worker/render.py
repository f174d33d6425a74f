"""The terminal view of a job's events: text as it grows, each token shaded by its probability,
then a summary with the low-confidence spans."""

from __future__ import annotations

import math
import shutil
from typing import TextIO

import msgspec

from .candidates_view import CandidatesView
from .events import Cancelled, CandidateDone, Done, Error, Event, Start, Token, UnknownEvent

__all__ = ["TerminalView", "shade"]

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
    """Writes events to ``out`` as a person reads them; ``color=False`` for plain text."""

    def __init__(self, out: TextIO, *, color: bool = True, width: int | None = None) -> None:
        self.out = out
        self.color = color
        self.width = width
        self.candidates: CandidatesView | None = None  # a job with several (worker/candidates_view.py)

    def _candidates(self) -> CandidatesView:
        if self.candidates is None:
            width = self.width if self.width is not None else shutil.get_terminal_size((100, 24)).columns
            self.candidates = CandidatesView(width)
        return self.candidates

    def show(self, event: Event | UnknownEvent) -> None:
        """Show ``event``; an event of a type this version does not know shows nothing."""
        if isinstance(event, Start):
            self._start(event)
        elif isinstance(event, Token) and event.candidate is not msgspec.UNSET:
            self._candidates().token(event)  # candidates interleave: shown together at the end
        elif isinstance(event, CandidateDone):
            self._line(self._candidates().closed(event))
        elif isinstance(event, Token):
            self._token(event)
        elif isinstance(event, Done):
            self._done(event)
        elif isinstance(event, Error):
            self._line(f"\n✗ error [{event.code}] {event.message}")
        elif isinstance(event, Cancelled):
            self._line(f"\n✗ cancelled: {event.reason}")
        self.out.flush()

    def _start(self, event: Start) -> None:
        again = f" (attempt {event.attempt}, earlier tokens discarded)" if event.attempt > 1 else ""
        why = f": {event.reason}" if event.reason else ""
        self._line(f"▶ {event.model} via {event.provider}/{event.api}{again}{why}")

    def _token(self, event: Token) -> None:
        if event.special:
            return
        if self.color:
            self.out.write(f"{shade(_prob(event))}{event.text}{RESET}")
        else:
            self.out.write(event.text)

    def _done(self, event: Done) -> None:
        s = event.summary
        conf = "n/a" if event.confidence is None else f"{event.confidence:.3f}"
        lines = [
            "",
            "",
            f"✓ done ({event.finish_reason}): {event.usage.output_tokens} tokens, confidence {conf}",
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
