"""Ground truth for calibration: the ``{P}:feedback`` stream (issue 13 §3).

One entry per judgement, one field ``feedback`` holding a :class:`Feedback` as JSON: the job's id,
whether its answer was correct, an optional label (or a reviewer's note), the model that produced
the answer and the :class:`~worker.signals.Signals` its ``done`` carried. The stream is capped at
about :data:`FEEDBACK_MAXLEN` entries (``XADD … MAXLEN ~``; the oldest go first).

Judging a job again adds another entry; every reader (``tokenwire calibrate``) keeps the **last**
entry of each job id, so a correction replaces a mistake (:func:`latest_per_job`).

:func:`record_feedback` is the one writer (``Client.feedback``, ``tokenwire feedback`` and
``tokenwire review resolve`` all go through it). :func:`signals_for` finds what a judgement records:
the job's ``done`` (with its segments and token log-probabilities) while the job's keys live, else
its ``{P}:review`` entry, which carries the signals for that purpose, else an earlier judgement of
the job (re-judging an expired job records the signals the first judgement recorded).

A ``{P}:review`` entry is found by its fields ``job_id``, ``model`` and ``signals`` (the JSON of
:func:`worker.signals.encode_signals` applied to :func:`worker.signals.signals_of` of the job's
``done``, given its segments' means and its answer tokens' log-probabilities); the newest entry of
the job counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any, Final, Literal

import msgspec
from redis.asyncio import Redis

from .events import Done, Segment, Start, Token, UnknownEvent, decode_event, is_terminal, winner_of
from .jobs import JobId, ModelName
from .keys import Keys, as_text
from .signals import Signals, checked_signals, decode_signals, signals_of

__all__ = [
    "FEEDBACK_MAXLEN",
    "Feedback",
    "FeedbackError",
    "Label",
    "decode_feedback",
    "encode_feedback",
    "latest_per_job",
    "read_feedback",
    "record_feedback",
    "signals_for",
]

FEEDBACK_MAXLEN: Final = 100_000
"""About how many entries ``{P}:feedback`` keeps (approximate trimming, the oldest first)."""

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Source = Literal["done", "review"]


class Feedback(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One judgement of a job's answer. ``source`` says where the signals came from: the job's own
    ``done`` event, or its ``{P}:review`` entry (the job's keys had expired). ``at``: Unix ms."""

    job_id: JobId
    correct: bool
    model: ModelName
    signals: Signals
    label: Label | None = None
    source: Source = "done"
    at: Annotated[int, msgspec.Meta(ge=0)] = 0


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; ``code`` is ``invalid``, ``unknown_job``, ``not_finished``
    or ``no_answer``, and the message says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Feedback)
_PAGE: Final = 1000


def encode_feedback(feedback: Feedback) -> bytes:
    return _ENCODER.encode(feedback)


def decode_feedback(raw: bytes | str) -> Feedback:
    """A feedback entry's JSON as a :class:`Feedback`; ``ValueError`` naming what is wrong otherwise."""
    try:
        feedback = _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"unreadable feedback: {exc}") from None
    checked_signals(feedback.signals)
    return feedback


def _checked(job_id: str, correct: object, label: str | None, model: str, signals: Signals) -> Feedback:
    if not isinstance(correct, bool):
        raise FeedbackError("invalid", f"`correct` must be true or false, not {correct!r}")
    try:
        return msgspec.convert(
            {
                "job_id": job_id,
                "correct": correct,
                "label": label,
                "model": model,
                "signals": msgspec.to_builtins(signals),
                "at": time.time_ns() // 1_000_000,
            },
            Feedback,
        )
    except msgspec.ValidationError as exc:
        raise FeedbackError("invalid", f"invalid feedback: {exc}") from None


async def record_feedback(
    redis: Redis,
    keys: Keys,
    *,
    job_id: str,
    correct: bool,
    model: str,
    signals: Signals,
    label: str | None = None,
    source: Source = "done",
    maxlen: int = FEEDBACK_MAXLEN,
) -> str:
    """Add one judgement to ``{P}:feedback`` and return its entry id. Raises :class:`FeedbackError`
    (``invalid``) naming the field when the job id, label or model is not one the schema allows."""
    try:
        checked_signals(signals)
    except ValueError as exc:
        raise FeedbackError("invalid", f"invalid feedback: {exc}") from None
    feedback = msgspec.structs.replace(_checked(job_id, correct, label, model, signals), source=source)
    entry = await redis.xadd(
        keys.feedback, {"feedback": encode_feedback(feedback)}, maxlen=maxlen, approximate=True
    )
    return as_text(entry)


async def read_feedback(
    redis: Redis, keys: Keys, *, since_ms: int | None = None, bad: list[str] | None = None
) -> AsyncIterator[tuple[str, Feedback]]:
    """Every readable entry of ``{P}:feedback`` (from ``since_ms``, Unix ms, when given), oldest first,
    as ``(entry id, Feedback)``; an unreadable entry is skipped and its id appended to ``bad``."""
    start = "-" if since_ms is None else f"{max(0, since_ms)}-0"
    while True:
        page: Any = await redis.xrange(keys.feedback, min=start, max="+", count=_PAGE)
        for entry_id, fields in page:
            entry = as_text(entry_id)
            try:
                feedback = decode_feedback(fields.get(b"feedback", b""))
            except ValueError:
                if bad is not None:
                    bad.append(entry)
                continue
            yield entry, feedback
        if len(page) < _PAGE:
            return
        start = "(" + as_text(page[-1][0])


def latest_per_job(entries: Iterable[tuple[str, Feedback]]) -> list[Feedback]:
    """The last judgement of each job (in stream order), in the order of those last entries."""
    last: dict[str, Feedback] = {}
    for _, feedback in entries:
        last.pop(feedback.job_id, None)
        last[feedback.job_id] = feedback
    return list(last.values())


async def signals_for(redis: Redis, keys: Keys, job_id: str) -> tuple[str, Signals, Source]:
    """``(model, signals, source)`` to record for ``job_id``: from its ``done`` while its keys live,
    else from its ``{P}:review`` entry. Raises :class:`FeedbackError`: ``not_finished`` (queued or
    running), ``no_answer`` (it ended with ``error`` or ``cancelled``), ``unknown_job`` (never
    enqueued, or expired with no review entry and no earlier judgement left)."""
    try:
        msgspec.convert(job_id, JobId)
    except msgspec.ValidationError:
        raise FeedbackError("invalid", f"{job_id!r} is not a job id") from None
    found = await _from_events(redis, keys, job_id)
    if found is not None:
        return found[0], found[1], "done"
    state = await redis.hgetall(keys.state(job_id))
    if state:
        shown = as_text(state.get(b"state", b"queued"))
        raise FeedbackError(
            "not_finished", f"job {job_id!r} has not finished ({shown}): judge it once it is done"
        )
    reviewed = await _from_review(redis, keys, job_id)
    if reviewed is not None:
        return reviewed[0], reviewed[1], "review"
    judged = await _from_feedback(redis, keys, job_id)
    if judged is not None:  # judged before it expired: the same signals again
        return judged.model, judged.signals, judged.source
    raise FeedbackError(
        "unknown_job",
        f"no job {job_id!r}: it was never enqueued, or it expired and no review entry holds its signals",
    )


async def _from_events(redis: Redis, keys: Keys, job_id: str) -> tuple[str, Signals] | None:
    """The model and signals of the job's ``done``, None when its event stream is gone. Raises
    :class:`FeedbackError` when the job has not ended, or ended without an answer."""
    key = keys.events(job_id)
    top: Any = await redis.xrevrange(key, count=1)
    if not top:
        return None
    last = _decoded(job_id, top[0])
    if last is None or not is_terminal(last):
        raise FeedbackError("not_finished", f"job {job_id!r} has not finished: judge it once it is done")
    if not isinstance(last, Done):
        kind = type(last).__name__.lower()
        raise FeedbackError("no_answer", f"job {job_id!r} ended with `{kind}`: it has no answer to judge")
    need_tokens = last.summary.p10_prob is None  # a worker before p10_prob, or nothing scored
    model, segments, logprobs = await _scan_attempt(redis, key, job_id, last.attempt, winner_of(last))
    if not model:  # the attempt's start was trimmed off the stream: the state hash names the model
        state = await redis.hgetall(keys.state(job_id))
        model = as_text(state.get(b"model", b"")) or "unknown"
    signals = signals_of(last, segment_means=segments, token_logprobs=logprobs if need_tokens else None)
    return model, signals


async def _scan_attempt(
    redis: Redis, key: str, job_id: str, attempt: int, candidate: int | msgspec.UnsetType = msgspec.UNSET
) -> tuple[str, list[float | None], list[float | None]]:
    """The model of ``attempt`` (its ``start``), its segments' means and its answer tokens' logprobs
    (with candidates, the winning ``candidate``'s only)."""
    model, segments, logprobs = "", [], []
    start = "-"
    while True:
        page: Any = await redis.xrange(key, min=start, max="+", count=_PAGE)
        for entry in page:
            event = _decoded(job_id, entry)
            if event is None or event.attempt != attempt:
                continue
            if isinstance(event, Token | Segment) and event.candidate != candidate:
                continue  # another candidate's
            if isinstance(event, Start):
                model = event.model
            elif isinstance(event, Token):
                if event.channel == "content" and not event.special:
                    logprobs.append(event.logprob)
            elif _kind(event) == "segment":
                segments.append(_segment_mean(event))
        if len(page) < _PAGE:
            return model, segments, logprobs
        start = "(" + as_text(page[-1][0])


def _decoded(job_id: str, entry: Any) -> Any:
    raw = entry[1].get(b"event")
    if raw is None:
        return None
    try:
        return decode_event(raw, job_id=job_id)
    except ValueError:
        return None


def _kind(event: object) -> str:
    return event.type if isinstance(event, UnknownEvent) else type(event).__name__.lower()


def _segment_mean(event: object) -> float | None:
    value = (
        event.data.get("mean_logprob")
        if isinstance(event, UnknownEvent)
        else getattr(event, "mean_logprob", None)
    )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


async def _from_review(redis: Redis, keys: Keys, job_id: str) -> tuple[str, Signals] | None:
    """The model and signals of the job's ``{P}:review`` entry: the one its marker
    ``{P}:review:job:ID`` names, else (the marker expired) the newest entry of the job on the
    stream; None when there is none (never reviewed, or trimmed away)."""
    marked: Any = await redis.hget(keys.review_marker(job_id), "entry")
    if marked is not None:
        entry = as_text(marked)
        page: Any = await redis.xrange(keys.review, min=entry, max=entry, count=1)
        found = _review_fields(page[0][1]) if page else None
        if found is not None and found[0] == job_id:
            return found[1], found[2]
    end = "+"
    while True:
        page = await redis.xrevrange(keys.review, max=end, min="-", count=_PAGE)
        for _, fields in page:
            found = _review_fields(fields)
            if found is not None and found[0] == job_id:
                return found[1], found[2]
        if len(page) < _PAGE:
            return None
        end = "(" + as_text(page[-1][0])


async def _from_feedback(redis: Redis, keys: Keys, job_id: str) -> Feedback | None:
    """The job's newest readable ``{P}:feedback`` entry, None when it has none."""
    end = "+"
    while True:
        page: Any = await redis.xrevrange(keys.feedback, max=end, min="-", count=_PAGE)
        for _, fields in page:
            try:
                feedback = decode_feedback(fields.get(b"feedback", b""))
            except ValueError:
                continue
            if feedback.job_id == job_id:
                return feedback
        if len(page) < _PAGE:
            return None
        end = "(" + as_text(page[-1][0])


def _review_fields(fields: dict[bytes, bytes]) -> tuple[str, str, Signals] | None:
    """``(job_id, model, signals)`` of a review entry, None when it is unreadable."""
    try:
        job_id = as_text(fields[b"job_id"])
        model = as_text(fields[b"model"])
        signals = decode_signals(fields[b"signals"])
    except (KeyError, ValueError):
        return None
    return job_id, model, signals
