"""Signals of a done and the {P}:feedback stream on fakeredis: what a judgement records, where the
signals come from, and every refusal."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.confidence import ConfidenceTracker
from worker.events import Done, Error, Start, Token, Usage, encode_event
from worker.feedback import (
    Feedback,
    FeedbackError,
    decode_feedback,
    latest_per_job,
    read_feedback,
    record_feedback,
    signals_for,
)
from worker.keys import Keys
from worker.signals import Signals, checked_signals, decode_signals, encode_signals, nearest_rank, signals_of

KEYS = Keys("tw")
LOGPROBS = [-0.05, -0.1, -0.02, -0.3, -2.5, -1.9, -0.01]  # confidence.md TV1


def done_of(logprobs: list[float], attempt: int = 1) -> Done:
    tracker = ConfidenceTracker()
    for i, lp in enumerate(logprobs):
        tracker.add(f"t{i}", lp)
    summary = tracker.finish()
    return Done(
        job_id="j1",
        attempt=attempt,
        finish_reason="stop",
        text="x",
        usage=Usage(output_tokens=len(logprobs)),
        confidence=math.exp(summary.mean_logprob) if summary.mean_logprob is not None else None,
        summary=summary,
    )


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


async def write_job(r: fakeredis.FakeAsyncRedis, job_id: str, events: list[object]) -> None:
    for event in events:
        await r.xadd(KEYS.events(job_id), {"event": encode_event(event)})  # type: ignore[arg-type]


def test_signals_of_a_done_are_its_summary_and_the_token_decile() -> None:
    done = done_of(LOGPROBS)
    signals = signals_of(done, segment_means=[-0.1, None, -2.2], token_logprobs=LOGPROBS)
    assert signals.confidence == pytest.approx(0.498006147756, abs=1e-12)
    assert signals.mean_logprob == pytest.approx(-0.697142857143, abs=1e-12)
    assert signals.min_prob == pytest.approx(0.0820849986239, abs=1e-12)
    assert signals.mean_entropy_lb is None and signals.margin is None
    assert signals.lowest_segment_mean == -2.2
    # 7 tokens: the ceil(0.7) = 1st smallest probability is the decile
    assert signals.p10_prob == pytest.approx(math.exp(-2.5))
    assert signals.n_scored == 7
    assert signals_of(done).p10_prob == signals.p10_prob  # the summary carries it too
    assert signals.quantile_q == 0.1 and signals.window == 8 and signals.window_min is not None
    older = msgspec.structs.replace(done, summary=msgspec.structs.replace(done.summary, p10_prob=None))
    assert signals_of(older).p10_prob is None  # a worker before p10_prob, no tokens given
    assert signals_of(older, token_logprobs=LOGPROBS).p10_prob == pytest.approx(math.exp(-2.5))


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert nearest_rank(values, 0.1) == 2.0  # ceil(2) = 2nd
    assert nearest_rank(values[:11], 0.1) == 2.0  # ceil(1.1) = 2nd
    assert nearest_rank(values[:10], 0.1) == 1.0
    assert nearest_rank([5.0], 0.1) == 5.0 and nearest_rank([], 0.1) is None
    assert nearest_rank(values, 1.0) == 20.0 and nearest_rank(values, 0.0) == 1.0


def test_the_decile_skips_unscored_tokens_and_floors_sentinels() -> None:
    done = done_of([-0.1])
    done = msgspec.structs.replace(done, summary=msgspec.structs.replace(done.summary, p10_prob=None))
    signals = signals_of(done, token_logprobs=[None, float("nan"), 5.0, -9999.0, *[-0.1] * 9])
    assert signals.p10_prob == pytest.approx(math.exp(-20.0))  # -9999 is floored to F = -20


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decode_signals_raises_only_value_error(raw: bytes | str) -> None:
    with contextlib.suppress(ValueError):
        decode_signals(raw)


def test_signals_refuse_non_finite_values() -> None:
    with pytest.raises(ValueError, match="unreadable signals"):
        decode_signals(b'{"confidence": 1e999}')
    with pytest.raises(ValueError, match="`confidence` is inf"):
        checked_signals(Signals(confidence=math.inf))
    assert decode_signals(encode_signals(Signals(confidence=0.5))) == Signals(confidence=0.5)


async def test_feedback_records_the_model_and_signals_of_the_done(redis: fakeredis.FakeAsyncRedis) -> None:
    start = Start(job_id="j1", attempt=1, model="m-cheap", provider="sim", api="native")
    tokens = [
        Token(job_id="j1", attempt=1, index=i, text=f"t{i}", logprob=lp) for i, lp in enumerate(LOGPROBS)
    ]
    await write_job(redis, "j1", [start, *tokens, done_of(LOGPROBS)])
    model, signals, source = await signals_for(redis, KEYS, "j1")
    assert (model, source) == ("m-cheap", "done")
    assert signals.p10_prob == pytest.approx(math.exp(-2.5))
    entry = await record_feedback(
        redis, KEYS, job_id="j1", correct=False, model=model, signals=signals, label="wrong year"
    )
    rows = [row async for row in read_feedback(redis, KEYS)]
    assert [r[0] for r in rows] == [entry]
    fb = rows[0][1]
    assert (fb.job_id, fb.correct, fb.label, fb.model, fb.source) == (
        "j1",
        False,
        "wrong year",
        "m-cheap",
        "done",
    )
    assert fb.signals == signals and fb.at > 0


async def test_only_the_done_attempts_tokens_count(redis: fakeredis.FakeAsyncRedis) -> None:
    first = [
        Start(job_id="j1", attempt=1, model="cheap", provider="sim", api="native"),
        Token(job_id="j1", attempt=1, index=0, text="a", logprob=-9.0),
    ]
    second = [
        Start(job_id="j1", attempt=2, model="strong", provider="sim", api="native"),
        *(Token(job_id="j1", attempt=2, index=i, text="b", logprob=-0.5) for i in range(3)),
        done_of([-0.5] * 3, attempt=2),
    ]
    await write_job(redis, "j1", [*first, *second])
    model, signals, _ = await signals_for(redis, KEYS, "j1")
    assert model == "strong" and signals.p10_prob == pytest.approx(math.exp(-0.5))


async def test_refusals_name_what_was_wrong(redis: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(FeedbackError, match="never enqueued") as caught:
        await signals_for(redis, KEYS, "nope")
    assert caught.value.code == "unknown_job"
    await redis.hset(KEYS.state("q"), mapping={"state": "queued", "model": "m"})
    with pytest.raises(FeedbackError, match=r"has not finished \(queued\)"):
        await signals_for(redis, KEYS, "q")
    await write_job(redis, "r", [Start(job_id="r", attempt=1, model="m", provider="sim", api="native")])
    with pytest.raises(FeedbackError, match="has not finished") as caught:
        await signals_for(redis, KEYS, "r")
    assert caught.value.code == "not_finished"
    await write_job(redis, "e", [Error(job_id="e", attempt=1, code="upstream", message="x")])
    with pytest.raises(FeedbackError, match="ended with `error`") as caught:
        await signals_for(redis, KEYS, "e")
    assert caught.value.code == "no_answer"
    with pytest.raises(FeedbackError, match="not a job id"):
        await signals_for(redis, KEYS, "bad id{}")
    for bad in ({"label": ""}, {"label": "x" * 1001}, {"job_id": "a b"}, {"model": ""}):
        kwargs = {"job_id": "j", "correct": True, "model": "m", "label": None, **bad}
        with pytest.raises(FeedbackError, match="invalid feedback") as caught:
            await record_feedback(redis, KEYS, signals=Signals(), **kwargs)  # type: ignore[arg-type]
        assert caught.value.code == "invalid"
    with pytest.raises(FeedbackError, match="`correct` must be true or false"):
        await record_feedback(redis, KEYS, job_id="j", correct=1, model="m", signals=Signals())  # type: ignore[arg-type]
    with pytest.raises(FeedbackError, match="`min_prob` is nan"):
        await record_feedback(
            redis, KEYS, job_id="j", correct=True, model="m", signals=Signals(min_prob=math.nan)
        )
    assert await redis.xlen(KEYS.feedback) == 0


async def test_the_stream_is_capped_and_unreadable_entries_are_skipped(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    for i in range(30):
        await record_feedback(
            redis, KEYS, job_id=f"j{i}", correct=True, model="m", signals=Signals(), maxlen=10
        )
    assert await redis.xlen(KEYS.feedback) <= 30  # approximate trimming (fakeredis trims exactly)
    await redis.xadd(KEYS.feedback, {"feedback": b"{not json"})
    await redis.xadd(KEYS.feedback, {"other": b"x"})
    bad: list[str] = []
    rows = [row async for row in read_feedback(redis, KEYS, bad=bad)]
    assert len(bad) == 2 and all(isinstance(fb, Feedback) for _, fb in rows)


async def test_reading_pages_through_the_stream_from_a_time(redis: fakeredis.FakeAsyncRedis) -> None:
    for i in range(2500):
        await redis.xadd(
            KEYS.feedback,
            {
                "feedback": msgspec.json.encode(
                    Feedback(job_id=f"j{i}", correct=True, model="m", signals=Signals())
                )
            },
            id=f"{1000 + i}-0",
        )
    assert len([r async for r in read_feedback(redis, KEYS)]) == 2500
    assert len([r async for r in read_feedback(redis, KEYS, since_ms=3000)]) == 500


def test_the_last_judgement_of_a_job_wins() -> None:
    def fb(job: str, correct: bool) -> Feedback:
        return Feedback(job_id=job, correct=correct, model="m", signals=Signals())

    rows = [("1-0", fb("a", True)), ("2-0", fb("b", True)), ("3-0", fb("a", False))]
    assert [(f.job_id, f.correct) for f in latest_per_job(rows)] == [("b", True), ("a", False)]


@given(st.binary(max_size=300))
def test_decode_feedback_raises_only_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_feedback(raw)


async def test_an_expired_job_is_judged_from_its_review_entry(redis: fakeredis.FakeAsyncRedis) -> None:
    keys = KEYS
    old = Signals(confidence=0.2, mean_logprob=math.log(0.2), n_scored=3)
    new = Signals(confidence=0.3, mean_logprob=math.log(0.3), lowest_segment_mean=-2.5, n_scored=4)
    await redis.xadd(keys.review, {"job_id": "gone", "model": "m", "signals": encode_signals(old)})
    await redis.xadd(keys.review, {"job_id": "other", "model": "m2", "signals": encode_signals(new)})
    await redis.xadd(keys.review, {"job_id": "gone", "model": "m", "signals": encode_signals(new)})
    await redis.xadd(keys.review, {"job_id": "gone", "model": "m", "signals": b"{broken"})  # skipped
    model, signals, source = await signals_for(redis, keys, "gone")
    assert (model, signals, source) == ("m", new, "review")  # the newest readable entry
    with pytest.raises(FeedbackError, match="no review entry holds its signals"):
        await signals_for(redis, keys, "never")
    # with its marker, the entry the marker names (here the older one: no scan of the stream)
    entries: Any = await redis.xrange(keys.review, count=1)
    first = entries[0][0]
    await redis.hset(keys.review_marker("gone"), mapping={"entry": first})
    assert await signals_for(redis, keys, "gone") == ("m", old, "review")
    # a marker naming an entry that was trimmed away: the stream is read instead
    await redis.hset(keys.review_marker("gone"), mapping={"entry": "1-1"})
    assert await signals_for(redis, keys, "gone") == ("m", new, "review")


async def test_an_expired_job_judged_before_is_judged_from_that_judgement(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    signals = Signals(confidence=0.4, n_scored=2)
    await record_feedback(
        redis, KEYS, job_id="old", correct=True, model="m", signals=signals, source="review"
    )
    await redis.xadd(KEYS.feedback, {"feedback": b"junk"})
    assert await signals_for(redis, KEYS, "old") == ("m", signals, "review")
