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

from .admit import Admitted, Rejected, admit
from .attempt import Attempt, Fenced
from .backoff import Backoff, RetryPolicy
from .events import Cancelled, Done, Error, Start
from .jobs import job_id_of
from .metrics import Metrics
from .publisher import Publisher
from .queue import Delivery, JobQueue
from .settings import Settings
from .store import JobStore
from .upstream.adapters import Adapter
from .upstream.http import StreamLimits

__all__ = ["Control", "Runner"]

log = structlog.get_logger("tokenwire.job")


class Control:
    """Why a job's task was interrupted from outside: ``cancel`` (write ``cancelled``), ``fence``
    (another worker owns the job: stop silently), ``drain`` (shutdown: the worker hands it back)."""

    __slots__ = ("kind", "reason")

    def __init__(self) -> None:
        self.kind: Literal["cancel", "fence", "drain"] | None = None
        self.reason = ""

    def set(self, kind: Literal["cancel", "fence", "drain"], reason: str = "") -> None:
        if self.kind is None:
            self.kind, self.reason = kind, reason


class _Stop(Exception):
    """End this delivery here; ``ack`` says whether its entry is acknowledged."""

    def __init__(self, ack: bool) -> None:
        self.ack = ack


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
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store
        self.queue = queue
        self.publisher = publisher
        self.http = http
        self.adapters = adapters
        self.environ = os.environ if environ is None else environ
        self.limits = StreamLimits.from_settings(settings, max_tokens=settings.max_tokens_cap)
        self.retry = RetryPolicy.upstream(settings)

    async def handle(self, delivery: Delivery, control: Control | None = None) -> None:
        if delivery.deliveries > self.settings.max_deliveries:
            await self._reject(delivery, self._exhausted(delivery))
            return
        verdict = admit(delivery.entry_id, delivery.payload, self.settings)
        if isinstance(verdict, Rejected):
            await self._reject(delivery, verdict)
            return
        with structlog.contextvars.bound_contextvars(job_id=verdict.job_id):
            await _JobRun(self, delivery, verdict, control or Control()).run()

    def _exhausted(self, delivery: Delivery) -> Rejected:
        job_id = job_id_of(delivery.payload, delivery.entry_id)
        return Rejected(
            "max_deliveries_exceeded",
            f"delivered {delivery.deliveries} times, more than max_deliveries="
            f"{self.settings.max_deliveries}: the workers that took it died or lost it each time",
            job_id,
        )

    async def _reject(self, delivery: Delivery, rejected: Rejected) -> None:
        self.metrics.dead_letters.labels(rejected.code).inc()
        self.metrics.jobs.labels("dead_lettered").inc()
        await self.queue.dead_letter(
            delivery.entry_id, delivery.payload, rejected.reason, job_id=rejected.job_id, code=rejected.code
        )
        if rejected.job_id is not None:
            outcome = await self.store.fail(
                rejected.job_id, delivery.entry_id, rejected.code, rejected.reason, {}
            )
            log.info("rejected job ended", job_id=rejected.job_id, code=rejected.code, outcome=outcome)


class _JobRun:
    """One delivery of one job, from its first ``start`` to its terminal event and ack."""

    def __init__(self, runner: Runner, delivery: Delivery, admitted: Admitted, control: Control) -> None:
        self.runner = runner
        self.delivery = delivery
        self.admitted = admitted
        self.control = control
        self.current: Attempt | None = None
        self.deadline = asyncio.get_running_loop().time() + runner.settings.job_deadline_seconds

    async def run(self) -> None:
        runner = self.runner
        terminal: Done | Error | Cancelled
        try:
            try:
                attempt, terminal = await self._attempts()
            except asyncio.CancelledError:
                if self.control.kind != "cancel":
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                attempt, terminal = await self._cancelled()
        except Fenced:
            log.warning("attempt fenced: a newer attempt owns the job")
            return
        except _Stop as stop:
            if stop.ack:
                await runner.queue.ack(self.delivery.entry_id)
            return
        await self._finish(attempt, terminal)

    async def _finish(self, attempt: Attempt, terminal: Done | Error | Cancelled) -> None:
        runner = self.runner
        finished = await runner.store.finish(
            self.admitted.job_id, attempt.attempt, attempt.seq + 1, terminal, attempt.record(terminal)
        )
        if finished == "fenced":
            log.warning("terminal event fenced: a newer attempt owns the job", attempt=attempt.attempt)
            return
        await runner.queue.ack(self.delivery.entry_id)
        runner.metrics.jobs.labels(type(terminal).__name__.lower()).inc()
        if isinstance(terminal, Done):
            log.info(
                "job done",
                attempt=attempt.attempt,
                tokens=attempt.seq,
                finish_reason=terminal.finish_reason,
                confidence=terminal.confidence,
                escalated=terminal.escalation is not None,
            )
        elif isinstance(terminal, Cancelled):
            log.info("job cancelled", attempt=attempt.attempt, reason=terminal.reason)
        else:
            log.warning("job failed", code=terminal.code, error=terminal.message, tokens=attempt.seq)

    async def _cancelled(self) -> tuple[Attempt, Cancelled]:
        attempt = self.current
        if attempt is None:
            raise _Stop(ack=False)  # not started: the pickup of the next delivery will see the flag
        await self.runner.publisher.drained(attempt.sink)
        reason = self.control.reason or "cancelled"
        return attempt, Cancelled(
            job_id=self.admitted.job_id, attempt=attempt.attempt, reason=reason, metadata=attempt.job.metadata
        )

    async def _begin(self, admitted: Admitted, reason: str | None) -> int:
        runner, delivery = self.runner, self.delivery
        begun = await runner.store.begin(
            admitted.job_id,
            delivery.entry_id,
            runner.queue.consumer,
            _start(admitted, reason),
            replaces=delivery.replaces,
        )
        if begun.outcome == "started":
            log.info("attempt started", attempt=begun.attempt, model=admitted.job.model, reason=reason)
            return begun.attempt
        if begun.outcome == "cancel":
            outcome = await runner.store.fail(
                admitted.job_id, delivery.entry_id, "cancelled", begun.detail, {}, cancelled=True
            )
            log.info("job cancelled before it started", outcome=outcome)
            runner.metrics.jobs.labels("cancelled").inc()
            raise _Stop(ack=True)
        log.info("job skipped", reason=begun.outcome, detail=begun.detail, entry=delivery.entry_id)
        runner.metrics.jobs.labels("skipped").inc()
        raise _Stop(ack=True)

    async def _attempts(self) -> tuple[Attempt, Done | Error]:
        """The job's attempts: retries, and the escalated model when the first is not confident."""
        admitted = self.admitted
        attempt, terminal = await self._with_retries(admitted, await self._begin(admitted, None))
        reason = attempt.escalation_reason(terminal)
        if reason is None or admitted.stronger is None:
            assert terminal is not None
            return attempt, terminal
        record = attempt.escalation_record()
        stronger = admitted.stronger
        self.runner.metrics.escalations.inc()
        log.info(
            "escalating to a stronger model",
            reason=reason,
            from_model=admitted.job.model,
            to_model=stronger.job.model,
            confidence=record.confidence,
        )
        strong, final = await self._with_retries(stronger, await self._begin(stronger, reason))
        assert final is not None
        if isinstance(final, Done):
            final = msgspec.structs.replace(final, escalation=record)
        return strong, final

    async def _with_retries(self, admitted: Admitted, number: int) -> tuple[Attempt, Done | Error | None]:
        """Upstream requests until one ends without a retryable failure, within ``max_attempts`` and
        the job deadline. A retry after tokens were published is a new attempt."""
        runner, loop = self.runner, asyncio.get_running_loop()
        backoff = Backoff(runner.retry)
        while True:
            self.current = attempt = Attempt(runner, admitted, number, self.deadline)
            terminal = await attempt.run()
            failure = attempt.failure
            if failure is not None:
                runner.metrics.upstream_errors.labels(str(failure.status or "none"), failure.code).inc()
            if failure is None or not failure.retryable:
                return attempt, terminal
            delay = backoff.failed(failure.retry_after)
            tries, limit = backoff.failures, runner.settings.max_attempts
            if tries >= limit or loop.time() + delay >= self.deadline:
                why = f"attempts={tries} of max_attempts={limit}" if tries >= limit else "job deadline"
                return attempt, attempt.give_up(f"{failure.message} (no more retries: {why})")
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
    )
