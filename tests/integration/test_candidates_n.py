"""A provider that ignores ``n`` (issue 16 §2) through a real worker, real Redis and the simulator's
``ignore_n`` directive: with ``n_choices = "auto"`` (the default) the stream that ends with only
choice 0 is detected, the missing candidates are asked for on requests of their own (seed varied,
as separate candidates are), and the provider+model is remembered (``P:no_n:*``) so that the next
job asks for each separately at once; ``"separate"`` never asks for ``n``; ``"one_request"`` fails
the missing candidates saying why; a stream broken mid-way is not taken for ``n`` ignored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import CandidateDone, Done, Start, Token
from worker.keys import Keys
from worker.settings import Provider

from .conftest import RunningWorker
from .test_candidates import check_candidates, prompt_for, stream

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]


def provider(sim_url: str, **settings: Any) -> dict[str, Provider]:
    return {
        "sim": Provider(
            native_url=f"{sim_url}/v1/inference/{{model}}",
            chat_url=f"{sim_url}/v1/openai/chat/completions",
            completions_url=f"{sim_url}/v1/openai/completions",
            **settings,
        )
    }


async def sim_stats(sim_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        stats: dict[str, Any] = (await http.get(f"{sim_url}/stats")).json()
        return stats


def ignored(stats: dict[str, Any]) -> int:
    return int(stats["faults"].get("ignore_n", 0))


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_a_provider_ignoring_n_gets_the_missing_candidates_asked_for_separately(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str, api: str
) -> None:
    await start_worker()
    model = "m;ignore_n;tokens=8"
    before = await sim_stats(sim_url)
    job_id = await client.enqueue(
        model=model, api=api, params={"max_tokens": 12, "seed": 5}, candidates={"n": 3}, **prompt_for(api)
    )
    done = await client.result(job_id, timeout=60)
    after = await sim_stats(sim_url)
    # one request for all (n ignored: choice 0 only), then one for each missing candidate
    assert after["streams_started"] - before["streams_started"] == 3
    assert ignored(after) - ignored(before) == 1
    events = await stream(redis, prefix, job_id)
    done = check_candidates(events, 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert all(c.error is None for c in done.candidates)
    assert sorted(c.rank for c in done.candidates if c.rank is not None) == [1, 2, 3]
    assert len({c.text for c in done.candidates}) == 3  # the seeds were varied
    # candidate k is what the job asked with seed 5 + k gives on its own
    alone: list[Done] = []
    for k in (0, 1, 2):
        single = await client.enqueue(
            model=model, api=api, params={"max_tokens": 12, "seed": 5 + k}, **prompt_for(api)
        )
        alone.append(await client.result(single, timeout=60))
        assert alone[k].text == done.candidates[k].text
    # every candidate's request counted: three prompts, each request's output (the provider's
    # counts, which here include each stop token)
    assert done.usage.input_tokens == sum(d.usage.input_tokens or 0 for d in alone)
    assert done.usage.output_tokens >= sum(1 for _, e in events if isinstance(e, Token))
    assert done.usage.output_tokens >= sum(d.usage.output_tokens for d in alone)
    # remembered for every worker: the next job asks for each candidate on its own at once
    reason = await redis.get(Keys(prefix).no_n("sim", model))
    assert reason is not None and b"sent only index [0]" in reason
    before = await sim_stats(sim_url)
    again = await client.enqueue(
        model=model, api=api, params={"max_tokens": 12, "seed": 5}, candidates={"n": 3}, **prompt_for(api)
    )
    second = await client.result(again, timeout=60)
    after = await sim_stats(sim_url)
    assert ignored(after) == ignored(before)  # `n` no longer asked for
    assert after["streams_started"] - before["streams_started"] == 3
    assert not isinstance(second.candidates, msgspec.UnsetType)
    assert all(c.error is None for c in second.candidates)
    check_candidates(await stream(redis, prefix, again), 3)


async def test_n_choices_separate_never_asks_for_n(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    await start_worker(providers=provider(sim_url, n_choices="separate"))
    before = await sim_stats(sim_url)
    job_id = await client.enqueue(model="m;tokens=6", api="chat", candidates={"n": 3}, **prompt_for("chat"))
    await client.result(job_id, timeout=60)
    after = await sim_stats(sim_url)
    assert after["streams_started"] - before["streams_started"] == 3
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert all(c.error is None for c in done.candidates) and len({c.text for c in done.candidates}) > 1


async def test_n_choices_one_request_fails_the_missing_candidates_saying_why(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    await start_worker(providers=provider(sim_url, n_choices="one_request"))
    model = "m;ignore_n;tokens=6"
    before = await sim_stats(sim_url)
    job_id = await client.enqueue(model=model, api="chat", candidates={"n": 3}, **prompt_for("chat"))
    done = await client.result(job_id, timeout=60)
    after = await sim_stats(sim_url)
    assert after["streams_started"] - before["streams_started"] == 1  # never asked again
    done = check_candidates(await stream(redis, prefix, job_id), 3)
    assert not isinstance(done.candidates, msgspec.UnsetType)
    assert done.candidates[0].rank == 1 and done.text == done.candidates[0].text
    for c in done.candidates[1:]:
        assert c.error is not None and c.error.code == "upstream_incomplete" and c.rank is None
        assert f"without choice {c.index}" in c.error.message and "ignores `n`" in c.error.message
        assert 'n_choices = "auto" or "separate"' in c.error.message
    assert await redis.get(Keys(prefix).no_n("sim", model)) is None  # nothing remembered


async def test_a_stream_broken_mid_way_is_not_taken_for_n_ignored(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    """The first request (choice 0 only, n ignored) breaks after 2 tokens: no candidate finished,
    so nothing says the provider ignores ``n``; every candidate failed retryably, so the job runs
    again as attempt 2, whose request ends with choice 0 finished: only then is ``n`` found
    ignored and the missing candidates asked for."""
    await start_worker()
    model = "m;ignore_n;tokens=8;fault=disconnect;after=2;fail_first=1"
    before = await sim_stats(sim_url)
    job_id = await client.enqueue(model=model, api="chat", candidates={"n": 3}, **prompt_for("chat"))
    done = await client.result(job_id, timeout=60)
    after = await sim_stats(sim_url)
    # attempt 1: one broken request, nothing asked again; attempt 2: one request, then two
    assert after["streams_started"] - before["streams_started"] == 4
    events = await stream(redis, prefix, job_id)
    starts = [i for i, (_, e) in enumerate(events) if isinstance(e, Start)]
    assert [events[i][1].attempt for i in starts] == [1, 2]
    first = [e for _, e in events[: starts[1]] if isinstance(e, CandidateDone)]
    assert sorted(e.candidate for e in first) == [0, 1, 2] and all(e.error is not None for e in first)
    assert isinstance(done, Done) and done.attempt == 2
    second = check_candidates(events[starts[1] :], 3)
    assert not isinstance(second.candidates, msgspec.UnsetType)
    assert all(c.error is None for c in second.candidates)
    assert await redis.get(Keys(prefix).no_n("sim", model)) is not None
