"""The confidence signals of one finished job: what feedback records and calibration compares.

:class:`Signals` is the contract: a ``{P}:feedback`` entry (:mod:`worker.feedback`) carries one, and so
does a ``{P}:review`` entry (issue 13 §2), so that feedback can be recorded after a job's own keys
expired. :func:`signals_of` builds it from a ``done`` event (plus, when the caller has them, the
attempt's ``segment`` events and its token log-probabilities).

Every signal is "higher = more confident" except ``mean_entropy_lb`` (nats; higher = less certain).
A signal is null when the job could not produce it (no scored token, no top-k, no segments).

- ``confidence``: ``done.confidence``, the geometric-mean token probability.
- ``mean_logprob``, ``min_prob``, ``mean_entropy_lb``: from ``done.summary``.
- ``lowest_segment_mean``: the lowest ``mean_logprob`` of the attempt's scored segments (jobs with
  ``review``).
- ``p10_prob``: the 10th-percentile token probability of the answer's scored tokens, nearest-rank
  (the ``ceil(0.1·n)``-th smallest sanitised probability): from ``done.summary`` when the worker
  published it, else computed from the attempt's token log-probabilities when given.
- ``quantile`` (at ``quantile_q``), ``window_min`` (over ``window`` tokens, a mean logprob) and
  ``margin`` (``summary.mean_margin``): the routing signals of issue 13 §4, as ``done.summary``
  carries them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from .confidence import sanitize_logprob
from .events import Done

__all__ = [
    "SIGNAL_NAMES",
    "Signals",
    "checked_signals",
    "decode_signals",
    "encode_signals",
    "nearest_rank",
    "signals_of",
]


class Signals(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The confidence signals a job's ``done`` carried, null when the job could not produce one.
    Higher means more confident, except ``mean_entropy_lb`` (nats). ``confidence``, ``mean_logprob``,
    ``min_prob``, ``mean_entropy_lb``: as in ``done``; ``lowest_segment_mean``: the lowest
    ``mean_logprob`` of its segments (jobs with ``review``); ``p10_prob``: the 10th-percentile token
    probability (nearest rank); ``quantile`` (at ``quantile_q``), ``window_min`` (a mean logprob
    over ``window`` tokens) and ``margin`` (``summary.mean_margin``): the routing signals of
    ``escalate.signal``. ``n_scored``: the answer's scored tokens."""

    confidence: float | None = None
    mean_logprob: float | None = None
    min_prob: float | None = None
    mean_entropy_lb: float | None = None
    lowest_segment_mean: float | None = None
    p10_prob: float | None = None
    quantile: float | None = None
    window_min: float | None = None
    margin: float | None = None
    n_scored: int = 0
    quantile_q: float | None = None
    window: int | None = None


SIGNAL_NAMES: Final[tuple[str, ...]] = (
    "confidence",
    "mean_logprob",
    "min_prob",
    "mean_entropy_lb",
    "lowest_segment_mean",
    "p10_prob",
    "quantile",
    "window_min",
    "margin",
)
"""Every signal of :class:`Signals`, in the order reports list them."""

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Signals)


def encode_signals(signals: Signals) -> bytes:
    return _ENCODER.encode(signals)


def decode_signals(raw: bytes | str) -> Signals:
    """Signals from their JSON; raises ``ValueError`` naming what is wrong (never a decoder's own error).
    A non-finite value is refused: no tokenwire writes one."""
    try:
        signals = _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"unreadable signals: {exc}") from None
    return checked_signals(signals)


def checked_signals(signals: Signals) -> Signals:
    """``signals`` when every value is finite; ``ValueError`` naming the first one that is not."""
    for name in SIGNAL_NAMES:
        value = getattr(signals, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"signal `{name}` is {value!r}")
    return signals


def nearest_rank(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q``-quantile of ``values`` (the ``ceil(q·n)``-th smallest, at least the first);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(1, math.ceil(q * len(ordered)))
    return ordered[min(k, len(ordered)) - 1]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def signals_of(
    done: Done,
    *,
    segment_means: Iterable[float | None] = (),
    token_logprobs: Iterable[object] | None = None,
) -> Signals:
    """The :class:`Signals` of ``done``. ``segment_means``: the ``mean_logprob`` of each of the
    attempt's ``segment`` events (null for an unscored segment); ``token_logprobs``: the provider's
    log-probability of each answer token of the attempt (special tokens left out), used for
    ``p10_prob`` when the summary does not carry it."""
    summary = done.summary
    p10 = _finite(summary.p10_prob)
    if p10 is None and token_logprobs is not None:
        probs = []
        for raw in token_logprobs:
            lp, _ = sanitize_logprob(raw)
            if lp is not None:
                probs.append(math.exp(lp))
        p10 = nearest_rank(probs, 0.1)
    means = [m for m in (_finite(x) for x in segment_means) if m is not None]
    return Signals(
        confidence=_finite(done.confidence),
        mean_logprob=_finite(summary.mean_logprob),
        min_prob=_finite(summary.min_prob),
        mean_entropy_lb=_finite(summary.mean_entropy_lb),
        lowest_segment_mean=min(means) if means else _finite(getattr(summary, "lowest_segment_mean", None)),
        p10_prob=p10,
        quantile=_finite(summary.quantile),
        window_min=_finite(summary.window_min),
        margin=_finite(summary.mean_margin),
        n_scored=summary.n_scored,
        quantile_q=summary.quantile_q,
        window=summary.window,
    )
