"""The review stream on real Redis through a worker and the simulator: a job whose verdict says
review is put on ``{P}:review`` once (also when the worker dies between its ``done`` and the entry
and the job is taken over), with its low segments and the signals feedback needs; reviewers take
entries through the group ``reviewers`` and resolve them (feedback recorded, entry acknowledged),
also after the job's own keys expired; a consumer built before segments existed reads a review
job's stream by skipping the types it does not know. Single Redis and Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import Cancelled, Done, Error, Segment, Start, Token, decode_event
from worker.feedback import read_feedback, signals_for
from worker.keys import REVIEW_GROUP, Keys
from worker.review import ReviewItem, ReviewNotFound, ReviewQueue
from worker.signals import decode_signals

from ..faults.invariants import prefix_ttl_problems
from .conftest import RunningWorker, all_acked

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]
ALL_LOW = {"publish_above": 0.0, "review_below": -0.01}  # every scored segment is low


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def review_job(client: Client, job_id: str | None = None, **review: Any) -> str:
    fields: dict[str, Any] = {"id": job_id} if job_id else {}
    return await client.enqueue(
        model="m", input="tell me", params={"max_tokens": 80}, review=review or ALL_LOW, **fields
    )


async def settled(redis: Redis, prefix: str) -> None:
    """Every job entry acknowledged: a job's review entry is written after its done and before its
    ack, so once the ack is there, so is the review entry (``result`` returns at the done)."""
    jobs = Keys(prefix).jobs
    await all_acked(redis, jobs)


async def entries(redis: Redis, prefix: str) -> list[tuple[str, dict[bytes, bytes]]]:
    found: Any = await redis.xrange(Keys(prefix).review)
    return [(e.decode(), f) for e, f in found]


async def test_a_job_to_review_is_put_on_the_stream_once_with_its_low_segments_and_signals(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await review_job(client)
    done = await client.result(job_id, timeout=60)
    await settled(redis, prefix)
    assert isinstance(done.verdict, msgspec.Struct) and done.verdict.decision == "review"
    keys = Keys(prefix)
    (entry_id, fields), *more = await entries(redis, prefix)
    assert not more
    item = msgspec.json.decode(fields[b"item"], type=ReviewItem)
    events: Any = await redis.xrange(keys.events(job_id))
    stream = [decode_event(f[b"event"]) for _, f in events]
    low = [e for e in stream if isinstance(e, Segment) and e.band == "low"]
    assert low and item.low_segments == low and not item.low_segments_truncated
    assert (item.job_id, item.attempt, item.model, item.verdict) == (job_id, 1, "m", done.verdict)
    assert item.done_id == events[-1][0].decode() and item.confidence == done.confidence
    assert fields[b"job_id"] == job_id.encode() and fields[b"model"] == b"m"
    model, signals, source = await signals_for(redis, keys, job_id)  # what feedback reads from the done
    assert (model, source) == ("m", "done") and item.signals == signals
    assert decode_signals(fields[b"signals"]) == signals and signals.lowest_segment_mean is not None
    assert await redis.hget(keys.review_marker(job_id), "entry") == entry_id.encode()
    assert 0 < await redis.pttl(keys.review_marker(job_id)) <= 30 * 86400 * 1000
    reviews = ReviewQueue(redis, keys)
    assert await reviews.add(item) == entry_id  # a second write adds nothing
    assert await reviews.add_from_events(job_id) == entry_id
    assert len(await entries(redis, prefix)) == 1
    assert await prefix_ttl_problems(redis, keys) == []  # the marker has its TTL; the stream is capped


async def test_a_job_that_needs_no_review_is_not_put_on_the_stream(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    published = await review_job(client, publish_above=0.0, review_below=-20.0)  # nothing is low
    plain = await client.enqueue(model="m", input="hi", params={"max_tokens": 20})
    done = await client.result(published, timeout=60)
    await client.result(plain, timeout=60)
    await settled(redis, prefix)
    assert not isinstance(done.verdict, msgspec.UnsetType) and done.verdict.decision == "publish"
    assert await entries(redis, prefix) == []
    assert await ReviewQueue(redis, Keys(prefix)).add_from_events(published) is None


async def test_a_worker_dying_between_the_done_and_the_entry_leaves_it_to_the_takeover(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first delivery writes the done and dies on the review entry (its stream entry stays
    pending); the takeover finds the job ended, writes the entry from the events, acknowledges."""
    real_add = ReviewQueue.add
    calls: list[str] = []

    async def dies_once(self: ReviewQueue, item: ReviewItem) -> str:
        calls.append(item.job_id)
        if len(calls) == 1:
            raise ConnectionError("the worker died here")
        return await real_add(self, item)

    monkeypatch.setattr(ReviewQueue, "add", dies_once)
    await start_worker(lease_seconds=1.0, reclaim_interval_seconds=0.2)
    job_id = await review_job(client)
    done = await client.result(job_id, timeout=60)
    keys = Keys(prefix)
    async with asyncio.timeout(30):
        while not await entries(redis, prefix):
            await asyncio.sleep(0.05)
    await all_acked(redis, keys.jobs)  # the takeover acknowledged the job's entry
    (_, fields), *more = await entries(redis, prefix)
    assert not more and calls == [job_id, job_id]
    item = msgspec.json.decode(fields[b"item"], type=ReviewItem)
    events: Any = await redis.xrange(keys.events(job_id))
    stream = [decode_event(f[b"event"]) for _, f in events]
    assert sum(isinstance(e, Done) for e in stream) == 1 and isinstance(stream[-1], Done)
    assert item.low_segments == [e for e in stream if isinstance(e, Segment) and e.band == "low"]
    assert item.verdict == done.verdict and item.model == "m"
    assert item.signals == (await signals_for(redis, keys, job_id))[1]


async def test_a_retried_job_is_put_on_the_stream_once_with_the_last_attempts_segments(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    """The first attempt is cut after 30 tokens (its segments published), the retry finishes: one
    entry, built from the attempt that produced the done."""
    await start_worker()
    model = "tokenwire/sim;tokens=80;fault=disconnect;after=30;fail_first=1"
    job_id = await client.enqueue(model=model, input="retry me", review=ALL_LOW)
    done = await client.result(job_id, timeout=60)
    await settled(redis, prefix)
    assert done.attempt == 2
    keys = Keys(prefix)
    events: Any = await redis.xrange(keys.events(job_id))
    stream = [decode_event(f[b"event"]) for _, f in events]
    segments = [e for e in stream if isinstance(e, Segment)]
    assert {s.attempt for s in segments} == {1, 2}  # the cut attempt published some before it failed
    (_, fields), *more = await entries(redis, prefix)
    assert not more
    item = msgspec.json.decode(fields[b"item"], type=ReviewItem)
    assert item.attempt == 2 and item.low_segments
    assert item.low_segments == [s for s in segments if s.attempt == 2 and s.band == "low"]
    assert item.signals == (await signals_for(redis, keys, job_id))[1]


async def test_reviewers_take_list_and_resolve_entries(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    jobs = []
    for n in range(3):  # one after the other: the stream's order is theirs
        jobs.append(await review_job(client, f"rev-{n}"))
        await client.result(jobs[-1], timeout=60)
        await settled(redis, prefix)
    listed = await client.review_items()
    assert [e.item.job_id for e in listed] == jobs and all(e.taken_by is None for e in listed)
    first = await client.take_reviews("ana", count=2)
    assert [e.item.job_id for e in first] == jobs[:2] and {e.taken_by for e in first} == {"ana"}
    assert [(e.item.job_id, e.taken_by) for e in await client.review_items()] == [
        (jobs[0], "ana"),
        (jobs[1], "ana"),
        (jobs[2], None),
    ]
    feedback_id = await client.resolve(jobs[0], True, note="checked the year")
    await client.resolve(jobs[2], False)  # resolved without being taken
    keys = Keys(prefix)
    assert [e.item.job_id for e in await client.review_items()] == [jobs[1]]
    everything = await client.review_items(include_resolved=True)
    assert [e.resolved for e in everything] == ["correct", None, "incorrect"]
    pending: Any = await redis.xpending_range(keys.review, REVIEW_GROUP, min="-", max="+", count=10)
    assert [p["message_id"].decode() for p in pending] == [first[1].id]
    assert await client.take_reviews("bo", count=5) == []  # jobs[2] was resolved: skipped, acked
    claimed = await client.take_reviews("cy", count=5, claim_idle_ms=0)  # what ana left unresolved
    assert [(e.item.job_id, e.taken_by) for e in claimed] == [(jobs[1], "cy")]
    assert [(e.item.job_id, e.taken_by) for e in await client.review_items()] == [(jobs[1], "cy")]
    judged = [f async for _, f in read_feedback(redis, keys)]
    assert [(f.job_id, f.correct, f.label, f.source) for f in judged] == [
        (jobs[0], True, "checked the year", "review"),
        (jobs[2], False, None, "review"),
    ]
    assert judged[0].signals == first[0].item.signals and judged[0].model == "m"
    oldest: Any = await redis.xrange(keys.feedback, count=1)
    assert feedback_id == oldest[0][0].decode()
    with pytest.raises(ReviewNotFound, match="no review entry for job 'nope'"):
        await client.resolve("nope", True)
    with pytest.raises(ValueError, match="not a job id"):
        await client.resolve("{bad id}", True)


async def test_an_entry_is_resolved_after_the_jobs_keys_expired(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await review_job(client)
    await client.result(job_id, timeout=60)
    await settled(redis, prefix)
    keys = Keys(prefix)
    (_, fields), *_ = await entries(redis, prefix)
    await redis.delete(keys.state(job_id), keys.events(job_id))  # as if they expired
    await redis.delete(keys.review_marker(job_id))  # and the marker too: found by reading the stream
    await client.resolve(job_id, False, note="wrong city")
    (judged,) = [f async for _, f in read_feedback(redis, keys)]
    assert (judged.job_id, judged.correct, judged.label, judged.source) == (
        job_id,
        False,
        "wrong city",
        "review",
    )
    assert judged.signals == decode_signals(fields[b"signals"])
    marker = keys.review_marker(job_id)  # made again, resolved, with a TTL
    assert await redis.hget(marker, "resolved") == b"incorrect" and await redis.pttl(marker) > 0
    assert [e.item.job_id for e in await client.review_items()] == []


_OLD_EVENT = Start | Token | Done | Error | Cancelled  # what a consumer built before segments knows


async def test_a_consumer_that_ignores_types_it_does_not_know_reads_a_review_jobs_stream(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    """A consumer of the events written before this version (it knows start, token, done, error,
    cancelled and skips any other type) follows a review job: segment events are skipped, the
    done (with its new verdict) still decodes, and the answer it rebuilds is the answer."""
    await start_worker()
    job_id = await review_job(client)
    old = msgspec.json.Decoder(_OLD_EVENT)
    skipped: list[str] = []
    text: list[str] = []
    last = "0-0"
    done: Any = None
    while done is None:
        reply: Any = await redis.xread({Keys(prefix).events(job_id): last}, block=2000)
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode()
            raw = fields[b"event"]
            kind = msgspec.json.decode(raw)["type"]
            if kind not in ("start", "token", "done", "error", "cancelled"):
                skipped.append(kind)
                continue
            event = old.decode(raw)
            if isinstance(event, Token) and event.channel == "content":
                text.append(event.text)
            elif isinstance(event, Done):
                done = event
    assert skipped and set(skipped) == {"segment"}
    assert "".join(text).replace("\\x", "") and done.text == (await client.result(job_id, timeout=5)).text
