"""Feedback and calibration end to end on real Redis: jobs run by a worker against the simulator's
labelled model (worker.sim.labelled: ground truth by construction, true AUROC Φ(D/√2)), judged with
Client.feedback, and calibrated from {P}:feedback; feedback for expired, unfinished and unknown
jobs."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

from worker import Client
from worker.calibrate import calibrate
from worker.events import Verdict
from worker.feedback import FeedbackError, latest_per_job, read_feedback, signals_for
from worker.sim.labelled import expected_auroc, truth

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
SEPARATION = 1.5
MODEL = f"tokenwire/sim;labelled={SEPARATION};tokens=8"
N_JOBS = 400


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """The standard error of an AUROC estimate from ``n_pos`` and ``n_neg`` answers (Hanley & McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)
    return math.sqrt(var / (n_pos * n_neg))


async def test_calibration_recovers_the_labelled_models_auroc(
    start_worker: StartWorker, client: Client
) -> None:
    await start_worker()
    prompts = [f"labelled question {i}" for i in range(N_JOBS)]
    ids = [await client.enqueue(id=f"lab-{i}", model=MODEL, input=p) for i, p in enumerate(prompts)]
    dones = await asyncio.gather(*(client.result(job_id, timeout=60) for job_id in ids))
    for job_id, prompt, done in zip(ids, prompts, dones, strict=True):
        t = truth(prompt, SEPARATION)
        assert done.confidence == pytest.approx(math.exp(t.mean_logprob), rel=1e-9)  # built as said
        await client.feedback(job_id, t.correct, "simulated truth")
    # a judgement given again replaces the first: judge one job wrongly, then correct it
    await client.feedback(ids[0], not truth(prompts[0], SEPARATION).correct)
    await client.feedback(ids[0], truth(prompts[0], SEPARATION).correct)
    entries = [e async for e in read_feedback(client.redis, client.keys)]
    assert len(entries) == N_JOBS + 2
    labelled = latest_per_job(entries)
    assert len(labelled) == N_JOBS and {f.model for f in labelled} == {MODEL}
    report = calibrate(labelled, catch=0.9)
    (model,) = report.models
    assert model.reliable and model.n_labelled == N_JOBS
    want = expected_auroc(SEPARATION)
    tolerance = 3 * hanley_mcneil_se(want, model.n_correct, model.n_incorrect)
    for name in ("confidence", "mean_logprob", "min_prob", "p10_prob", "quantile", "window_min"):
        signal = next(s for s in model.signals if s.signal == name)
        assert signal.n == N_JOBS
        assert signal.auroc is not None and abs(signal.auroc - want) <= tolerance, (name, signal.auroc, want)
        assert signal.recommended is not None and (signal.recommended.caught or 0.0) >= 0.9
    conf = next(s for s in model.signals if s.signal == "confidence")
    assert conf.setting is not None and conf.setting["review"]["min_confidence"] == pytest.approx(
        conf.recommended.threshold if conf.recommended else 0.0, abs=1e-6
    )


async def test_feedback_refusals_and_expired_jobs(start_worker: StartWorker, client: Client) -> None:
    with pytest.raises(FeedbackError, match="never enqueued") as caught:
        await client.feedback("never-was", True)
    assert caught.value.code == "unknown_job"
    await client.enqueue(id="waiting", model=MODEL, input="q")  # no worker yet: it stays queued
    with pytest.raises(FeedbackError, match=r"has not finished \(queued\)"):
        await client.feedback("waiting", True)
    await client.enqueue(id="broken", model="tokenwire/sim;fault=status;status=400", input="q")
    await start_worker()
    await client.result("waiting", timeout=30)
    with pytest.raises(Exception, match="failed"):
        await client.result("broken", timeout=30)
    with pytest.raises(FeedbackError, match="ended with `error`"):
        await client.feedback("broken", True)
    # the job's keys expire: with no review entry and no judgement its signals are gone
    await client.redis.delete(client.keys.state("waiting"), client.keys.events("waiting"))
    with pytest.raises(FeedbackError, match="expired and no review entry holds its signals"):
        await client.feedback("waiting", True)
    assert await client.redis.xlen(client.keys.feedback) == 0
    # a job judged while it lived can be judged again after it expired: the same signals
    done = await client.result(await client.enqueue(id="judged", model=MODEL, input="q2"), timeout=30)
    await client.feedback("judged", True)
    await client.redis.delete(client.keys.state("judged"), client.keys.events("judged"))
    await client.feedback("judged", False, "on second thought")
    first, second = [fb for _, fb in [e async for e in read_feedback(client.redis, client.keys)]]
    assert first.signals == second.signals and first.signals.confidence == done.confidence
    assert (first.correct, second.correct, second.label, second.source) == (
        True,
        False,
        "on second thought",
        "done",
    )
    assert latest_per_job([("1-0", first), ("2-0", second)]) == [second]


async def test_an_expired_reviewed_job_is_judged_from_its_review_entry(
    start_worker: StartWorker, client: Client
) -> None:
    """The worker puts a job whose verdict says review on {P}:review with its signals; once the
    job's keys expire, feedback records exactly the signals its done gave while it lived."""
    await start_worker()
    job_id = await client.enqueue(
        id="reviewed", model=MODEL, input="a reviewed question", review={"min_confidence": 0.999}
    )
    done = await client.result(job_id, timeout=30)
    assert isinstance(done.verdict, Verdict) and done.verdict.decision == "review"

    async def on_review() -> None:
        while not await client.redis.exists(client.keys.review_marker(job_id)):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(on_review(), timeout=10)  # written right after the done
    live = await signals_for(client.redis, client.keys, job_id)
    assert live[2] == "done" and live[1].lowest_segment_mean is not None
    await client.redis.delete(client.keys.state(job_id), client.keys.events(job_id))
    expired = await signals_for(client.redis, client.keys, job_id)
    assert expired == (live[0], live[1], "review")
    await client.feedback(job_id, True, "checked by hand")
    (entry,) = [fb async for _, fb in read_feedback(client.redis, client.keys)]
    assert (entry.source, entry.signals, entry.model) == ("review", live[1], live[0])
