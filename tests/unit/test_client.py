"""The client and the job store's scripts against fakeredis (logic only; stream semantics such as
pending entries and claims are tested on real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest

from worker import Client, Done, Error, Job, JobNotFound, Start, Token
from worker.events import Summary, Usage, encode_event

PREFIX = "unit"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    redis = fakeredis.FakeAsyncRedis()
    c = Client(redis, prefix=PREFIX, block_ms=50)
    yield c
    await c.aclose()


def _summary() -> Summary:
    return Summary(
        mean_logprob=-0.1, cum_logprob=-0.2, perplexity=1.1, min_prob=0.8, min_index=0,
        ewma_confidence=0.9, mean_prob=0.9, bits_per_byte=0.1, n_tokens=2, n_scored=2,
        n_missing=0, n_excluded=0, n_clamped=0, logprobs_available=True, low_spans=[],
    )  # fmt: skip


async def test_enqueue_writes_one_entry_and_state(client: Client) -> None:
    job_id = await client.enqueue(model="m", input="hi", metadata={"a": "b"})
    assert len(job_id) == 32
    assert await client.redis.xlen(client.keys.jobs) == 1
    state = await client.status(job_id)
    assert state is not None and state["state"] == "queued" and state["model"] == "m"
    assert state["entry"]
    assert await client.redis.ttl(client.keys.state(job_id)) > 0


async def test_enqueue_same_id_twice_is_one_job(client: Client) -> None:
    job = Job(id="dup", model="m", input="x")
    assert await client.enqueue(job) == "dup"
    assert await client.enqueue(job) == "dup"
    assert await client.redis.xlen(client.keys.jobs) == 1


async def test_enqueue_validates_keyword_jobs(client: Client) -> None:
    with pytest.raises(Exception, match="needs `messages`"):
        await client.enqueue(model="m", api="chat", input="x")


async def test_subscribe_follows_attempts_and_ends_on_terminal(client: Client) -> None:
    store, job_id = client.store, "j1"
    await client.enqueue(Job(id=job_id, model="m", input="x"))
    entry = (await client.status(job_id) or {})["entry"]
    start = Start(job_id=job_id, attempt=0, model="m", provider="p", api="native")
    begun = await store.begin(job_id, entry, "c1", start)
    assert begun.outcome == "started" and begun.attempt == 1
    key = client.keys.events(job_id)
    tok = Token(job_id=job_id, attempt=1, index=0, text="a", logprob=-0.1)
    await client.redis.xadd(key, {"event": encode_event(tok)}, id="1-1")
    again = await store.begin(job_id, entry, "c2", start)  # a takeover: attempt 2
    assert again.attempt == 2
    tok2 = Token(job_id=job_id, attempt=2, index=0, text="b", logprob=-0.1)
    await client.redis.xadd(key, {"event": encode_event(tok2)}, id="2-1")
    done = Done(
        job_id=job_id, attempt=2, finish_reason="eos_token", text="b",
        usage=Usage(input_tokens=1, output_tokens=1), confidence=0.9, summary=_summary(),
    )  # fmt: skip
    assert await store.finish(job_id, 1, 2, done, {}) == "fenced"  # the old attempt cannot end it
    assert await store.finish(job_id, 2, 2, done, {"tokens": 1}) == "ok"
    assert await store.finish(job_id, 2, 2, done, {"tokens": 1}) == "dup"

    items = [i async for i in client.subscribe(job_id, timeout=5)]
    assert [i.id for i in items] == ["1-0", "1-1", "2-0", "2-1", "2-2"]
    assert [i.restarted for i in items] == [False, False, True, False, False]
    assert isinstance(items[-1].event, Done)
    assert await client.result(job_id, timeout=5) == done
    assert (await store.begin(job_id, entry, "c3", start)).outcome == "terminal"


async def test_duplicate_entry_for_a_started_job_is_skipped(client: Client) -> None:
    job_id = await client.enqueue(Job(id="j2", model="m", input="x"))
    start = Start(job_id=job_id, attempt=0, model="m", provider="p", api="native")
    entry = (await client.status(job_id) or {})["entry"]
    assert (await client.store.begin(job_id, entry, "c", start)).outcome == "started"
    other = await client.store.begin(job_id, "9-9", "c", start)
    assert other.outcome == "duplicate" and other.detail == entry


async def test_fail_writes_one_terminal_error_and_never_touches_foreign_jobs(
    client: Client,
) -> None:
    assert await client.store.fail("j3", "5-0", "invalid_job", "bad", {}) == "ok"
    items = [i async for i in client.subscribe("j3", timeout=5)]
    assert len(items) == 1 and isinstance(items[0].event, Error) and items[0].event.attempt == 1
    assert await client.store.fail("j3", "5-0", "invalid_job", "bad", {}) == "terminal"
    await client.enqueue(Job(id="j4", model="m", input="x"))
    assert await client.store.fail("j4", "7-0", "invalid_job", "bad", {}) == "foreign"


async def test_subscribe_unknown_job_raises(client: Client) -> None:
    with pytest.raises(JobNotFound):
        async with asyncio.timeout(5):
            async for _ in client.subscribe("never-enqueued"):
                pass
