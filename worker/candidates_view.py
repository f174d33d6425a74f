"""The terminal view of a job with several candidates (``tokenwire tail``, issue 16 §2).

Candidates interleave on the stream, so their text is not written as it comes: each token goes to
its candidate's text, a line says when a candidate ends, and the ``done`` shows every candidate,
side by side in columns when the terminal is wide enough (one after another otherwise), the
winner marked ★ and each column headed by its rank, score and confidence (or its error).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from .events import CandidateDone, Done, Token

__all__ = ["MIN_COLUMN", "CandidatesView"]

MIN_COLUMN = 24
"""The narrowest column of the side-by-side layout; a terminal narrower than ``n`` of them (and the
gaps) gets the candidates one after another."""

_GAP = " │ "


@dataclass(slots=True)
class _Lane:
    parts: list[str] = field(default_factory=list)
    done: CandidateDone | None = None


class CandidatesView:
    """What ``tail`` shows of a job's candidates; ``width`` is the terminal's columns."""

    def __init__(self, width: int) -> None:
        self.width = max(20, width)
        self.lanes: dict[int, _Lane] = {}

    def token(self, event: Token) -> None:
        k = event.candidate
        assert isinstance(k, int)
        if not event.special and event.channel == "content":
            self.lanes.setdefault(k, _Lane()).parts.append(event.text)

    def closed(self, event: CandidateDone) -> str:
        """The line that says candidate ``k`` ended."""
        self.lanes.setdefault(event.candidate, _Lane()).done = event
        if event.error is not None:
            return f"  candidate {event.candidate} failed [{event.error.code}] {event.error.message}"
        conf = "n/a" if event.confidence is None else f"{event.confidence:.3f}"
        return f"  candidate {event.candidate} done ({event.finish_reason}), confidence {conf}"

    def board(self, done: Done) -> str:
        """Every candidate of ``done``, the winner marked; side by side when they fit."""
        if isinstance(done.candidates, list):
            results = done.candidates
        else:
            return ""
        blocks: list[tuple[str, str]] = []
        for c in results:
            if c.error is not None:
                head, body = f"  candidate {c.index}: failed [{c.error.code}]", c.error.message
            else:
                mark = "★ " if c.rank == 1 else "  "
                score = "n/a" if c.score is None else f"{c.score:.3f}"
                conf = "n/a" if c.confidence is None else f"{c.confidence:.3f}"
                head = f"{mark}candidate {c.index}: rank {c.rank}, score {score}, confidence {conf}"
                lane = self.lanes.get(c.index)
                body = c.text if c.text or lane is None else "".join(lane.parts)
            blocks.append((head, body))
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
