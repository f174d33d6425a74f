"""``escalate.after_tokens`` with candidates (issue 16 §2) through a real worker, real Redis and the
simulator: each candidate is judged on its own signal after ``after_tokens`` answer tokens (or at
its end, when it ends sooner); when every one is under ``below`` the job stops them all at once and
escalates (the stronger model's attempt says why, naming each candidate); when one is at or above
it, the job goes on and does not escalate; a failed candidate is not judged. ``signal: agreement``
with ``after_tokens`` is refused at admission, saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import CandidateDone, Done, Error, Start, Token
from worker.jobs import InvalidJob
from worker.keys import Keys

from .conftest import RunningWorker
from .test_candidates import check_candidates, prompt_for, stream

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]
SLOW = "tokenwire/sim-cheap;tokens=200;tps=40"  # 5 s a candidate: stopping early shows
STRONG = "tokenwire/sim-strong;tokens=6"


async def sim_stats(sim_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        stats: dict[str, Any] = (await http.get(f"{sim_url}/stats")).json()
        return stats


def attempt_of(events: list[tuple[tuple[int, int], Any]], attempt: int) -> list[Any]:
    return [e for (a, _), e in events if a == attempt]


@pytest.mark.parametrize("api", ["native", "chat"])
async def test_every_candidate_under_the_bar_escalates_at_once(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str, api: str
) -> None:
    await start_worker()
    escalate = {"model": STRONG, "below": 0.999, "after_tokens": 5}
    before = await sim_stats(sim_url)
    job_id = await client.enqueue(
        model=SLOW, api=api, params={"seed": 3}, candidates={"n": 3}, escalate=escalate, **prompt_for(api)
    )
    done = await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    first = attempt_of(events, 1)
    tokens = [e for e in first if isinstance(e, Token)]
    for k in range(3):  # each candidate reached after_tokens, then stopped with the others
        mine = [t for t in tokens if t.candidate == k]
        assert 5 <= len(mine) < 200
    assert not any(isinstance(e, CandidateDone | Done | Error) for e in first)  # stopped, not ended
    starts = [e for _, e in events if isinstance(e, Start)]
    assert [s.model for s in starts] == [SLOW, STRONG]
    reason = starts[1].reason or ""
    assert reason.startswith("every candidate is under the bar (")
    for k in range(3):
        assert f"after 5 tokens of candidate {k} of {SLOW}" in reason
    assert isinstance(done, Done) and done.escalation is not None
    assert done.escalation.from_model == SLOW and done.escalation.after_tokens == 5
    assert done.escalation.tokens >= 5
    check_candidates([(i, e) for i, e in events if i[0] == 2], 3)
    # the cheap requests were closed, never finished: only the strong attempt's streams completed

    async def closed() -> bool:
        return int((await sim_stats(sim_url))["active_streams"]) == 0

    async with asyncio.timeout(10):
        while not await closed():
            await asyncio.sleep(0.02)
    after = await sim_stats(sim_url)
    started = after["streams_started"] - before["streams_started"]
    assert started == (6 if api == "native" else 2)  # 3 + 3 requests, or one for all each time
    assert after["streams_completed"] - before["streams_completed"] == started // 2


async def test_one_candidate_at_the_bar_keeps_the_job(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    await start_worker()
    model = "tokenwire/sim-cheap;tokens=12"
    fields: dict[str, Any] = {"model": model, "input": "x", "params": {"seed": 9}, "candidates": {"n": 3}}
    probe = await client.enqueue(**fields)
    await client.result(probe, timeout=60)
    # each candidate's running confidence after 5 answer tokens (the simulator is deterministic)
    at_five = sorted(
        e.confidence
        for _, e in await stream(redis, prefix, probe)
        if isinstance(e, Token) and e.index == 4 and e.confidence is not None
    )
    assert len(at_five) == 3 and at_five[1] < at_five[2]
    below = (at_five[1] + at_five[2]) / 2  # only the most confident one is at or above the bar
    escalate = {"model": STRONG, "below": below, "after_tokens": 5}
    job_id = await client.enqueue(**fields, escalate=escalate)
    done = await client.result(job_id, timeout=60)
    assert done.escalation is None and done.attempt == 1
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert all(c.error is None for c in done.candidates)
    # and when none is: it escalates (the bar above the most confident one)
    escalate = {"model": STRONG, "below": min(0.9999, at_five[2] + 1e-6), "after_tokens": 5}
    job_id = await client.enqueue(**fields, escalate=escalate)
    done = await client.result(job_id, timeout=60)
    assert done.escalation is not None and done.attempt == 2


async def test_candidates_ending_before_after_tokens_are_judged_at_their_end(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    escalate = {"model": STRONG, "below": 0.999, "after_tokens": 50}
    job_id = await client.enqueue(
        model="tokenwire/sim-cheap;tokens=4", input="x", candidates={"n": 2}, escalate=escalate
    )
    done = await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    first = attempt_of(events, 1)
    assert sorted(e.candidate for e in first if isinstance(e, CandidateDone)) == [0, 1]  # both ended
    reason = next(e for _, e in events if isinstance(e, Start) and e.attempt == 2).reason or ""
    assert "at the end (5 tokens) of candidate 0" in reason and "of candidate 1" in reason
    assert done.escalation is not None and done.attempt == 2


async def test_a_failed_candidate_is_not_judged(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    escalate = {"model": STRONG, "below": 0.999, "after_tokens": 3}
    model = "tokenwire/sim-cheap;tokens=200;tps=40;fault=status;status=400;fail_first=1"
    job_id = await client.enqueue(model=model, input="x", candidates={"n": 3}, escalate=escalate)
    done = await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    failed = [e for e in attempt_of(events, 1) if isinstance(e, CandidateDone) and e.error is not None]
    assert len(failed) == 1 and failed[0].error is not None  # the first request: HTTP 400
    reason = next(e for _, e in events if isinstance(e, Start) and e.attempt == 2).reason or ""
    assert reason.count("of candidate") == 2 and f"of candidate {failed[0].candidate} " not in reason
    assert done.escalation is not None


async def test_agreement_with_after_tokens_is_refused_saying_why(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    escalate = {"model": STRONG, "below": 0.5, "signal": "agreement", "after_tokens": 4}
    fields: dict[str, Any] = {"model": "m", "input": "x", "candidates": {"n": 3}, "escalate": escalate}
    with pytest.raises(InvalidJob, match=r"after_tokens does not go with escalate\.signal 'agreement'"):
        await client.enqueue(**fields)
    # a payload written past the client: the worker refuses it with the same reason
    await redis.xadd(Keys(prefix).jobs, {"job": msgspec.json.encode({"id": "agree", **fields})})
    items = [item async for item in client.subscribe("agree", timeout=30)]
    error = items[-1].event
    assert isinstance(error, Error) and error.code == "invalid_job"
    assert "known only once every one has answered" in error.message
