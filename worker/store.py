"""Job state on Redis: the state hash and the event stream's fenced transitions.

Shared by the producer side (:class:`worker.Client`) and the worker, so both speak one protocol.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from . import scripts
from .events import Cancelled, Error, Event, Start, encode_event
from .jobs import Job
from .keys import Keys, as_text
from .unusable import JobKeysUnusable, wrong_type

if TYPE_CHECKING:  # a producer's import (Client) stays free of the worker's logging
    from .coalesce import Coalescer

__all__ = ["BeginResult", "JobStore", "job_digest", "split_on_attempt"]

_TERMINAL_STATE = {"done": "done", "error": "error", "cancelled": "cancelled"}


def now_ms() -> int:
    return int(time.time() * 1000)


def split_on_attempt(event: Event) -> tuple[bytes, bytes]:
    """Encode ``event`` (with ``attempt=0``) as a head and tail around the attempt number.

    Scripts that choose the attempt number inside Redis splice it in: ``head .. attempt .. tail``.
    """
    raw = encode_event(msgspec.structs.replace(event, attempt=0))
    head, sep, tail = raw.partition(b'"attempt":0')
    if not sep:  # pragma: no cover - the encoder always writes the field
        raise AssertionError("event has no attempt field")
    return head + b'"attempt":', tail


_CANONICAL = msgspec.json.Encoder(order="sorted")


def job_digest(job: Job) -> str:
    """What the state hash keeps (``job_sha256``) to tell a re-enqueue of the same job from another
    job under the same id: the sha256, in hex, of the job's canonical encoding, where a field equal
    to its default is left out and keys are sorted, so that two jobs that mean the same have the
    same digest however they were written. The trace context (``traceparent``) is left out: the
    same job enqueued from two traces is the same job."""
    if job.traceparent is not None:
        job = msgspec.structs.replace(job, traceparent=None)
    return hashlib.sha256(_CANONICAL.encode(_canonical(job))).hexdigest()


def _canonical(value: Any) -> Any:
    # msgspec's omit_defaults is no canonical form: it compares defaults by identity (an equal float
    # read from JSON is written) and keeps a struct built by a default factory (``params: {}``).
    if isinstance(value, msgspec.Struct):
        out = {}
        for field in msgspec.structs.fields(value):
            item = getattr(value, field.name)
            if field.default is not msgspec.NODEFAULT:
                if item == field.default:
                    continue
            elif field.default_factory is not msgspec.NODEFAULT and item == field.default_factory():
                continue
            out[field.encode_name] = _canonical(item)
        return out
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    return value


class BeginResult(msgspec.Struct, frozen=True):
    outcome: Literal["started", "terminal", "duplicate", "cancel"]
    attempt: int = 0
    detail: str = ""


class JobStore:
    """The state transitions of jobs under one key prefix."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        output_ttl_seconds: int = 3600,
        running_ttl_seconds: int = 86400,
        events_maxlen: int = 100_000,
        coalescer: Coalescer | None = None,
    ) -> None:
        """``coalescer``: the script calls of begin, finish and fail go out batched with the other
        jobs' calls of the same loop turn (:mod:`worker.coalesce`); without one, each on its own."""
        self.redis = redis
        self.coalescer = coalescer
        self.keys = keys
        self.output_ttl_ms = output_ttl_seconds * 1000
        self.running_ttl_ms = running_ttl_seconds * 1000
        self.events_maxlen = events_maxlen
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._begin = redis.register_script(scripts.BEGIN)
        self._handback = redis.register_script(scripts.HANDBACK)
        self._finish = redis.register_script(scripts.FINISH)
        self._fail = redis.register_script(scripts.FAIL)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._record_entry = redis.register_script(scripts.RECORD_ENTRY)

    async def create(
        self, job_id: str, model: str, api: str, provider: str, *, digest: str = "", tenant: str = ""
    ) -> tuple[Literal["new", "exists", "conflict", "foreign"], str, str]:
        """Create the state hash unless it exists: (outcome, state, entry).

        ``digest`` (:func:`job_digest`) is kept on a new job; an existing job whose kept digest
        differs is a ``conflict`` (checked atomically with the creation). ``tenant``: the gateway
        tenant enqueueing it, recorded on a new job's hash as ``tenant``; an existing job that is not
        that tenant's is ``foreign`` (never a conflict nor the same job).
        """
        reply = await self._enqueue(
            keys=[self.keys.state(job_id)],
            args=[now_ms(), self.running_ttl_ms, model, api, provider, digest, tenant],
        )
        outcome = as_text(reply[0])
        if outcome not in ("new", "exists", "conflict", "foreign"):  # pragma: no cover - the script's only
            raise AssertionError(outcome)
        return outcome, as_text(reply[1]), as_text(reply[2])  # type: ignore[return-value]

    async def record_entry(self, job_id: str, entry_id: str) -> None:
        """Record the entry carrying the job, on its state hash only if that still exists (never
        re-creating it without a TTL)."""
        await self._record_entry(keys=[self.keys.state(job_id)], args=[entry_id])

    async def begin(
        self, job_id: str, entry_id: str, consumer: str, start: Start, *, replaces: str | None = None
    ) -> BeginResult:
        """Start a new attempt of the job that ``entry_id`` carries, writing its ``start`` event.

        ``replaces``: the entry's ``replaces`` field, ``<entry> <token>`` when a drain handed it back
        for ``<entry>`` (:meth:`hand_back`): the job moves to this entry only if its state hash
        recorded that token; anything else there (a producer's raw field) changes nothing.
        """
        replaced, _, token = (replaces or "").partition(" ")
        head, tail = split_on_attempt(start)
        reply = await self._run(
            self._begin,
            [self.keys.state(job_id), self.keys.events(job_id)],
            [
                entry_id,
                consumer,
                now_ms(),
                self.running_ttl_ms,
                self.events_maxlen,
                head,
                tail,
                start.model,
                start.api,
                start.provider,
                replaced,
                token,
            ],
        )
        outcome = as_text(reply[0])
        if outcome == "started":
            return BeginResult("started", attempt=int(reply[1]))
        if outcome in ("terminal", "cancel"):
            return BeginResult(outcome, detail=as_text(reply[1]))  # type: ignore[arg-type]
        return BeginResult("duplicate", detail=as_text(reply[1]))

    async def hand_back(self, job_id: str, entry_id: str) -> str:
        """Record that the job's ``entry_id`` is being handed back (drain): the ``replaces`` value
        its new entry carries, which alone moves the job there. Only the token's sha1 is kept on the
        state hash (anyone who may read the hash still cannot forge the field)."""
        token = secrets.token_hex(16)
        digest = hashlib.sha1(token.encode()).hexdigest()  # Redis scripts have sha1hex alone
        await self._handback(keys=[self.keys.state(job_id)], args=[entry_id, digest])
        return f"{entry_id} {token}"

    async def finish(
        self,
        job_id: str,
        attempt: int,
        seq: int,
        event: Event,
        record: Mapping[str, str | int | float],
    ) -> Literal["ok", "dup", "fenced"]:
        """Write the terminal ``event`` of ``attempt`` as entry ``<attempt>-<seq>``, if still current."""
        kind = type(event).__name__.lower()
        args: list[Any] = [
            attempt,
            f"{attempt}-{seq}",
            encode_event(event),
            _TERMINAL_STATE[kind],
            now_ms(),
            self.output_ttl_ms,
            self.events_maxlen,
        ]
        for field, value in record.items():
            args += [field, value]
        keys = [self.keys.state(job_id), self.keys.events(job_id)]
        reply = as_text(await self._run(self._finish, keys, args))
        if reply not in ("ok", "dup", "fenced"):  # pragma: no cover - the script returns only these
            raise AssertionError(reply)
        return reply  # type: ignore[return-value]

    async def fail(
        self,
        job_id: str,
        entry_id: str | None,
        code: str,
        message: str,
        metadata: dict[str, str],
        *,
        cancelled: bool = False,
    ) -> str:
        """Write a terminal ``error`` (or ``cancelled``, with ``message`` as its reason) for a job
        with no live attempt to fence on: dead letters, cancellations found at pickup."""
        event: Event
        if cancelled:
            event = Cancelled(job_id=job_id, attempt=0, reason=message, metadata=metadata)
        else:
            event = Error(job_id=job_id, attempt=0, code=code, message=message, metadata=metadata)
        head, tail = split_on_attempt(event)
        reply = await self._run(
            self._fail,
            [self.keys.state(job_id), self.keys.events(job_id)],
            [
                entry_id or "",
                head,
                tail,
                "cancelled" if cancelled else "error",
                now_ms(),
                self.output_ttl_ms,
                self.events_maxlen,
                code,
            ],
        )
        return as_text(reply)

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """A job-key script's call; a key of another type is :class:`JobKeysUnusable`."""
        try:
            if self.coalescer is None:
                return await script(keys=keys, args=args)
            return await self.coalescer.run(script, keys, args)
        except ResponseError as exc:
            if wrong_type(exc):
                raise JobKeysUnusable(str(exc)) from exc
            raise

    async def cancel(self, job_id: str, reason: str) -> str:
        """Cancel: ``cancelled`` (it was queued and is now over), ``requested`` (its worker is
        told), ``terminal`` (it had already ended) or ``unknown``."""
        head, tail = split_on_attempt(Cancelled(job_id=job_id, attempt=0, reason=reason))
        reply = await self._cancel(
            keys=[self.keys.state(job_id), self.keys.events(job_id)],
            args=[reason, head, tail, now_ms(), self.output_ttl_ms, self.events_maxlen],
        )
        return as_text(reply[0])

    async def cancel_requested(self, job_id: str) -> str | None:
        """The reason of a cancellation requested by :meth:`cancel` for a job not yet ended (the
        state hash's ``cancel`` field), or None when none was."""
        reason = await self.redis.hget(self.keys.state(job_id), "cancel")
        return None if reason is None else as_text(reason)

    async def status(self, job_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.state(job_id))
        if not raw:
            return None
        return {as_text(k): as_text(v) for k, v in raw.items()}
