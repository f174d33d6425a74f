"""Issue 13 §4 end to end (real Redis + the simulator + a worker): escalation by each
``escalate.signal``, and the length-bias case: a long confident answer with one low window escalates
by ``window_min`` and not by ``confidence``."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client, Done, Error, Job, Params, Provider, Start, Token
from worker.client import Received
from worker.jobs import Escalate
from worker.keys import Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
# 200 tokens of logprob -0.01 (the later bytes of split accents at -2^-12) with 8 at -2.0 from token 100
LONG = "tokenwire/sim-cheap;tokens=200;lp=-0.01;low_at=100;low_run=8;low_lp=-2.0"
STRONG = "tokenwire/sim-strong;tokens=12"


async def collect(client: Client, job: Job) -> list[Received]:
    job_id = await client.enqueue(job)
    return [item async for item in client.subscribe(job_id, timeout=30)]


def starts(items: list[Received]) -> list[Start]:
    return [i.event for i in items if isinstance(i.event, Start)]


def tokens_of(items: list[Received], attempt: int) -> list[Token]:
    return [i.event for i in items if isinstance(i.event, Token) and i.event.attempt == attempt]


def done_of(items: list[Received]) -> Done:
    done = items[-1].event
    assert isinstance(done, Done), done
    return done


def hand_confidence(tokens: list[Token]) -> float:
    lps = [t.logprob for t in tokens if not t.special]
    assert all(lp is not None for lp in lps)
    return math.exp(math.fsum(lp for lp in lps if lp is not None) / len(lps))


async def test_the_length_bias_case(start_worker: StartWorker, client: Client) -> None:
    """By confidence the long answer passes (≈ 0.91 > 0.5); by window_min (exp(−2.0) ≈ 0.135) it
    escalates: the same stream, two routings."""
    await start_worker()
    by_confidence = await collect(
        client, Job(model=LONG, input="long answer", escalate=Escalate(model=STRONG, below=0.5))
    )
    assert len(starts(by_confidence)) == 1
    done = done_of(by_confidence)
    cheap = tokens_of(by_confidence, 1)
    assert done.escalation is None and len(cheap) == 201
    assert [t.logprob for t in cheap[100:108]] == [-2.0] * 8
    assert done.confidence is not None and math.isclose(
        done.confidence, hand_confidence(cheap), rel_tol=1e-12
    )
    assert done.confidence > 0.9
    summary = done.summary  # the signals are in every done, whatever the job routes by
    assert summary.window == 8 and summary.window_min is not None
    assert math.isclose(summary.window_min, -2.0, rel_tol=1e-12)
    assert summary.quantile_q == 0.1 and summary.p10_prob == summary.quantile == math.exp(-0.01)

    esc = Escalate(model=STRONG, below=0.5, signal="window_min", window=8)
    by_window = await collect(client, Job(model=LONG, input="long answer", escalate=esc))
    first, second = starts(by_window)
    assert (first.model, second.model) == (LONG, STRONG)
    assert second.reason == (
        f"window_min {math.exp(-2.0):.4f} < 0.5 at the end (201 tokens) of {LONG} "
        "(lowest mean logprob -2.0000 over 8 consecutive tokens)"
    )
    done = done_of(by_window)
    assert done.attempt == 2 and done.escalation is not None
    assert done.escalation.summary.window_min is not None
    assert math.isclose(done.escalation.summary.window_min, -2.0, rel_tol=1e-12)
    assert [t.text for t in tokens_of(by_window, 1)] == [t.text for t in cheap]  # the same stream


async def test_window_min_after_tokens_stops_the_stream(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=0.5, signal="window_min", window=4, after_tokens=120)
    items = await collect(client, Job(model=LONG, input="long answer", escalate=esc))
    assert len(tokens_of(items, 1)) == 120  # stopped there
    reason = starts(items)[1].reason
    assert reason is not None and reason.startswith(f"window_min {math.exp(-2.0):.4f} < 0.5 after 120 tokens")
    # a window of 16 over the 8 low tokens: (8·-2.0 + 8·-0.01)/16 = -1.005 → exp ≈ 0.366 > 0.3
    wide = Escalate(model=STRONG, below=0.3, signal="window_min", window=16, after_tokens=120)
    items = await collect(client, Job(model=LONG, input="long answer", escalate=wide))
    assert len(starts(items)) == 1
    summary = done_of(items).summary
    assert summary.window == 16 and summary.window_min is not None
    assert summary.window_min < -1.0  # at most 8 low tokens in any window of 16


async def test_quantile_signal(start_worker: StartWorker, client: Client) -> None:
    """200 content tokens, 8 of them at −2.0: the 0.04 quantile (rank 8) is exp(−2.0), the 0.05
    quantile (rank 10) exp(−0.01) or a split accent's later byte."""
    await start_worker()
    low = Escalate(model=STRONG, below=0.5, signal="quantile", q=0.04)
    items = await collect(client, Job(model=LONG, input="long answer", escalate=low))
    reason = starts(items)[1].reason
    assert reason == (
        f"quantile {math.exp(-2.0):.4f} < 0.5 at the end (201 tokens) of {LONG} "
        "(the 0.04 quantile of 200 token probabilities)"
    )
    cheap = done_of(items).escalation
    assert cheap is not None and cheap.summary.quantile == math.exp(-2.0) and cheap.summary.quantile_q == 0.04
    high = Escalate(model=STRONG, below=0.5, signal="quantile", q=0.05)
    items = await collect(client, Job(model=LONG, input="long answer", escalate=high))
    assert len(starts(items)) == 1
    summary = done_of(items).summary
    assert summary.quantile is not None and summary.quantile > 0.98 and summary.quantile_q == 0.05


async def test_margin_signal(start_worker: StartWorker, client: Client, sim_url: str) -> None:
    """Near-certain tokens (p ≈ 0.999) have a margin near 1; tokens of p = 0.2 share the rest of the
    mass with their alternatives, so no margin reaches 0.9. The summary's mean margin is the mean
    of the token events' margins."""
    providers = {"sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}", supports_top_n_tokens=True)}
    await start_worker(providers=providers)
    esc = Escalate(model=STRONG, below=0.9, signal="margin")
    params = Params(top_logprobs=4)
    sure = await collect(
        client, Job(model="tokenwire/sim-cheap;tokens=40;lp=-0.001", input="m", params=params, escalate=esc)
    )
    assert len(starts(sure)) == 1
    done = done_of(sure)
    margins = [t.topk.margin for t in tokens_of(sure, 1) if t.topk is not None and t.topk.margin is not None]
    assert len(margins) >= 30
    assert done.summary.mean_margin is not None
    assert math.isclose(done.summary.mean_margin, math.fsum(margins) / len(margins), rel_tol=1e-12)
    assert done.summary.mean_margin >= 0.9

    unsure = await collect(
        client, Job(model="tokenwire/sim-cheap;tokens=40;lp=-1.6", input="m", params=params, escalate=esc)
    )
    cheap = tokens_of(unsure, 1)
    margins = [t.topk.margin for t in cheap if t.topk is not None and t.topk.margin is not None]
    mean = math.fsum(margins) / len(margins)
    assert mean < 0.9
    reason = starts(unsure)[1].reason
    assert reason == (
        f"margin {mean:.4f} < 0.9 at the end ({len(cheap)} tokens) of tokenwire/sim-cheap;tokens=40;lp=-1.6 "
        f"(mean top-1/top-2 margin over {len(margins)} tokens)"
    )


async def test_confidence_routing_is_todays(start_worker: StartWorker, client: Client) -> None:
    """The default signal: the same reason and the same events as before, plus the summary fields."""
    await start_worker()
    esc = Escalate(model=STRONG, below=0.999, after_tokens=5)
    items = await collect(client, Job(model="tokenwire/sim-cheap;tokens=30", input="x", escalate=esc))
    reason = starts(items)[1].reason
    cheap = tokens_of(items, 1)
    assert len(cheap) == 5 and cheap[-1].confidence is not None
    assert (
        reason
        == f"confidence {cheap[-1].confidence:.4f} < 0.999 after 5 tokens of tokenwire/sim-cheap;tokens=30"
    )
    done = done_of(items)
    assert done.escalation is not None and msgspec.json.encode(done.escalation).count(b'"signal"') == 0


async def test_bad_signals_are_refused_at_admission(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """Each ends with an error event naming what is wrong (the job never reaches a provider)."""
    await start_worker()
    keys = Keys(client.keys.prefix)
    cases: dict[str, tuple[dict[str, object], dict[str, object], str]] = {
        "margin-no-topk": ({"signal": "margin"}, {}, "needs top-k alternatives: set params.top_logprobs"),
        "margin-native": ({"signal": "margin"}, {"top_logprobs": 5}, "sends none on the native API"),
        "q-without-quantile": ({"q": 0.1}, {}, "escalate.q is the quantile of escalate.signal 'quantile'"),
        "window-without-window-min": (
            {"signal": "quantile", "window": 3},
            {},
            "escalate.window is the window",
        ),
        "unknown-signal": ({"signal": "mean"}, {}, "Invalid enum value 'mean'"),
    }
    for job_id, (signal, params, _) in cases.items():
        payload = {"id": job_id, "model": LONG, "input": "x", "params": params,
                   "escalate": {"model": STRONG, "below": 0.5, **signal}}  # fmt: skip
        await redis.xadd(keys.jobs, {"job": msgspec.json.encode(payload)})
    for job_id, (_, _, words) in cases.items():
        items = [i async for i in client.subscribe(job_id, timeout=30)]
        error = items[-1].event
        assert len(items) == 1 and isinstance(error, Error), items
        assert error.code == "invalid_job" and words in error.message, error.message


OLD_SUMMARY = {
    "mean_logprob", "cum_logprob", "perplexity", "min_prob", "min_index", "ewma_confidence", "mean_prob",
    "bits_per_byte", "n_tokens", "n_scored", "n_missing", "n_excluded", "n_clamped", "logprobs_available",
    "low_spans", "mean_entropy_lb", "max_entropy_lb", "max_entropy_index", "mean_margin", "n_topk",
    "n_not_top1", "low_spans_truncated",
}  # fmt: skip
NEW_SUMMARY = {"p10_prob", "quantile", "quantile_q", "window_min", "window"}


async def test_a_plain_job_adds_only_the_summary_fields(start_worker: StartWorker, client: Client) -> None:
    """A job that asks for none of this: its summary gains exactly the five signal fields, with the
    default q and window."""
    await start_worker()
    job_id = await client.enqueue(Job(model="tokenwire/sim;tokens=20", input="plain"))
    items = [i async for i in client.subscribe(job_id, timeout=30)]
    raw = msgspec.json.decode(msgspec.json.encode(done_of(items).summary))
    assert set(raw) - OLD_SUMMARY == NEW_SUMMARY
    assert raw["quantile_q"] == 0.1 and raw["window"] == 8 and raw["quantile"] == raw["p10_prob"]


async def test_the_strong_attempt_has_the_default_parameters(
    start_worker: StartWorker, client: Client
) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=0.5, signal="quantile", q=0.04)
    done = done_of(await collect(client, Job(model=LONG, input="long answer", escalate=esc)))
    assert done.attempt == 2 and done.escalation is not None
    assert (done.summary.quantile_q, done.summary.window) == (0.1, 8)
    assert done.escalation.summary.quantile_q == 0.04
