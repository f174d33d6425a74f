"""Several candidates on one stream (issue 16 §2): ``n`` generations of one job, ranked.

A job with ``candidates`` (``n`` of 2 or more) runs as one attempt, :class:`CandidatesAttempt`,
whose candidates are :class:`CandidateLane` attempts run concurrently: candidate ``k`` is the job
with its seed varied (``params.seed + k``, or ``k`` when the job has no seed), a request of its own
bounded by the same limits and deadline as a single job. Every event of a candidate (its tokens,
its segments with ``review``) carries ``candidate: k``; its ``index`` and offsets count within the
candidate, whose running confidence, spans and segments are its own. Ids come from the attempt's
one sequence, so they increase strictly across interleaved candidates. A ``candidate_done`` closes
each candidate (with its error when it failed); the ``done`` is the winner's (rank 1 by
``rank_by``, ties to the lower index) with ``candidates`` and ``agreement``.

On chat and completions (:data:`SHARED_APIS`) one request asks for all ``n`` choices, as the
provider's ``n_choices`` setting says: ``one_request``; ``separate`` (one request each, as on every
other API); ``auto``, the default: one request, and when its stream ends with every choice it sent
finished but some choice index never seen, the provider ignored ``n``: the missing candidates are
asked for on requests of their own (seed varied, as separate candidates are) within the same
attempt and deadline, and the provider+model is remembered (:meth:`LogprobsMemo.remember_ignores_n`,
``P:no_n:*``) so that its next jobs with candidates ask for each separately at once.

With ``escalate.after_tokens`` (and a stronger model) each candidate is judged on its own signal
after that many answer tokens, or at its end when it ends sooner: once every candidate is judged
(or has failed) and none is at or above ``below``, every candidate still running is stopped at once
and the job escalates; when one is, the job goes on and does not escalate, as a single stream whose
``after_tokens`` check passed. Without ``after_tokens`` the winner is judged at the end
(``agreement``: the agreement), which admission requires of ``signal: agreement``.

One candidate failing does not fail the job while another answers; when all fail, the job ends
with one ``error`` (retried as a new attempt first when every failure was retryable). A cancel
cancels every candidate's task; a takeover restarts the whole job as a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re

import msgspec
import structlog

from .admit import Admitted
from .attempt import YIELD_EVERY, Attempt, AttemptContext
from .events import (
    CandidateDone,
    CandidateError,
    CandidateResult,
    Done,
    Error,
    Summary,
    Usage,
    encode_event,
)
from .fallback import LogprobsFallback
from .jobs import Candidates, Job
from .outcome import Escalate, Failed, Fenced, Finished, WriteFailed
from .ratelimit import Budgets
from .redact import check_api_key
from .routing import judge, signal_value
from .tracing import traced
from .upstream.base import Parsed, UpstreamError
from .upstream.choices import TOKENS_OF, parse_choices

__all__ = [
    "CandidateLane",
    "CandidatesAttempt",
    "agreement",
    "attempt_for",
    "candidate_job",
    "normalise",
    "rank",
    "score_of",
]

_SPACE = re.compile(r"\s+")

LaneOutcome = Finished | Failed | Escalate | Fenced | WriteFailed

log = structlog.get_logger("tokenwire.candidates")

SHARED_APIS = frozenset(TOKENS_OF)
"""APIs whose provider returns ``n`` choices for one request (OpenAI-compatible chat and legacy
completions, choices by ``index``): their candidates share one request; every other API (native,
responses, gemini, sglang) opens ``n`` requests."""


def normalise(text: str, agree_on: str = "text") -> str:
    """The answer as agreement compares it: whitespace runs folded to one space, case folded, ends
    stripped; ``first_line``: only the first non-empty line (a classification's label)."""
    if agree_on == "first_line":
        text = next((line for line in text.splitlines() if line.strip()), "")
    return _SPACE.sub(" ", text).strip().casefold()


def agreement(texts: list[str], winner: str, agree_on: str = "text") -> float:
    """The share of ``texts`` (the answered candidates) whose normalised answer equals ``winner``'s."""
    if not texts:
        return 0.0
    target = normalise(winner, agree_on)
    return sum(normalise(t, agree_on) == target for t in texts) / len(texts)


def score_of(done: Done, rank_by: str) -> float | None:
    """``done``'s value of ``rank_by`` (higher is better); None when unknown (nothing scored)."""
    summary = done.summary
    value: float | None
    if rank_by == "mean_logprob":
        value = summary.mean_logprob
    elif rank_by == "cum_logprob":
        value = summary.cum_logprob if summary.n_scored else None
    elif rank_by == "confidence":
        value = done.confidence
    elif rank_by == "quantile":
        value = summary.quantile
    elif rank_by == "window_min":
        value = summary.window_min
    else:
        value = summary.mean_margin
    return value if value is not None and math.isfinite(value) else None


def rank(scores: list[tuple[int, float | None]]) -> list[int]:
    """Candidate numbers best first: higher score first, unknown scores last, ties to the lower
    number."""
    return [k for k, _ in sorted(scores, key=lambda e: (e[1] is None, -(e[1] or 0.0), e[0]))]


def candidate_job(job: Job, k: int) -> Job:
    """Candidate ``k``'s job: the seed varied (``seed + k``, or ``k`` without one), no escalation
    of its own (the candidates' attempt judges the winner), one candidate."""
    seed = job.params.seed
    varied = k if seed is None else (seed + k) % 2**63
    params = msgspec.structs.replace(job.params, seed=varied)
    return msgspec.structs.replace(job, params=params, candidates=None, escalate=None)


def attempt_for(ctx: AttemptContext, admitted: Admitted, number: int, deadline: float) -> Attempt:
    """The attempt a job runs: several candidates when it asks for 2 or more, else one stream."""
    wanted = admitted.job.candidates
    if wanted is None or wanted.n < 2:
        return Attempt(ctx, admitted, number, deadline)
    return CandidatesAttempt(ctx, admitted, number, deadline)


class CandidateLane(Attempt):
    """One candidate: an attempt of its own job that publishes on its parent's sink, with ids
    from its parent's sequence and ``candidate`` on its events."""

    def __init__(self, parent: CandidatesAttempt, k: int) -> None:
        admitted = msgspec.structs.replace(parent.admitted, job=candidate_job(parent.job, k), stronger=None)
        super().__init__(parent.ctx, admitted, parent.attempt, parent.deadline)
        self.parent = parent
        self.candidate = k
        self.sink = parent.sink
        # the job's budget allows the attempt's output tokens: each candidate gets its share
        self.allowance = None if parent.allowance is None else parent.allowance // parent.wanted.n
        if parent.early is not None:  # judged after after_tokens answer tokens, or at its end
            self.watch_after = parent.early.after_tokens
            self.judge_at_end = True

    def _event_id(self) -> bytes:
        return self.parent.next_id()

    def _judge(self, when: str) -> str | None:
        """This candidate's signal is judged for its parent (which alone escalates): the candidate
        goes on either way."""
        self.parent.judged(self, when)
        return None

    def feed(self, parsed: Parsed) -> None:
        """This candidate's part of one payload of a request for every candidate."""
        if self.holdback is not None:  # secrets configured: as Attempt._stream reads its own
            parsed = self._holding(lambda _data: parsed)("")
        self._publish(parsed)
        if parsed.end is not None:
            self.end = parsed.end
            if self.judge_at_end:  # it ended before after_tokens: judged now, as its stream ended
                self.judge_at_end = False
                self._judge(f"at the end ({self.n_content} tokens)")


class CandidatesAttempt(Attempt):
    """A job's attempt with ``n`` candidates: their events on the job's stream, the winner's done."""

    def __init__(self, ctx: AttemptContext, admitted: Admitted, attempt: int, deadline: float) -> None:
        super().__init__(ctx, admitted, attempt, deadline)
        wanted = self.job.candidates
        assert wanted is not None
        self.wanted: Candidates = wanted
        self.lanes: list[CandidateLane] = []
        self.shared = False  # one request for every candidate (SHARED_APIS)
        self.separate: list[CandidateLane] = []  # the candidates asked for on requests of their own
        self._seen: set[int] = set()  # the choice indices the shared request's stream sent
        self.ignored: str | None = None  # what the request for all sent, when it ignored `n`
        esc = self.job.escalate if admitted.stronger is not None else None
        # each candidate judged after esc.after_tokens (agreement takes none: jobs.Escalate)
        self.early = esc if esc is not None and esc.after_tokens is not None else None
        self.verdicts: dict[int, str | None] = {}  # candidate -> why it is under the bar, or None
        self._outcomes: list[LaneOutcome | None] = []
        self._tasks: dict[CandidateLane, asyncio.Task[None]] = {}  # those on requests of their own

    def requests(self, answers: int) -> int:
        """One request for every candidate on :data:`SHARED_APIS` with ``n_choices =
        "one_request"``, else one each (``auto``: the worst case, a provider ignoring ``n``, is one
        request for the first candidate and one for each other)."""
        if self.job.api in SHARED_APIS and self.admitted.provider.n_choices == "one_request":
            return 1
        return answers

    def next_id(self) -> bytes:
        """The next event id of this attempt: every candidate's events share one sequence."""
        self.seq += 1
        return b"%d-%d" % (self.attempt, self.seq)

    def usage(self) -> tuple[int | None, int, bool]:
        """Every candidate's request: prompts and outputs summed (each request is billed); one
        request for several: its prompt once, its output (at least the tokens received)."""
        inputs: int | None = None
        output, reported = 0, bool(self.lanes)
        if self.shared:
            inputs, output, reported = self._shared_usage()
        for lane in self.separate:
            lane_in, lane_out, lane_reported = lane.usage()
            if lane_in is not None:
                inputs = (inputs or 0) + lane_in
            output += lane_out
            reported = reported and lane_reported
        return inputs, output, reported

    def tokens_used(self) -> int:
        """Tokens the request for several candidates used, settled on the provider's shared budget
        (which reserved ``max_tokens`` for each choice it asks for, worker/ratelimit.py): its prompt
        (the provider's count, else the estimate) and its output (:meth:`_shared_usage`)."""
        prompt, output, _ = self._shared_usage()
        if prompt is None:
            prompt = math.ceil(self.job.prompt_chars / 4)
        return prompt + output

    def _shared_usage(self) -> tuple[int | None, int, bool]:
        """The one request for several candidates: its prompt, its output (the provider's count,
        at least the tokens received for them)."""
        received = sum(lane.seq for lane in self.lanes if lane not in self.separate)
        if self.usage_out is None or self.usage_out < received:
            return self.usage_in, received, False
        return self.usage_in, self.usage_out, True

    async def run(self) -> LaneOutcome:
        self.lanes = [CandidateLane(self, k) for k in range(self.wanted.n)]
        outcomes: list[LaneOutcome | None] = [None] * len(self.lanes)
        self._outcomes = outcomes
        separate = self.lanes
        if self.job.api in SHARED_APIS and await self._one_request_for_all():
            self.shared = True
            shared = await self._one_request()
            separate = [lane for lane, outcome in zip(self.lanes, shared, strict=True) if outcome is None]
            for k, outcome in enumerate(shared):
                if outcome is not None and (self._escalate is None or self.lanes[k].end is not None):
                    self._ended_as(outcomes, self.lanes[k], outcome)
        if self._escalate is not None:  # those stopped get no candidate_done; none asked for again
            separate = []
        self.separate = separate
        if separate and self.sink.ok:
            await self._separately(separate, outcomes)
        if self.fallback is None:
            self.fallback = next((lane.fallback for lane in self.lanes if lane.fallback is not None), None)
        await self.ctx.publisher.drained(self.sink)
        if self.sink.fenced or any(isinstance(o, Fenced) for o in outcomes):
            return Fenced()
        if self.sink.error is not None:
            return WriteFailed(self.sink.error)
        failed = next((o for o in outcomes if isinstance(o, WriteFailed)), None)
        if failed is not None:
            return failed
        if self._escalate is not None:  # every candidate under the bar after after_tokens
            return self._escalation(self._escalate)
        return self._result(outcomes)

    async def _separately(self, lanes: list[CandidateLane], outcomes: list[LaneOutcome | None]) -> None:
        """Each of ``lanes`` on a request of its own, concurrently; a candidate stopped because the
        job escalates (:meth:`_decide`) ends cancelled, without an outcome."""

        async def one(lane: CandidateLane) -> None:
            self._ended_as(outcomes, lane, await lane.run())

        async with asyncio.TaskGroup() as group:
            self._tasks = {lane: group.create_task(one(lane)) for lane in lanes}

    def _ended_as(
        self, outcomes: list[LaneOutcome | None], lane: CandidateLane, outcome: LaneOutcome
    ) -> None:
        """``lane`` ended as ``outcome``: kept, and its ``candidate_done`` published."""
        k = lane.candidate
        assert isinstance(k, int)
        outcomes[k] = outcome
        if not isinstance(outcome, Fenced | WriteFailed):
            self._close(lane, outcome)
            self._decide()

    def judged(self, lane: CandidateLane, when: str) -> None:
        """``lane`` reached ``after_tokens`` answer tokens (or its end): its verdict, then whether
        the job escalates now."""
        k = lane.candidate
        assert isinstance(k, int) and self.early is not None
        self.verdicts[k] = judge(lane.tracker, self.early, f"{when} of candidate {k}", self.job.model)
        self._decide()

    def _decide(self) -> None:
        """Escalate once every candidate is judged or has ended and none passed: the candidates
        still streaming stop at once, without a ``candidate_done`` (their requests cancelled, or
        the request for all left); those whose stream had ended close as usual."""
        esc = self.early
        if esc is None or self._escalate is not None or not self.verdicts:
            return
        if any(why is None for why in self.verdicts.values()):
            return  # one candidate is confident enough: the job goes on, as a single stream would
        outcomes = self._outcomes
        if any(k not in self.verdicts and outcomes[k] is None for k in range(len(self.lanes))):
            return  # a candidate is still to be judged
        judged = [self.lanes[k] for k in sorted(self.verdicts)]
        best = max(judged, key=lambda lane: signal_value(lane.tracker, esc) or -1.0)
        self.tracker, self.n_content = best.tracker, best.n_content  # the escalation's record
        reasons = "; ".join(why or "" for _, why in sorted(self.verdicts.items()))
        self._escalate = f"every candidate is under the bar ({reasons})"
        for lane in self.lanes:
            task = self._tasks.get(lane)
            if task is not None and not task.done() and lane.end is None:
                task.cancel()  # the current one at its next wait: it has nothing more to publish

    async def _one_request_for_all(self) -> bool:
        """Whether one request asks for every candidate: the provider's ``n_choices``; ``auto``:
        unless its model was seen to ignore ``n``."""
        setting = self.admitted.provider.n_choices
        if setting != "auto":
            return setting == "one_request"
        memo = self.ctx.memo
        return memo is None or await memo.ignores_n(self.admitted.provider_name, self.job.model) is None

    async def _ignored_n(self) -> bool:
        """Whether the request for all ignored ``n``: its stream ended with every choice it sent
        finished and some never sent. With ``n_choices = "auto"`` it is remembered (the missing
        candidates are then asked for on requests of their own)."""
        n = len(self.lanes)
        sent = [lane for lane in self.lanes if lane.candidate in self._seen]
        if not sent or len(sent) == n or any(lane.end is None for lane in sent):
            return False
        provider, model = self.admitted.provider_name, self.job.model
        self.ignored = f"asked for n={n} choices, {provider!r} sent only index {sorted(self._seen)}"
        if self.admitted.provider.n_choices != "auto":
            return True
        log.warning(
            "the provider ignores n: the missing candidates get requests of their own",
            provider=provider,
            model=model,
            job_id=self.admitted.job_id,
            sent=sorted(self._seen),
            asked=n,
        )
        if self.ctx.memo is not None:
            await self.ctx.memo.remember_ignores_n(provider, model, self.ignored)
        return True

    async def _one_request(self) -> list[LaneOutcome | None]:
        """Every candidate from one request for ``n`` choices (:data:`SHARED_APIS`): each choice
        fed to its lane; a failure of the request fails every candidate, a choice that never
        finishes fails its own. When the provider ignored ``n`` (:meth:`_ignored_n`) a choice it
        never sent is None with ``n_choices = "auto"`` (to be asked for on its own request), else
        fails saying so."""
        n = len(self.lanes)
        try:
            async with asyncio.timeout_at(self.deadline):
                try:
                    failed = await self._read_choices(n)
                finally:  # whichever way the stream stopped, no token held back is lost
                    for lane in self.lanes:
                        with contextlib.suppress(UpstreamError):
                            lane._release()
        except UpstreamError as exc:
            return [Failed(exc)] * n
        except TimeoutError:
            return [self.deadline_passed()] * n
        if failed is not None:
            return [failed] * n
        if self._escalate is not None:  # every candidate under the bar: run() escalates
            stopped = Failed(UpstreamError("escalated", self._escalate))
            return [stopped if lane.end is None else self._ended_lane(lane) for lane in self.lanes]
        ignored = self.sink.ok and await self._ignored_n()
        again = self.admitted.provider.n_choices == "auto"
        outcomes: list[LaneOutcome | None] = []
        for lane in self.lanes:
            if ignored and lane.candidate not in self._seen:
                outcomes.append(None if again else Failed(self._never_sent(lane)))
            else:
                outcomes.append(self._ended_lane(lane))
        return outcomes

    def _ended_lane(self, lane: CandidateLane) -> LaneOutcome:
        """How ``lane``'s part of the request for all ended."""
        try:
            ended = lane._ended()
        except UpstreamError as exc:
            return Failed(exc)
        return WriteFailed(self.sink.error or RuntimeError("sink failed")) if ended is None else ended

    async def _read_choices(self, n: int) -> Finished | None:
        """Read the one stream into the lanes; a ``Finished`` error when it could not begin."""
        ctx, admitted = self.ctx, self.admitted
        key = admitted.provider.api_key(ctx.environ)
        if admitted.provider.api_key_env is not None:
            problem = (
                "is not set on this worker"
                if key is None
                else check_api_key(admitted.provider.api_key_env, key)
            )
            if problem is not None:
                code = "missing_api_key" if key is None else "invalid_api_key"
                return self.end_with_error(
                    code, f"provider {admitted.provider_name!r}: {admitted.provider.api_key_env} {problem}"
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
        await fallback.check()
        for lane in self.lanes:  # their done says whether logprobs were dropped
            lane.fallback = fallback
        budgets = ctx.budgets or Budgets(None, ctx.keys, ctx.settings)
        opener = traced(fallback.open, self.job.api, self.job.model, admitted.url)
        opened = budgets.request(admitted, self.deadline, opener, self.tokens_used, self.budget_wait)
        publisher, lanes, seen = ctx.publisher, self.lanes, self._seen
        async with opened as events:
            async for data in events:
                parsed = parse_choices(data, n, self.job.api)
                if parsed.usage_input_tokens is not None:
                    self.usage_in = parsed.usage_input_tokens
                if parsed.usage_output_tokens is not None:
                    self.usage_out = parsed.usage_output_tokens
                for k, part in parsed.by_choice.items():
                    seen.add(k)
                    lanes[k].feed(part)
                if publisher.full:
                    await publisher.room()
                elif self.seq >= self._next_yield:
                    self._next_yield = self.seq + YIELD_EVERY
                    await asyncio.sleep(0)
                if parsed.closed or not self.sink.ok or self._escalate is not None:
                    break
        return None

    def _never_sent(self, lane: CandidateLane) -> UpstreamError:
        """The failure of a candidate whose choice the request for all never sent (``n``
        ignored, with ``n_choices = "one_request"``)."""
        return UpstreamError(
            "upstream_incomplete",
            f"the stream ended without choice {lane.candidate} ({self.ignored}): the provider "
            f'ignores `n`; set n_choices = "auto" or "separate" on [providers.{self.admitted.provider_name}]',
        )

    def _close(self, lane: CandidateLane, outcome: LaneOutcome) -> None:
        """Publish the candidate's ``candidate_done``."""
        k = lane.candidate
        assert isinstance(k, int)
        job_id, attempt = self.admitted.job_id, self.attempt
        if isinstance(outcome, Finished) and isinstance(outcome.terminal, Done):
            done = outcome.terminal
            event = CandidateDone(
                job_id=job_id,
                attempt=attempt,
                candidate=k,
                finish_reason=done.finish_reason,
                text=done.text,
                confidence=done.confidence,
                summary=done.summary,
                verdict=done.verdict,
            )
        else:
            event = CandidateDone(job_id=job_id, attempt=attempt, candidate=k, error=_error_of(outcome))
        self.ctx.publisher.emit(self.sink, self.next_id(), encode_event(_bounded(event, self)))

    def _result(self, outcomes: list[LaneOutcome | None]) -> Finished | Failed | Escalate:
        answered: dict[int, Done] = {}
        errors: dict[int, CandidateError] = {}
        failures: list[UpstreamError] = []
        for k, outcome in enumerate(outcomes):
            if isinstance(outcome, Finished) and isinstance(outcome.terminal, Done):
                answered[k] = outcome.terminal
            else:
                errors[k] = _error_of(outcome)
                if isinstance(outcome, Failed):
                    failures.append(outcome.error)
        if not answered:
            return self._all_failed(errors, failures)
        rank_by = self.wanted.rank_by
        scores = {k: score_of(done, rank_by) for k, done in answered.items()}
        order = rank(list(scores.items()))
        best = order[0]
        winner = answered[best]
        agree = agreement([answered[k].text for k in sorted(answered)], winner.text, self.wanted.agree_on)
        results = []
        for k in range(len(outcomes)):
            done = answered.get(k)
            if done is None:
                results.append(
                    CandidateResult(
                        index=k, rank=None, score=None, finish_reason=None, text="", error=errors[k]
                    )
                )
                continue
            results.append(
                CandidateResult(
                    index=k,
                    rank=order.index(k) + 1,
                    score=scores[k],
                    finish_reason=done.finish_reason,
                    text=done.text,
                    confidence=done.confidence,
                    summary=done.summary,
                    verdict=done.verdict,
                )
            )
        lane = self.lanes[best]
        self.segments = lane.segments  # the winner's segments go on review (runner._review)
        self.tracker = lane.tracker
        self.n_content = lane.n_content
        inputs, output, _ = self.usage()
        done = msgspec.structs.replace(
            winner,
            attempt=self.attempt,
            usage=Usage(input_tokens=inputs, output_tokens=output),
            metadata=self.job.metadata,
            candidates=_bounded_results(results, self),
            agreement=agree,
        )
        reason = self._judge_candidates(agree, winner)
        if reason is not None:
            return self._escalation(reason)
        return Finished(done, self.seq, self.seq)

    def _judge_candidates(self, agree: float, winner: Done) -> str | None:
        """Why the job should escalate, judged on the candidates at the end, or None."""
        esc = self.job.escalate
        if esc is None or self.admitted.stronger is None:
            return None
        if esc.signal == "agreement":
            if agree >= esc.below:
                return None
            n = len(self.lanes)
            return f"agreement {agree:.4f} < {esc.below} over {n} candidates of {self.job.model}"
        if self.early is not None:
            return None  # judged after after_tokens as the candidates streamed (_decide)
        return judge(self.tracker, esc, f"at the end of the winner ({self.n_content} tokens)", self.job.model)

    def _all_failed(
        self, errors: dict[int, CandidateError], failures: list[UpstreamError]
    ) -> Finished | Failed:
        detail = "; ".join(f"candidate {k}: {e.code}: {e.message}" for k, e in sorted(errors.items()))
        message = f"all {len(errors)} candidates failed ({detail})"
        first = next(iter(sorted(errors.items())))[1]
        if failures and len(failures) == len(errors) and all(f.retryable for f in failures):
            waits = [f.retry_after for f in failures if f.retry_after is not None]
            return Failed(
                UpstreamError(
                    failures[0].code,
                    message,
                    status=failures[0].status,
                    retryable=True,
                    retry_after=max(waits) if waits else None,
                )
            )
        return self.end_with_error(first.code, message)


def _error_of(outcome: LaneOutcome | None) -> CandidateError:
    if isinstance(outcome, Failed):
        return CandidateError(code=outcome.error.code, message=outcome.error.message)
    if isinstance(outcome, Finished) and isinstance(outcome.terminal, Error):
        return CandidateError(code=outcome.terminal.code, message=outcome.terminal.message)
    return CandidateError(
        code="candidate_failed", message=f"the candidate ended without an answer: {outcome!r}"
    )


def _bounded(event: CandidateDone, attempt: Attempt) -> CandidateDone:
    """``event`` within the worker's ``max_event_bytes``: its summary's low spans, then its text cut."""
    limit = attempt.ctx.settings.max_event_bytes
    if len(encode_event(event)) <= limit:
        return event
    summary = event.summary
    if summary is not None and summary.low_spans:
        event = msgspec.structs.replace(event, summary=_no_spans(summary))
    room = limit - len(encode_event(msgspec.structs.replace(event, text="", text_truncated=True)))
    return msgspec.structs.replace(event, text=_cut(event.text, room), text_truncated=True)


def _bounded_results(results: list[CandidateResult], attempt: Attempt) -> list[CandidateResult]:
    """The candidates of a ``done`` in at most half of ``max_event_bytes`` (the winner's own text and
    summary take the rest): low spans dropped, then each text cut to an equal share."""
    budget = attempt.ctx.settings.max_event_bytes // 2
    encoder = msgspec.json.Encoder()
    if len(encoder.encode(results)) <= budget:
        return results
    results = [
        r
        if r.summary is None or not r.summary.low_spans
        else msgspec.structs.replace(r, summary=_no_spans(r.summary))
        for r in results
    ]
    bare = [msgspec.structs.replace(r, text="", text_truncated=bool(r.text)) for r in results]
    share = max(0, (budget - len(encoder.encode(bare))) // max(1, len(results)))
    return [
        r
        if len(encoder.encode(r.text)) - 2 <= share
        else msgspec.structs.replace(r, text=_cut(r.text, share), text_truncated=True)
        for r in results
    ]


def _no_spans(summary: Summary) -> Summary:
    return msgspec.structs.replace(summary, low_spans=[], low_spans_truncated=True)


def _cut(text: str, room: int) -> str:
    """The longest prefix of ``text`` whose JSON string takes at most ``room`` bytes more than ``""``."""
    encoder = msgspec.json.Encoder()
    low, high = 0, len(text)
    if len(encoder.encode(text)) - 2 <= room:
        return text
    while high - low > 1:
        mid = (low + high) // 2
        if len(encoder.encode(text[:mid])) - 2 <= room:
            low = mid
        else:
            high = mid
    return text[:low]
