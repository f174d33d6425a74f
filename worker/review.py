"""The review queue ``{P}:review``: jobs whose ``done.verdict`` is ``review``, for a person to judge.

**Writing** (the worker). After a job's terminal ``done`` is written, and before its entry is
acknowledged, the runner puts the job on the review stream when its verdict says ``review``:
:meth:`ReviewQueue.add` runs one script on the ``{P}`` slot that adds the entry and records its id on
the job's marker ``{P}:review:job:ID`` (same slot), or returns the recorded id when there is one. So a
retried write adds nothing, and neither does a takeover: a worker that dies between the ``done`` and
the review entry leaves the job's stream entry unacknowledged; the next delivery finds the job ended
(``BEGIN`` says ``terminal``) and :meth:`ReviewQueue.add_from_events` rebuilds the item from the job's
event stream (its ``done`` and its attempt's ``segment`` and token events) before acknowledging it.
(The job's keys and the ``{P}`` keys live in different Cluster slots: no single script can span
them, hence the marker.) The stream is capped at about ``review_maxlen`` entries (``MAXLEN ~``: the
oldest go first, resolved or not); markers expire ``review_ttl_seconds`` after their entry was added.

**An entry** has the fields ``job_id``, ``model``, ``signals`` (the job's
:class:`~worker.signals.Signals`, what feedback records, so that an item can be resolved after the
job's own keys expired) and ``item``: a :class:`ReviewItem` as JSON (the job, its verdict's reasons,
its low segments with their offsets, its metadata).

**Reading** (a reviewer, :class:`~worker.Client` or ``tokenwire review``). :meth:`ReviewQueue.take`
reads new entries through the consumer group ``reviewers`` (created on demand), as workers take
jobs; :meth:`ReviewQueue.items` lists the unresolved ones; :meth:`ReviewQueue.resolve` records the
judgement through :func:`worker.feedback.record_feedback` with the entry's signals, then marks the
job resolved and acknowledges its entry. The entry stays on the stream (until trimmed), so feedback
given later still finds its signals.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import scripts
from .events import Done, Segment, Start, Verdict, decode_event, winner_of
from .feedback import FEEDBACK_MAXLEN, record_feedback
from .jobs import JobId
from .keys import REVIEW_GROUP, Keys, as_text
from .signals import Signals, encode_signals, signals_of

__all__ = [
    "MAX_REVIEW_SEGMENTS",
    "REVIEW_MAXLEN",
    "REVIEW_TTL_SECONDS",
    "ReviewEntry",
    "ReviewItem",
    "ReviewNotFound",
    "ReviewQueue",
    "review_item",
    "wants_review",
]

REVIEW_MAXLEN: Final = 10_000
"""The default cap of ``{P}:review`` (setting ``review_maxlen``)."""
REVIEW_TTL_SECONDS: Final = 30 * 86400
"""The default life of a job's review marker (setting ``review_ttl_seconds``)."""
MAX_REVIEW_SEGMENTS: Final = 32
"""An item carries at most this many low segments (the first ones; ``low_segments_truncated``)."""

_PAGE: Final = 500


class ReviewItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """What a reviewer needs to judge a job: its id, the attempt that produced the answer and its
    model, the verdict (with its reasons), the answer's confidence, the low segments (text and
    offsets in ``done.text``; at most :data:`MAX_REVIEW_SEGMENTS`), the job's metadata, the id of
    its ``done`` event (to read the whole answer while the job's keys live), when it was added
    (Unix ms) and the signals feedback records."""

    job_id: str
    attempt: int
    model: str
    verdict: Verdict
    confidence: float | None
    low_segments: list[Segment]
    signals: Signals
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    done_id: str = ""
    added_at: int = 0
    low_segments_truncated: bool = False


class ReviewEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of ``{P}:review``: its stream ``id``, the item, who took it (``taken_by``, the
    consumer of the group ``reviewers`` holding it, else None) and its ``resolved`` state
    (``correct``, ``incorrect`` or None)."""

    id: str
    item: ReviewItem
    taken_by: str | None = None
    resolved: str | None = None


class ReviewNotFound(LookupError):
    """No review entry for the job: it was never put on review, or its entry was trimmed away."""


_ITEM = msgspec.json.Decoder(ReviewItem)
_ENC = msgspec.json.Encoder()


def wants_review(done: Done) -> bool:
    """Whether ``done`` goes on the review stream (its verdict says ``review``)."""
    verdict = done.verdict
    return isinstance(verdict, Verdict) and verdict.decision == "review"


def review_item(
    done: Done,
    *,
    model: str,
    low: list[Segment],
    means: list[float | None],
    logprobs: list[float | None] | None,
    done_id: str,
) -> ReviewItem:
    """The item of a ``done`` whose verdict says review, from its attempt's segments (``low``: the
    low ones; ``means``: every segment's mean) and answer tokens' logprobs."""
    assert isinstance(done.verdict, Verdict)
    signals = signals_of(done, segment_means=means, token_logprobs=logprobs)
    return ReviewItem(
        job_id=done.job_id,
        attempt=done.attempt,
        model=model,
        verdict=done.verdict,
        confidence=done.confidence,
        low_segments=low[:MAX_REVIEW_SEGMENTS],
        low_segments_truncated=len(low) > MAX_REVIEW_SEGMENTS,
        signals=signals,
        metadata=done.metadata,
        done_id=done_id,
        added_at=time.time_ns() // 1_000_000,
    )


class ReviewQueue:
    """The review stream of one prefix. Holds no connection of its own; no I/O until used."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        maxlen: int = REVIEW_MAXLEN,
        ttl_seconds: int = REVIEW_TTL_SECONDS,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.ttl_ms = ttl_seconds * 1000
        self._add = redis.register_script(scripts.REVIEW_ADD)
        self._resolve = redis.register_script(scripts.REVIEW_RESOLVE)

    # -- the worker's side -----------------------------------------------------------------------

    async def add(self, item: ReviewItem) -> str:
        """Put ``item`` on the stream unless its job is there already; the entry's id either way."""
        keys = self.keys
        reply = await self._add(
            keys=[keys.review, keys.review_marker(item.job_id)],
            args=[
                self.maxlen,
                self.ttl_ms,
                item.job_id,
                item.model,
                encode_signals(item.signals),
                _ENC.encode(item),
            ],
        )
        return as_text(reply)

    async def add_from_events(self, job_id: str) -> str | None:
        """After a takeover found the job ended: put it on the stream from its event stream (its
        ``done`` and its attempt's events) when its verdict says review and it is not there yet.
        The entry's id, or None when the job needs no review (or its events are gone)."""
        key = self.keys.events(job_id)
        top: Any = await self.redis.xrevrange(key, count=1)
        if not top:
            return None
        done_id = as_text(top[0][0])
        done = _decoded(top[0][1], job_id)
        if not isinstance(done, Done) or not wants_review(done):
            return None
        model, low, means = "", [], []
        ours = (done.attempt, winner_of(done))  # with candidates: the winner's (offsets in done.text)
        start = f"{done.attempt}-0"
        while True:
            page: Any = await self.redis.xrange(key, min=start, max=f"({done_id}", count=_PAGE)
            for _, fields in page:
                event = _decoded(fields, job_id)
                if isinstance(event, Start) and event.attempt == done.attempt:
                    model = event.model
                elif isinstance(event, Segment) and (event.attempt, event.candidate) == ours:
                    means.append(event.mean_logprob)
                    if event.band == "low":
                        low.append(msgspec.structs.replace(event, candidate=msgspec.UNSET))
            if len(page) < _PAGE:
                break
            start = "(" + as_text(page[-1][0])
        if not model:
            state: Any = await self.redis.hget(self.keys.state(job_id), "model")
            model = as_text(state) if state else "unknown"
        # p10_prob comes from done.summary, as in the item the worker makes at once
        item = review_item(done, model=model, low=low, means=means, logprobs=None, done_id=done_id)
        return await self.add(item)

    # -- the reviewer's side ---------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the consumer group ``reviewers`` (from the stream's start) unless it exists."""
        try:
            await self.redis.xgroup_create(self.keys.review, REVIEW_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def items(self, count: int = 100, *, include_resolved: bool = False) -> list[ReviewEntry]:
        """The oldest ``count`` entries not yet resolved (all, with ``include_resolved``), with who
        holds each; unreadable entries are skipped."""
        holders = await self._holders()
        out: list[ReviewEntry] = []
        start = "-"
        while len(out) < count:
            page: Any = await self.redis.xrange(self.keys.review, min=start, max="+", count=_PAGE)
            for entry_id, fields in page:
                entry = await self._entry(as_text(entry_id), fields, holders)
                if entry is not None and (include_resolved or entry.resolved is None):
                    out.append(entry)
                    if len(out) == count:
                        break
            if len(page) < _PAGE:
                break
            start = "(" + as_text(page[-1][0])
        return out

    async def take(
        self, consumer: str, count: int = 1, *, block_ms: int | None = None, claim_idle_ms: int | None = None
    ) -> list[ReviewEntry]:
        """Up to ``count`` entries for ``consumer`` through the group ``reviewers``: with
        ``claim_idle_ms``, first those another reviewer took and left unresolved that long
        (``XAUTOCLAIM``), then new ones. Entries already resolved (by id, without taking them) are
        acknowledged and skipped. ``block_ms``: wait that long for a new one when there is none."""
        await self.ensure_group()
        out: list[ReviewEntry] = []
        if claim_idle_ms is not None:
            reply: Any = await self.redis.xautoclaim(
                self.keys.review, REVIEW_GROUP, consumer, claim_idle_ms, "0-0", count=count
            )
            await self._keep(reply[1], consumer, out)
        for _ in range(8):  # bounded: each round either yields or skips resolved entries
            if len(out) >= count:
                break
            reply = await self.redis.xreadgroup(
                REVIEW_GROUP, consumer, {self.keys.review: ">"}, count=count - len(out), block=block_ms
            )
            entries = reply[0][1] if reply else []
            await self._keep(entries, consumer, out)
            if not entries:
                break
        return out

    async def _keep(self, entries: Any, consumer: str, out: list[ReviewEntry]) -> None:
        """The unresolved ``entries`` (now ``consumer``'s) appended to ``out``; the others acked."""
        for entry_id, fields in entries:
            entry = None if fields is None else await self._entry(as_text(entry_id), fields, {})
            if entry is None or entry.resolved is not None:  # unreadable or trimmed, or resolved
                await self.redis.xack(self.keys.review, REVIEW_GROUP, entry_id)
                continue
            out.append(msgspec.structs.replace(entry, taken_by=consumer))

    async def resolve(
        self, job_id: str, correct: bool, note: str | None = None, *, feedback_maxlen: int = FEEDBACK_MAXLEN
    ) -> str:
        """Judge the job of a review entry: its feedback recorded (with the entry's model and
        signals; ``note`` as the label), then the job marked resolved and its entry acknowledged.
        Returns the feedback entry's id. Raises :class:`ReviewNotFound` when no entry of the job is
        left, :class:`~worker.feedback.FeedbackError` for a note feedback refuses, ``ValueError``
        for an id no job can have."""
        try:
            msgspec.convert(job_id, JobId)
        except msgspec.ValidationError:
            raise ValueError(f"{job_id!r} is not a job id") from None
        keys = self.keys
        found: Any = await self.redis.hget(keys.review_marker(job_id), "entry")
        entry_id = as_text(found) if found is not None else await self._scan(job_id)
        if entry_id is None:
            raise ReviewNotFound(
                f"no review entry for job {job_id!r}: it was never put on review, or its entry was "
                f"trimmed from {keys.review} (about review_maxlen entries are kept)"
            )
        page: Any = await self.redis.xrange(keys.review, min=entry_id, max=entry_id)
        entry = await self._entry(entry_id, page[0][1], {}) if page else None
        if entry is None:
            raise ReviewNotFound(
                f"the review entry {entry_id} of job {job_id!r} is gone from {keys.review} (trimmed: "
                "about review_maxlen entries are kept); judge it with `tokenwire feedback` while its "
                "done lives"
            )
        item = entry.item
        feedback = await record_feedback(
            self.redis,
            keys,
            job_id=job_id,
            correct=correct,
            model=item.model,
            signals=item.signals,
            label=note,
            source="review",
            maxlen=feedback_maxlen,
        )
        await self.ensure_group()
        resolution = "correct" if correct else "incorrect"
        await self._resolve(
            keys=[keys.review, keys.review_marker(job_id)],
            args=[REVIEW_GROUP, entry_id, resolution, time.time_ns() // 1_000_000, self.ttl_ms],
        )
        return feedback

    # -- helpers -----------------------------------------------------------------------------------

    async def _scan(self, job_id: str) -> str | None:
        """The newest entry of ``job_id`` found by reading the stream (its marker expired)."""
        end = "+"
        while True:
            page: Any = await self.redis.xrevrange(self.keys.review, max=end, min="-", count=_PAGE)
            for entry_id, fields in page:
                if as_text(fields.get(b"job_id", b"")) == job_id:
                    return as_text(entry_id)
            if len(page) < _PAGE:
                return None
            end = "(" + as_text(page[-1][0])

    async def _entry(
        self, entry_id: str, fields: dict[bytes, bytes], holders: dict[str, str]
    ) -> ReviewEntry | None:
        try:
            item = _ITEM.decode(fields.get(b"item", b""))
        except (msgspec.DecodeError, RecursionError):
            return None
        resolved: Any = await self.redis.hget(self.keys.review_marker(item.job_id), "resolved")
        return ReviewEntry(
            id=entry_id,
            item=item,
            taken_by=holders.get(entry_id),
            resolved=None if resolved is None else as_text(resolved),
        )

    async def _holders(self) -> dict[str, str]:
        """Entry id -> the consumer holding it, for the entries taken and not yet resolved."""
        try:
            pending: Any = await self.redis.xpending_range(
                self.keys.review, REVIEW_GROUP, min="-", max="+", count=self.maxlen
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return {}  # no group yet: nobody took anything
        return {as_text(p["message_id"]): as_text(p["consumer"]) for p in pending}


def _decoded(fields: dict[bytes, bytes], job_id: str) -> Any:
    raw = fields.get(b"event")
    if raw is None:
        return None
    try:
        return decode_event(raw, job_id=job_id)
    except ValueError:
        return None
