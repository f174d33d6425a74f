"""Several candidates on one stream (issue 16 §2) through a real worker, real Redis and the
simulator: each candidate's tokens tagged and counted within it, one ``candidate_done`` each, the
winner's ``done`` with every candidate and the agreement; ids strictly increasing across
interleaved candidates; a failing candidate does not fail the job; all failing is one ``error``;
cancel ends them all; ``review`` segments per candidate; a job without ``candidates`` unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.candidates import agreement, score_of
from worker.client import JobFailed
from worker.events import Cancelled, CandidateDone, Done, Error, Segment, Start, Token, decode_event
from worker.feedback import signals_for
from worker.keys import GROUP, Keys
from worker.review import ReviewItem, ReviewQueue
from worker.settings import Price, Provider

from .conftest import RunningWorker, all_acked

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]


async def stream(redis: Redis, prefix: str, job_id: str) -> list[tuple[tuple[int, int], Any]]:
    entries: Any = await redis.xrange(Keys(prefix).events(job_id))
    out: list[tuple[tuple[int, int], Any]] = []
    for e, f in entries:
        attempt, seq = e.decode().split("-")
        out.append(((int(attempt), int(seq)), decode_event(f[b"event"])))
    return out


def prompt_for(api: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}]} if api == "chat" else {"input": "hi"}


def check_candidates(events: list[tuple[tuple[int, int], Any]], n: int) -> Done:
    ids = [i for i, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # strictly increasing
    done = events[-1][1]
    assert isinstance(done, Done)
    assert sum(isinstance(e, Done | Error | Cancelled) for _, e in events) == 1
    closes = {e.candidate: e for _, e in events if isinstance(e, CandidateDone)}
    assert sorted(closes) == list(range(n))
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert [c.index for c in done.candidates] == list(range(n))
    for k in range(n):
        tokens = [e for _, e in events if isinstance(e, Token) and e.candidate == k]
        result = done.candidates[k]
        if result.error is not None:
            assert closes[k].error == result.error
            continue
        assert [t.index for t in tokens] == list(range(len(tokens)))  # within the candidate
        content = [t for t in tokens if not t.special]
        text = result.text
        assert closes[k].text == text
        for t in content:
            if "\\x" not in t.text:  # a chat token may carry bytes as "\\xe2\\x80"
                assert text[t.char_start : t.char_end] == t.text
        if not any("\\x" in t.text for t in content):  # offsets count the token strings as sent
            assert content[-1].char_end == len(text)
        # the candidate's own running confidence: its last token's equals its summary's
        assert tokens[-1].confidence == pytest.approx(result.confidence)
        assert closes[k].summary == result.summary
        # its close comes after all of its tokens
        close_id = next(i for i, e in events if isinstance(e, CandidateDone) and e.candidate == k)
        assert all(i < close_id for i, e in events if isinstance(e, Token) and e.candidate == k)
    assert all(not isinstance(e, Token) or e.candidate is not msgspec.UNSET for _, e in events)
    return done


@pytest.mark.parametrize("api", ["native", "chat"])
async def test_three_candidates_ranked_with_agreement(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, api: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(
        model="m", api=api, params={"max_tokens": 12, "seed": 7}, candidates={"n": 3}, **prompt_for(api)
    )
    done = await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    done = check_candidates(events, 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    ranked = sorted(done.candidates, key=lambda c: c.rank or 99)
    assert [c.rank for c in ranked] == [1, 2, 3]
    winner = ranked[0]
    assert (done.text, done.confidence, done.summary) == (winner.text, winner.confidence, winner.summary)
    scores = [c.score for c in ranked]
    assert all(s is not None for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert winner.score == score_of(done, "mean_logprob")
    assert len({c.text for c in done.candidates}) > 1  # the seeds were varied: different answers
    assert done.agreement == agreement([c.text for c in done.candidates], done.text)
    assert done.usage.output_tokens == sum(
        1 for _, e in events if isinstance(e, Token)
    )  # every candidate's tokens


async def test_rank_by_cum_logprob_and_seedless_job(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="m", input="hi", candidates={"n": 4, "rank_by": "cum_logprob"})
    await client.result(job_id, timeout=60)
    done = check_candidates(await stream(redis, prefix, job_id), 4)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    best = max(done.candidates, key=lambda c: (c.summary.cum_logprob if c.summary else -1e9, -c.index))
    assert best.rank == 1 and done.text == best.text


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_chat_candidates_are_one_request_for_n_choices(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str, api: str
) -> None:
    await start_worker()
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{sim_url}/stats")).json()["streams_started"]
        job_id = await client.enqueue(
            model="m", api=api, params={"max_tokens": 10}, candidates={"n": 4}, **prompt_for(api)
        )
        await client.result(job_id, timeout=60)
        after = (await http.get(f"{sim_url}/stats")).json()["streams_started"]
    assert after - before == 1  # one request carried every candidate
    done = check_candidates(await stream(redis, prefix, job_id), 4)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert len({c.text for c in done.candidates}) > 1 and all(c.error is None for c in done.candidates)
    # usage: the request's one prompt, and every choice's tokens
    assert done.usage.output_tokens >= sum(
        1 for _, e in await stream(redis, prefix, job_id) if isinstance(e, Token)
    )


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_a_chat_choice_breaking_off_fails_only_its_candidate(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, api: str
) -> None:
    await start_worker()
    model = "m;drop_choice=1;after=3;tokens=8"  # choice 1 stops after 3 tokens without a finish
    job_id = await client.enqueue(model=model, api=api, candidates={"n": 3}, **prompt_for(api))
    await client.result(job_id, timeout=60)
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    broken = done.candidates[1]
    assert broken.error is not None and broken.error.code == "upstream_incomplete" and broken.rank is None
    assert sorted(c.rank for c in done.candidates if c.rank is not None) == [1, 2]


async def test_a_chat_request_failing_fails_every_candidate(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(
        model="m;fault=status;status=400", api="chat", candidates={"n": 3}, **prompt_for("chat")
    )
    with pytest.raises(JobFailed, match="all 3 candidates failed"):
        await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    assert sum(isinstance(e, Done | Error | Cancelled) for _, e in events) == 1
    assert [e.candidate for _, e in events if isinstance(e, CandidateDone)] == [0, 1, 2]


@pytest.mark.parametrize("api", ["native"])
async def test_a_failing_candidate_does_not_fail_the_job(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, api: str
) -> None:
    await start_worker()
    model = "m;fault=status;status=400;fail_first=1"  # the first request the simulator sees fails
    job_id = await client.enqueue(
        model=model, api=api, params={"max_tokens": 8}, candidates={"n": 3}, **prompt_for(api)
    )
    await client.result(job_id, timeout=60)
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    failed = [c for c in done.candidates if c.error is not None]
    assert len(failed) == 1 and failed[0].rank is None and failed[0].score is None
    assert failed[0].error is not None and "400" in failed[0].error.message + failed[0].error.code
    assert sorted(c.rank for c in done.candidates if c.rank is not None) == [1, 2]


async def test_a_candidate_disconnecting_mid_stream(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker(max_attempts=1)
    model = "m;fault=disconnect;after=3;fail_first=2;tokens=10"
    job_id = await client.enqueue(model=model, input="hi", candidates={"n": 3})
    await client.result(job_id, timeout=60)
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert sum(c.error is not None for c in done.candidates) == 2
    assert [c.rank for c in done.candidates if c.error is None] == [1]
    assert done.agreement == 1.0


async def test_all_candidates_failing_is_one_error(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="m;fault=status;status=400", input="hi", candidates={"n": 3})
    with pytest.raises(JobFailed) as failed:
        await client.result(job_id, timeout=60)
    assert "all 3 candidates failed" in str(failed.value)
    events = await stream(redis, prefix, job_id)
    ids = [i for i, _ in events]
    assert ids == sorted(ids)
    assert sum(isinstance(e, Done | Error | Cancelled) for _, e in events) == 1
    assert isinstance(events[-1][1], Error)
    assert sorted(e.candidate for _, e in events if isinstance(e, CandidateDone)) == [0, 1, 2]


async def test_cancel_ends_every_candidate(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="m;tps=20;tokens=2000", input="hi", candidates={"n": 3})

    async def tokens_of_all() -> None:
        while True:
            events = await stream(redis, prefix, job_id)
            if {e.candidate for _, e in events if isinstance(e, Token)} == {0, 1, 2}:
                return
            await asyncio.sleep(0.05)

    async with asyncio.timeout(30):
        await tokens_of_all()
    await client.cancel(job_id)
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(10):
        while not isinstance((await stream(redis, prefix, job_id))[-1][1], Cancelled):
            await asyncio.sleep(0.02)
    assert loop.time() - began < 2.0  # within a second or so of the flag (a busy 2-core machine)
    events = await stream(redis, prefix, job_id)
    assert sum(isinstance(e, Done | Error | Cancelled) for _, e in events) == 1
    ids = [i for i, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_review_segments_per_candidate(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    review = {"unit": "sentence", "publish_above": -0.3, "review_below": -1.2}
    job_id = await client.enqueue(
        model="m", input="hi", params={"max_tokens": 60}, review=review, candidates={"n": 2}
    )
    await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    done = check_candidates(events, 2)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    for result in done.candidates:
        segments = [e for _, e in events if isinstance(e, Segment) and e.candidate == result.index]
        assert segments and "".join(s.text for s in segments) == result.text
        assert [s.index for s in segments] == list(range(len(segments)))
        assert not isinstance(result.verdict, msgspec.UnsetType)
        assert result.verdict.n_low == sum(s.band == "low" for s in segments)
    winner = next(c for c in done.candidates if c.rank == 1)
    assert done.verdict == winner.verdict
    assert all(e.candidate is not msgspec.UNSET for _, e in events if isinstance(e, Segment))


async def test_without_candidates_events_are_unchanged(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    variants: list[dict[str, Any]] = [{}, {"candidates": {"n": 1}}]
    for fields in variants:
        job_id = await client.enqueue(model="m", input="hi", params={"max_tokens": 5}, **fields)
        await client.result(job_id, timeout=60)
        raw: Any = await redis.xrange(Keys(prefix).events(job_id))
        for _, f in raw:
            data = msgspec.json.decode(f[b"event"])
            assert "candidate" not in data and "candidates" not in data and "agreement" not in data
            assert data["type"] != "candidate_done"


async def test_agreement_escalates(start_worker: Starter, client: Client, redis: Redis, prefix: str) -> None:
    await start_worker()
    escalate = {"model": "strong", "below": 1.0, "signal": "agreement"}
    job_id = await client.enqueue(
        model="weak", input="hi", params={"max_tokens": 8}, candidates={"n": 3}, escalate=escalate
    )
    done = await client.result(job_id, timeout=60)
    assert done.escalation is not None and done.escalation.from_model == "weak"
    events = await stream(redis, prefix, job_id)
    starts = [e for _, e in events if isinstance(e, Start)]
    assert [s.model for s in starts] == ["weak", "strong"]
    assert not isinstance(done.candidates, msgspec.UnsetType) and len(done.candidates) == 3


async def test_subscribe_exposes_candidate(start_worker: Starter, client: Client) -> None:
    await start_worker()
    job_id = await client.enqueue(model="m", input="hi", params={"max_tokens": 6}, candidates={"n": 2})
    seen: dict[int, list[int]] = {0: [], 1: []}
    closed = []
    async for item in client.subscribe(job_id, timeout=60):
        event = item.event
        if isinstance(event, Token):
            assert isinstance(event.candidate, int)
            seen[event.candidate].append(event.index)
        elif isinstance(event, CandidateDone):
            closed.append(event.candidate)
    assert all(indexes == list(range(len(indexes))) and indexes for indexes in seen.values())
    assert sorted(closed) == [0, 1]


async def test_a_takeover_restarts_every_candidate_as_a_new_attempt(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    fast = {"lease_seconds": 1.0, "reclaim_interval_seconds": 0.2}
    await start_worker(**fast)
    job_id = await client.enqueue(model="m;tokens=60;tps=40", input="steal me", candidates={"n": 3})
    async with asyncio.timeout(20):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token) and item.event.index >= 3:
                break
    status = await client.status(job_id)
    assert status is not None and status.entry is not None
    await redis.xclaim(keys.jobs, GROUP, "thief", 0, [status.entry])  # a peer took it over
    await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    starts = [i for i, (_, e) in enumerate(events) if isinstance(e, Start)]
    assert [events[i][1].attempt for i in starts] == [1, 2]
    second = events[starts[1] :]
    assert all(e.attempt == 2 for _, e in second)  # nothing of attempt 1's candidates after it
    check_candidates(second, 3)  # attempt 2 ran every candidate from the start
    assert sum(isinstance(e, Done | Error | Cancelled) for _, e in events) == 1


async def test_a_stalled_candidate_fails_alone(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker(stall_timeout_seconds=0.5)
    model = "m;fault=stall;after=2;fail_first=1;tokens=6"  # the first request stalls after 2 tokens
    job_id = await client.enqueue(model=model, input="hi", candidates={"n": 3})
    await client.result(job_id, timeout=60)
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    stalled = [c for c in done.candidates if c.error is not None]
    assert len(stalled) == 1 and "stall" in stalled[0].error.code + stalled[0].error.message  # type: ignore[union-attr]
    assert sorted(c.rank for c in done.candidates if c.rank is not None) == [1, 2]


async def test_review_of_a_job_with_candidates_holds_the_winners_low_segments(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    """The review item has the winner's low segments (its offsets in done.text), whether the worker
    writes it at once or a takeover rebuilds it from the events."""
    await start_worker()
    keys = Keys(prefix)
    review = {"unit": "sentence", "publish_above": 0.0, "review_below": -0.01}  # every segment low
    job_id = await client.enqueue(
        model="m", input="hi", params={"max_tokens": 60}, review=review, candidates={"n": 3}
    )
    done = await client.result(job_id, timeout=60)
    await all_acked(redis, keys.jobs)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    winner = next(c.index for c in done.candidates if c.rank == 1)
    events = await stream(redis, prefix, job_id)
    low = [
        msgspec.structs.replace(e, candidate=msgspec.UNSET)
        for _, e in events
        if isinstance(e, Segment) and e.candidate == winner and e.band == "low"
    ]
    assert low and all(done.text[s.char_start : s.char_end] == s.text for s in low)

    async def item() -> ReviewItem:
        found: Any = await redis.xrange(keys.review)
        (_, fields), *more = found
        assert not more
        return msgspec.json.decode(fields[b"item"], type=ReviewItem)

    assert (await item()).low_segments == low  # written by the worker after the done
    await redis.delete(keys.review, keys.review_marker(job_id))  # as if it died before the entry
    assert await ReviewQueue(redis, keys).add_from_events(job_id) is not None
    assert (await item()).low_segments == low  # rebuilt from the events: the same, the winner's
    # feedback's signals (what the item records too) are the winner's: its segments, not the others'
    _, signals, _ = await signals_for(redis, keys, job_id)
    means = [e.mean_logprob for _, e in events if isinstance(e, Segment) and e.candidate == winner]
    assert signals.lowest_segment_mean == min(m for m in means if m is not None)
    assert (await item()).signals == signals


def _priced(sim_url: str) -> dict[str, Provider]:
    return {
        "sim": Provider(
            native_url=f"{sim_url}/v1/inference/{{model}}", prices={"*": Price(input=3.0, output=15.0)}
        )
    }


async def test_a_budget_covers_every_candidate(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    await start_worker(providers=_priced(sim_url))
    # 100 output tokens at 15 per million: 0.0015 a candidate, 0.0045 for three (prompts aside)
    fields: dict[str, Any] = {"input": "x", "params": {"max_tokens": 100}, "candidates": {"n": 3}}
    refused = await client.enqueue(model="m;tokens=10", budget=0.003, **fields)
    with pytest.raises(JobFailed) as failed:
        await client.result(refused, timeout=60)
    assert "budget=0.003" in str(failed.value) and "of 3 candidates" in str(failed.value)
    covered = await client.enqueue(model="m;tokens=10", budget=0.005, **fields)
    done = await client.result(covered, timeout=60)
    assert not isinstance(done.candidates, msgspec.UnsetType) and all(
        c.error is None for c in done.candidates
    )
    assert isinstance(done.usage.cost, float) and 0 < done.usage.cost <= 0.005
    # every candidate's request was paid: 3 prompts and 3 x 11 tokens (10 and the stop token)
    assert done.usage.output_tokens == 33
