"""Calibration metrics on hand-made sets with exact values (AUROC with ties, Brier, ECE, the
catch-vs-flagged trade-off and the recommended threshold), the bootstrap, and the labelled
simulated model whose true AUROC is known."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.calibrate import (
    BOOTSTRAP,
    RELIABLE,
    SEED,
    Point,
    as_probability,
    auroc,
    brier,
    calibrate,
    ece,
    format_report,
    recommend,
    reliability,
    tradeoff,
)
from worker.confidence import ConfidenceTracker
from worker.feedback import Feedback
from worker.jobs import decode_job
from worker.signals import SIGNAL_NAMES, Signals
from worker.sim.labelled import answer_logprobs, expected_auroc, truth

# correct answers score 0.9, 0.8, 0.7, 0.5; wrong ones 0.6, 0.5, 0.2 (one tie across the classes)
SCORES = [0.9, 0.8, 0.7, 0.5, 0.6, 0.5, 0.2]
CORRECT = [True, True, True, True, False, False, False]


def test_auroc_counts_ties_as_half() -> None:
    # 12 pairs: 0.9, 0.8, 0.7 beat all three wrong ones (9); 0.5 beats 0.2, ties 0.5, loses to 0.6 (1.5)
    assert auroc(SCORES, CORRECT) == pytest.approx(10.5 / 12, abs=1e-15)
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([1.0, 0.0], [True, False]) == 1.0 and auroc([0.0, 1.0], [True, False]) == 0.0
    assert auroc([0.3, 0.4], [True, True]) is None and auroc([], []) is None


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40))
def test_auroc_is_the_pairwise_probability(pairs: list[tuple[int, bool]]) -> None:
    scores = [float(s) for s, _ in pairs]
    correct = [y for _, y in pairs]
    pos = [s for s, y in zip(scores, correct, strict=True) if y]
    neg = [s for s, y in zip(scores, correct, strict=True) if not y]
    got = auroc(scores, correct)
    if not pos or not neg:
        assert got is None
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert got == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_brier_and_ece_exact() -> None:
    # (0.01 + 0.04 + 0.09 + 0.25) + (0.36 + 0.25 + 0.04) = 1.04 over 7
    assert brier(SCORES, CORRECT) == pytest.approx(1.04 / 7, abs=1e-15)
    # bins 9, 8, 7 (one correct each): 0.1 + 0.2 + 0.3; bin 6 (wrong 0.6): 0.6; bin 5 (0.5 right and
    # wrong): 0; bin 2 (wrong 0.2): 0.2; total 1.4 over 7
    assert ece(SCORES, CORRECT) == pytest.approx(0.2, abs=1e-15)
    bins = reliability(SCORES, CORRECT)
    assert [b.n for b in bins] == [0, 0, 1, 0, 0, 2, 1, 1, 1, 1]
    assert bins[5].mean_p == 0.5 and bins[5].accuracy == 0.5 and bins[0].mean_p is None
    assert ece([1.0], [True]) == 0.0 and reliability([1.0], [True])[9].n == 1  # 1 is in the last bin
    assert brier([], []) is None and ece([], []) is None


def test_tradeoff_at_every_threshold() -> None:
    points = tradeoff(SCORES, CORRECT)
    got = [(p.threshold, p.caught, p.n_flagged) for p in points]
    want = [
        (0.2, 0.0, 0),  # flags nothing
        (0.35, 1 / 3, 1),
        (0.55, 2 / 3, 3),  # both 0.5s
        (0.65, 1.0, 4),
        (0.75, 1.0, 5),
        (0.85, 1.0, 6),
        (math.nextafter(0.9, 1.0), 1.0, 7),  # flags everything
    ]
    assert len(got) == len(want)
    for (t, c, n), (wt, wc, wn) in zip(got, want, strict=True):
        assert t == pytest.approx(wt, abs=1e-15) and c == pytest.approx(wc, abs=1e-15) and n == wn
    assert [p.flagged for p in points] == [n / 7 for _, _, n in want]


def test_recommend_meets_the_catch_or_the_review_rate() -> None:
    points = tradeoff(SCORES, CORRECT)
    best = recommend(points, catch=0.9)
    assert best is not None and best.threshold == pytest.approx(0.65) and best.n_flagged == 4
    assert recommend(points) == best  # 0.9 is the default target
    rate = recommend(points, review_rate=0.5)
    assert rate is not None and rate.threshold == pytest.approx(0.55) and rate.caught == pytest.approx(2 / 3)
    assert recommend(points, catch=0.6) == rate  # 2/3 ≥ 0.6 at 3 flagged
    nothing = recommend(points, review_rate=0.1)
    assert nothing is not None and nothing.n_flagged == 0 and nothing.caught == 0.0
    all_right = tradeoff([0.4, 0.6], [True, True])
    assert recommend(all_right, catch=0.9) is None and all_right[0].caught is None


def test_probability_of_each_kind_of_signal() -> None:
    assert as_probability("confidence", 0.25) == 0.25
    assert as_probability("mean_logprob", -1.0) == pytest.approx(math.exp(-1.0))
    assert as_probability("lowest_segment_mean", 0.5) == 1.0  # clipped
    assert as_probability("mean_entropy_lb", 2.0) == pytest.approx(math.exp(-2.0))
    assert as_probability("min_prob", 1.5) == 1.0 and as_probability("margin", -0.1) == 0.0


def fb(job: str, correct: bool, model: str = "m", **signals: Any) -> Feedback:
    return Feedback(job_id=job, correct=correct, model=model, signals=Signals(**signals))


def labelled_hand_set() -> list[Feedback]:
    return [
        fb(f"j{i}", y, confidence=s, mean_logprob=math.log(s), mean_entropy_lb=-math.log(s))
        for i, (s, y) in enumerate(zip(SCORES, CORRECT, strict=True))
    ]


def test_calibrate_reports_each_signal_per_model() -> None:
    report = calibrate([*labelled_hand_set(), fb("x", False, model="other", confidence=0.3)], catch=0.9)
    assert [m.model for m in report.models] == ["m", "other"]
    m = report.models[0]
    assert (m.n_labelled, m.n_correct, m.n_incorrect, m.reliable) == (7, 4, 3, False)
    conf = next(s for s in m.signals if s.signal == "confidence")
    assert conf.auroc == pytest.approx(0.875) and conf.brier == pytest.approx(1.04 / 7)
    assert conf.ece == pytest.approx(0.2) and conf.n == 7 and conf.n_missing == 0
    assert conf.recommended is not None and conf.recommended.threshold == pytest.approx(0.65)
    assert conf.setting == {
        "review": {"min_confidence": 0.65},
        "escalate": {"model": "STRONGER-MODEL", "signal": "confidence", "below": 0.65},
    }
    # mean_logprob = log(confidence): the same ranking; its midpoint (in logprob) is the geometric
    # mean of 0.6 and 0.7, written as a confidence
    lp = next(s for s in m.signals if s.signal == "mean_logprob")
    assert lp.auroc == pytest.approx(0.875) and lp.brier == pytest.approx(conf.brier)
    assert lp.setting is not None
    assert lp.setting["review"] == {"min_confidence": pytest.approx(math.sqrt(0.42), abs=1e-6)}
    # the entropy bound is flagged above: -log(s) is higher for the doubtful answers
    ent = next(s for s in m.signals if s.signal == "mean_entropy_lb")
    assert ent.flag == "above" and ent.auroc == pytest.approx(0.875)
    assert ent.recommended is not None and ent.recommended.threshold == pytest.approx(-math.log(0.42) / 2)
    assert ent.setting is None and "mean_entropy_lb >" in ent.setting_note
    missing = next(s for s in m.signals if s.signal == "min_prob")
    assert missing.n == 0 and missing.auroc is None and missing.n_missing == 7
    assert m.best in ("confidence", "mean_logprob", "mean_entropy_lb")
    # under 200 judgements: every number comes with its interval, deterministic
    assert conf.auroc_ci is not None and conf.auroc_ci.lo <= 0.875 <= conf.auroc_ci.hi
    assert conf.caught_ci is not None and conf.flagged_ci is not None
    again = calibrate([*labelled_hand_set(), fb("x", False, model="other", confidence=0.3)], catch=0.9)
    assert msgspec.json.encode(again) == msgspec.json.encode(report)
    assert report.models[1].best is None  # one answer, all wrong: no AUROC
    assert [m.model for m in calibrate(labelled_hand_set(), model="other").models] == []


def test_the_text_report_says_unreliable_and_prints_the_setting() -> None:
    text = format_report(calibrate(labelled_hand_set(), review_rate=0.5))
    assert "unreliable: fewer than 200 labelled answers" in text
    assert "AUROC 0.875 [" in text and "flag ≤ 50%" in text
    assert 'job setting: {"review":{"min_confidence":0.55}' in text
    assert "catches 67% [" in text
    assert "not carried by these judgements: min_prob, lowest_segment_mean, p10_prob" in text
    assert format_report(calibrate([])).startswith("no feedback recorded")


def percentile(values: list[float], q: float) -> float:
    """Linear between order statistics (``values`` sorted)."""
    x = q * (len(values) - 1)
    k = math.floor(x)
    return values[k] + (values[min(k + 1, len(values) - 1)] - values[k]) * (x - k)


def test_the_bootstrap_is_the_metrics_on_resamples() -> None:
    """The one-pass bootstrap gives what the plain metrics give on the same resamples (same draws)."""
    feedback = labelled_hand_set()
    conf = next(s for s in calibrate(feedback).models[0].signals if s.signal == "confidence")
    assert conf.recommended is not None
    rng = random.Random(SEED)
    samples: dict[str, list[float]] = {"auroc": [], "brier": [], "ece": [], "caught": [], "flagged": []}
    n = len(SCORES)
    for _ in range(BOOTSTRAP):
        idx = [rng.randrange(n) for _ in range(n)]
        s, y = [SCORES[i] for i in idx], [CORRECT[i] for i in idx]
        if (a := auroc(s, y)) is not None:
            samples["auroc"].append(a)
        samples["brier"].append(brier(s, y) or 0.0)
        samples["ece"].append(ece(s, y) or 0.0)
        flagged = [v < conf.recommended.threshold for v in s]
        n_wrong = y.count(False)
        if n_wrong:
            samples["caught"].append(sum(f and not c for f, c in zip(flagged, y, strict=True)) / n_wrong)
        samples["flagged"].append(sum(flagged) / n)
    for name, got in (
        ("auroc", conf.auroc_ci),
        ("brier", conf.brier_ci),
        ("ece", conf.ece_ci),
        ("caught", conf.caught_ci),
        ("flagged", conf.flagged_ci),
    ):
        values = sorted(samples[name])
        assert got is not None, name
        assert got.lo == pytest.approx(percentile(values, 0.025), abs=1e-12), name
        assert got.hi == pytest.approx(percentile(values, 0.975), abs=1e-12), name
        assert got.lo <= got.hi, name


@pytest.mark.parametrize("catch", [0.5, 0.9, 1.0])
def test_every_recommended_setting_is_a_valid_job_setting(catch: float) -> None:
    """Even at the edges (the most confident answer is wrong: flag everything; values at 0 and 1)."""
    values = [0.0, 0.3, 0.6, 1.0, 1.0]
    correct = [False, True, True, True, False]
    feedback = [
        fb(
            f"j{i}",
            y,
            confidence=v,
            mean_logprob=math.log(max(v, 1e-9)),
            min_prob=v,
            mean_entropy_lb=-math.log(max(v, 1e-9)),
            lowest_segment_mean=math.log(max(v, 1e-9)),
            p10_prob=v,
            quantile=v,
            quantile_q=0.25,
            window_min=math.log(max(v, 1e-9)),
            window=4,
            margin=v,
        )
        for i, (v, y) in enumerate(zip(values, correct, strict=True))
    ]
    (m,) = calibrate(feedback, catch=catch).models
    settable = [s for s in m.signals if s.setting is not None]
    assert {s.signal for s in settable} == set(SIGNAL_NAMES) - {"min_prob", "mean_entropy_lb"}
    for s in settable:
        job = {"model": "cheap", "input": "x", "params": {"top_logprobs": 5}, **(s.setting or {})}
        if "escalate" in job:
            job["escalate"] = {**job["escalate"], "model": "strong"}
        decode_job(msgspec.json.encode(job))  # raises InvalidJob naming the field otherwise
    quantile = next(s for s in settable if s.signal == "quantile")
    assert quantile.setting is not None and quantile.setting["escalate"]["q"] == 0.25
    window = next(s for s in settable if s.signal == "window_min")
    assert window.setting is not None and window.setting["escalate"]["window"] == 4


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        calibrate([], catch=0.9, review_rate=0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibrate([], catch=1.5)


def labelled_model_set(n: int, separation: float, tokens: int = 8) -> list[Feedback]:
    """The simulator's labelled model, scored by the worker's own tracker (no Redis)."""
    out = []
    for i in range(n):
        t = truth(f"question {i}", separation)
        tracker = ConfidenceTracker()
        for lp in answer_logprobs(t.mean_logprob, tokens):
            tracker.add("x", lp)
        s = tracker.finish()
        assert s.mean_logprob is not None
        signals = Signals(
            confidence=math.exp(s.mean_logprob), mean_logprob=s.mean_logprob, min_prob=s.min_prob
        )
        out.append(Feedback(job_id=f"q{i}", correct=t.correct, model="sim", signals=signals))
    return out


def test_the_labelled_model_has_the_auroc_it_is_built_with() -> None:
    separation = 1.5
    truths = [truth(f"question {i}", separation) for i in range(4000)]
    rate = sum(t.correct for t in truths) / len(truths)
    assert abs(rate - 0.7) < 0.03
    assert [truth("question 1", separation)] == [truths[1]]  # pure
    assert all(t.mean_logprob == pytest.approx(math.log(1 / (1 + math.exp(-t.latent)))) for t in truths[:50])
    for n in (1, 2, 7, 8):
        assert sum(answer_logprobs(-1.2, n)) / n == pytest.approx(-1.2, abs=1e-12)
    report = calibrate(labelled_model_set(1000, separation))
    m = report.models[0]
    assert m.reliable and m.n_labelled == 1000 >= RELIABLE
    want = expected_auroc(separation)  # Φ(1.5/√2) ≈ 0.8556
    assert want == pytest.approx(0.85558, abs=1e-4)
    for name in ("confidence", "mean_logprob", "min_prob"):
        s = next(s for s in m.signals if s.signal == name)
        assert s.auroc is not None and abs(s.auroc - want) < 0.04, (name, s.auroc)
        assert s.auroc_ci is None  # 1000 judgements: a bare number
        assert s.recommended is not None and s.recommended.caught is not None and s.recommended.caught >= 0.9


def test_points_are_structs() -> None:
    assert Point(threshold=0.5, caught=None, flagged=0.0, n_flagged=0).caught is None
