"""Usage and cost of a job's attempts, and its optional ``budget``.

Each attempt's usage is the provider's own count when it reports one (``usage`` in the stream), else
what the worker counted (the tokens it received; the prompt is then unknown). Its cost comes from
the provider's price table in settings (``[providers.NAME.prices."MODEL"] input = …, output = …``,
per million tokens; ``"*"`` for any model not named). A :class:`Ledger` collects the attempts of
one delivery of a job (retries, and an escalation's weak attempt and strong one) and turns them into
``done.usage``'s ``cost``, ``escalation_cost`` and ``attempts``.

A job's ``budget`` (at most that much spent on it) is checked before each attempt against its worst
case (the spent part, the prompt at four characters a token, and every token ``max_tokens`` allows)
and, while it streams, against the running cost: :meth:`Ledger.allowance` turns what is left into a
count of output tokens, so the hot path compares two integers per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from .events import AttemptUsage, Done
from .outcome import Finished, Outcome
from .prices import PER_MILLION, cost_of, price_for
from .ratelimit import estimate_tokens
from .settings import Price, Provider, Settings

if TYPE_CHECKING:
    from .admit import Admitted
    from .attempt import Attempt
    from .metrics import Metrics

__all__ = ["MODEL_LABELS", "JobSpend", "Ledger", "ModelLabels"]


@dataclass(slots=True)
class Ledger:
    """The attempts of one delivery of a job, as they end."""

    attempts: list[AttemptUsage] = field(default_factory=list)
    priced: bool = True  # every attempt so far had a price: the totals are costs

    @property
    def spent(self) -> float:
        return sum(a.cost or 0.0 for a in self.attempts)

    def add(
        self,
        *,
        attempt: int,
        model: str,
        provider_name: str,
        provider: Provider,
        input_tokens: int | None,
        output_tokens: int,
        reported: bool,
        escalation: bool,
    ) -> AttemptUsage:
        price = price_for(provider, model)
        if price is None:
            self.priced = False
        usage = AttemptUsage(
            attempt=attempt,
            model=model,
            provider=provider_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            counted=not reported,
            cost=None if price is None else cost_of(price, input_tokens, output_tokens),
            escalation=escalation,
        )
        self.attempts.append(usage)
        return usage

    def totals(self) -> tuple[float | None, float | None]:
        """``(cost, escalation_cost)``: every attempt's cost, and the escalated model's share of it
        (None without an escalation); both None when some attempt's model has no price."""
        if not self.priced:
            return None, None
        escalated = [a.cost or 0.0 for a in self.attempts if a.escalation]
        return self.spent, (sum(escalated) if escalated else None)

    def worst_case(self, price: Price, prompt_tokens: int, max_tokens: int) -> float:
        """What the job will have cost if the next request uses every token it may."""
        return self.spent + cost_of(price, prompt_tokens, max_tokens)

    def allowance(self, price: Price, budget: float, prompt_tokens: int) -> int:
        """Output tokens the next request may receive before the job's cost passes ``budget``
        (0 when the prompt alone does)."""
        left = budget - self.spent - prompt_tokens * price.input / PER_MILLION
        if left <= 0:
            return 0
        if price.output == 0:
            return 2**62
        # (1 + 1e-12): a budget that buys exactly n tokens buys n, not n - 1 by a rounding error
        return max(0, math.floor(left * PER_MILLION / price.output * (1 + 1e-12)))


MODEL_LABELS = 100
"""Distinct ``model`` label values the usage metrics take; a job names its model, so any later one
is counted as ``other`` (a label per hostile model name would grow the registry without bound)."""


@dataclass(slots=True)
class ModelLabels:
    limit: int = MODEL_LABELS
    seen: set[str] = field(default_factory=set)

    def __call__(self, model: str) -> str:
        if model in self.seen:
            return model
        if len(self.seen) < self.limit:
            self.seen.add(model)
            return model
        return "other"


class JobSpend:
    """The usage and budget of one delivery of one job, for its runner: before an attempt, its
    allowance (or why it may not start); after it, its usage in the ledger and the metrics; at the
    end, ``done.usage`` with the costs."""

    def __init__(self, admitted: Admitted, settings: Settings, metrics: Metrics, labels: ModelLabels) -> None:
        self.job = admitted.job
        self.settings = settings
        self.metrics = metrics
        self.labels = labels
        self.ledger = Ledger()
        self.show = admitted.job.budget is not None or any(
            price_for(a.provider, a.job.model) is not None for a in _models(admitted)
        )

    def before(self, attempt: Attempt) -> str | None:
        """Set ``attempt``'s allowance; why it may not start when its worst case is over budget."""
        budget = self.job.budget
        if budget is None:
            return None
        admitted = attempt.admitted
        price = price_for(admitted.provider, admitted.job.model)
        assert price is not None, "admission refuses a budget without a price"
        prompt, completion = estimate_tokens(admitted, self.settings)
        answers = 1 if admitted.job.candidates is None else admitted.job.candidates.n
        prompts = prompt * attempt.requests(answers)  # candidates: n answers, on 1 or n requests
        worst = self.ledger.worst_case(price, prompts, completion * answers)
        if worst > budget:
            of = "" if answers == 1 else f" of {answers} candidates"
            return (
                f"the job's budget={budget} does not cover this request's worst case{of} {worst:.6g} "
                f"({self.ledger.spent:.6g} spent, ~{prompt} prompt tokens and max_tokens={completion} "
                f"on {admitted.job.model!r}): lower params.max_tokens or raise the budget"
            )
        attempt.allowance = self.ledger.allowance(price, budget, prompts)
        return None

    def after(self, attempt: Attempt, *, escalation: bool) -> None:
        input_tokens, output_tokens, reported = attempt.usage()
        # the adapters bound usage (worker/upstream/base.py prompt_count); never trust it here
        # either: a negative count would make a Prometheus counter raise, a NaN cost poison a sum
        input_tokens = None if input_tokens is None else max(0, input_tokens)
        output_tokens = max(0, output_tokens)
        if input_tokens is None and output_tokens == 0 and attempt.fallback is None:
            return  # it never sent a request (refused before it)
        admitted = attempt.admitted
        usage = self.ledger.add(
            attempt=attempt.attempt,
            model=admitted.job.model,
            provider_name=admitted.provider_name,
            provider=admitted.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            reported=reported,
            escalation=escalation,
        )
        label = self.labels(admitted.job.model)
        if input_tokens:
            self.metrics.usage_tokens.labels(label, "input").inc(input_tokens)
        self.metrics.usage_tokens.labels(label, "output").inc(output_tokens)
        if usage.cost and math.isfinite(usage.cost) and usage.cost > 0:
            self.metrics.cost.labels(label).inc(usage.cost)

    def done(self, outcome: Outcome) -> Outcome:
        """``outcome`` with the costs on its ``done.usage`` (when a price or budget applies)."""
        if not self.show or not isinstance(outcome, Finished) or not isinstance(outcome.terminal, Done):
            return outcome
        done = outcome.terminal
        cost, escalation_cost = self.ledger.totals()
        usage = msgspec.structs.replace(
            done.usage, cost=cost, escalation_cost=escalation_cost, attempts=list(self.ledger.attempts)
        )
        return Finished(msgspec.structs.replace(done, usage=usage), outcome.tokens, outcome.seq)


def _models(admitted: Admitted) -> list[Admitted]:
    return [admitted] if admitted.stronger is None else [admitted, admitted.stronger]
