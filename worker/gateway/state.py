"""``GET /v1/jobs/{id}``'s answer from a job's state hash: only the fields a product may show.

The state hash is the workers' record of a job (``P:job:{ID}``, written by :mod:`worker.scripts`):
besides its state and times it holds which worker owns the job (``owner``, the consumer name: a host
name), the queue entry carrying it (``entry``), the terminal event's fencing id (``terminal_id``),
the job's digest (``job_sha256``), a drain's hand-back digest (``handback``), its tenant and
provider. The gateway reads the fields of :data:`PUBLIC_FIELDS` alone (``HMGET``), so nothing else
can reach a read token's holder, whatever the workers add to the hash later; each value is checked
(an operator's raw ``HSET`` may have written anything) and one that does not parse is ``null``.
"""

from __future__ import annotations

import math
from typing import Final, get_args

from ..keys import as_text
from .models import JobState, StateName

__all__ = ["PUBLIC_FIELDS", "STATES", "job_state"]

PUBLIC_FIELDS: Final = (
    "state",
    "attempt",
    "model",
    "created",
    "started",
    "finished",
    "tokens",
    "finish_reason",
    "confidence",
    "escalated_from",
    "error_code",
    "cancel",
)
"""The state hash's fields the gateway reads, in :func:`job_state`'s order (``cancel`` is answered
as ``cancel_reason``)."""

STATES: Final = frozenset(get_args(StateName))
_MAX_TEXT: Final = 500  # a model name, a finish reason, an error code, a cancel reason: bounded


def job_state(public: str, values: list[object]) -> JobState | None:
    """The answer for job ``public`` from the ``HMGET`` of :data:`PUBLIC_FIELDS`; ``None`` when the
    hash holds no state this API knows (no job)."""
    fields = dict(zip(PUBLIC_FIELDS, (None if v is None else as_text(v) for v in values), strict=True))
    state = fields["state"]
    if state not in STATES:
        return None
    return JobState(
        id=public,
        events_url=f"/v1/jobs/{public}/events",
        state=state,  # type: ignore[arg-type]
        attempt=_int(fields["attempt"]) or 0,
        model=_text(fields["model"]),
        created=_int(fields["created"]),
        started=_int(fields["started"]),
        finished=_int(fields["finished"]),
        tokens=_int(fields["tokens"]),
        finish_reason=_text(fields["finish_reason"]),
        confidence=_float(fields["confidence"]),
        escalated_from=_text(fields["escalated_from"]),
        error_code=_text(fields["error_code"]),
        cancel_reason=_text(fields["cancel"]),
    )


def _int(text: str | None) -> int | None:
    if text is None or not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _float(text: str | None) -> float | None:
    if text is None or len(text) > 40:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _text(text: str | None) -> str | None:
    return None if text is None else text[:_MAX_TEXT]
