"""``tokenwire calibrate``: how well each confidence signal tells a model's correct answers from its
wrong ones, from the judgements in ``{P}:feedback`` (issue 13 §3).

Per model (the last judgement of each job counts, :func:`worker.feedback.latest_per_job`), for each
signal of :class:`~worker.signals.Signals`:

- **AUROC**: the probability that a correct answer scores higher than a wrong one (ties count a
  half; the Mann-Whitney statistic from average ranks). 1 separates perfectly, 0.5 is chance. Null
  without at least one correct and one wrong answer with the signal.
- **Brier score** ``mean((p − y)²)`` and **expected calibration error** ``Σ_b (n_b/n)·|mean p_b −
  accuracy_b|`` over :data:`BINS` equal-width bins of ``p`` (bin ``min(⌊p·10⌋, 9)``), where ``y`` is 1
  for a correct answer and ``p`` is the signal read as a probability (:func:`as_probability`):
  probability signals as they are; log-probability signals (``mean_logprob``,
  ``lowest_segment_mean``, ``window_min``) as ``exp(value)``, the geometric-mean token probability;
  the entropy bound as ``exp(−H)``. None of them is a probability of correctness until calibrated,
  which is what these two numbers measure.
- **Catch vs flagged** for every threshold: flag an answer when its signal is below the threshold
  (above it, for the entropy bound); ``caught`` is the fraction of wrong answers flagged, ``flagged``
  the fraction of all answers flagged. Thresholds are the midpoints between consecutive distinct
  values (plus one flagging nothing and one flagging everything), so each point is exactly what a
  threshold there does on this data.
- The **recommended threshold**: the one flagging the fewest answers while catching at least
  ``--catch`` of the wrong ones (default 0.9), or catching the most while flagging at most
  ``--review-rate``. It is printed as the job setting that applies it (``review`` / ``escalate``).

Under :data:`RELIABLE` labelled jobs for a model the numbers are estimates from few answers: each is
shown with its 95 % bootstrap interval (:data:`BOOTSTRAP` resamples of the model's judgements, drawn
with a fixed seed, so the same feedback always gives the same interval).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

from .feedback import Feedback
from .signals import SIGNAL_NAMES

__all__ = [
    "BINS",
    "BOOTSTRAP",
    "RELIABLE",
    "Bin",
    "Interval",
    "ModelReport",
    "Point",
    "Report",
    "SignalReport",
    "as_probability",
    "auroc",
    "brier",
    "calibrate",
    "ece",
    "format_report",
    "recommend",
    "reliability",
    "tradeoff",
]

BINS: Final = 10
RELIABLE: Final = 200
BOOTSTRAP: Final = 1000
SEED: Final = 13
CATCH_DEFAULT: Final = 0.9

LOG_SIGNALS: Final = frozenset({"mean_logprob", "lowest_segment_mean", "window_min"})
UNCERTAINTY_SIGNALS: Final = frozenset({"mean_entropy_lb"})


class Bin(msgspec.Struct, frozen=True, kw_only=True):
    """One bin of the reliability diagram: ``p`` in [lo, hi) (the last bin includes 1)."""

    lo: float
    hi: float
    n: int
    mean_p: float | None
    accuracy: float | None


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """What flagging at ``threshold`` does: ``caught`` of the wrong answers, ``flagged`` of all."""

    threshold: float
    caught: float | None
    flagged: float
    n_flagged: int


class Interval(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    lo: float
    hi: float


class SignalReport(msgspec.Struct, frozen=True, kw_only=True):
    """One signal of one model. ``flag``: ``below`` (a low value is doubtful) or ``above`` (the
    entropy bound). ``probability``: how the value is read as a probability. The ``*_ci`` fields are
    95 % bootstrap intervals, set when the model has fewer than :data:`RELIABLE` judgements."""

    signal: str
    flag: Literal["below", "above"]
    probability: str
    n: int
    n_missing: int
    auroc: float | None
    brier: float | None
    ece: float | None
    bins: list[Bin]
    tradeoff: list[Point]
    recommended: Point | None
    setting: dict[str, Any] | None
    setting_note: str
    auroc_ci: Interval | None = None
    brier_ci: Interval | None = None
    ece_ci: Interval | None = None
    caught_ci: Interval | None = None
    flagged_ci: Interval | None = None


class ModelReport(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    n_labelled: int
    n_correct: int
    n_incorrect: int
    reliable: bool
    signals: list[SignalReport]
    best: str | None
    """The signal with the highest AUROC (null when none has one)."""


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """``target``: ``catch`` or ``review_rate``, with ``target_value``."""

    target: Literal["catch", "review_rate"]
    target_value: float
    models: list[ModelReport]
    unreadable_entries: int = 0


# -- metrics -------------------------------------------------------------------------------------


def as_probability(signal: str, value: float) -> float:
    """The signal's value read as a probability in [0, 1] (see the module doc)."""
    if signal in LOG_SIGNALS:
        p = math.exp(min(0.0, value))
    elif signal in UNCERTAINTY_SIGNALS:
        p = math.exp(-max(0.0, value))
    else:
        p = value
    return min(1.0, max(0.0, p))


def _oriented(signal: str, value: float) -> float:
    """Higher = more confident, for every signal."""
    return -value if signal in UNCERTAINTY_SIGNALS else value


def auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
    """P(score of a correct answer > score of a wrong one), ties a half; None without both kinds."""
    n_pos = sum(correct)
    n_neg = len(correct) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average = (i + j) / 2 + 1  # 1-based average rank of the tie group
        rank_sum += average * sum(1 for k in order[i : j + 1] if correct[k])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def brier(probs: Sequence[float], correct: Sequence[bool]) -> float | None:
    if not probs:
        return None
    return math.fsum((p - (1.0 if y else 0.0)) ** 2 for p, y in zip(probs, correct, strict=True)) / len(probs)


def _bin_of(p: float) -> int:
    return min(int(p * BINS), BINS - 1)


def reliability(probs: Sequence[float], correct: Sequence[bool]) -> list[Bin]:
    """The :data:`BINS` equal-width bins: how many answers, their mean ``p``, their accuracy."""
    sums = [0.0] * BINS
    hits = [0] * BINS
    counts = [0] * BINS
    for p, y in zip(probs, correct, strict=True):
        b = _bin_of(p)
        sums[b] += p
        hits[b] += y
        counts[b] += 1
    return [
        Bin(
            lo=b / BINS,
            hi=(b + 1) / BINS,
            n=counts[b],
            mean_p=sums[b] / counts[b] if counts[b] else None,
            accuracy=hits[b] / counts[b] if counts[b] else None,
        )
        for b in range(BINS)
    ]


def ece(probs: Sequence[float], correct: Sequence[bool]) -> float | None:
    if not probs:
        return None
    total = 0.0
    for b in reliability(probs, correct):
        if b.n and b.mean_p is not None and b.accuracy is not None:
            total += b.n * abs(b.mean_p - b.accuracy)
    return total / len(probs)


def tradeoff(scores: Sequence[float], correct: Sequence[bool]) -> list[Point]:
    """Catch vs flagged for every threshold on ``scores`` (higher = more confident; an answer is
    flagged when its score is below the threshold), from flagging nothing to flagging everything."""
    n = len(scores)
    if n == 0:
        return []
    n_wrong = n - sum(correct)
    values = sorted(set(scores))
    wrong_at: dict[float, int] = {}
    all_at: dict[float, int] = {}
    for s, y in zip(scores, correct, strict=True):
        all_at[s] = all_at.get(s, 0) + 1
        wrong_at[s] = wrong_at.get(s, 0) + (not y)
    points = [Point(threshold=values[0], caught=0.0 if n_wrong else None, flagged=0.0, n_flagged=0)]
    flagged = caught = 0
    for j, v in enumerate(values):
        flagged += all_at[v]
        caught += wrong_at[v]
        t = (v + values[j + 1]) / 2 if j + 1 < len(values) else math.nextafter(v, math.inf)
        points.append(
            Point(
                threshold=t,
                caught=caught / n_wrong if n_wrong else None,
                flagged=flagged / n,
                n_flagged=flagged,
            )
        )
    return points


def recommend(
    points: Sequence[Point], *, catch: float | None = None, review_rate: float | None = None
) -> Point | None:
    """The point meeting the target: with ``catch``, the fewest flagged among those catching at least
    ``catch`` of the wrong answers; with ``review_rate``, the most caught among those flagging at
    most ``review_rate`` (then the fewest flagged). None when no point meets it or nothing is wrong."""
    if review_rate is not None:
        fits = [p for p in points if p.caught is not None and p.flagged <= review_rate + 1e-12]
        return max(fits, key=lambda p: (p.caught or 0.0, -p.flagged), default=None)
    goal = CATCH_DEFAULT if catch is None else catch
    fits = [p for p in points if p.caught is not None and p.caught >= goal - 1e-12]
    return min(fits, key=lambda p: (p.flagged, -(p.caught or 0.0)), default=None)


def _interval(values: list[float]) -> Interval | None:
    """The 2.5 % and 97.5 % percentiles (linear between order statistics)."""
    if not values:
        return None
    ordered = sorted(values)

    def pct(q: float) -> float:
        x = q * (len(ordered) - 1)
        lo = math.floor(x)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (x - lo)

    return Interval(lo=pct(0.025), hi=pct(0.975))


# -- the report ----------------------------------------------------------------------------------


def _probability_setting(value: float) -> float:
    """A threshold as ``below`` / ``min_confidence`` take it: in (0, 1], six decimals."""
    return min(1.0, max(1e-6, round(value, 6)))


def _setting(signal: str, threshold: float, extra: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The job setting that flags answers below ``threshold`` of ``signal``, and a note on it.
    ``extra``: the ``q`` / ``window`` the judged jobs' signals were computed with. Every setting is
    one the job schema accepts (thresholds clamped into its ranges)."""
    strong = "STRONGER-MODEL"
    as_mean = round(min(0.0, max(-20.0, threshold)), 6)  # a mean logprob, as review_below takes it
    if signal in ("confidence", "mean_logprob"):
        below = _probability_setting(threshold if signal == "confidence" else math.exp(as_mean))
        escalate = {"model": strong, "signal": "confidence", "below": below}
        note = "" if signal == "confidence" else "confidence = exp(mean_logprob): the same threshold"
        return {"review": {"min_confidence": below}, "escalate": escalate}, note
    if signal == "lowest_segment_mean":
        return (
            {"review": {"unit": "sentence", "review_below": as_mean, "publish_above": max(as_mean, -0.5)}},
            "use the unit your judged jobs used: a segment below review_below sends the answer to review",
        )
    if signal in ("p10_prob", "quantile", "window_min", "margin"):
        escalate = {"model": strong, "signal": "quantile" if signal == "p10_prob" else signal}
        note = ""
        below = _probability_setting(threshold)
        if signal == "p10_prob":
            escalate["q"] = 0.1
        elif signal == "quantile" and "q" in extra:
            escalate["q"] = extra["q"]
        elif signal == "window_min":
            if "window" in extra:
                escalate["window"] = extra["window"]
            below = _probability_setting(math.exp(as_mean))
            note = "window_min is a mean logprob: escalate compares exp(window_min)"
        elif signal == "margin":
            note = "the margin needs params.top_logprobs of 2 or more"
        escalate["below"] = below
        return {"escalate": escalate}, note
    where = {"min_prob": "done.summary.min_prob", "mean_entropy_lb": "done.summary.mean_entropy_lb"}.get(
        signal, f"the {signal} signal"
    )
    relation = ">" if signal in UNCERTAINTY_SIGNALS else "<"
    return None, f"no job setting reads it: flag when {where} {relation} {round(threshold, 6):g}"


def _parameters(signal: str, labelled: Sequence[Feedback]) -> dict[str, Any]:
    """The ``q`` and ``window`` the judged jobs computed their signals with, when all agree."""
    extra: dict[str, Any] = {}
    for key, field in (("q", "quantile_q"), ("window", "window")):
        used = {getattr(f.signals, field) for f in labelled if getattr(f.signals, signal) is not None}
        used.discard(None)
        if len(used) == 1:
            extra[key] = used.pop()
    return extra


def _signal_report(
    signal: str,
    labelled: Sequence[Feedback],
    *,
    catch: float | None,
    review_rate: float | None,
    reliable: bool,
) -> SignalReport:
    pairs = [(v, f.correct) for f in labelled if (v := getattr(f.signals, signal)) is not None]
    values = [v for v, _ in pairs]
    correct = [y for _, y in pairs]
    scores = [_oriented(signal, v) for v in values]
    probs = [as_probability(signal, v) for v in values]
    points = tradeoff(scores, correct)
    chosen = recommend(points, catch=catch, review_rate=review_rate)
    uncertain = signal in UNCERTAINTY_SIGNALS

    def shown(point: Point) -> Point:
        return msgspec.structs.replace(point, threshold=-point.threshold) if uncertain else point

    if chosen is None:
        setting, note = None, "no threshold meets the target"
    else:
        threshold = -chosen.threshold if uncertain else chosen.threshold
        setting, note = _setting(signal, threshold, _parameters(signal, labelled))
    report = SignalReport(
        signal=signal,
        flag="above" if uncertain else "below",
        probability="exp(value)" if signal in LOG_SIGNALS else "exp(-value)" if uncertain else "value",
        n=len(values),
        n_missing=len(labelled) - len(values),
        auroc=auroc(scores, correct),
        brier=brier(probs, correct),
        ece=ece(probs, correct),
        bins=reliability(probs, correct),
        tradeoff=[shown(p) for p in points],
        recommended=None if chosen is None else shown(chosen),
        setting=setting,
        setting_note=note,
    )
    if reliable or not values:
        return report
    return _with_intervals(report, scores, probs, correct, chosen)


def _with_intervals(
    report: SignalReport, scores: list[float], probs: list[float], correct: list[bool], chosen: Point | None
) -> SignalReport:
    """``report`` with the 95 % intervals of :data:`BOOTSTRAP` resamples (drawn with :data:`SEED`).
    Each resample is accumulated in one pass over its draws (no sort: the answers' tie groups are
    ranked once), which is what :func:`auroc`, :func:`brier`, :func:`ece` and the catch/flag
    fractions compute on it."""
    rng = random.Random(SEED)
    n = len(scores)
    rank = {v: g for g, v in enumerate(sorted(set(scores)))}
    group = [rank[v] for v in scores]
    wrong = [0 if y else 1 for y in correct]
    square = [(p - (1.0 if y else 0.0)) ** 2 for p, y in zip(probs, correct, strict=True)]
    bins = [_bin_of(p) for p in probs]
    flag = [0 if chosen is None else int(v < chosen.threshold) for v in scores]
    samples: dict[str, list[float]] = {"auroc": [], "brier": [], "ece": [], "caught": [], "flagged": []}
    for _ in range(BOOTSTRAP):
        pos, neg = [0] * len(rank), [0] * len(rank)
        counts, sum_p, hits = [0] * BINS, [0.0] * BINS, [0] * BINS
        sq = 0.0
        n_flagged = n_caught = n_wrong = 0
        for _ in range(n):
            i = rng.randrange(n)
            w = wrong[i]
            if w:
                neg[group[i]] += 1
            else:
                pos[group[i]] += 1
            sq += square[i]
            b = bins[i]
            counts[b] += 1
            sum_p[b] += probs[i]
            hits[b] += 1 - w
            n_flagged += flag[i]
            n_caught += flag[i] & w
            n_wrong += w
        below = wins = 0.0
        for g_pos, g_neg in zip(pos, neg, strict=True):
            wins += g_pos * (below + 0.5 * g_neg)
            below += g_neg
        if 0 < n_wrong < n:
            samples["auroc"].append(wins / ((n - n_wrong) * n_wrong))
        samples["brier"].append(sq / n)
        samples["ece"].append(sum(abs(sum_p[b] - hits[b]) for b in range(BINS) if counts[b]) / n)
        if chosen is not None:
            if n_wrong:
                samples["caught"].append(n_caught / n_wrong)
            samples["flagged"].append(n_flagged / n)
    return msgspec.structs.replace(
        report,
        auroc_ci=_interval(samples["auroc"]),
        brier_ci=_interval(samples["brier"]),
        ece_ci=_interval(samples["ece"]),
        caught_ci=_interval(samples["caught"]),
        flagged_ci=_interval(samples["flagged"]),
    )


def calibrate(
    feedback: Sequence[Feedback],
    *,
    model: str | None = None,
    catch: float | None = None,
    review_rate: float | None = None,
    unreadable: int = 0,
) -> Report:
    """The report for ``feedback`` (one judgement per job: pass :func:`~worker.feedback.latest_per_job`'s
    list), per model (only ``model`` when given), sorted by model name."""
    if catch is not None and review_rate is not None:
        raise ValueError("give a catch target or a review rate, not both")
    for name, value in (("catch", catch), ("review rate", review_rate)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"the {name} must be between 0 and 1, not {value!r}")
    by_model: dict[str, list[Feedback]] = {}
    for f in feedback:
        if model is None or f.model == model:
            by_model.setdefault(f.model, []).append(f)
    models = []
    for name in sorted(by_model):
        labelled = by_model[name]
        reliable = len(labelled) >= RELIABLE
        signals = [
            _signal_report(
                s,
                labelled,
                catch=catch,
                review_rate=review_rate,
                reliable=reliable,
            )
            for s in SIGNAL_NAMES
        ]
        ranked = [s for s in signals if s.auroc is not None]
        best = max(ranked, key=lambda s: s.auroc or 0.0).signal if ranked else None
        n_correct = sum(f.correct for f in labelled)
        models.append(
            ModelReport(
                model=name,
                n_labelled=len(labelled),
                n_correct=n_correct,
                n_incorrect=len(labelled) - n_correct,
                reliable=reliable,
                signals=signals,
                best=best,
            )
        )
    target: Literal["catch", "review_rate"] = "review_rate" if review_rate is not None else "catch"
    value = review_rate if review_rate is not None else (CATCH_DEFAULT if catch is None else catch)
    return Report(target=target, target_value=value, models=models, unreadable_entries=unreadable)


# -- text ----------------------------------------------------------------------------------------


def _num(value: float | None, ci: Interval | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text if ci is None else f"{text} [{ci.lo:.{digits}f}, {ci.hi:.{digits}f}]"


def _pct(value: float | None, ci: Interval | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.0%}"
    return text if ci is None else f"{text} [{ci.lo:.0%}, {ci.hi:.0%}]"


def format_report(report: Report) -> str:
    """The report as text: a table per model, then the recommended setting of its best signal."""
    if not report.models:
        return "no feedback recorded (tokenwire feedback ID --correct|--incorrect, or review resolve)"
    goal = (
        f"catch ≥ {report.target_value:.0%}"
        if report.target == "catch"
        else f"flag ≤ {report.target_value:.0%}"
    )
    out: list[str] = []
    for m in report.models:
        out.append(
            f"model {m.model}: {m.n_labelled} labelled ({m.n_correct} correct, {m.n_incorrect} incorrect)"
        )
        if not m.reliable:
            out.append(
                f"  unreliable: fewer than {RELIABLE} labelled answers; [a, b] are 95 % bootstrap intervals"
            )
        rows = [("signal", "n", "AUROC", "Brier", "ECE", f"threshold ({goal})", "caught", "flagged")]
        for s in m.signals:
            if s.n == 0:
                continue
            rec = s.recommended
            threshold = "-" if rec is None else f"{s.flag} {rec.threshold:.4g}"
            rows.append(
                (
                    s.signal,
                    str(s.n),
                    _num(s.auroc, s.auroc_ci),
                    _num(s.brier, s.brier_ci),
                    _num(s.ece, s.ece_ci),
                    threshold,
                    "-" if rec is None else _pct(rec.caught, s.caught_ci),
                    "-" if rec is None else _pct(rec.flagged, s.flagged_ci),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        absent = [s.signal for s in m.signals if s.n == 0]
        if absent:
            out.append(f"  not carried by these judgements: {', '.join(absent)}")
        out += _recommendation(m)
        out.append("")
    if report.unreadable_entries:
        out.append(f"skipped {report.unreadable_entries} unreadable feedback entries")
    return "\n".join(out).rstrip() + "\n"


def _recommendation(m: ModelReport) -> list[str]:
    best = next((s for s in m.signals if s.signal == m.best), None)
    if best is None:
        return ["  no signal separates correct from incorrect answers yet (needs both kinds judged)"]
    lines = [f"  best signal: {best.signal} (AUROC {_num(best.auroc, best.auroc_ci)})"]
    shown = best
    if best.setting is None:  # the best has no job setting: also show the best signal that has one
        settable = [s for s in m.signals if s.setting is not None and s.auroc is not None]
        if best.recommended is not None:
            lines.append(f"  {best.setting_note}")
        if not settable:
            return lines
        shown = max(settable, key=lambda s: s.auroc or 0.0)
        lines.append(
            f"  best signal a job setting reads: {shown.signal} (AUROC {_num(shown.auroc, shown.auroc_ci)})"
        )
    rec = shown.recommended
    if rec is None or shown.setting is None:
        lines.append(f"  {shown.setting_note}")
        return lines
    lines.append(
        f"  flag when {shown.signal} is {shown.flag} {rec.threshold:.4g}: catches "
        f"{_pct(rec.caught, shown.caught_ci)} of the incorrect answers, flags "
        f"{_pct(rec.flagged, shown.flagged_ci)} of all"
    )
    lines.append("  job setting: " + msgspec.json.encode(shown.setting).decode())
    if shown.setting_note:
        lines.append(f"  ({shown.setting_note})")
    return lines
