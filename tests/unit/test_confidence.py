"""Tests of worker.confidence against reference/confidence.md (§2, §3, §3.1, §3.2, §5, §6, §7)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.confidence import ConfidenceTracker, TokenScore, is_control, sanitize_logprob
from worker.events import Done, LowSpan, Summary, Usage, decode_event, encode_event
from worker.upstream.base import Candidate

INF = math.inf
NAN = math.nan
LN = math.log


# ---------------------------------------------------------------------------------------------
# Helpers


def tok(text: str, lp: float | None, b: list[int] | None = None) -> tuple[str, float | None, bytes]:
    """confidence.md §7 ``tok``: ``bytes`` is the UTF-8 of ``text`` unless ``b`` is given."""
    return text, lp, bytes(b) if b is not None else text.encode()


def run(
    tokens: list[tuple[str, float | None, bytes]], **cfg: Any
) -> tuple[ConfidenceTracker, list[TokenScore]]:
    tracker = ConfidenceTracker(**cfg)
    return tracker, [tracker.add(t, lp, raw_bytes=b) for t, lp, b in tokens]


def printed(actual: float | None, expected: float) -> bool:
    """``actual`` agrees with ``expected`` as printed to 12 significant digits (§7).

    A value printed with 12 significant digits is within half a unit of its 12th digit of the
    reference's float; a few ulps more allow for a different summation order (§7 note).
    """
    if actual is None:
        return False
    if expected == 0.0:
        return actual == 0.0
    half_unit = 0.5 * 10.0 ** (math.floor(math.log10(abs(expected))) - 11)
    return abs(actual - expected) <= half_unit + 8 * math.ulp(expected)


def same(actual: float | None, expected: float, rel: float = 1e-12) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-15)


# ---------------------------------------------------------------------------------------------
# Test vectors (§7)

TV1 = [
    tok("Einstein", -0.05),
    tok(" was", -0.1),
    tok(" born", -0.02),
    tok(" in", -0.3),
    tok(" 18", -2.5),
    tok("79", -1.9),
    tok(".", -0.01),
]
TV4 = [
    tok("Here", -0.054242473),
    tok(" is", -0.0044352207),
    tok(" the", -2.1008714e-06),
    tok(" blue", -0.0013290489),
    tok(" heart", 0.0),
    tok(" emoji", 0.0),
    tok(" and", -0.038287632),
    tok(" its", 0.0),
    tok(" name", -1.569009e-05),
    tok(":\n\n", -0.11313002),
    tok("\\xf0\\x9f\\x92", -0.09048584, b=[240, 159, 146]),
    tok("\\x99", 0.0, b=[153]),
    tok(" Blue", -0.023958502),
    tok(" Heart", -6.2729996e-06),
]

# (char_start, char_end, logprob used, confidence, ewma_confidence, min_prob)
TV1_TOKENS = [
    (0, 8, -0.05, 0.951229424501, 0.951229424501, 0.951229424501),
    (8, 12, -0.1, 0.927743486329, 0.946485147953, 0.904837418036),
    (12, 17, -0.02, 0.94490898654, 0.949803649962, 0.904837418036),
    (17, 20, -0.3, 0.889140511746, 0.926491877648, 0.740818220682),
    (20, 23, -2.5, 0.552114404307, 0.727082738361, 0.0820849986239),
    (23, 25, -1.9, 0.444117253628, 0.62073966745, 0.0820849986239),
    (25, 26, -0.01, 0.498006147756, 0.650405574439, 0.0820849986239),
]
TV4_TOKENS = [
    (0, 4, -0.054242473, 0.947202407646, 0.947202407646, 0.947202407646),
    (4, 7, -0.0044352207, 0.971087358819, 0.951931931026, 0.947202407646),
    (7, 11, -2.1008714e-06, 0.98063012277, 0.956632682468, 0.947202407646),
    (11, 16, -0.0013290489, 0.985109761653, 0.960755706752, 0.947202407646),
    (16, 22, 0.0, 0.988069965267, 0.964609812589, 0.947202407646),
    (22, 28, 0.0, 0.990048374504, 0.968091725133, 0.947202407646),
    (28, 32, -0.038287632, 0.986055780328, 0.967524667631, 0.947202407646),
    (32, 36, 0.0, 0.987788118262, 0.970724166785, 0.947202407646),
    (36, 41, -1.569009e-05, 0.989135871633, 0.97361123366, 0.947202407646),
    (41, 44, -0.11313002, 0.979077753207, 0.965236740107, 0.893034540216),
    (44, 45, -0.09048584, 0.972925271091, 0.959932531118, 0.893034540216),
    (45, 45, 0.0, 0.975153222746, 0.963865950665, 0.893034540216),
    (45, 50, -0.023958502, 0.975243403595, 0.965104788296, 0.893034540216),
    (50, 56, -6.2729996e-06, 0.976990786695, 0.96853819226, 0.893034540216),
]
_NULL_TOPK = {
    "mean_entropy_lb": None,
    "max_entropy_lb": None,
    "max_entropy_index": None,
    "mean_margin": None,
    "n_topk": 0,
    "n_not_top1": 0,
}
TV1_FINAL: dict[str, float | int | None] = {
    "confidence": 0.498006147756,
    "mean_logprob": -0.697142857143,
    "cum_logprob": -4.88,
    "perplexity": 2.00800733988,
    "min_prob": 0.0820849986239,
    "min_index": 4,
    "ewma_confidence": 0.650405574439,
    "mean_prob": 0.685541026874,
    "bits_per_byte": 0.270782761521,
    **_NULL_TOPK,
    "n_tokens": 7,
    "n_scored": 7,
    "n_missing": 0,
    "n_excluded": 0,
    "n_clamped": 0,
}
TV4_FINAL: dict[str, float | int | None] = {
    "confidence": 0.976990786695,
    "mean_logprob": -0.0232780571829,
    "cum_logprob": -0.325892800561,
    "perplexity": 1.02355110572,
    "min_prob": 0.893034540216,
    "min_index": 9,
    "ewma_confidence": 0.96853819226,
    "mean_prob": 0.977622063233,
    "bits_per_byte": 0.00796888012256,
    **_NULL_TOPK,
    "n_tokens": 14,
    "n_scored": 14,
    "n_missing": 0,
    "n_excluded": 0,
    "n_clamped": 0,
}
# (tokens, chars, bytes, text, min_prob, min_index, n_tokens, mean_logprob)
TV1_SPANS = [((4, 6), (20, 25), (20, 25), " 1879", 0.0820849986239, 4, 2, -2.2)]
TV4_SPANS = [
    ((0, 1), (0, 4), (0, 4), "Here", 0.947202407646, 0, 1, -0.054242473),
    ((9, 11), (41, 45), (41, 48), ":\n\n💙", 0.893034540216, 9, 2, -0.10180793),
]


def check_tokens(scores: list[TokenScore], table: list[tuple[int, int, float, float, float, float]]) -> None:
    assert len(scores) == len(table)
    for i, (score, (cs, ce, lp, conf, ewma, min_prob)) in enumerate(zip(scores, table, strict=True)):
        assert (score.char_start, score.char_end) == (cs, ce), i
        assert score.logprob_used == lp, i
        assert score.flags == (), i
        assert score.scored, i
        assert printed(score.confidence, conf), (i, score.confidence, conf)
        assert printed(score.ewma_confidence, ewma), (i, score.ewma_confidence, ewma)
        assert printed(score.min_prob, min_prob), (i, score.min_prob, min_prob)


def check_final(tracker: ConfidenceTracker, summary: Summary, table: dict[str, Any]) -> None:
    running = tracker.running()
    assert running["open_span"] is None
    fields = msgspec.structs.asdict(summary)
    for name, expected in table.items():
        for source, value in (
            ("running", running[name]),
            ("summary", fields.get(name, running[name])),
        ):
            if expected is None or isinstance(expected, int):
                assert value == expected, (source, name, value, expected)
            else:
                assert printed(value, expected), (source, name, value, expected)
    assert printed(tracker.confidence, table["confidence"])
    assert summary.logprobs_available


def check_spans(spans: list[LowSpan], table: list[Any]) -> None:
    assert len(spans) == len(table)
    for span, (toks, chars, byts, text, min_prob, min_index, n, mean) in zip(spans, table, strict=True):
        assert (span.start_token, span.end_token) == toks
        assert (span.char_start, span.char_end) == chars
        assert (span.byte_start, span.byte_end) == byts
        assert span.text == text
        assert printed(span.min_prob, min_prob)
        assert span.min_index == min_index
        assert span.n_tokens == n
        assert printed(span.mean_logprob, mean)


def test_tv1_per_token() -> None:
    _, scores = run(TV1)
    check_tokens(scores, TV1_TOKENS)
    assert [s.low for s in scores] == [False, False, False, False, True, True, False]


def test_tv1_final_and_spans() -> None:
    tracker, _ = run(TV1)
    summary = tracker.finish()
    check_final(tracker, summary, TV1_FINAL)
    check_spans(summary.low_spans, TV1_SPANS)
    check_spans(tracker.spans(), TV1_SPANS)
    assert tracker.text == "Einstein was born in 1879."


def test_tv1_token_event_of_section_6() -> None:
    """§6 prints TV1 token 4's running object at full precision."""
    tracker, scores = run(TV1[:5])
    score = scores[4]
    assert (score.char_start, score.char_end, score.byte_start, score.byte_end) == (20, 23, 20, 23)
    assert score.logprob_used == -2.5
    assert score.flags == ()
    assert score.low
    expected: dict[str, Any] = {
        "confidence": 0.5521144043069306,
        "mean_logprob": -0.5940000000000001,
        "cum_logprob": -2.97,
        "perplexity": 1.8112188202285728,
        "min_prob": 0.0820849986238988,
        "min_index": 4,
        "ewma_confidence": 0.7270827383609284,
        "mean_prob": 0.7318337470298091,
        "bits_per_byte": 0.1862958378887053,
        "n_tokens": 5,
        "n_scored": 5,
        "n_missing": 0,
        "n_excluded": 0,
        "n_clamped": 0,
        "n_topk": 0,
        "n_not_top1": 0,
    }
    open_span = {
        "start_token": 4,
        "end_token": 5,
        "char_start": 20,
        "char_end": 23,
        "byte_start": 20,
        "byte_end": 23,
        "n_tokens": 1,
        "min_prob": 0.0820849986238988,
        "min_index": 4,
        "mean_logprob": -2.5,
    }
    running = tracker.running()
    assert running["open_span"] is not None
    assert set(running["open_span"]) == set(open_span)
    for actual, wanted in ((running, expected), (running["open_span"], open_span)):
        for name, value in wanted.items():
            if isinstance(value, int):
                assert actual[name] == value, name
            else:
                assert same(actual[name], value, rel=1e-15), (name, actual[name], value)
    assert same(score.confidence, expected["confidence"], rel=1e-15)
    assert same(score.ewma_confidence, expected["ewma_confidence"], rel=1e-15)
    assert same(score.mean_prob, expected["mean_prob"], rel=1e-15)
    assert score.min_prob == expected["min_prob"]


def test_tv4_per_token() -> None:
    _, scores = run(TV4, low_prob=0.95)
    check_tokens(scores, TV4_TOKENS)
    assert [s.byte_start for s in scores[9:13]] == [41, 44, 47, 48]


def test_tv4_final_and_spans() -> None:
    tracker, scores = run(TV4, low_prob=0.95)
    summary = tracker.finish()
    check_final(tracker, summary, TV4_FINAL)
    check_spans(summary.low_spans, TV4_SPANS)
    assert tracker.text == "Here is the blue heart emoji and its name:\n\n💙 Blue Heart"
    # exp(cum_logprob) is the cookbook's "Joint prob: 72.19 %"
    assert round(math.exp(summary.cum_logprob), 4) == 0.7219
    # the span events emitted when each span closed carry the final records
    closed = [s.closed_span for s in scores if s.closed_span is not None]
    assert closed == summary.low_spans
    assert [i for i, s in enumerate(scores) if s.closed_span is not None] == [1, 11]


def test_tv4_open_span_byte_end_needs_no_look_ahead() -> None:
    """While the emoji's last byte has not arrived, the open span already ends at byte 48."""
    tracker, _ = run(TV4[:11], low_prob=0.95)
    open_span = tracker.running()["open_span"]
    assert open_span is not None
    assert (open_span["char_start"], open_span["char_end"]) == (41, 45)
    assert (open_span["byte_start"], open_span["byte_end"]) == (41, 48)
    assert (open_span["start_token"], open_span["end_token"], open_span["n_tokens"]) == (9, 11, 2)


def test_summary_fits_the_done_event() -> None:
    tracker, _ = run(TV4, low_prob=0.95)
    summary = tracker.finish()
    done = Done(
        job_id="j",
        attempt=1,
        finish_reason="stop",
        text=tracker.text,
        usage=Usage(output_tokens=14),
        confidence=tracker.confidence,
        summary=summary,
    )
    again = decode_event(encode_event(done))
    assert isinstance(again, Done)
    assert again.summary == summary
    assert again.text[41:45] == summary.low_spans[1].text


# ---------------------------------------------------------------------------------------------
# Sanitisation (§2, §5)


@pytest.mark.parametrize(
    ("raw", "expected", "flags"),
    [
        (0.0, 0.0, ()),
        (-0.0, 0.0, ()),
        (-1.5, -1.5, ()),
        (-20.0, -20.0, ()),
        (-3, -3.0, ()),
        (Fraction(-1, 2), -0.5, ()),
        (1e-300, 0.0, ("clamped_positive",)),
        (0.005, 0.0, ("clamped_positive",)),
        (0.01, 0.0, ("clamped_positive",)),
        (0.010000001, None, ("invalid_positive",)),
        (1.0, None, ("invalid_positive",)),
        (5, None, ("invalid_positive",)),
        (INF, None, ("invalid_positive",)),
        (10**400, None, ("invalid_positive",)),
        (-20.000001, -20.0, ("clamped_floor",)),
        (-100.0, -20.0, ("clamped_floor",)),
        (-9998.9, -20.0, ("clamped_floor",)),
        (-9999.0, -20.0, ("neg_inf",)),
        (-9999, -20.0, ("neg_inf",)),
        (-3.4028234663852886e38, -20.0, ("neg_inf",)),
        (-INF, -20.0, ("neg_inf",)),
        (-(10**400), -20.0, ("neg_inf",)),
        (NAN, None, ("nan",)),
        (None, None, ("missing",)),
        (True, None, ("missing",)),
        (False, None, ("missing",)),
        ("-0.5", None, ("missing",)),
        ([], None, ("missing",)),
    ],
)
def test_sanitize_logprob(raw: object, expected: float | None, flags: tuple[str, ...]) -> None:
    value, got_flags = sanitize_logprob(raw)
    assert value == expected
    assert got_flags == flags
    if value == 0.0:
        assert math.copysign(1.0, value) == 1.0


def test_zero_is_a_valid_logprob() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("yes", 0.0)
    assert score.scored and score.logprob_used == 0.0 and score.flags == ()
    assert score.confidence == 1.0 and score.min_prob == 1.0 and score.ewma_confidence == 1.0
    summary = tracker.finish()
    assert summary.logprobs_available
    assert summary.mean_logprob == 0.0 and summary.perplexity == 1.0 and summary.cum_logprob == 0.0
    assert summary.bits_per_byte == 0.0 and math.copysign(1.0, summary.bits_per_byte) == 1.0


def test_tiny_positive_is_clamped_and_counted() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("a", 0.004)
    assert (score.logprob_used, score.flags, score.scored) == (0.0, ("clamped_positive",), True)
    assert tracker.confidence == 1.0
    assert tracker.running()["n_clamped"] == 1


def test_positive_above_noise_is_not_scored() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("a", 1.0)
    assert (score.logprob_used, score.flags, score.scored, score.confidence) == (
        None,
        ("invalid_positive",),
        False,
        None,
    )
    tracker.add("b", INF)
    summary = tracker.finish()
    assert (summary.n_missing, summary.n_scored, summary.n_clamped) == (2, 0, 0)
    assert tracker.text == "ab"


@pytest.mark.parametrize("raw", [-INF, -9999.0, -3.4028234663852886e38, -1e300])
def test_sentinels_map_to_the_floor(raw: float) -> None:
    tracker = ConfidenceTracker()
    tracker.add("x", -1.0)
    score = tracker.add("y", raw)
    assert (score.logprob_used, score.flags, score.scored, score.low) == (
        -20.0,
        ("neg_inf",),
        True,
        True,
    )
    assert same(score.confidence, math.exp(-10.5))
    assert same(score.min_prob, math.exp(-20.0))
    assert score.min_index == 1
    assert tracker.running()["n_clamped"] == 1


def test_custom_floor() -> None:
    tracker = ConfidenceTracker(floor=-5.0)
    assert tracker.add("a", -7.0).logprob_used == -5.0
    assert tracker.add("b", -INF).logprob_used == -5.0
    assert tracker.add("c", -4.0).flags == ()


def test_nan_is_not_scored_and_closes_the_span() -> None:
    tracker = ConfidenceTracker()
    tracker.add("a", -3.0)
    score = tracker.add("b", NAN)
    assert (score.logprob_used, score.flags, score.scored, score.low) == (
        None,
        ("nan",),
        False,
        False,
    )
    assert score.confidence == math.exp(-3.0)
    assert score.closed_span is not None and score.closed_span.end_token == 1
    tracker.add("c", -3.0)
    summary = tracker.finish()
    assert [(s.start_token, s.end_token) for s in summary.low_spans] == [(0, 1), (2, 3)]
    assert (summary.n_scored, summary.n_missing) == (2, 1)


def test_missing_advances_offsets_and_closes_the_span() -> None:
    tracker = ConfidenceTracker()
    tracker.add("ab", -3.0)
    tracker.add("cd", -4.0)
    missing = tracker.add("ef", None)
    assert (missing.flags, missing.scored, missing.logprob_used) == (("missing",), False, None)
    assert (missing.char_start, missing.char_end, missing.byte_start, missing.byte_end) == (
        4,
        6,
        4,
        6,
    )
    assert missing.closed_span == LowSpan(
        start_token=0,
        end_token=2,
        char_start=0,
        char_end=4,
        byte_start=0,
        byte_end=4,
        text="abcd",
        min_prob=math.exp(-4.0),
        min_index=1,
        n_tokens=2,
        mean_logprob=-3.5,
    )
    assert tracker.running()["open_span"] is None
    low = tracker.add("gh", -5.0)
    assert (low.char_start, low.char_end) == (6, 8)
    summary = tracker.finish()
    assert [(s.start_token, s.end_token, s.text) for s in summary.low_spans] == [
        (0, 2, "abcd"),
        (3, 4, "gh"),
    ]
    assert tracker.text == "abcdefgh"
    # bits per byte counts the bytes of scored tokens only
    assert same(summary.bits_per_byte, 12.0 / (LN(2) * 6))
    assert summary.n_missing == 1


def test_nothing_scored_gives_null_never_one() -> None:
    tracker = ConfidenceTracker()
    for text, lp in [("a", None), ("b", NAN), ("c", 2.0)]:
        score = tracker.add(text, lp)
        assert score.confidence is None and score.ewma_confidence is None
        assert score.min_prob is None and score.min_index is None and score.mean_prob is None
    assert tracker.confidence is None
    running = tracker.running()
    assert running["confidence"] is None and running["cum_logprob"] == 0.0
    summary = tracker.finish()
    assert summary.logprobs_available is False
    assert summary.cum_logprob == 0.0
    for name in ("mean_logprob", "perplexity", "min_prob", "min_index", "ewma_confidence"):
        assert getattr(summary, name) is None, name
    assert summary.mean_prob is None and summary.bits_per_byte is None
    assert summary.low_spans == []
    assert (summary.n_tokens, summary.n_scored, summary.n_missing) == (3, 0, 3)


def test_empty_stream() -> None:
    tracker = ConfidenceTracker()
    summary = tracker.finish()
    assert summary.n_tokens == 0 and tracker.confidence is None and tracker.text == ""
    assert summary.mean_logprob is None and not summary.logprobs_available


def test_min_index_is_the_first_attaining_the_minimum() -> None:
    tracker = ConfidenceTracker()
    for lp in (-1.0, -2.0, -0.5, -2.0, -30.0, -25.0):
        tracker.add("x", lp)
    summary = tracker.finish()
    assert summary.min_index == 4  # -30 and -25 both floor to -20: the first one wins
    assert summary.min_prob == math.exp(-20.0)
    assert summary.n_clamped == 2


def test_ewma_with_custom_alpha() -> None:
    tracker = ConfidenceTracker(alpha=0.5)
    tracker.add("a", -1.0)
    score = tracker.add("b", -3.0)
    assert same(score.ewma_confidence, math.exp(-2.0))


def test_neumaier_sum_matches_fsum() -> None:
    lps = [-0.1] * 10_000 + [-1e-9] * 1000 + [-19.99999999] * 7
    tracker = ConfidenceTracker()
    for lp in lps:
        tracker.add("x", lp)
    running = tracker.running()
    assert running["cum_logprob"] == math.fsum(lps)
    assert sum(lps) != math.fsum(lps)  # the naive sum would not do
    assert running["mean_prob"] == pytest.approx(math.fsum(map(math.exp, lps)) / len(lps), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# Special and control tokens


def test_special_tokens_are_excluded_by_default() -> None:
    tracker = ConfidenceTracker()
    tracker.add("Hi", -3.0)
    eos = tracker.add("<|eot_id|>", -0.001, special=True)
    assert (eos.flags, eos.scored, eos.logprob_used, eos.low) == (
        ("excluded_special",),
        False,
        None,
        False,
    )
    assert (eos.char_start, eos.char_end, eos.byte_start, eos.byte_end) == (2, 2, 2, 2)
    assert eos.closed_span is not None and eos.closed_span.text == "Hi"
    after = tracker.add("!", -0.1)
    assert (after.char_start, after.char_end) == (2, 3)
    summary = tracker.finish()
    assert tracker.text == "Hi!"
    assert (summary.n_tokens, summary.n_scored, summary.n_excluded, summary.n_missing) == (
        3,
        2,
        1,
        0,
    )
    assert same(summary.mean_logprob, -1.55)
    assert summary.bits_per_byte is not None and same(summary.bits_per_byte, 3.1 / (LN(2) * 3))


def test_include_special_scores_them() -> None:
    tracker = ConfidenceTracker(include_special=True)
    tracker.add("Hi", -1.0)
    eos = tracker.add("</s>", -0.5, special=True)
    assert eos.scored and eos.flags == () and (eos.char_start, eos.char_end) == (2, 6)
    summary = tracker.finish()
    assert tracker.text == "Hi</s>"
    assert (summary.n_scored, summary.n_excluded) == (2, 0)
    assert same(summary.mean_logprob, -0.75)


def test_empty_text_without_bytes_is_a_control_token() -> None:
    tracker = ConfidenceTracker()
    tracker.add("a", -3.0)
    for raw in (None, b""):
        score = tracker.add("", -0.2, raw_bytes=raw)
        assert score.flags == ("excluded_special",) and not score.scored
    summary = tracker.finish()
    assert (summary.n_excluded, summary.n_scored) == (2, 1)
    assert [(s.start_token, s.end_token) for s in summary.low_spans] == [(0, 1)]


def test_explicit_special_false_empty_token_is_scored() -> None:
    """TGI/DeepInfra native: "text": "" with "special": false is the first piece of a character a
    later token completes (here 中 over two tokens); it is scored, with zero-width offsets, and keeps
    an open span open. Hand-computed: ℓ = −0.5, −3.0, −0.1 → mean −1.2, EWMA −0.5 → −0.75 → −0.685."""
    tracker = ConfidenceTracker()
    first = tracker.add("", -0.5, special=False)
    assert first.scored and first.flags == () and not first.low
    assert (first.char_start, first.char_end, first.byte_start, first.byte_end) == (0, 0, 0, 0)
    low = tracker.add("", -3.0, special=False)
    assert low.low and (low.char_start, low.char_end) == (0, 0)
    whole = tracker.add("中", -0.1, special=False)
    assert (whole.char_start, whole.char_end, whole.byte_start, whole.byte_end) == (0, 1, 0, 3)
    closed = whole.closed_span
    assert closed is not None and (closed.start_token, closed.end_token) == (1, 2)
    summary = tracker.finish()
    assert (summary.n_scored, summary.n_excluded, summary.n_tokens) == (3, 0, 3)
    assert same(summary.mean_logprob, -1.2)
    assert tracker.confidence is not None and same(tracker.confidence, math.exp(-1.2))
    assert summary.ewma_confidence is not None and same(summary.ewma_confidence, math.exp(-0.685))
    assert summary.min_prob is not None and same(summary.min_prob, math.exp(-3.0))
    assert summary.min_index == 1
    assert summary.bits_per_byte is not None and same(summary.bits_per_byte, 3.6 / (LN(2) * 3))
    span = summary.low_spans[0]
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end, span.text) == (0, 0, 0, 0, "")
    # the same stream with the provider saying nothing: the empty tokens are control tokens
    silent = ConfidenceTracker()
    silent.add("", -0.5)
    silent.add("", -3.0, special=None)
    silent.add("中", -0.1)
    said_nothing = silent.finish()
    assert (said_nothing.n_scored, said_nothing.n_excluded) == (1, 2)
    assert same(said_nothing.mean_logprob, -0.1)


def test_is_control_detection_order() -> None:
    assert is_control(True, "x", b"x") and not is_control(False, "", None) and not is_control(False, "", b"")
    assert is_control(None, "", None) and is_control(None, "", b"")
    assert not is_control(None, "", b"\xe4") and not is_control(None, "a", None)


def test_empty_control_token_is_scored_with_include_special() -> None:
    tracker = ConfidenceTracker(include_special=True)
    tracker.add("a", -0.1)
    score = tracker.add("", -0.2)
    assert score.scored and (
        score.char_start,
        score.char_end,
        score.byte_start,
        score.byte_end,
    ) == (
        1,
        1,
        1,
        1,
    )
    assert tracker.finish().n_scored == 2


def test_empty_text_with_bytes_is_scored() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("", -0.2, raw_bytes=b"\xc3")
    assert score.scored and score.flags == ()
    assert (score.char_start, score.char_end, score.byte_start, score.byte_end) == (0, 1, 0, 1)
    score = tracker.add("", -0.3, raw_bytes=b"\xa9")
    assert (score.char_start, score.char_end, score.byte_start, score.byte_end) == (1, 1, 1, 2)
    assert tracker.text == "é"


# ---------------------------------------------------------------------------------------------
# Offsets from bytes (§3.2)


def test_emoji_over_four_tokens() -> None:
    heart = "💙".encode()
    tracker = ConfidenceTracker(low_prob=0.5)
    tracker.add("A", -0.01)
    scores = [tracker.add(f"\\x{b:02x}", -2.0, raw_bytes=bytes([b])) for b in heart]
    tracker.add("B", -0.01)
    assert [(s.char_start, s.char_end) for s in scores] == [(1, 2), (2, 2), (2, 2), (2, 2)]
    assert [(s.byte_start, s.byte_end) for s in scores] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    summary = tracker.finish()
    assert tracker.text == "A💙B"
    (span,) = summary.low_spans
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end) == (1, 2, 1, 5)
    assert span.text == "💙" and span.n_tokens == 4


def test_span_on_the_first_half_of_an_emoji() -> None:
    """A span over the lead bytes only extends to the end of the code point (TV4: 48 vs 47)."""
    heart = "💙".encode()
    tracker = ConfidenceTracker(low_prob=0.5)
    tracker.add("x", -0.01)
    tracker.add("", -2.0, raw_bytes=heart[:2])
    tracker.add("", -0.01, raw_bytes=heart[2:])
    summary = tracker.finish()
    (span,) = summary.low_spans
    assert (span.start_token, span.end_token) == (1, 2)
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end) == (1, 2, 1, 5)
    assert span.text == "💙"


def test_span_on_continuation_bytes_only_has_zero_width() -> None:
    heart = "💙".encode()
    tracker = ConfidenceTracker(low_prob=0.5)
    tracker.add("", -0.01, raw_bytes=heart[:3])
    tracker.add("", -2.0, raw_bytes=heart[3:])
    (span,) = tracker.finish().low_spans
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end) == (1, 1, 3, 4)
    assert span.text == "\ufffd"


def test_span_closed_before_its_code_point_is_complete() -> None:
    """An excluded special token closes the span between the emoji's bytes."""
    heart = "💙".encode()
    tracker = ConfidenceTracker(low_prob=0.5)
    tracker.add("ok", -0.01)
    tracker.add("", -2.0, raw_bytes=heart[:2])
    closing = tracker.add("<|x|>", -0.1, special=True)
    assert closing.closed_span is not None
    assert (closing.closed_span.byte_start, closing.closed_span.byte_end) == (2, 6)
    assert closing.closed_span.char_end == 3
    assert tracker.spans()[0].byte_end == 6
    tracker.add("", -0.01, raw_bytes=heart[2:])
    summary = tracker.finish()
    (span,) = summary.low_spans
    assert (span.byte_start, span.byte_end, span.char_start, span.char_end) == (2, 6, 2, 3)
    assert span.text == "💙"
    assert tracker.text == "ok💙"


def test_stream_cut_inside_a_code_point() -> None:
    heart = "💙".encode()
    tracker = ConfidenceTracker(low_prob=0.5)
    tracker.add("a", -0.01)
    tracker.add("", -2.0, raw_bytes=heart[:2])
    assert tracker.running()["open_span"]["byte_end"] == 5  # announced length, nothing seen yet
    (span,) = tracker.finish().low_spans
    assert (span.byte_start, span.byte_end, span.char_start, span.char_end) == (1, 3, 1, 2)
    assert span.text == "\ufffd"
    assert tracker.text == "a\ufffd"


def test_cjk_split_across_tokens() -> None:
    data = "日本語".encode()  # three 3-byte code points
    tracker = ConfidenceTracker(low_prob=0.5)
    chunks = [data[0:2], data[2:5], data[5:9]]
    scores = [tracker.add("", lp, raw_bytes=c) for c, lp in zip(chunks, (-0.01, -2.0, -0.01), strict=True)]
    assert [(s.char_start, s.char_end) for s in scores] == [(0, 1), (1, 2), (2, 3)]
    assert [(s.byte_start, s.byte_end) for s in scores] == [(0, 2), (2, 5), (5, 9)]
    (span,) = tracker.finish().low_spans
    # token 1 holds the tail of 日 and the head of 本: the span is 本 and the tail byte of 日
    assert (span.char_start, span.char_end, span.byte_start, span.byte_end) == (1, 2, 2, 6)
    assert span.text == "\ufffd本"
    assert tracker.text == "日本語"


def test_bytes_win_over_the_token_string() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("\\xc3\\xa9", -0.1, raw_bytes=b"\xc3\xa9")
    assert (score.char_start, score.char_end, score.byte_start, score.byte_end) == (0, 1, 0, 2)
    score = tracker.add("日本", -0.1)
    assert (score.char_start, score.char_end, score.byte_start, score.byte_end) == (1, 3, 2, 8)
    assert tracker.text == "é日本"
    assert same(tracker.finish().bits_per_byte, 0.2 / (LN(2) * 8))


def test_add_after_finish_fails_and_finish_is_idempotent() -> None:
    tracker, _ = run(TV1)
    first = tracker.finish()
    assert tracker.finish() == first
    with pytest.raises(RuntimeError):
        tracker.add("x", -0.1)


@pytest.mark.parametrize(
    "cfg",
    [
        {"low_prob": -0.1},
        {"low_prob": 1.5},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"floor": 0.0},
        {"floor": -INF},
        {"vocab_size": 0},
    ],
)
def test_bad_config(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConfidenceTracker(**cfg)


# ---------------------------------------------------------------------------------------------
# Top-k (§3.1)


def cand(token: str, p: float | None, raw: bytes | None = None) -> Candidate:
    return Candidate(token, None if p is None else LN(p), raw)


def h(*ps: float) -> float:
    return -sum(p * LN(p) for p in ps)


def test_topk_chosen_on_top() -> None:
    tracker = ConfidenceTracker(vocab_size=100)
    top = [cand("a", 0.5), cand("b", 0.3), cand("c", 0.1)]
    score = tracker.add("a", LN(0.5), top=top)
    assert score.flags == () and score.chosen_rank == 1
    assert same(score.margin, 0.2) and same(score.tail_mass, 0.1)
    # R = c = 0.1: m = 1, r = 0, so entropy_lb = entropy_lump
    assert same(score.entropy_lb, h(0.5, 0.3, 0.1, 0.1))
    assert same(score.entropy_lump, h(0.5, 0.3, 0.1, 0.1))
    assert same(score.entropy_ub, h(0.5, 0.3, 0.1, 0.1) + 0.1 * LN(97))


def test_topk_fills_the_tail_with_capped_tokens() -> None:
    tracker = ConfidenceTracker(vocab_size=50)
    top = [cand("a", 0.5), cand("b", 0.25), cand("c", 0.1)]
    score = tracker.add("b", LN(0.25), top=top)
    assert score.chosen_rank == 2 and score.flags == ()
    assert same(score.margin, 0.25) and same(score.tail_mass, 0.15)
    # R = 0.15, c = 0.1: m = 1, r = 0.05
    assert same(score.entropy_lb, h(0.5, 0.25, 0.1) + h(0.1) + h(0.05))
    assert same(score.entropy_lump, h(0.5, 0.25, 0.1, 0.15))
    assert same(score.entropy_ub, h(0.5, 0.25, 0.1, 0.15) + 0.15 * LN(47))
    assert score.entropy_lump < score.entropy_lb < score.entropy_ub  # type: ignore[operator]


def test_topk_several_capped_tokens() -> None:
    tracker = ConfidenceTracker()
    top = [cand("a", 0.4), cand("b", 0.2), cand("c", 0.05)]
    score = tracker.add("a", LN(0.4), top=top)
    # R = 0.35, c = 0.05: m = 7, r = 0 (either way the bound is continuous)
    assert same(score.tail_mass, 0.35)
    assert same(score.entropy_lb, h(0.4, 0.2, 0.05) + 7 * h(0.05))
    assert same(score.entropy_lump, h(0.4, 0.2, 0.05, 0.35))
    assert score.entropy_ub is None


def test_topk_chosen_not_in_list() -> None:
    tracker = ConfidenceTracker(vocab_size=10)
    top = [cand("a", 0.6), cand("b", 0.3)]
    score = tracker.add("z", LN(0.05), top=top)
    assert score.flags == ("chosen_not_in_topk",)
    assert score.chosen_rank == 3
    assert same(score.margin, 0.3) and same(score.tail_mass, 0.05)
    # the cap is over the provider list (0.3 > R): m = 0, r = R
    assert same(score.entropy_lb, h(0.6, 0.3, 0.05, 0.05))
    assert same(score.entropy_lump, h(0.6, 0.3, 0.05, 0.05))
    assert same(score.entropy_ub, h(0.6, 0.3, 0.05, 0.05) + 0.05 * LN(7))
    summary = tracker.finish()
    assert (summary.n_topk, summary.n_not_top1) == (1, 1)


def test_topk_chosen_matching_tolerance() -> None:
    tracker = ConfidenceTracker()
    # |Δℓ| ≤ 1e-5 + 1e-5·1.5 = 2.5e-5
    inside = tracker.add("a", -1.5, top=[Candidate("a", -1.500024), Candidate("b", -3.0)])
    assert inside.flags == () and inside.chosen_rank == 1
    outside = tracker.add("a", -1.5, top=[Candidate("a", -1.50003), Candidate("b", -3.0)])
    assert outside.flags == ("chosen_not_in_topk",)


def test_topk_matches_on_bytes_then_on_the_string() -> None:
    raw = b"\xf0\x9f\x92"
    text = "\\xf0\\x9f\\x92"
    tracker = ConfidenceTracker()
    with_bytes = tracker.add(text, -0.1, raw_bytes=raw, top=[Candidate(text, -0.1, raw)])
    assert with_bytes.flags == ()
    without = tracker.add(text, -0.1, raw_bytes=raw, top=[Candidate(text, -0.1)])
    assert without.flags == ()
    other = tracker.add(text, -1.5, raw_bytes=raw, top=[Candidate("x", -1.5, b"\xf0\x9f\x93")])
    assert other.flags == ("chosen_not_in_topk",)


def test_topk_duplicates() -> None:
    tracker = ConfidenceTracker()
    top = [
        Candidate("a", LN(0.5)),
        Candidate("a", LN(0.5) + 1e-7),  # the same token listed twice (vLLM #36660)
        Candidate("a", LN(0.2)),  # same text, different logprob: another token id, kept
        Candidate("b", LN(0.1)),
    ]
    score = tracker.add("a", LN(0.5), top=top)
    assert score.flags == ("topk_duplicate",)
    assert score.chosen_rank == 1 and same(score.margin, 0.3) and same(score.tail_mass, 0.2)
    # R = 0.2, c = 0.1: m = 2, r = 0
    assert same(score.entropy_lb, h(0.5, 0.2, 0.1) + 2 * h(0.1))
    assert same(score.entropy_lump, h(0.5, 0.2, 0.1, 0.2))


def test_topk_duplicates_by_bytes() -> None:
    tracker = ConfidenceTracker()
    top = [Candidate("\ufffd", LN(0.6), b"\xe6"), Candidate("\\xe6", LN(0.6), b"\xe6")]
    top.append(Candidate("\ufffd", LN(0.3), b"\xe7"))
    score = tracker.add("\ufffd", LN(0.3), raw_bytes=b"\xe7", top=top)
    assert score.flags == ("topk_duplicate",)
    assert score.chosen_rank == 2 and same(score.tail_mass, 0.1)


def test_topk_mass_overflow_is_renormalised() -> None:
    tracker = ConfidenceTracker(vocab_size=1000)
    score = tracker.add("a", LN(0.7), top=[cand("a", 0.7), cand("b", 0.5)])
    assert score.flags == ("topk_mass_overflow",)
    assert score.tail_mass == 0.0
    assert same(score.margin, 0.2 / 1.2)
    assert same(score.entropy_lb, h(7 / 12, 5 / 12))
    assert same(score.entropy_lump, h(7 / 12, 5 / 12))
    assert same(score.entropy_ub, h(7 / 12, 5 / 12))


def test_topk_small_overflow_is_tolerated() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("a", LN(0.7), top=[cand("a", 0.7), cand("b", 0.3005)])
    assert score.flags == ()
    assert score.tail_mass == 0.0
    assert same(score.entropy_lb, h(0.7, 0.3005))


def test_topk_list_of_one() -> None:
    tracker = ConfidenceTracker()
    score = tracker.add("a", LN(0.9), top=[cand("a", 0.9)])
    assert score.margin is None and score.chosen_rank == 1 and same(score.tail_mass, 0.1)
    assert same(score.entropy_lb, h(0.9, 0.1)) and same(score.entropy_lump, h(0.9, 0.1))
    running = tracker.running()
    assert running["mean_margin"] is None and running["n_topk"] == 1
    assert same(running["mean_entropy_lb"], h(0.9, 0.1))


def test_topk_entries_are_filtered() -> None:
    tracker = ConfidenceTracker()
    top = [
        Candidate("a", 0.005),
        Candidate("b", None),
        Candidate("c", NAN),
        Candidate("d", 2.0),
        Candidate("e", -INF),
        Candidate("f", -9999.0),
        Candidate("g", -3.4028234663852886e38),
    ]
    score = tracker.add("a", 0.0, top=top)
    assert score.flags == ()
    assert (score.chosen_rank, score.margin, score.tail_mass, score.entropy_lb) == (
        1,
        None,
        0.0,
        0.0,
    )
    assert score.entropy_lump == 0.0


def test_topk_with_nothing_left_is_no_topk() -> None:
    tracker = ConfidenceTracker()
    for top in ([], [Candidate("a", None), Candidate("b", NAN)]):
        score = tracker.add("a", -0.1, top=top)
        assert score.chosen_rank is None and score.entropy_lb is None and score.flags == ()
    summary = tracker.finish()
    assert summary.n_topk == 0 and summary.mean_entropy_lb is None


def test_topk_needs_a_scored_token() -> None:
    tracker = ConfidenceTracker()
    top = [cand("a", 0.5), cand("b", 0.3)]
    assert tracker.add("a", None, top=top).entropy_lb is None
    assert tracker.add("<eos>", -0.1, special=True, top=top).entropy_lb is None
    assert tracker.finish().n_topk == 0


def test_topk_underflowing_cap() -> None:
    """A provider entry whose probability underflows to 0 must not give NaN (0·ln 0 := 0)."""
    tracker = ConfidenceTracker()
    score = tracker.add("a", LN(0.5), top=[cand("a", 0.5), Candidate("b", -800.0)])
    assert same(score.tail_mass, 0.5)
    assert same(score.entropy_lump, h(0.5, 0.5))
    assert same(score.entropy_lb, h(0.5) + 0.5 * 800.0)  # the limit c → 0 of the bound
    assert score.margin == 0.5


def test_topk_running_aggregates() -> None:
    tracker = ConfidenceTracker()
    first = tracker.add("a", LN(0.5), top=[cand("a", 0.5), cand("b", 0.5)])
    second = tracker.add("b", LN(0.2), top=[cand("a", 0.6), cand("b", 0.2), cand("c", 0.2)])
    tracker.add("c", -0.1)
    third = tracker.add("c", LN(0.9), top=[cand("c", 0.9)])
    fourth = tracker.add("d", LN(0.5), top=[cand("d", 0.5), cand("e", 0.5)])
    summary = tracker.finish()
    lbs = [first.entropy_lb, second.entropy_lb, third.entropy_lb, fourth.entropy_lb]
    assert all(x is not None for x in lbs)
    assert same(summary.mean_entropy_lb, math.fsum(x for x in lbs if x is not None) / 4)
    assert same(summary.max_entropy_lb, h(0.6, 0.2, 0.2))
    assert summary.max_entropy_index == 1
    assert first.entropy_lb == fourth.entropy_lb
    assert same(summary.mean_margin, (0.0 + 0.4 + 0.0) / 3)
    assert (summary.n_topk, summary.n_not_top1, summary.n_scored) == (4, 1, 5)
    assert second.chosen_rank == 2


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(st.floats(-8.0, 8.0), min_size=2, max_size=60),
    k=st.integers(1, 20),
    chosen_pick=st.integers(0, 10_000),
)
def test_topk_bounds_hold_on_true_distributions(logits: list[float], k: int, chosen_pick: int) -> None:
    """entropy_lump ≤ entropy_lb ≤ H ≤ entropy_ub on a full softmax (the check of §3.1)."""
    top_lp = max(logits)
    norm = top_lp + LN(math.fsum(math.exp(x - top_lp) for x in logits))
    lps = [x - norm for x in logits]
    entropy = -math.fsum(math.exp(lp) * lp for lp in lps)
    order = sorted(range(len(lps)), key=lambda i: -lps[i])
    listed = order[: min(k, len(lps))]
    chosen = chosen_pick % len(lps)
    assume(lps[chosen] >= -20.0)  # below the floor the appended chosen token is not its true p
    tracker = ConfidenceTracker(vocab_size=len(lps))
    top = [Candidate(f"t{i}", lps[i]) for i in listed]
    score = tracker.add(f"t{chosen}", lps[chosen], top=top)
    assert score.entropy_lump is not None and score.entropy_lb is not None
    assert score.entropy_ub is not None and score.tail_mass is not None
    assert score.entropy_lump <= score.entropy_lb + 1e-9
    assert score.entropy_lb <= entropy + 1e-9
    assert entropy <= score.entropy_ub + 1e-9
    assert 0.0 <= score.tail_mass <= 1.0
    assert score.chosen_rank == 1 + sum(1 for i in set(listed) | {chosen} if lps[i] > lps[chosen])
    assert ("chosen_not_in_topk" in score.flags) == (chosen not in listed)
    if score.margin is not None:
        assert 0.0 <= score.margin <= 1.0


# ---------------------------------------------------------------------------------------------
# Properties of random streams

StreamToken = tuple[str, float | None, bool | None, bytes | None]  # text, logprob, special, raw bytes

_LOGPROBS = st.one_of(
    st.floats(-25.0, 0.0),
    st.floats(-3.0, 0.0),
    st.sampled_from([0.0, -0.0, 0.004, 0.01, 0.02, 1.0, INF, -INF, NAN, -9999.0, -3.4e38, None]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def streams(
    draw: st.DrawFn,
) -> tuple[list[StreamToken], float, bool]:
    data = draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    if not _valid(data):
        data = data.decode("utf-8", "replace").encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=24)))
    bounds = [0, *cuts, len(data)]
    tokens: list[StreamToken] = []
    for start, end in itertools.pairwise(bounds):
        chunk = data[start:end]
        lp = draw(_LOGPROBS)
        special = draw(st.sampled_from([True, False, False, None, None, None]))
        if _valid(chunk) and draw(st.booleans()):
            tokens.append((chunk.decode(), lp, special, None))
        else:
            tokens.append((chunk.decode("utf-8", "replace"), lp, special, chunk))
    return tokens, draw(st.sampled_from([0.2, 0.5, 0.95, 1.0])), draw(st.booleans())


_CONTINUATION = bytes(range(0x80, 0xC0))


def _valid(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _reference_lp(raw: float | None) -> float | None:
    """§2 written out independently."""
    if raw is None or math.isnan(raw):
        return None
    if raw > 0.01:
        return None
    if raw > 0.0:
        return 0.0
    return max(raw, -20.0) if raw > -9999.0 else -20.0


@settings(max_examples=200, deadline=None)
@given(streams())
def test_random_streams(
    case: tuple[list[StreamToken], float, bool],
) -> None:
    tokens, tau, include_special = case
    tracker = ConfidenceTracker(low_prob=tau, include_special=include_special)
    scores = [tracker.add(text, lp, special=special, raw_bytes=raw) for text, lp, special, raw in tokens]
    summary = tracker.finish()

    kept: list[bytes] = []
    scored: list[float] = []
    lows: list[bool] = []
    n_excluded = 0
    for (text, lp, special, raw), score in zip(tokens, scores, strict=True):
        data = raw or text.encode()
        # the provider's flag wins; only when it said nothing is a token without bytes a control one
        control = special if special is not None else not data
        if control and not include_special:
            n_excluded += 1
            lows.append(False)
            assert not score.scored and score.flags == ("excluded_special",)
            assert score.char_start == score.char_end and score.byte_start == score.byte_end
            continue
        assert score.byte_start == sum(map(len, kept))
        assert score.byte_end == score.byte_start + len(data)
        assert score.char_start == sum(len(b.translate(None, _CONTINUATION)) for b in kept)
        kept.append(data)
        expected = _reference_lp(lp)
        assert score.logprob_used == expected
        assert score.scored == (expected is not None)
        if expected is not None:
            scored.append(expected)
        lows.append(expected is not None and math.exp(expected) < tau)
        assert score.low == lows[-1]
        # the running confidence after every token
        if scored:
            assert same(score.confidence, math.exp(math.fsum(scored) / len(scored)))
        else:
            assert score.confidence is None

    # counters and final metrics
    assert summary.n_tokens == len(tokens)
    assert summary.n_excluded == n_excluded
    assert summary.n_scored == len(scored)
    assert summary.n_tokens == summary.n_scored + summary.n_missing + summary.n_excluded
    assert summary.logprobs_available == bool(scored)
    buf = b"".join(kept)
    text = buf.decode("utf-8", "replace")
    assert tracker.text == text
    if scored:
        mean = math.fsum(scored) / len(scored)
        confidence = tracker.confidence
        assert confidence is not None and 0.0 < confidence <= 1.0
        assert same(confidence, math.exp(mean))
        assert same(summary.mean_logprob, mean)
        assert same(summary.cum_logprob, math.fsum(scored))
        assert summary.min_prob == math.exp(min(scored))
    else:
        assert tracker.confidence is None and summary.mean_logprob is None

    # spans: exactly the maximal runs of low scored tokens
    runs: list[tuple[int, int]] = []
    for i, low in enumerate(lows):
        if low and runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        elif low:
            runs.append((i, i + 1))
    spans = summary.low_spans
    assert [(s.start_token, s.end_token) for s in spans] == runs
    assert spans == tracker.spans()
    valid = _valid(buf)
    lead_count = len(buf.translate(None, _CONTINUATION))
    for span in spans:
        lps = [scores[i].logprob_used for i in range(span.start_token, span.end_token)]
        assert all(x is not None for x in lps)
        span_lps = [x for x in lps if x is not None]
        assert span.n_tokens == len(span_lps)
        assert same(span.mean_logprob, math.fsum(span_lps) / len(span_lps))
        assert span.min_prob == math.exp(min(span_lps))
        assert span.min_index == span.start_token + span_lps.index(min(span_lps))
        assert 0 <= span.char_start <= span.char_end <= lead_count <= len(text)
        assert 0 <= span.byte_start <= span.byte_end <= len(buf)
        assert span.text == buf[span.byte_start : span.byte_end].decode("utf-8", "replace")
        if valid:
            _check_span_offsets(span, buf, text)


def _check_span_offsets(span: LowSpan, buf: bytes, text: str) -> None:
    starts_on_char = span.byte_start == len(buf) or buf[span.byte_start] & 0xC0 != 0x80
    holds_lead = any(b & 0xC0 != 0x80 for b in buf[span.byte_start : span.byte_end])
    if starts_on_char:
        assert len(text[: span.char_start].encode()) == span.byte_start
        assert span.text == text[span.char_start : span.char_end]
    else:  # the span starts inside a code point that belongs to the token before it
        assert len(text[: span.char_start].encode()) > span.byte_start
    if holds_lead:
        assert len(text[: span.char_end].encode()) == span.byte_end
    else:
        assert span.char_start == span.char_end
