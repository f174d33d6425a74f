"""Routing by a signal without length bias (issue 13 §4): which value ``escalate.signal`` names, the
escalation judgement on it, and the admission check of what the signal needs.

``escalate.below`` on the running geometric mean (``confidence``) is diluted by long answers
(products and averages of token probabilities are length-biased; quantiles of per-token probability
do better, Gupta et al., ICLR 2024). Every signal here is a value in [0, 1] compared with ``below``:

* ``confidence``: exp(mean ℓ̂), today's;
* ``quantile``: the nearest-rank ``q``-th quantile of the token probabilities so far;
* ``window_min``: exp of the lowest mean ℓ̂ over any ``window`` consecutive scored tokens (the
  geometric-mean probability of the weakest run);
* ``margin``: the mean top-1 minus top-2 probability over the tokens with two alternatives.

The same values are in ``done.summary`` (:class:`worker.events.Summary`). Pure, no I/O.
"""

from __future__ import annotations

import math

from .confidence import DEFAULT_QUANTILE_Q, DEFAULT_WINDOW, ConfidenceTracker
from .jobs import Escalate, Job
from .settings import Provider

__all__ = ["admission_problem", "judge", "signal_value", "tracker_for"]


def tracker_for(job: Job) -> ConfidenceTracker:
    """The answer's tracker, measuring the quantile and window the job's escalation names."""
    esc = job.escalate
    q, window = DEFAULT_QUANTILE_Q, DEFAULT_WINDOW
    if esc is not None:
        q = esc.q if esc.q is not None else q
        window = esc.window if esc.window is not None else window
    return ConfidenceTracker(job.low_prob, quantile_q=q, window=window)


def signal_value(tracker: ConfidenceTracker, esc: Escalate) -> float | None:
    """The value of ``esc.signal`` on ``tracker`` so far; None when it is unknown (nothing scored,
    or no token with two alternatives for ``margin``)."""
    signal = esc.signal
    if signal == "confidence":
        return tracker.confidence
    if signal == "quantile":
        return tracker.quantile()
    if signal == "window_min":
        low = tracker.window_min()
        return None if low is None else math.exp(low)
    if signal == "agreement":  # over a job's candidates, not one tracker: worker/candidates.py
        return None
    return tracker.mean_margin


def judge(tracker: ConfidenceTracker, esc: Escalate, when: str, model: str) -> str | None:
    """Why the attempt of ``model`` should escalate (its signal is under ``esc.below``), or None.

    ``when`` says at which point (``after 40 tokens``, ``at the end (12 tokens)``). The reasons of
    the default signal are the ones ``confidence`` routing always gave."""
    value = signal_value(tracker, esc)
    signal = esc.signal
    if value is None:
        if signal == "margin":
            return f"no token with two top-k alternatives {when}: margin unknown, escalating to {esc.model}"
        return f"no scored tokens {when}: {signal} unknown, escalating to {esc.model}"
    if value >= esc.below:
        return None
    if signal == "confidence":
        return f"confidence {value:.4f} < {esc.below} {when} of {model}"
    return f"{signal} {value:.4f} < {esc.below} {when} of {model} ({_detail(tracker, esc)})"


def _detail(tracker: ConfidenceTracker, esc: Escalate) -> str:
    if esc.signal == "quantile":
        q = esc.q if esc.q is not None else DEFAULT_QUANTILE_Q
        return f"the {q} quantile of {tracker.n_scored} token probabilities"
    if esc.signal == "window_min":
        window = esc.window if esc.window is not None else DEFAULT_WINDOW
        low = tracker.window_min()
        assert low is not None, "a window_min value was judged"
        return f"lowest mean logprob {low:.4f} over {window} consecutive tokens"
    return f"mean top-1/top-2 margin over {tracker.n_margin} tokens"


def admission_problem(job: Job, provider_name: str, provider: Provider) -> str | None:
    """What the job's escalation signal needs that its provider cannot give, or None.

    ``margin`` needs top-k alternatives: the job's ``params.top_logprobs`` (checked with the job)
    and, on the native API, a provider that sends ``top_n_tokens`` (DeepInfra's native API sends
    none), at least two of them."""
    esc = job.escalate
    if esc is None or esc.signal != "margin" or job.api != "native":
        return None
    if not provider.supports_top_n_tokens or provider.max_top_n_tokens < 2:
        return (
            f"escalate.signal 'margin' needs top-k alternatives, and provider {provider_name!r} sends "
            "none on the native API (supports_top_n_tokens is off or max_top_n_tokens < 2): use "
            "another signal or a provider with top_n_tokens"
        )
    return None
