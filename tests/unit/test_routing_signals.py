"""The routing signals without length bias (issue 13 §4): the tracker's quantile and window_min.

Hand-made token sequences with exact expected values, and properties against brute force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.confidence import ConfidenceTracker, nearest_rank, sanitize_logprob, window_min
from worker.upstream.base import Candidate

TV1 = [-0.05, -0.1, -0.02, -0.3, -2.5, -1.9, -0.01]  # confidence.md §7 TV1


def tracker_of(lps: Sequence[float | None], **cfg: object) -> ConfidenceTracker:
    tracker = ConfidenceTracker(**cfg)  # type: ignore[arg-type]
    for lp in lps:
        tracker.add(" t", lp)
    return tracker


def close(actual: float | None, expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-15)


# ---------------------------------------------------------------------------------------------
# nearest rank


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [
        (0.1, 30, 3),
        (0.1, 31, 4),
        (0.1, 7, 1),
        (0.1, 1, 1),
        (0.5, 7, 4),
        (0.25, 4, 1),
        (1.0, 5, 5),
        (0.3, 10, 3),
    ],
)
def test_nearest_rank_reads_q_as_its_decimal(q: float, n: int, rank: int) -> None:
    # float arithmetic says math.ceil(0.1 * 30) == 4 and math.ceil(0.3 * 10) == 4
    assert nearest_rank(q, n) == rank


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, math.nan])
def test_nearest_rank_refuses_q_outside_the_unit_interval(q: float) -> None:
    with pytest.raises(ValueError, match="q must be in"):
        nearest_rank(q, 3)


# ---------------------------------------------------------------------------------------------
# hand-made sequences


def test_tv1_quantiles_exact() -> None:
    tracker = tracker_of(list(TV1))
    assert tracker.quantile(0.1) == math.exp(-2.5)  # rank ceil(0.7) = 1: the smallest
    assert tracker.quantile(0.5) == math.exp(-0.1)  # rank 4 of -2.5 -1.9 -0.3 -0.1 -0.05 -0.02 -0.01
    assert tracker.quantile(0.3) == math.exp(-0.3)  # rank ceil(2.1) = 3
    assert tracker.quantile(1.0) == math.exp(-0.01)
    summary = tracker.finish()
    assert summary.p10_prob == math.exp(-2.5) and summary.quantile == math.exp(-2.5)
    assert summary.quantile_q == 0.1


def test_tv1_window_min_exact() -> None:
    tracker = tracker_of(list(TV1))
    assert close(tracker.window_min(1), -2.5)
    assert close(tracker.window_min(2), -2.2)  # " 18" + "79"
    assert close(tracker.window_min(3), -4.7 / 3)  # " in 18 79"
    assert close(tracker.window_min(7), -4.88 / 7)
    assert close(tracker.window_min(50), -4.88 / 7)  # fewer tokens than the window: all of them
    summary = tracker.finish()
    assert summary.window == 8 and close(summary.window_min, -4.88 / 7)


def test_job_parameters_reach_the_summary() -> None:
    summary = tracker_of(list(TV1), quantile_q=0.5, window=2).finish()
    assert (summary.quantile_q, summary.window) == (0.5, 2)
    assert summary.quantile == math.exp(-0.1) and summary.p10_prob == math.exp(-2.5)
    assert close(summary.window_min, -2.2)


def test_length_bias_case() -> None:
    """A long confident answer with one low run of 8 tokens: the geometric mean stays high, the
    window and the quantile see the run. Hand-computed: mean = (192·−0.01 + 8·−2)/200 = −0.0896."""
    lps = [-0.01] * 100 + [-2.0] * 8 + [-0.01] * 92
    tracker = tracker_of(lps)
    assert tracker.confidence is not None and close(math.log(tracker.confidence), -0.0896)
    assert tracker.confidence > 0.9
    assert close(tracker.window_min(8), -2.0)
    assert close(tracker.window_min(16), (8 * -2.0 + 8 * -0.01) / 16)
    assert tracker.quantile(0.04) == math.exp(-2.0)  # rank 8
    assert tracker.quantile(0.045) == math.exp(-0.01)  # rank 9
    assert tracker.quantile(0.1) == math.exp(-0.01)  # 20 > 8 low tokens


def test_unscored_tokens_are_not_in_any_window() -> None:
    """Windows run over consecutive *scored* tokens: missing, NaN and excluded tokens are skipped."""
    tracker = ConfidenceTracker()
    tracker.add("a", -1.0)
    tracker.add("b", None)
    tracker.add("</s>", -5.0, special=True)
    tracker.add("c", math.nan)
    tracker.add("d", -3.0)
    tracker.add("e", -0.5)
    assert close(tracker.window_min(2), -2.0)
    assert tracker.quantile(0.5) == math.exp(-1.0)  # ranks of -3, -1, -0.5: ceil(1.5) = 2


def test_sanitised_values_are_used() -> None:
    tracker = tracker_of([-9999.0, 0.004, -0.5])  # sentinel → −20, noise → 0
    assert tracker.quantile(0.1) == math.exp(-20.0)
    assert tracker.quantile(1.0) == 1.0
    assert close(tracker.window_min(2), -10.0)


def test_nothing_scored_is_none() -> None:
    tracker = tracker_of([None, math.nan])
    assert tracker.quantile() is None and tracker.window_min() is None
    summary = tracker.finish()
    assert (summary.p10_prob, summary.quantile, summary.window_min) == (None, None, None)


def test_mean_margin_is_the_margin_signal() -> None:
    tracker = ConfidenceTracker()
    tracker.add("a", math.log(0.6), top=[Candidate("a", math.log(0.6)), Candidate("b", math.log(0.3))])
    assert tracker.mean_margin is not None and close(tracker.mean_margin, 0.3)
    tracker.add("c", math.log(0.5), top=[Candidate("c", math.log(0.5)), Candidate("d", math.log(0.4))])
    assert close(tracker.mean_margin, 0.2)  # (0.3 + 0.1) / 2
    tracker.add("e", -0.1)  # no top-k: not in the margin's mean
    summary = tracker.finish()
    assert close(summary.mean_margin, 0.2)


def test_no_margin_without_topk() -> None:
    assert tracker_of(list(TV1)).mean_margin is None


@pytest.mark.parametrize("bad", [{"window": 0}, {"quantile_q": 0.0}, {"quantile_q": 1.01}])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConfidenceTracker(**bad)  # type: ignore[arg-type]


def test_window_min_function_refuses_a_zero_window() -> None:
    with pytest.raises(ValueError, match="window must be positive"):
        window_min([0.0, -1.0], 0)


# ---------------------------------------------------------------------------------------------
# properties against brute force

_LP = st.one_of(
    st.floats(-25.0, 0.0),
    st.sampled_from([0.0, -0.0, -1.0, -0.5, 0.004, 1.0, -9999.0, -math.inf, math.nan, None]),
)


def _brute_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(repr(q)) * len(ordered)))
    return math.exp(ordered[rank - 1])


def _brute_window_min(values: list[float], window: int) -> float:
    if len(values) <= window:
        return math.fsum(values) / len(values)
    return min(math.fsum(values[i : i + window]) for i in range(len(values) - window + 1)) / window


@settings(max_examples=300, deadline=None)
@given(
    lps=st.lists(_LP, max_size=120),
    queries=st.sets(st.integers(0, 120), max_size=6),
    q=st.sampled_from([0.01, 0.1, 0.25, 0.5, 0.9, 1.0]) | st.floats(0.001, 1.0),
    window=st.integers(1, 20),
)
def test_streaming_signals_match_brute_force(
    lps: list[float | None], queries: set[int], q: float, window: int
) -> None:
    """Queried at random points of the stream (the incremental merge of the sorted copy), the
    quantile is exactly the brute-force nearest rank, and window_min is within the documented
    bound of the exact (fsum) lowest window mean."""
    tracker = ConfidenceTracker(quantile_q=q, window=window)
    scored: list[float] = []

    def check() -> None:
        if not scored:
            assert tracker.quantile() is None and tracker.window_min() is None
            return
        assert tracker.quantile() == _brute_quantile(scored, q)
        bound = 4 * 2.0**-53 * math.fsum(abs(v) for v in scored) / min(window, len(scored)) + 1e-300
        got = tracker.window_min()
        assert got is not None and abs(got - _brute_window_min(scored, window)) <= bound

    for i, lp in enumerate(lps):
        if i in queries:
            check()
        tracker.add(" t", lp)
        used, _ = sanitize_logprob(lp)
        if used is not None:
            scored.append(used)
    check()
    summary = tracker.finish()
    if scored:
        assert summary.p10_prob == _brute_quantile(scored, 0.1)
        assert summary.quantile == _brute_quantile(scored, q)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0001, 1.0), st.integers(0, 10_000))
def test_nearest_rank_is_the_exact_ceiling(q: float, n: int) -> None:
    rank = nearest_rank(q, n)
    exact = Fraction(repr(q)) * n
    assert rank == max(1, math.ceil(exact))
