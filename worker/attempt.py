"""One attempt of a job: the upstream request, one token event per token, the terminal event.

It reads the provider's stream through its protocol adapter, scores every token, emits token events
through the publisher and says how it ended as one :mod:`worker.outcome` value. It owns no Redis
state transition (the runner begins attempts and writes terminal events) and knows nothing of the
runner: what it needs from its worker comes in an :class:`AttemptContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from .admit import Admitted
from .capability import LogprobsMemo
from .confidence import ConfidenceTracker, TokenScore, is_control
from .events import (
    Cancelled,
    Done,
    Error,
    Escalation,
    TopkMetrics,
    TopLogprob,
    Usage,
    encode_event,
    encode_token,
)
from .fallback import LogprobsFallback
from .holdback import holdback_for
from .keys import Keys
from .outcome import Escalate, Failed, Fenced, Finished, WriteFailed
from .publisher import Publisher, Sink
from .ratelimit import Budgets, BudgetWait, no_budget
from .redact import Redactor, check_api_key, installed
from .routing import judge, tracker_for
from .segments import Segmenter, SegmentSpan
from .settings import Settings
from .tracing import traced
from .upstream.adapters import Adapter
from .upstream.base import Parsed, StreamEnd, TokenRecord, UpstreamError
from .upstream.http import StreamLimits

__all__ = ["Attempt", "AttemptContext"]


YIELD_EVERY = 256
"""Tokens an attempt publishes between turns it gives the event loop when its upstream is faster
than the worker (a paced stream waits for bytes far more often than this)."""


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """What attempts need from their worker; one per worker, shared by all its attempts."""

    settings: Settings
    http: httpx.AsyncClient
    adapters: Mapping[str, Adapter]
    publisher: Publisher
    keys: Keys
    limits: StreamLimits
    environ: Mapping[str, str]
    redactor: Redactor = field(default_factory=installed)
    budgets: Budgets | None = None  # the providers' shared budgets (worker.ratelimit)
    memo: LogprobsMemo | None = None  # provider+model pairs that refused logprobs (worker.capability)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class Attempt:
    """One attempt's stream: upstream events in, token events out, one terminal event at the end."""

    candidate: int | msgspec.UnsetType = msgspec.UNSET  # a candidate's number (worker/candidates.py)

    def __init__(self, ctx: AttemptContext, admitted: Admitted, attempt: int, deadline: float) -> None:
        self.ctx = ctx
        self.admitted = admitted
        self.job = admitted.job
        self.attempt = attempt
        self.seq = 0
        self._next_yield = YIELD_EVERY
        self.n_content = 0
        self.tracker = tracker_for(self.job)
        self.reasoning: ConfidenceTracker | None = None
        # segments of the answer, for a job with `review` (per candidate, once jobs have several)
        self.segments = None if self.job.review is None else Segmenter(self.job.review)
        self.extra = 0  # events other than tokens (segments) published so far: ids are seq + extra
        self.sink = Sink(ctx.keys.events(admitted.job_id), existing_only=True)  # BEGIN created it
        self.end: StreamEnd | None = None
        self.usage_in: int | None = None
        self.usage_out: int | None = None  # the provider's count of output tokens, when it sends one
        # output tokens the job's budget leaves this attempt (worker/cost.py; None: no budget)
        self.allowance: int | None = None
        self.text_parts: list[str] | None = None
        # tokens whose text may begin a known secret wait in it (None: no secret configured)
        self.holdback = holdback_for(ctx.redactor, ctx.limits.max_tokens + 16)
        esc = self.job.escalate if admitted.stronger is not None else None
        self.watch_after = esc.after_tokens if esc is not None else None
        self.judge_at_end = esc is not None  # until the after_tokens check has passed
        self._escalate: str | None = None  # why, once the after_tokens check has failed
        self.deadline = deadline
        self.budget_wait = BudgetWait()  # why its request waits for budget, while it does
        self.fallback: LogprobsFallback | None = None  # the request, once its stream is asked for

    async def run(self) -> Finished | Failed | Escalate | Fenced | WriteFailed:
        """Stream the upstream's tokens out as token events; how the attempt ended. A fenced or
        failed event stream wins over whatever the upstream did."""
        outcome: Finished | Failed | Escalate | None
        try:
            async with asyncio.timeout_at(self.deadline):
                try:
                    outcome = await self._stream()
                finally:  # whichever way the stream stopped, no token held back is lost
                    with contextlib.suppress(UpstreamError):
                        self._release()
        except UpstreamError as exc:
            outcome = Failed(exc)
        except TimeoutError:
            outcome = self.deadline_passed()
        await self.ctx.publisher.drained(self.sink)
        if self.sink.fenced:
            return Fenced()
        if self.sink.error is not None:
            return WriteFailed(self.sink.error)
        assert outcome is not None, "the stream stops without an outcome only when its sink fails"
        return outcome

    async def _stream(self) -> Finished | Escalate | None:
        """How the stream ended; None when it stopped because the sink failed."""
        ctx, admitted = self.ctx, self.admitted
        key = admitted.provider.api_key(ctx.environ)
        if admitted.provider.api_key_env is not None and key is None:
            return self.end_with_error(
                "missing_api_key",
                f"provider {admitted.provider_name!r} needs an API key in the environment variable "
                f"{admitted.provider.api_key_env}, which is not set on this worker",
            )
        if key is not None and admitted.provider.api_key_env is not None:
            problem = check_api_key(admitted.provider.api_key_env, key)  # the variable changed since start
            if problem is not None:
                return self.end_with_error(
                    "invalid_api_key", f"provider {admitted.provider_name!r}: {problem}"
                )
        fallback = self.fallback = LogprobsFallback(
            admitted,
            ctx.adapters[self.job.api],
            http=ctx.http,
            settings=ctx.settings,
            limits=ctx.limits,
            memo=ctx.memo,
            key=key,
        )
        await fallback.check()  # a refusal of logprobs remembered for this provider+model
        budgets = ctx.budgets or Budgets(None, ctx.keys, ctx.settings)  # waits out 429s (ratelimit)
        opener = traced(fallback.open, self.job.api, self.job.model, admitted.url)
        opened = budgets.request(admitted, self.deadline, opener, self.tokens_used, self.budget_wait)
        async with opened as events:
            publisher = ctx.publisher
            parse: Callable[[str], Parsed] = fallback.parser.parse
            if self.holdback is not None:  # secrets configured: tokens that may begin one wait
                parse = self._holding(parse)
            async for data in events:
                parsed = parse(data)
                self._publish(parsed)
                if publisher.full:
                    await publisher.room()
                elif self.seq >= self._next_yield:
                    # A fast upstream's buffered events are read without a pause; let the loop
                    # run (the flusher sends, replies are read) every so often.
                    self._next_yield = self.seq + YIELD_EVERY
                    await asyncio.sleep(0)
                if parsed.end is not None:
                    self.end = parsed.end
                if parsed.closed or self._escalate is not None or not self.sink.ok:
                    break
        self._release()
        return self._ended()

    def requests(self, answers: int) -> int:
        """Upstream requests this attempt makes for ``answers`` answers (one: its own stream)."""
        return 1

    def _over(self, cap: int) -> UpstreamError:
        if cap == self.allowance:
            return UpstreamError(
                "budget_exceeded",
                f"the job's budget={self.job.budget} is spent: {cap} output tokens were all it left "
                "this attempt (what was generated so far stays on the stream)",
            )
        limit = self.ctx.limits.max_tokens
        return UpstreamError(
            "upstream_too_many_tokens", f"upstream sent more than {cap} tokens (max_tokens_cap={limit})"
        )

    def usage(self) -> tuple[int | None, int, bool]:
        """``(input, output, reported)``: the provider's counts when it reported its output, else
        the tokens received (and the prompt count, when it sent one)."""
        end = self.end
        input_tokens = end.input_tokens if end is not None and end.input_tokens is not None else self.usage_in
        output = end.output_tokens if end is not None and end.output_tokens is not None else self.usage_out
        if output is None:
            return input_tokens, self.seq, False
        return input_tokens, output, True

    def _holding(self, parse: Callable[[str], Parsed]) -> Callable[[str], Parsed]:
        """``parse`` with its tokens through the holdback (worker/holdback.py: those that may begin
        a known secret wait, the rest pass redacted) and its generated_text redacted."""
        holdback = self.holdback
        assert holdback is not None

        def held(data: str) -> Parsed:
            parsed = parse(data)
            if parsed.tokens:
                parsed.tokens = holdback.push(parsed.tokens)
            end = parsed.end
            if end is not None and end.generated_text:
                parsed.end = msgspec.structs.replace(end, generated_text=holdback.redact(end.generated_text))
            return parsed

        return held

    def _release(self) -> None:
        """Publish the tokens the holdback still holds: the stream stopped."""
        if self.holdback is not None and self.holdback.held:
            self._publish(Parsed(self.holdback.flush()))

    def tokens_used(self) -> int:
        """Tokens this attempt's request used so far: the provider's prompt count (else the
        estimate the budget reserved) and the tokens received (settled on the shared budget)."""
        prompt = self.usage_in
        if prompt is None:
            prompt = math.ceil(self.job.prompt_chars / 4)
        return prompt + self.seq

    def _ended(self) -> Finished | Escalate | None:
        """How the stream that was read ended; None when its sink failed."""
        if self._escalate is not None:
            return self._escalation(self._escalate)
        if not self.sink.ok:
            return None
        if self.end is None:
            raise UpstreamError(
                "upstream_incomplete",
                f"upstream stream ended after {self.seq} tokens without its end marker",
                retryable=True,
            )
        if self.judge_at_end:  # no after_tokens check ran: judge the whole answer
            reason = self._judge(f"at the end ({self.n_content} tokens)")
            if reason is not None:
                return self._escalation(reason)
        done = self._done(self.end)
        if self.segments is not None:  # the last segment, then the verdict
            self._emit_segments(self.segments.close())
            verdict = self.segments.verdict(done.confidence)
            done = msgspec.structs.replace(done, verdict=verdict)
        return Finished(done, self.seq, self.seq + self.extra)

    def _publish(self, parsed: Parsed) -> None:
        if parsed.usage_input_tokens is not None:
            self.usage_in = parsed.usage_input_tokens
        if parsed.usage_output_tokens is not None:
            self.usage_out = parsed.usage_output_tokens
        if parsed.text is not None:
            if self.text_parts is None:
                self.text_parts = []
            self.text_parts.append(parsed.text)
        cap = self.ctx.limits.max_tokens + 16
        if self.allowance is not None and self.allowance < cap:
            cap = self.allowance
        emit, sink = self.ctx.publisher.emit, self.sink
        for record in parsed.tokens:
            if self.seq >= cap:
                raise self._over(cap)
            self.seq += 1
            payload, score, special = self._token(record)
            emit(sink, self._event_id(), payload)
            if self.segments is not None and record.channel == "content":
                self._segment(record, score, special)
        if self.watch_after is not None and self.n_content >= self.watch_after:
            self.watch_after = None
            self.judge_at_end = False
            self._escalate = self._judge(f"after {self.n_content} tokens")

    def _segment(self, record: TokenRecord, score: TokenScore, special: bool) -> None:
        """Feed an answer token (its event just published) to the segmenter; publish the segments
        it closed after it."""
        segments = self.segments
        assert segments is not None
        chars = (score.char_start, score.char_end)
        closed = segments.token(self.seq - 1, record.text, record.bytes, special, record.logprob, chars)
        if closed:
            self._emit_segments(closed)

    def _emit_segments(self, closed: tuple[SegmentSpan, ...]) -> None:
        job_id = self.admitted.job_id
        for span in closed:
            self.extra += 1
            event = span.event(job_id, self.attempt)
            if self.candidate is not msgspec.UNSET:  # a candidate's segment says which (candidates.py)
                event = msgspec.structs.replace(event, candidate=self.candidate)
            self.ctx.publisher.emit(self.sink, self._event_id(), encode_event(event))

    def _event_id(self) -> bytes:
        """The id of the event published next (after ``seq``/``extra`` counted it); a candidate of
        a job with several takes its ids from the job's attempt (worker/candidates.py)."""
        return b"%d-%d" % (self.attempt, self.seq + self.extra)

    def _tracker_for(self, record: TokenRecord) -> ConfidenceTracker:
        if record.channel == "content":
            self.n_content += 1
            return self.tracker
        if self.reasoning is None:
            self.reasoning = ConfidenceTracker(self.job.low_prob)
        return self.reasoning

    def _token(self, record: TokenRecord) -> tuple[bytes, TokenScore, bool]:
        """The token event of ``record`` (index ``seq - 1``) as bytes, its score, and whether it
        is a control token (``special``)."""
        tracker = self._tracker_for(record)
        text, flag, raw, top = record.text, record.special, record.bytes, record.top
        score = tracker.add(text, record.logprob, flag, raw, top)  # (special, raw_bytes, top)
        special = is_control(flag, text, raw)
        payload = encode_token(  # the bytes of Token(...) with these fields, in Token's order
            self.admitted.job_id,
            self.attempt,
            self.seq - 1,
            text,
            _finite(record.logprob),
            record.token_id,
            special,
            None if top is None else [TopLogprob(token=c.token, logprob=_finite(c.logprob)) for c in top],
            score.confidence,
            score.ewma_confidence,
            score.min_prob,
            score.low,
            score.char_start,
            score.char_end,
            None if score.chosen_rank is None else _topk(score, tracker),
            record.channel,
            self.candidate,
        )
        return payload, score, special

    def _judge(self, when: str) -> str | None:
        """Why this attempt should escalate (its ``escalate.signal`` is under the bar), or None."""
        esc = self.job.escalate
        if esc is None or self.admitted.stronger is None:
            return None
        return judge(self.tracker, esc, when, self.job.model)

    def _escalation(self, reason: str) -> Escalate:
        esc = self.job.escalate
        assert esc is not None
        record = Escalation(
            from_model=self.job.model,
            from_provider=self.admitted.provider_name,
            from_attempt=self.attempt,
            confidence=self.tracker.confidence,
            below=esc.below,
            after_tokens=esc.after_tokens,
            tokens=self.n_content,
            summary=self.tracker.finish(),
        )
        return Escalate(reason, record)

    def _done(self, end: StreamEnd) -> Done:
        summary = self.tracker.finish()
        input_tokens = end.input_tokens if end.input_tokens is not None else self.usage_in
        text = self.tracker.text if self.text_parts is None else "".join(self.text_parts)
        if self.holdback is not None and self.text_parts is not None:  # as its tokens were
            text = self.holdback.redact(text)
        reasoning = self.reasoning
        return Done(
            job_id=self.admitted.job_id,
            attempt=self.attempt,
            finish_reason=end.finish_reason,
            text=text,
            usage=Usage(input_tokens=input_tokens, output_tokens=self.seq),
            confidence=self.tracker.confidence,
            summary=summary,
            metadata=self.job.metadata,
            reasoning_text=None if reasoning is None else reasoning.text,
            reasoning_confidence=None if reasoning is None else reasoning.confidence,
            **self._logprobs_note(),
        )

    def _logprobs_note(self) -> dict[str, Any]:
        """``done``'s ``logprobs_available: false`` and why, when the request went without them."""
        reason = None if self.fallback is None else self.fallback.reason
        return {} if reason is None else {"logprobs_available": False, "logprobs_reason": reason}

    def deadline_passed(self) -> Failed | Finished:
        """How the attempt ends when the job's deadline passes: ``rate_limited`` while its request
        waited for budget (the same error the wait gives when it sees the deadline coming),
        ``deadline_exceeded`` otherwise."""
        why = self.budget_wait.why
        if why is not None:
            return Failed(no_budget(self.admitted.provider_name, self.ctx.settings, why))
        limit = self.ctx.settings.job_deadline_seconds
        return self.end_with_error(
            "deadline_exceeded", f"job did not finish within job_deadline_seconds={limit}"
        )

    def end_with_error(self, code: str, message: str) -> Finished:
        """This attempt's end with an ``error`` event (also the runner's, for a failure it will not
        retry)."""
        error = Error(
            job_id=self.admitted.job_id,
            attempt=self.attempt,
            code=code,
            message=self.ctx.redactor.redact(message),
            metadata=self.job.metadata,
        )
        return Finished(error, self.seq, self.seq + self.extra)

    def end_cancelled(self, reason: str) -> Finished:
        """This attempt's end with a ``cancelled`` event (the runner's, when a producer cancels)."""
        cancelled = Cancelled(
            job_id=self.admitted.job_id, attempt=self.attempt, reason=reason, metadata=self.job.metadata
        )
        return Finished(cancelled, self.seq, self.seq + self.extra)


def _topk(score: TokenScore, tracker: ConfidenceTracker) -> TopkMetrics | None:
    if score.chosen_rank is None or score.tail_mass is None or score.entropy_lb is None:
        return None
    return TopkMetrics(
        margin=score.margin,
        chosen_rank=score.chosen_rank,
        tail_mass=score.tail_mass,
        entropy_lb=score.entropy_lb,
        entropy_lump=score.entropy_lump if score.entropy_lump is not None else score.entropy_lb,
        entropy_ub=score.entropy_ub,
        mean_entropy_lb=tracker.mean_entropy_lb,
        max_entropy_lb=tracker.max_entropy_lb,
        n_not_top1=tracker.n_not_top1,
    )
