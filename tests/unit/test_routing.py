"""The escalation judgement by ``escalate.signal`` (worker/routing.py) and what admission checks."""

from __future__ import annotations

import math

import pytest

from worker.admit import Admitted, Rejected, admit
from worker.confidence import ConfidenceTracker
from worker.jobs import ChatMessage, Escalate, InvalidJob, Job, Params, decode_job
from worker.routing import admission_problem, judge, signal_value, tracker_for
from worker.settings import DEEPINFRA, Provider, Settings
from worker.upstream.base import Candidate

# 200 tokens: a long confident answer with one low run of 8 (the length-bias case)
LONG = [-0.01] * 100 + [-2.0] * 8 + [-0.01] * 92


def job(**escalate: object) -> Job:
    return Job(model="cheap", input="x", escalate=Escalate(model="big", **escalate))  # type: ignore[arg-type]


def fed(j: Job, lps: list[float]) -> ConfidenceTracker:
    tracker = tracker_for(j)
    for lp in lps:
        tracker.add(" t", lp)
    return tracker


def test_the_length_bias_case_escalates_by_window_min_not_by_confidence() -> None:
    by_conf = job(below=0.5)
    by_window = job(below=0.5, signal="window_min", window=8)
    assert by_conf.escalate is not None and by_window.escalate is not None
    conf = fed(by_conf, LONG)
    assert conf.confidence is not None and math.isclose(conf.confidence, math.exp(-0.0896))
    assert judge(conf, by_conf.escalate, "at the end (200 tokens)", "cheap") is None
    window = fed(by_window, LONG)
    value = signal_value(window, by_window.escalate)
    assert value is not None and math.isclose(value, math.exp(-2.0))
    reason = judge(window, by_window.escalate, "at the end (200 tokens)", "cheap")
    assert reason == (
        "window_min 0.1353 < 0.5 at the end (200 tokens) of cheap "
        "(lowest mean logprob -2.0000 over 8 consecutive tokens)"
    )


def test_quantile_signal() -> None:
    j = job(below=0.5, signal="quantile", q=0.04)
    assert j.escalate is not None
    tracker = fed(j, LONG)
    assert signal_value(tracker, j.escalate) == math.exp(-2.0)  # rank 8 of 200
    reason = judge(tracker, j.escalate, "after 200 tokens", "cheap")
    assert (
        reason
        == "quantile 0.1353 < 0.5 after 200 tokens of cheap (the 0.04 quantile of 200 token probabilities)"
    )
    # q = 0.05 is rank 10: past the 8 low tokens
    k = job(below=0.5, signal="quantile", q=0.05)
    assert k.escalate is not None
    assert judge(fed(k, LONG), k.escalate, "after 200 tokens", "cheap") is None


def test_quantile_default_q_is_a_tenth() -> None:
    j = job(below=0.5, signal="quantile")
    assert j.escalate is not None
    tracker = fed(j, [-3.0] * 10 + [-0.01] * 90)  # rank 10 of 100 is the last low one
    assert signal_value(tracker, j.escalate) == math.exp(-3.0)
    assert tracker.finish().quantile_q == 0.1


def test_margin_signal() -> None:
    j = Job(
        model="cheap",
        input="x",
        params=Params(top_logprobs=2),
        escalate=Escalate(model="big", below=0.3, signal="margin"),
    )
    assert j.escalate is not None
    tracker = tracker_for(j)
    tracker.add("a", math.log(0.5), top=[Candidate("a", math.log(0.5)), Candidate("b", math.log(0.4))])
    tracker.add("c", math.log(0.6), top=[Candidate("c", math.log(0.6)), Candidate("d", math.log(0.3))])
    value = signal_value(tracker, j.escalate)
    assert value is not None and math.isclose(value, 0.2)  # (0.1 + 0.3) / 2
    reason = judge(tracker, j.escalate, "after 2 tokens", "cheap")
    assert reason == "margin 0.2000 < 0.3 after 2 tokens of cheap (mean top-1/top-2 margin over 2 tokens)"


def test_unknown_values_escalate() -> None:
    empty = job(below=0.5, signal="window_min")
    assert empty.escalate is not None
    assert judge(tracker_for(empty), empty.escalate, "after 4 tokens", "cheap") == (
        "no scored tokens after 4 tokens: window_min unknown, escalating to big"
    )
    plain = job(below=0.5)
    assert plain.escalate is not None
    assert judge(tracker_for(plain), plain.escalate, "at the end (0 tokens)", "cheap") == (
        "no scored tokens at the end (0 tokens): confidence unknown, escalating to big"
    )
    margin = Job(
        model="cheap",
        input="x",
        params=Params(top_logprobs=5),
        escalate=Escalate(model="big", below=0.5, signal="margin"),
    )
    assert margin.escalate is not None
    tracker = fed(margin, [-0.1])  # scored, but the provider sent no alternatives
    assert judge(tracker, margin.escalate, "after 1 tokens", "cheap") == (
        "no token with two top-k alternatives after 1 tokens: margin unknown, escalating to big"
    )


def test_confidence_reason_is_todays() -> None:
    j = job(below=0.9)
    assert j.escalate is not None
    assert judge(fed(j, [-1.0]), j.escalate, "after 1 tokens", "cheap") == (
        "confidence 0.3679 < 0.9 after 1 tokens of cheap"
    )


def test_tracker_for_uses_the_jobs_parameters_or_the_defaults() -> None:
    assert tracker_for(Job(model="m", input="x")).finish().window == 8
    summary = fed(job(below=0.5, signal="window_min", window=3), [-1.0, -2.0]).finish()
    assert summary.window == 3 and summary.quantile_q == 0.1


# ---------------------------------------------------------------------------------------------
# admission


@pytest.mark.parametrize(
    ("escalate", "message"),
    [
        ('{"model":"b","below":0.5,"q":0.2}', "escalate.q is the quantile of escalate.signal 'quantile'"),
        (
            '{"model":"b","below":0.5,"signal":"quantile","window":4}',
            "escalate.window is the window of escalate.signal 'window_min'",
        ),
        ('{"model":"b","below":0.5,"signal":"margin"}', "needs top-k alternatives: set params.top_logprobs"),
        ('{"model":"b","below":0.5,"signal":"median"}', "Invalid enum value 'median'"),
        ('{"model":"b","below":0.5,"signal":"quantile","q":0}', "Expected `float` > 0.0"),
        ('{"model":"b","below":0.5,"signal":"window_min","window":0}', "Expected `int` >= 1"),
    ],
)
def test_bad_signals_are_clear_admission_errors(escalate: str, message: str) -> None:
    payload = f'{{"model":"m","input":"x","escalate":{escalate}}}'.encode()
    with pytest.raises(InvalidJob, match="escalate"):
        decode_job(payload)
    outcome = admit("1-0", payload, Settings())
    assert isinstance(outcome, Rejected) and outcome.code == "invalid_job"
    assert message in outcome.reason


def test_margin_on_a_native_provider_without_top_n_tokens_is_refused() -> None:
    payload = (
        b'{"model":"m","input":"x","params":{"top_logprobs":5},'
        b'"escalate":{"model":"b","below":0.5,"signal":"margin"}}'
    )
    outcome = admit("1-0", payload, Settings())
    assert isinstance(outcome, Rejected) and outcome.code == "invalid_job"
    assert "provider 'deepinfra' sends none on the native API" in outcome.reason
    tgi = Settings(
        providers={"tgi": Provider(native_url="http://127.0.0.1:9/{model}", supports_top_n_tokens=True)}
    )
    allowed = admit("1-0", payload.replace(b'"input"', b'"provider":"tgi","input"'), tgi)
    assert isinstance(allowed, Admitted) and allowed.stronger is not None


def test_admission_problem_is_none_for_other_signals_and_apis() -> None:
    assert admission_problem(job(below=0.5), "deepinfra", DEEPINFRA) is None
    chat = Job(
        model="m",
        api="chat",
        messages=[ChatMessage(role="user", content="x")],
        params=Params(top_logprobs=2),
        escalate=Escalate(model="b", below=0.5, signal="margin"),
    )
    assert admission_problem(chat, "deepinfra", DEEPINFRA) is None
