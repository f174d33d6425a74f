"""Runs one job: admission, a fenced attempt, the upstream stream, the terminal event, the ack."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from typing import Protocol

import httpx
import structlog

from .admit import Admitted, Rejected, admit
from .confidence import ConfidenceTracker, TokenScore
from .events import Done, Error, Start, Token, TopLogprob, Usage, encode_event
from .jobs import Job
from .publisher import Publisher, Sink
from .queue import Delivery, JobQueue
from .settings import Provider, Settings
from .store import JobStore
from .upstream.base import Parsed, StreamEnd, TokenRecord, UpstreamError
from .upstream.http import StreamLimits, open_sse

__all__ = ["Adapter", "Fenced", "Runner"]

log = structlog.get_logger("tokenwire.job")


class Adapter(Protocol):
    """A provider protocol: how to ask for a stream and how to read its events."""

    def build_request(
        self, job: Job, *, model_url: str, settings: Settings, provider: Provider
    ) -> tuple[str, bytes]: ...

    def parse(self, data: str) -> Parsed: ...


class Fenced(Exception):
    """This attempt was superseded: stop writing, stop the upstream request, do not ack."""


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.publisher = publisher
        self.http = http
        self.adapters = adapters
        self.environ = os.environ if environ is None else environ
        self.limits = StreamLimits(
            max_event_bytes=settings.max_event_bytes,
            max_stream_bytes=settings.max_stream_bytes,
            max_tokens=settings.max_tokens_cap,
        )

    async def handle(self, delivery: Delivery) -> None:
        verdict = admit(delivery.entry_id, delivery.payload, self.settings)
        if isinstance(verdict, Rejected):
            await self._reject(delivery, verdict)
            return
        with structlog.contextvars.bound_contextvars(job_id=verdict.job_id):
            await self._run(delivery, verdict)

    async def _reject(self, delivery: Delivery, rejected: Rejected) -> None:
        await self.queue.dead_letter(
            delivery.entry_id,
            delivery.payload,
            rejected.reason,
            job_id=rejected.job_id,
            code=rejected.code,
        )
        if rejected.job_id is not None:
            outcome = await self.store.fail(
                rejected.job_id, delivery.entry_id, rejected.code, rejected.reason, {}
            )
            log.info("invalid job ended", job_id=rejected.job_id, code=rejected.code, outcome=outcome)

    async def _run(self, delivery: Delivery, admitted: Admitted) -> None:
        job = admitted.job
        start = Start(
            job_id=admitted.job_id,
            attempt=0,
            model=job.model,
            provider=admitted.provider_name,
            api=job.api,
            metadata=job.metadata,
        )
        begun = await self.store.begin(admitted.job_id, delivery.entry_id, self.queue.consumer, start)
        if begun.outcome != "started":
            log.info("job skipped", reason=begun.outcome, detail=begun.detail, entry=delivery.entry_id)
            await self.queue.ack(delivery.entry_id)
            return
        log.info("attempt started", attempt=begun.attempt, model=job.model, api=job.api)
        attempt = _Attempt(self, admitted, begun.attempt)
        try:
            terminal = await attempt.run()
        except Fenced:
            log.warning("attempt fenced: a newer attempt owns the job", attempt=begun.attempt)
            return
        outcome = await self.store.finish(
            admitted.job_id, begun.attempt, attempt.seq + 1, terminal, attempt.record(terminal)
        )
        if outcome == "fenced":
            log.warning("terminal event fenced: a newer attempt owns the job", attempt=begun.attempt)
            return
        await self.queue.ack(delivery.entry_id)
        if isinstance(terminal, Done):
            log.info(
                "job done",
                tokens=attempt.seq,
                finish_reason=terminal.finish_reason,
                confidence=terminal.confidence,
            )
        else:
            log.warning("job failed", code=terminal.code, error=terminal.message, tokens=attempt.seq)


class _Attempt:
    """One attempt's stream: upstream events in, token events out, one terminal event at the end."""

    def __init__(self, runner: Runner, admitted: Admitted, attempt: int) -> None:
        self.runner = runner
        self.admitted = admitted
        self.job = admitted.job
        self.attempt = attempt
        self.seq = 0
        self.tracker = ConfidenceTracker(self.job.low_prob)
        self.sink = Sink(runner.store.keys.events(admitted.job_id))
        self.end: StreamEnd | None = None
        self.usage_in: int | None = None
        self.usage_out: int | None = None

    async def run(self) -> Done | Error:
        runner = self.runner
        try:
            async with asyncio.timeout(runner.settings.job_deadline_seconds):
                terminal = await self._stream()
        except UpstreamError as exc:
            terminal = self._error(exc.code, exc.message)
        except TimeoutError:
            terminal = self._error(
                "deadline_exceeded",
                f"job did not finish within job_deadline_seconds={runner.settings.job_deadline_seconds}",
            )
        await runner.publisher.drained(self.sink)
        if self.sink.fenced:
            raise Fenced
        if self.sink.error is not None:
            raise self.sink.error
        return terminal

    async def _stream(self) -> Done | Error:
        runner, admitted = self.runner, self.admitted
        key = admitted.provider.api_key(runner.environ)
        if admitted.provider.api_key_env is not None and key is None:
            return self._error(
                "missing_api_key",
                f"provider {admitted.provider_name!r} needs an API key in the environment variable "
                f"{admitted.provider.api_key_env}, which is not set on this worker",
            )
        adapter = runner.adapters[self.job.api]
        url, body = adapter.build_request(
            self.job, model_url=admitted.url, settings=runner.settings, provider=admitted.provider
        )
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with open_sse(runner.http, url, body, headers, runner.limits) as events:
            async for data in events:
                parsed = adapter.parse(data)
                self._publish(parsed)
                if parsed.end is not None:
                    self.end = parsed.end
                if parsed.closed or not self.sink.ok:
                    break
        if not self.sink.ok:
            return self._error("publish_failed", "could not write events")  # replaced by Fenced/raise
        if self.end is None:
            raise UpstreamError(
                "upstream_incomplete",
                f"upstream stream ended after {self.seq} tokens without its end marker",
                retryable=True,
            )
        return self._done(self.end)

    def _publish(self, parsed: Parsed) -> None:
        if parsed.usage_input_tokens is not None:
            self.usage_in = parsed.usage_input_tokens
        if parsed.usage_output_tokens is not None:
            self.usage_out = parsed.usage_output_tokens
        cap = self.runner.limits.max_tokens + 16
        for record in parsed.tokens:
            if record.channel != "content":
                continue
            if self.seq >= cap:
                raise UpstreamError(
                    "upstream_too_many_tokens",
                    f"upstream sent more than {cap} tokens (max_tokens_cap={self.runner.limits.max_tokens})",
                )
            score = self.tracker.add(
                record.text,
                record.logprob,
                special=record.special,
                raw_bytes=record.bytes,
                top=record.top,
            )
            self.seq += 1
            event = self._token(record, score)
            self.runner.publisher.emit(self.sink, f"{self.attempt}-{self.seq}", encode_event(event))

    def _token(self, record: TokenRecord, score: TokenScore) -> Token:
        top = None
        if record.top is not None:
            top = [TopLogprob(token=c.token, logprob=_finite(c.logprob)) for c in record.top]
        return Token(
            job_id=self.admitted.job_id,
            attempt=self.attempt,
            index=self.seq - 1,
            text=record.text,
            logprob=_finite(record.logprob),
            token_id=record.token_id,
            special=record.special,
            top_logprobs=top,
            confidence=score.confidence,
            ewma_confidence=score.ewma_confidence,
            min_prob=score.min_prob,
            low=score.low,
            char_start=score.char_start,
            char_end=score.char_end,
        )

    def _done(self, end: StreamEnd) -> Done:
        summary = self.tracker.finish()
        input_tokens = end.input_tokens if end.input_tokens is not None else self.usage_in
        return Done(
            job_id=self.admitted.job_id,
            attempt=self.attempt,
            finish_reason=end.finish_reason,
            text=self.tracker.text,
            usage=Usage(input_tokens=input_tokens, output_tokens=self.seq),
            confidence=self.tracker.confidence,
            summary=summary,
            metadata=self.job.metadata,
        )

    def _error(self, code: str, message: str) -> Error:
        return Error(
            job_id=self.admitted.job_id,
            attempt=self.attempt,
            code=code,
            message=message,
            metadata=self.job.metadata,
        )

    def record(self, terminal: Done | Error) -> dict[str, str | int | float]:
        """What the state hash keeps about the outcome (for ``status`` without reading events)."""
        out: dict[str, str | int | float] = {"tokens": self.seq}
        if isinstance(terminal, Done):
            out["finish_reason"] = terminal.finish_reason
            if terminal.confidence is not None:
                out["confidence"] = repr(terminal.confidence)
        else:
            out["error_code"] = terminal.code
        return out
