"""Runs one delivery of a job: admission, attempts (with retries and escalation), the terminal
event, the ack. A job is acknowledged only after its terminal event is written."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Literal

import httpx
import msgspec
import structlog
from redis.exceptions import ResponseError

from .admit import Admitted, Rejected, admit
from .attempt import Attempt, AttemptContext
from .backoff import Backoff, RetryPolicy
from .candidates import attempt_for
from .capability import LogprobsMemo
from .cost import JobSpend, ModelLabels
from .events import Done, Error, Start, bound_done
from .jobs import job_id_of
from .metrics import Metrics
from .outcome import Escalate, Failed, Fenced, Finished, Outcome, Skipped, WriteFailed
from .publisher import EventGap, Publisher
from .queue import Delivery, JobQueue
from .ratelimit import Budgets
from .redact import Redactor, installed
from .refusals import outlast_refusals
from .review import ReviewQueue, review_item, wants_review
from .settings import Settings
from .store import JobStore
from .tracing import attempt_span, end_attempt, job_span
from .unusable import JobKeysUnusable, keys_unusable
from .upstream.adapters import Adapter
from .upstream.http import StreamLimits

__all__ = ["Control", "Runner"]

log = structlog.get_logger("tokenwire.job")


class Control:
    """Why a job's task was interrupted from outside: ``cancel`` (write ``cancelled``), ``fence``
    (another worker owns the job: stop silently), ``drain`` (shutdown: the worker hands it back),
    ``gone`` (its entry was deleted from the job stream: nobody can take it over, so it ends with
    the terminal ``error`` ``entry_deleted``)."""

    __slots__ = ("kind", "reason")

    def __init__(self) -> None:
        self.kind: Literal["cancel", "fence", "drain", "gone"] | None = None
        self.reason = ""

    def set(self, kind: Literal["cancel", "fence", "drain", "gone"], reason: str = "") -> None:
        if self.kind is None:
            self.kind, self.reason = kind, reason


class Runner:
    """Everything needed to run jobs; one instance serves every job of a worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        queue: JobQueue,
        publisher: Publisher,
        http: httpx.AsyncClient,
        adapters: Mapping[str, Adapter],
        environ: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        redactor: Redactor | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = installed() if redactor is None else redactor
        self.metrics = metrics or Metrics()
        self.store = store
        self.queue = queue
        self.publisher = publisher
        self.retry = RetryPolicy.upstream(settings)
        self.reviews = ReviewQueue(
            store.redis, store.keys, maxlen=settings.review_maxlen, ttl_seconds=settings.review_ttl_seconds
        )
        self.model_labels = ModelLabels()  # the usage metrics' bounded model labels
        self.attempts = AttemptContext(
            settings=settings,
            http=http,
            adapters=adapters,
            publisher=publisher,
            keys=store.keys,
            limits=StreamLimits.from_settings(settings, max_tokens=settings.max_tokens_cap),
            environ=os.environ if environ is None else environ,
            redactor=self.redactor,
            budgets=budgets or Budgets(None, store.keys, settings, self.metrics),
            memo=LogprobsMemo(store.redis, store.keys, settings.logprobs_refusal_ttl_seconds),
        )

    async def handle(self, delivery: Delivery, control: Control | None = None) -> None:
        if delivery.deliveries > self.settings.max_deliveries:
            await self._reject(delivery, self._exhausted(delivery))
            return
        verdict = admit(delivery.entry_id, delivery.payload, self.settings)
        if isinstance(verdict, Rejected):
            await self._reject(delivery, verdict)
            return
        # the job's id on every line its task logs (bound and reset by token: bound_contextvars
        # copies the whole context twice, ~4 us a job)
        bound = structlog.contextvars.bind_contextvars(job_id=verdict.job_id)
        try:
            await _JobRun(self, delivery, verdict, control or Control()).run()
        except JobKeysUnusable as exc:
            # no delivery can ever run it (every one would fail the same way): dead-lettered now
            reason = f"Redis cannot run the job's scripts on its keys as they are: {exc}"
            await self._reject(delivery, Rejected("job_keys_unusable", reason, verdict.job_id))
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    def _exhausted(self, delivery: Delivery) -> Rejected:
        job_id = job_id_of(delivery.payload, delivery.entry_id)
        return Rejected(
            "max_deliveries_exceeded",
            f"delivered {delivery.deliveries} times, more than max_deliveries="
            f"{self.settings.max_deliveries}: the workers that took it died or lost it each time",
            job_id,
        )

    async def _reject(self, delivery: Delivery, rejected: Rejected) -> None:
        """End a job its entry cannot run: its terminal ``error`` first (fenced on the entry, and
        written once however often this is retried), then the dead letter, which acks. A failure
        between the two leaves the entry pending: its next delivery finds the terminal written and
        only moves the entry. (The two cannot be one script: the job's keys and the queue's are in
        different hash slots.)"""
        reason = self.redactor.redact(rejected.reason)  # it may quote the payload
        job_id = rejected.job_id
        if job_id is not None:
            try:
                outcome = await outlast_refusals(
                    lambda: self.store.fail(job_id, delivery.entry_id, rejected.code, reason, {}),
                    "write a rejected job's terminal event",
                )
            except ResponseError as exc:
                if not keys_unusable(exc):
                    raise
                # the job's keys cannot take its terminal, now or on any later delivery: the dead
                # letter alone records the end (else the entry would come back forever)
                outcome = "unwritable"
                reason = f"{reason} (no terminal event could be written: {exc})"
            log.info("rejected job ended", job_id=job_id, code=rejected.code, outcome=outcome)
            exhausted = rejected.code == "max_deliveries_exceeded"
            if outcome == "terminal" and exhausted and not await self._ours(job_id, delivery, rejected):
                # the job had ended by itself (its ack was what failed): nothing to dead-letter
                await outlast_refusals(lambda: self.queue.ack(delivery.entry_id), "ack an ended job")
                return
        await outlast_refusals(
            lambda: self.queue.dead_letter(
                delivery.entry_id, delivery.payload, reason, job_id=job_id, code=rejected.code
            ),
            "dead-letter an entry",
        )
        self.metrics.dead_letters.labels(rejected.code).inc()
        self.metrics.jobs.labels("dead_lettered").inc()

    async def _ours(self, job_id: str, delivery: Delivery, rejected: Rejected) -> bool:
        """Whether the job's terminal is the error an earlier try of this rejection wrote."""
        state = await outlast_refusals(lambda: self.store.status(job_id), "read a rejected job's state") or {}
        return (
            state.get("state") == "error"
            and state.get("error_code") == rejected.code
            and state.get("entry") == delivery.entry_id
        )


class _JobRun:
    """One delivery of one job, from its first ``start`` to its terminal event and ack."""

    def __init__(self, runner: Runner, delivery: Delivery, admitted: Admitted, control: Control) -> None:
        self.runner = runner
        self.delivery = delivery
        self.admitted = admitted
        self.control = control
        self.deadline = asyncio.get_running_loop().time() + runner.settings.job_deadline_seconds
        self.current: Attempt | None = None  # the attempt running (or last run)
        self.spend = JobSpend(admitted, runner.settings, runner.metrics, runner.model_labels)

    async def run(self) -> None:
        admitted, job = self.admitted, self.admitted.job
        queue = self.runner.store.keys.jobs
        with job_span(admitted.job_id, job.model, admitted.provider_name, job.api, job.traceparent, queue):
            attempt, outcome = await self._on_model(admitted, None, None)
            if isinstance(outcome, Escalate):
                outcome = await self._escalate(attempt, outcome)
            await self._end(self.spend.done(outcome))

    async def _escalate(self, weak: Attempt | None, escalate: Escalate) -> Outcome:
        """The job's stronger model, after ``weak`` was not confident enough."""
        stronger = self.admitted.stronger
        assert stronger is not None, "only a job with a stronger model escalates"
        self.runner.metrics.escalations.inc()
        log.info(
            "escalating to a stronger model",
            reason=escalate.reason,
            from_model=self.admitted.job.model,
            to_model=stronger.job.model,
            confidence=escalate.record.confidence,
        )
        _, outcome = await self._on_model(stronger, escalate.reason, weak)
        if isinstance(outcome, Finished) and isinstance(outcome.terminal, Done):
            done = msgspec.structs.replace(outcome.terminal, escalation=escalate.record)
            return Finished(done, outcome.tokens, outcome.seq)
        return outcome

    async def _on_model(
        self, admitted: Admitted, reason: str | None, previous: Attempt | None
    ) -> tuple[Attempt | None, Outcome]:
        """Attempts on ``admitted``'s model, from its ``start`` until one ends without a retryable
        failure, within ``max_attempts`` and the job deadline, and the last attempt. A retry after
        tokens were published is a new attempt. A cancel arriving at any point ends the job on the
        attempt in progress (``previous`` until the first begins)."""
        runner, loop = self.runner, asyncio.get_running_loop()
        attempt = previous
        try:
            number = await self._begin(admitted, reason)
            backoff, gaps = Backoff(runner.retry), 0
            while not isinstance(number, Skipped):
                attempt = self.current = attempt_for(runner.attempts, admitted, number, self.deadline)
                outcome = await self._run(attempt)
                if isinstance(outcome, WriteFailed) and isinstance(outcome.error, EventGap):
                    gaps += 1  # Redis refused one event for now and took a later one
                    if gaps <= runner.settings.max_attempts:
                        log.warning("an event was lost to a Redis refusal: a new attempt")
                        number = await self._begin(admitted, f"retry after a lost event: {outcome.error}")
                        continue
                if not isinstance(outcome, Failed):
                    return attempt, outcome
                failure = outcome.error
                runner.metrics.upstream_errors.labels(str(failure.status or "none"), failure.code).inc()
                if not failure.retryable:
                    return attempt, attempt.end_with_error(failure.code, failure.message)
                delay = backoff.failed(failure.retry_after)
                tries, limit = backoff.failures, runner.settings.max_attempts
                if tries >= limit or loop.time() + delay >= self.deadline:
                    why = f"attempts={tries} of max_attempts={limit}" if tries >= limit else "job deadline"
                    return attempt, attempt.end_with_error(
                        failure.code, f"{failure.message} (no more retries: {why})"
                    )
                log.warning(
                    "upstream failed, retrying",
                    code=failure.code,
                    status=failure.status,
                    error=failure.message,
                    retry_in=round(delay, 3),
                    tries=tries,
                )
                runner.metrics.retries.labels(failure.code).inc()
                await asyncio.sleep(delay)
                if attempt.seq > 0:  # tokens were published: subscribers must discard them
                    number = await self._begin(admitted, f"retry after {failure.code}: {failure.message}")
            return attempt, number
        except asyncio.CancelledError:
            if self.control.kind not in ("cancel", "gone"):
                raise  # fenced or draining: the worker decides what becomes of the entry
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if self.control.kind == "gone":
                return attempt, await self._entry_gone(attempt)
            if attempt is None:
                return None, Skipped(ack=False)  # not started: the next delivery's pickup sees the flag
            await runner.publisher.drained(attempt.sink)
            return attempt, attempt.end_cancelled(self.control.reason or "cancelled")

    async def _run(self, attempt: Attempt) -> Outcome:
        """One attempt, within the job's budget, in its span, its usage counted."""
        over_budget = self.spend.before(attempt)
        if over_budget is not None:
            return attempt.end_with_error("budget_exceeded", over_budget)
        admitted = attempt.admitted
        job = admitted.job
        with attempt_span(attempt.attempt, job.model, admitted.provider_name, job.api) as span:
            outcome = await attempt.run()
            end_attempt(span, outcome)
        self.spend.after(attempt, escalation=admitted is not self.admitted)
        return outcome

    async def _entry_gone(self, attempt: Attempt | None) -> Finished | Skipped:
        """The job's entry was deleted from the job stream while it ran (``XDEL``, ``XTRIM``): no
        delivery can ever retry it, so it ends here with ``error`` ``entry_deleted`` (fenced like
        every terminal: written only if the job is still this delivery's)."""
        runner, entry = self.runner, self.delivery.entry_id
        message = (
            f"the job's entry {entry} was deleted from {runner.store.keys.jobs} while the job ran "
            "(XDEL or XTRIM): it can be neither retried nor taken over"
        )
        if attempt is not None:
            await runner.publisher.drained(attempt.sink)
            return attempt.end_with_error("entry_deleted", message)
        outcome = await outlast_refusals(
            lambda: runner.store.fail(self.admitted.job_id, entry, "entry_deleted", message, {}),
            "write a deleted entry's terminal event",
        )
        log.warning("job ended: its entry was deleted before it started", outcome=outcome)
        if outcome == "ok":
            runner.metrics.jobs.labels("error").inc()
        return Skipped(ack=True)

    async def _end(self, outcome: Outcome) -> None:
        """Act on how the job's last attempt ended: its terminal event and the ack, or neither."""
        if isinstance(outcome, Finished):
            await self._finish(outcome)
        elif isinstance(outcome, Skipped):
            if outcome.ack:
                await self._ack()
        elif isinstance(outcome, Fenced):
            log.warning("attempt fenced: a newer attempt owns the job")
        elif isinstance(outcome, WriteFailed):
            log.error(
                "token events could not be written; the entry stays pending for another delivery",
                entry=self.delivery.entry_id,
                error=repr(outcome.error),
            )
        else:
            raise AssertionError(f"{outcome!r} is resolved before a job ends")

    async def _finish(self, outcome: Finished) -> None:
        runner, terminal = self.runner, outcome.terminal
        if isinstance(terminal, Done):  # however long the answer, its done can be written and read
            terminal = bound_done(terminal, runner.settings.max_event_bytes)
        finished = await outlast_refusals(
            lambda: runner.store.finish(
                self.admitted.job_id, terminal.attempt, outcome.last_seq + 1, terminal, outcome.record()
            ),
            "write the terminal event",
        )
        if finished == "fenced":
            log.warning("terminal event fenced: a newer attempt owns the job", attempt=terminal.attempt)
            return
        if isinstance(terminal, Done) and wants_review(terminal):  # once the done is written, before the ack
            done_id = f"{terminal.attempt}-{outcome.last_seq + 1}"
            await outlast_refusals(lambda: self._review(terminal, done_id), "put the job on review")
        await self._ack()
        runner.metrics.jobs.labels(type(terminal).__name__.lower()).inc()
        if isinstance(terminal, Done):
            log.info(
                "job done",
                attempt=terminal.attempt,
                tokens=outcome.tokens,
                finish_reason=terminal.finish_reason,
                confidence=terminal.confidence,
                escalated=terminal.escalation is not None,
            )
        elif isinstance(terminal, Error):
            log.warning("job failed", code=terminal.code, error=terminal.message, tokens=outcome.tokens)
        else:
            log.info("job cancelled", attempt=terminal.attempt, reason=terminal.reason)

    async def _review(self, done: Done, done_id: str) -> None:
        """Put the job on the review stream (once per job: :mod:`worker.review`)."""
        attempt = self.current
        segments = None if attempt is None else attempt.segments
        if attempt is None or segments is None or attempt.attempt != done.attempt:
            entry = await self.runner.reviews.add_from_events(done.job_id)  # rebuilt from its events
        else:
            low = [span.event(done.job_id, done.attempt) for span in segments.low]
            model, means = attempt.job.model, segments.means  # p10_prob: done.summary has it
            item = review_item(done, model=model, low=low, means=means, logprobs=None, done_id=done_id)
            entry = await self.runner.reviews.add(item)
        log.info("job put on review", entry=entry)

    async def _ack(self) -> None:
        """Acknowledge the entry, only ever after its job's terminal event is written (or found)."""
        await outlast_refusals(lambda: self.runner.queue.ack(self.delivery.entry_id), "ack the entry")

    async def _begin(self, admitted: Admitted, reason: str | None) -> int | Skipped:
        """Begin an attempt (its number), or why none may begin."""
        runner, delivery = self.runner, self.delivery
        start = _start(admitted, reason)
        begun = await outlast_refusals(
            lambda: runner.store.begin(
                admitted.job_id, delivery.entry_id, runner.queue.consumer, start, replaces=delivery.replaces
            ),
            "begin an attempt",
        )
        if begun.outcome == "started":
            log.info("attempt started", attempt=begun.attempt, model=admitted.job.model, reason=reason)
            return begun.attempt
        if begun.outcome == "cancel":
            outcome = await outlast_refusals(
                lambda: runner.store.fail(
                    admitted.job_id, delivery.entry_id, "cancelled", begun.detail, {}, cancelled=True
                ),
                "write a cancelled job's terminal event",
            )
            log.info("job cancelled before it started", outcome=outcome)
            runner.metrics.jobs.labels("cancelled").inc()
            return Skipped(ack=True)
        if begun.outcome == "terminal" and begun.detail == "done" and admitted.job.review is not None:
            # a delivery that died between the done and its review entry: the entry, from the events
            job_id = admitted.job_id
            entry = await outlast_refusals(
                lambda: runner.reviews.add_from_events(job_id), "put the job on review"
            )
            log.info("ended job checked for review", entry=entry)
        log.info("job skipped", reason=begun.outcome, detail=begun.detail, entry=delivery.entry_id)
        runner.metrics.jobs.labels("skipped").inc()
        return Skipped(ack=True)


def _start(admitted: Admitted, reason: str | None) -> Start:
    job = admitted.job
    return Start(
        job_id=admitted.job_id,
        attempt=0,
        model=job.model,
        provider=admitted.provider_name,
        api=job.api,
        metadata=job.metadata,
        reason=reason,
        traceparent=msgspec.UNSET if job.traceparent is None else job.traceparent,
    )
