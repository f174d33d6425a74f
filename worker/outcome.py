"""How an attempt ended, as one value: :meth:`worker.attempt.Attempt.run` returns it and the runner
acts on it (retry, escalate, write the terminal event, or leave the entry for another delivery).

Nothing about an attempt's end travels any other way: no attribute to read afterwards, no exception
to catch. (An interruption from outside the job, a lost lease or a drain, still cancels the job's
task: the worker, not the attempt, decides what becomes of the entry then; a producer's cancel ends
the attempt in progress with a ``cancelled`` :class:`Finished`.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Cancelled, Done, Error, Escalation
from .upstream.base import UpstreamError

__all__ = ["Escalate", "Failed", "Fenced", "Finished", "Outcome", "Skipped", "WriteFailed"]


@dataclass(frozen=True, slots=True)
class Finished:
    """The job ends with ``terminal`` (``done``, ``error`` or ``cancelled``), written after the
    ``tokens`` token events its attempt published. ``seq`` is the sequence number of the attempt's
    last event when it published others besides its tokens (``segment`` events), else -1: the
    terminal's id is ``<attempt>-<last_seq + 1>``."""

    terminal: Done | Error | Cancelled
    tokens: int
    seq: int = -1

    @property
    def last_seq(self) -> int:
        """The sequence number of the attempt's last event before its terminal."""
        return self.tokens if self.seq < 0 else self.seq

    def record(self) -> dict[str, str | int | float]:
        """What the state hash keeps about the end (for ``status`` without reading events)."""
        terminal = self.terminal
        out: dict[str, str | int | float] = {"tokens": self.tokens}
        if isinstance(terminal, Done):
            out["finish_reason"] = terminal.finish_reason
            if terminal.confidence is not None:
                out["confidence"] = repr(terminal.confidence)
            if terminal.escalation is not None:
                out["escalated_from"] = terminal.escalation.from_model
        elif isinstance(terminal, Error):
            out["error_code"] = terminal.code
        return out


@dataclass(frozen=True, slots=True)
class Failed:
    """The upstream request failed; ``error.retryable`` says whether the same request may succeed
    later (the runner then retries it, or ends the job with the error)."""

    error: UpstreamError


@dataclass(frozen=True, slots=True)
class Escalate:
    """The attempt is not confident enough (``reason`` says how): run the job's stronger model;
    ``record`` goes into the stronger attempt's ``done``."""

    reason: str
    record: Escalation


@dataclass(frozen=True, slots=True)
class Fenced:
    """A newer attempt owns the job: write nothing more, leave the entry unacknowledged."""


@dataclass(frozen=True, slots=True)
class WriteFailed:
    """The attempt's token events could not be written; the entry stays pending for another
    delivery (which starts a new attempt)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Skipped:
    """No attempt of this delivery ran to an end of its own: the job had already ended or another
    delivery owns it, it was cancelled before it started, or it was interrupted while starting.
    ``ack`` says whether the entry is acknowledged."""

    ack: bool


Outcome = Finished | Failed | Escalate | Fenced | WriteFailed | Skipped
