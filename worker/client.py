"""The producer and subscriber API: all another service needs is a Redis URL.

::

    client = Client.from_url("redis://localhost:6379/0")
    job_id = await client.enqueue(model="meta-llama/Meta-Llama-3-8B-Instruct", input="Hello")
    async for item in client.subscribe(job_id):
        print(item.id, item.event)

It needs only redis and msgspec: importing it loads no HTTP client and no worker machinery.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.asyncio import Redis

from .events import (
    Cancelled,
    Done,
    Error,
    Event,
    MalformedEvent,
    Start,
    UnknownEvent,
    decode_event,
    event_type,
    is_terminal,
)
from .feedback import FEEDBACK_MAXLEN, record_feedback, signals_for
from .jobs import InvalidJob, Job, decode_job, encode_job, new_job_id
from .keys import Keys, as_text, cancel_message
from .review import ReviewEntry, ReviewQueue
from .store import JobStore, job_digest
from .tracing import current_traceparent

__all__ = [
    "Client",
    "JobCancelled",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "Received",
    "SubscriptionTimeout",
]


class JobNotFound(LookupError):
    """No job with this id: never enqueued, or its keys expired after it ended."""


class JobConflict(InvalidJob):
    """The id already names a different job (enqueueing the same job again is not an error)."""


class JobFailed(RuntimeError):
    """The job ended with an ``error`` event, which ``event`` holds."""

    def __init__(self, event: Error) -> None:
        super().__init__(f"job {event.job_id!r} failed: [{event.code}] {event.message}")
        self.event = event


class JobCancelled(RuntimeError):
    """The job ended with a ``cancelled`` event, which ``event`` holds."""

    def __init__(self, event: Cancelled) -> None:
        super().__init__(f"job {event.job_id!r} was cancelled: {event.reason}")
        self.event = event


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A job's state hash (``P:job:{ID}``), typed. Times are Unix milliseconds; a field is None
    until the job reaches the step that sets it. ``raw`` is the hash exactly as stored (with any
    field this version does not know)."""

    state: str
    """``queued``, ``running``, ``done``, ``error`` or ``cancelled``."""
    attempt: int = 0
    """The current (or last) attempt; 0 while queued."""
    model: str = ""
    api: str = ""
    provider: str = ""
    """As the job named it (empty for the default) until a worker starts it, then as resolved."""
    created: int | None = None
    started: int | None = None
    """When the current attempt started."""
    finished: int | None = None
    entry: str | None = None
    """The job stream entry that carries the job."""
    owner: str | None = None
    """The consumer (worker) that runs or ran the current attempt."""
    tokens: int | None = None
    """Token events of the attempt that ended the job."""
    finish_reason: str | None = None
    confidence: float | None = None
    escalated_from: str | None = None
    error_code: str | None = None
    cancel_reason: str | None = msgspec.field(default=None, name="cancel")
    """Set when a cancellation was requested."""
    terminal_id: str | None = None
    """The stream id of the terminal event."""
    raw: dict[str, str] = msgspec.field(default_factory=dict)


class SubscriptionTimeout(TimeoutError):
    """The job did not reach its terminal event in time."""


class Received(msgspec.Struct, frozen=True):
    """An event and its stream id (pass the id as ``after=`` to resume right after it).

    ``restarted`` is True on a ``start`` whose attempt is higher than one seen before: discard the
    tokens of the earlier attempt. ``raw`` is the event's JSON exactly as stored.
    """

    id: str
    event: Event | UnknownEvent
    restarted: bool = False
    raw: bytes = b""

    @property
    def type(self) -> str:
        """The event's ``type``, also for an :class:`~worker.UnknownEvent`."""
        return event_type(self.event)


class Client:
    """Enqueue jobs and follow their event streams. Holds no connection until used."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "tokenwire",
        block_ms: int = 2000,
        job_ttl_seconds: int = 86400,
        feedback_maxlen: int = FEEDBACK_MAXLEN,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.block_ms = block_ms
        self.feedback_maxlen = feedback_maxlen
        self.store = JobStore(redis, self.keys, running_ttl_seconds=job_ttl_seconds)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tokenwire", cluster: bool = False, **kwargs: Any) -> Client:
        """A client for ``url``; ``cluster=True`` when it names a node of a Redis Cluster."""
        from .connect import redis_client

        block_ms = int(kwargs.pop("block_ms", 2000))
        redis = redis_client(url, block_seconds=block_ms / 1000, cluster=cluster)
        return cls(redis, prefix=prefix, block_ms=block_ms, **kwargs)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def enqueue(self, job: Job | None = None, **fields: Any) -> str:
        """Enqueue ``job`` (or a job built from keyword fields, named as in the job schema); returns
        its id.

        Raises :class:`~worker.InvalidJob`, naming the field, for a job the schema rejects.
        Enqueueing an id that already exists with the same job returns that id and enqueues nothing;
        with a different job it raises :class:`JobConflict`. Jobs are compared as encoded
        canonically: defaults written or left out, and the order of keys, make no difference.
        """
        if job is not None and fields:
            raise TypeError("pass a Job or keyword fields, not both")
        job = _validated(job, fields)
        if job.id is None:
            job = msgspec.structs.replace(job, id=new_job_id())
        if job.traceparent is None and (traceparent := current_traceparent()) is not None:
            job = msgspec.structs.replace(job, traceparent=traceparent)  # the caller's span: the parent
        job_id = job.id
        assert job_id is not None
        outcome, state, entry = await self.store.create(
            job_id, job.model, job.api, job.provider or "", digest=job_digest(job)
        )
        if outcome == "conflict":
            raise JobConflict(
                f"job id {job_id!r} is taken by a different job ({state}): enqueue the same job "
                "to get that one, or choose another id",
                job_id=job_id,
            )
        if outcome == "exists" and (entry or state != "queued"):
            return job_id
        entry_id = await self.redis.xadd(self.keys.jobs, {"job": encode_job(job)})
        await self.store.record_entry(job_id, as_text(entry_id))
        return job_id

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> str:
        """Cancel a job. A queued job ends at once; a running one's worker closes its upstream
        request and writes ``cancelled``. Returns ``cancelled``, ``requested``, ``terminal`` (it had
        already ended) or ``unknown``."""
        outcome = await self.store.cancel(job_id, reason)
        if outcome == "requested":
            await self.redis.publish(self.keys.cancel, cancel_message(job_id, reason))
        return outcome

    async def feedback(self, job_id: str, correct: bool, label: str | None = None) -> str:
        """Record whether the job's answer was correct (ground truth for ``tokenwire calibrate``) in
        ``{P}:feedback``, with the job's model and the signals its ``done`` carried; returns the entry
        id. Judging a job again adds an entry, and calibration keeps the last one. Raises
        :class:`~worker.feedback.FeedbackError`: the job was never enqueued (or expired and no review
        entry holds its signals), has not finished, ended without an answer, or ``label`` is empty or
        over 1,000 characters."""
        model, signals, source = await signals_for(self.redis, self.keys, job_id)
        return await record_feedback(
            self.redis,
            self.keys,
            job_id=job_id,
            correct=correct,
            model=model,
            signals=signals,
            label=label,
            source=source,
            maxlen=self.feedback_maxlen,
        )

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's state (:class:`JobStatus`), or None for an unknown or expired job. Raises
        ``ValueError`` naming the field when the hash holds what no tokenwire writes."""
        fields = await self.store.status(job_id)
        if fields is None:
            return None
        try:
            return msgspec.convert({**fields, "raw": fields}, JobStatus, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"job {job_id!r}: unreadable state hash: {exc}") from None

    async def subscribe(
        self, job_id: str, *, after: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[Received]:
        """Every event of the job from the first (or from after event id ``after``), live, ending
        after the terminal event. Raises :class:`JobNotFound` for an unknown or expired job,
        :class:`SubscriptionTimeout` when ``timeout`` seconds pass first, and
        :class:`~worker.MalformedEvent` (naming the event id) for an event it cannot read. An event
        of a type this version does not know arrives as an :class:`~worker.UnknownEvent`."""
        key = self.keys.events(job_id)
        last = after or "0-0"
        attempt = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block = self._block_for(deadline)
            reply: Any = await self.redis.xread({key: last}, count=512, block=block)
            if not reply:
                await self._check_alive(job_id, deadline)
                continue
            for entry_id, fields in reply[0][1]:
                last = as_text(entry_id)
                raw, event = _read_entry(job_id, last, fields)
                restarted = isinstance(event, Start) and attempt > 0 and event.attempt > attempt
                attempt = max(attempt, event.attempt)
                yield Received(last, event, restarted, raw)
                if is_terminal(event):
                    return

    def _block_for(self, deadline: float | None) -> int:
        if deadline is None:
            return self.block_ms
        left = deadline - time.monotonic()
        return max(1, min(self.block_ms, int(left * 1000)))

    async def _check_alive(self, job_id: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise SubscriptionTimeout(f"job {job_id!r} did not end in time")
        if not await self.redis.exists(self.keys.state(job_id), self.keys.events(job_id)):
            raise JobNotFound(f"no job {job_id!r}: never enqueued, or expired after it ended")

    async def result(self, job_id: str, *, timeout: float | None = None) -> Done:
        """Wait for the job's outcome and return its ``done`` event. Raises :class:`JobFailed` or
        :class:`JobCancelled`, carrying the terminal event, when it ended otherwise, and as
        :meth:`subscribe` does. Reads only from the stream's last event on."""
        top: Any = await self.redis.xrevrange(self.keys.events(job_id), count=1)
        after = None
        if top:
            after = as_text(top[0][0])
            _, event = _read_entry(job_id, after, top[0][1])
            if is_terminal(event):
                return _outcome(event)
        async for item in self.subscribe(job_id, after=after, timeout=timeout):
            if is_terminal(item.event):
                return _outcome(item.event)
        raise AssertionError("unreachable: subscribe ends on the terminal event")  # pragma: no cover

    # -- the review queue (worker.review) ----------------------------------------------------------

    def _reviews(self) -> ReviewQueue:
        return ReviewQueue(self.redis, self.keys)

    async def review_items(self, count: int = 100, *, include_resolved: bool = False) -> list[ReviewEntry]:
        """The oldest ``count`` entries of the review stream ``{P}:review`` not yet resolved (with
        ``include_resolved``, all), each with its item and who took it."""
        return await self._reviews().items(count, include_resolved=include_resolved)

    async def take_reviews(
        self, consumer: str, count: int = 1, *, block_ms: int | None = None, claim_idle_ms: int | None = None
    ) -> list[ReviewEntry]:
        """Take up to ``count`` new review entries for ``consumer`` through the consumer group
        ``reviewers`` (created on demand), as workers take jobs; ``block_ms``: wait for one;
        ``claim_idle_ms``: first take over entries another reviewer left unresolved that long."""
        reviews = self._reviews()
        return await reviews.take(consumer, count, block_ms=block_ms, claim_idle_ms=claim_idle_ms)

    async def resolve(self, job_id: str, correct: bool, note: str | None = None) -> str:
        """Resolve the review entry of ``job_id``: record the judgement (:meth:`feedback`'s stream,
        with the signals the entry carries, so the job's own keys may have expired; ``note`` as the
        label), mark the job resolved and acknowledge its entry. Returns the feedback entry's id.
        Raises :class:`~worker.review.ReviewNotFound` when the job has no review entry."""
        reviews = self._reviews()
        return await reviews.resolve(job_id, correct, note, feedback_maxlen=self.feedback_maxlen)


def _validated(job: Job | None, fields: dict[str, Any]) -> Job:
    """The job with every constraint of the schema checked (building a :class:`Job` in Python
    checks none of them): :class:`~worker.InvalidJob` naming the field otherwise."""
    try:
        raw = msgspec.json.encode(job if job is not None else fields)
    except (TypeError, ValueError):
        items = fields if job is None else msgspec.structs.asdict(job)
        name = next((k for k, v in items.items() if not _encodes(v)), "?")
        raise InvalidJob(f"invalid job: `{name}` holds a value JSON cannot carry") from None
    return decode_job(raw)


def _encodes(value: Any) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError):
        return False
    return True


def _read_entry(job_id: str, entry_id: str, fields: dict[bytes, bytes]) -> tuple[bytes, Event | UnknownEvent]:
    """An event stream entry's raw JSON and event; :class:`~worker.MalformedEvent` naming it."""
    raw = fields.get(b"event")
    if raw is None:
        raise MalformedEvent("the entry has no `event` field", event_id=entry_id, job_id=job_id)
    return raw, decode_event(raw, event_id=entry_id, job_id=job_id)


def _outcome(event: Event | UnknownEvent) -> Done:
    if isinstance(event, Error):
        raise JobFailed(event)
    if isinstance(event, Cancelled):
        raise JobCancelled(event)
    assert isinstance(event, Done)
    return event
