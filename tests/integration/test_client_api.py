"""The producer and subscriber API on real Redis, single and Cluster: conflicting ids are refused
atomically, outcomes are typed, and a consumer built today follows streams with event types it does
not know."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from worker import (
    Client,
    Done,
    InvalidJob,
    Job,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobStatus,
    Start,
    Token,
    UnknownEvent,
)
from worker.events import encode_event
from worker.jobs import decode_job

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
MODEL = "tokenwire/sim;tokens=8"


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_racing_producers_of_different_jobs_under_one_id_one_wins(client: Client) -> None:
    jobs = [Job(id="contested", model=MODEL, input=f"prompt {n}") for n in range(8)]
    outcomes = await asyncio.gather(*(client.enqueue(job) for job in jobs), return_exceptions=True)
    won = [n for n, outcome in enumerate(outcomes) if outcome == "contested"]
    lost = [outcome for outcome in outcomes if isinstance(outcome, JobConflict)]
    assert len(won) == 1 and len(lost) == 7, outcomes
    assert all(c.job_id == "contested" and "'contested'" in str(c) for c in lost)
    assert await client.redis.xlen(client.keys.jobs) == 1
    entries: Any = await client.redis.xrange(client.keys.jobs)
    ((_, fields),) = entries
    assert decode_job(fields[b"job"]) == jobs[won[0]]  # the winner's job is the one on the stream
    # and the same job again is still welcome
    assert await client.enqueue(jobs[won[0]]) == "contested"
    with pytest.raises(JobConflict):
        await client.enqueue(jobs[(won[0] + 1) % len(jobs)])


async def test_racing_producers_of_the_same_job_get_one_job(
    start_worker: StartWorker, client: Client
) -> None:
    job = Job(id="shared", model=MODEL, input="the same prompt", metadata={"from": "everyone"})
    assert await asyncio.gather(*(client.enqueue(job) for _ in range(8))) == ["shared"] * 8
    await start_worker()
    items = [item async for item in client.subscribe("shared", timeout=30)]
    assert sum(isinstance(i.event, Start) for i in items) == 1
    assert isinstance(items[-1].event, Done)
    status = await client.status("shared")
    assert status is not None and status.state == "done" and status.attempt == 1


async def test_bad_arguments_raise_invalid_job_and_write_nothing(client: Client) -> None:
    with pytest.raises(InvalidJob, match=r"\$\.params\.max_tokens"):
        await client.enqueue(model=MODEL, input="x", params={"max_tokens": -1})
    with pytest.raises(InvalidJob, match="unknown field `temprature`"):
        await client.enqueue(model=MODEL, input="x", temprature=0.5)
    assert await client.redis.xlen(client.keys.jobs) == 0


async def test_result_and_status_are_typed(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    ok = await client.enqueue(model=MODEL, input="fine")
    done = await client.result(ok, timeout=30)
    assert isinstance(done, Done) and done.usage.output_tokens == 9
    status = await client.status(ok)
    assert isinstance(status, JobStatus)
    assert (status.state, status.attempt, status.tokens, status.finish_reason) == (
        "done",
        1,
        9,
        done.finish_reason,
    )
    assert status.confidence == done.confidence and status.terminal_id == "1-10"
    assert status.created is not None and status.finished is not None and status.created <= status.finished

    failing = await client.enqueue(model="tokenwire/sim;fault=status;status=404", input="x")
    with pytest.raises(JobFailed) as failed:
        await client.result(failing, timeout=30)
    assert failed.value.event.code == "model_not_found" and failed.value.event.job_id == failing
    failed_status = await client.status(failing)
    assert failed_status is not None and failed_status.state == "error"
    assert failed_status.error_code == "model_not_found"
    assert await client.status("no-such-job") is None


async def test_result_of_a_cancelled_job_raises_with_its_event(client: Client) -> None:
    job_id = await client.enqueue(model=MODEL, input="never run")  # no worker: it stays queued
    assert await client.cancel(job_id, "changed my mind") == "cancelled"
    with pytest.raises(JobCancelled) as cancelled:
        await client.result(job_id, timeout=10)
    assert cancelled.value.event.reason == "changed my mind"


async def test_a_consumer_that_skips_unknown_types_follows_a_live_stream(
    client: Client, redis: Redis
) -> None:
    """A later worker writes event types this version does not know, between the ones it does."""
    job_id = await client.enqueue(model=MODEL, input="x")
    key = client.keys.events(job_id)
    segment = b'{"type":"claim","job_id":"%s","attempt":1,"text":"ab", "spans":[]}' % job_id.encode()
    tokens = [Token(job_id=job_id, attempt=1, index=n, text=t, logprob=-0.1) for n, t in enumerate("ab")]
    stream: list[tuple[str, bytes]] = [
        ("1-0", encode_event(Start(job_id=job_id, attempt=1, model=MODEL, provider="sim", api="native"))),
        ("1-1", encode_event(tokens[0])),
        ("1-2", b'{"type":"rerank_hint","job_id":"%s","attempt":1,"rank":1}' % job_id.encode()),
        ("1-3", encode_event(tokens[1])),
        ("1-4", segment),
        ("1-5", b'{"type":"cancelled","job_id":"%s","attempt":1,"reason":"demo"}' % job_id.encode()),
    ]

    async def writer() -> None:
        for entry_id, raw in stream:
            await redis.xadd(key, {"event": raw}, id=entry_id)
            await asyncio.sleep(0)  # let the reader block between entries

    texts: list[str] = []
    skipped: list[str] = []
    raws: dict[str, bytes] = {}
    task = asyncio.create_task(writer())
    async for item in client.subscribe(job_id, timeout=20):  # what a consumer built today writes
        raws[item.id] = item.raw
        if isinstance(item.event, Token):
            texts.append(item.event.text)
        elif isinstance(item.event, UnknownEvent):
            skipped.append(item.type)
    await task
    assert texts == ["a", "b"] and skipped == ["rerank_hint", "claim"]
    assert raws == dict(stream)  # every entry byte for byte as stored


async def test_unknown_events_around_a_real_job(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    """An opaque event already on a job's stream when a worker runs it changes nothing else."""
    job = Job(id="with-extras", model=MODEL, input="x")
    assert await client.enqueue(job) == "with-extras"
    note = b'{"type":"note","job_id":"with-extras","attempt":0,"text":"queued by a newer producer"}'
    await redis.xadd(client.keys.events(job.id or ""), {"event": note}, id="0-1")
    await start_worker()
    items = [item async for item in client.subscribe("with-extras", timeout=30)]
    assert items[0].type == "note" and isinstance(items[0].event, UnknownEvent) and items[0].raw == note
    assert isinstance(items[1].event, Start) and items[1].event.attempt == 1 and not items[1].restarted
    assert isinstance(items[-1].event, Done)
    assert await client.result("with-extras", timeout=5) == items[-1].event
