"""Candidates (issue 16 §2), the pure parts: ranking, scores, agreement's normalisation, the
candidates' jobs (seeds varied), the job field's validation, the events' shapes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.candidates import agreement, candidate_job, normalise, rank, score_of
from worker.events import CandidateDone, Done, Summary, Token, Usage, decode_event, encode_event, event_type
from worker.jobs import InvalidJob, Job, Params, decode_job


def summary(**fields: object) -> Summary:
    base: dict[str, object] = {
        "mean_logprob": -0.5,
        "cum_logprob": -2.0,
        "perplexity": None,
        "min_prob": None,
        "min_index": None,
        "ewma_confidence": None,
        "mean_prob": None,
        "bits_per_byte": None,
        "n_tokens": 4,
        "n_scored": 4,
        "n_missing": 0,
        "n_excluded": 0,
        "n_clamped": 0,
        "logprobs_available": True,
        "low_spans": [],
    }
    base.update(fields)
    return msgspec.convert(base, Summary)


def done(confidence: float | None = 0.6, **fields: object) -> Done:
    return Done(
        job_id="j",
        attempt=1,
        finish_reason="stop",
        text="x",
        usage=Usage(),
        confidence=confidence,
        summary=summary(**fields),
    )


def test_rank_higher_first_unknown_last_ties_to_lower_index() -> None:
    assert rank([(0, -1.0), (1, -0.5), (2, None), (3, -0.5)]) == [1, 3, 0, 2]
    assert rank([(0, None), (1, None)]) == [0, 1]
    assert rank([(2, 0.0)]) == [2]


def test_scores_by_rank_by() -> None:
    d = done(mean_logprob=-0.25, cum_logprob=-3.0, quantile=0.4, window_min=-1.5, mean_margin=0.7)
    assert score_of(d, "mean_logprob") == -0.25
    assert score_of(d, "cum_logprob") == -3.0
    assert score_of(d, "confidence") == 0.6
    assert score_of(d, "quantile") == 0.4
    assert score_of(d, "window_min") == -1.5
    assert score_of(d, "margin") == 0.7
    # nothing scored: unknown, not 0 (it would beat every negative logprob)
    empty = done(confidence=None, mean_logprob=None, cum_logprob=0.0, n_scored=0)
    assert [score_of(empty, r) for r in ("mean_logprob", "cum_logprob", "confidence", "margin")] == [None] * 4
    assert score_of(done(mean_logprob=float("nan")), "mean_logprob") is None


def test_mean_logprob_is_length_normalised_and_cum_logprob_is_not() -> None:
    short = done(mean_logprob=-0.5, cum_logprob=-1.0, n_scored=2)
    long = done(mean_logprob=-0.2, cum_logprob=-4.0, n_scored=20)
    by_mean = rank([(0, score_of(short, "mean_logprob")), (1, score_of(long, "mean_logprob"))])
    by_cum = rank([(0, score_of(short, "cum_logprob")), (1, score_of(long, "cum_logprob"))])
    assert by_mean == [1, 0] and by_cum == [0, 1]


def test_normalise_folds_whitespace_and_case() -> None:
    assert normalise("  Positive\n\t Review ") == "positive review"
    assert normalise("STRASSE") == normalise("straße")  # casefold, not lower
    assert normalise("Spam\nbecause it sells pills", "first_line") == "spam"
    assert normalise("\n\n  Spam  \nmore", "first_line") == "spam"
    assert normalise("", "first_line") == ""


def test_agreement_share_of_answers_equal_to_the_winners() -> None:
    assert agreement(["Yes", " yes ", "No"], "YES") == pytest.approx(2 / 3)
    assert agreement(["Billing\nbecause", "billing\nother reason", "Spam"], "Billing\nx", "first_line") == (
        pytest.approx(2 / 3)
    )
    assert agreement(["a b", "a  b"], "a b") == 1.0
    assert agreement([], "a") == 0.0


@given(st.lists(st.text(max_size=30), min_size=1, max_size=8), st.sampled_from(["text", "first_line"]))
def test_agreement_bounds_and_self_agreement(texts: list[str], agree_on: str) -> None:
    for winner in texts:
        share = agreement(texts, winner, agree_on)
        assert 1 / len(texts) <= share <= 1.0  # the winner agrees with itself
    assert normalise(normalise(texts[0])) == normalise(texts[0])


def test_candidate_jobs_vary_the_seed() -> None:
    job = Job(model="m", input="hi", params=Params(seed=10))
    seeds = [candidate_job(job, k).params.seed for k in range(3)]
    assert seeds == [10, 11, 12]
    seedless = Job(model="m", input="hi")
    assert [candidate_job(seedless, k).params.seed for k in range(3)] == [0, 1, 2]
    top = decode_job(b'{"model":"m","input":"hi","params":{"seed":9223372036854775807},"candidates":{"n":2}}')
    assert candidate_job(top, 1).params.seed == 0  # wraps within the seed's range
    assert candidate_job(top, 0).candidates is None and candidate_job(top, 0).escalate is None


@pytest.mark.parametrize(
    ("candidates", "words"),
    [
        ('{"n":0}', "n"),
        ('{"n":9}', "n"),
        ('{"n":3,"rank_by":"length"}', "rank_by"),
        ('{"n":3,"agree_on":"tokens"}', "agree_on"),
        ('{"n":3,"bogus":1}', "bogus"),
        ('{"rank_by":"confidence"}', "n"),
        ('{"n":2,"rank_by":"margin"}', "top_logprobs"),
    ],
)
def test_bad_candidates_are_refused_naming_the_field(candidates: str, words: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        decode_job(b'{"model":"m","input":"hi","candidates":%s}' % candidates.encode())
    assert words in str(refused.value)


def test_agreement_signal_needs_candidates() -> None:
    esc = b'"escalate":{"model":"big","below":0.6,"signal":"agreement"}'
    with pytest.raises(InvalidJob, match=r"candidates\.n of 2 or more"):
        decode_job(b'{"model":"m","input":"hi",%s}' % esc)
    with pytest.raises(InvalidJob, match=r"candidates\.n of 2 or more"):
        decode_job(b'{"model":"m","input":"hi","candidates":{"n":1},%s}' % esc)
    job = decode_job(b'{"model":"m","input":"hi","candidates":{"n":3},%s}' % esc)
    assert job.escalate is not None and job.escalate.signal == "agreement"


def test_events_shapes() -> None:
    token = Token(job_id="j", attempt=1, index=0, text="a", logprob=-0.1)
    assert b"candidate" not in encode_event(token)  # a single-candidate job: today's event
    tagged = msgspec.structs.replace(token, candidate=2)
    assert decode_event(encode_event(tagged)) == tagged
    close = CandidateDone(job_id="j", attempt=1, candidate=1, finish_reason="stop", text="a")
    raw = encode_event(close)
    assert raw.startswith(b'{"type":"candidate_done"')
    assert decode_event(raw) == close and event_type(close) == "candidate_done"
    plain = done()
    assert b"candidates" not in encode_event(plain) and b"agreement" not in encode_event(plain)


class _Ctx:
    def __init__(self, max_event_bytes: int) -> None:
        self.settings = type("S", (), {"max_event_bytes": max_event_bytes})()


class _Attempt:
    def __init__(self, max_event_bytes: int) -> None:
        self.ctx = _Ctx(max_event_bytes)


def test_long_candidates_are_cut_to_fit_the_event_bound() -> None:
    from worker.candidates import _bounded, _bounded_results
    from worker.events import CandidateResult, LowSpan

    span = LowSpan(
        start_token=0, end_token=1, char_start=0, char_end=1, byte_start=0, byte_end=1,
        text="x", min_prob=0.1, min_index=0, n_tokens=1, mean_logprob=-2.3,
    )  # fmt: skip
    spanned = summary(low_spans=[span] * 50)
    results = [
        CandidateResult(
            index=k, rank=k + 1, score=-0.1, finish_reason="length", text="é" * 5000, summary=spanned
        )
        for k in range(4)
    ]
    results = [msgspec.structs.replace(r, summary=spanned) for r in results]
    fake: Any = _Attempt(8192)
    cut = _bounded_results(results, fake)
    assert len(msgspec.json.encode(cut)) <= 4096
    assert all(c.text_truncated and c.text and results[0].text.startswith(c.text) for c in cut)
    assert all(c.summary is not None and c.summary.low_spans_truncated for c in cut)
    small = [msgspec.structs.replace(r, text="ok", summary=None) for r in results]
    assert _bounded_results(small, fake) == small  # what fits is left alone
    close = CandidateDone(job_id="j", attempt=1, candidate=0, text="é" * 9000, summary=spanned)
    bounded = _bounded(close, fake)
    assert (
        len(encode_event(bounded)) <= 8192 and bounded.text_truncated and close.text.startswith(bounded.text)
    )
