"""The client and the job store's scripts against fakeredis (logic only; stream semantics such as
pending entries and claims are tested on real Redis)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import msgspec
import pytest

from worker import (
    Cancelled,
    Client,
    Done,
    Error,
    InvalidJob,
    Job,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobNotFound,
    MalformedEvent,
    Params,
    Start,
    Token,
    UnknownEvent,
)
from worker.dead import redrive
from worker.events import Summary, Usage, decode_event, encode_event, event_type, is_terminal
from worker.jobs import encode_job
from worker.store import job_digest

PREFIX = "unit"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    redis = fakeredis.FakeAsyncRedis()
    c = Client(redis, prefix=PREFIX, block_ms=50)
    yield c
    await c.aclose()


async def entry_of(client: Client, job_id: str) -> str:
    state = await client.status(job_id)
    assert state is not None and state.entry is not None
    return state.entry


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
    assert state is not None and state.state == "queued" and state.model == "m"
    assert state.entry
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
    entry = await entry_of(client, job_id)
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
    entry = await entry_of(client, job_id)
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


# ------------------------------------------------------------------------------ enqueue: validation


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": "m", "input": "x", "params": {"max_tokens": -1}}, "$.params.max_tokens"),
        ({"model": "m", "input": "x", "params": Params(max_tokens=-1)}, "$.params.max_tokens"),
        ({"model": "m", "input": "x", "colour": "red"}, "colour"),
        ({"model": "m", "input": "x", "low_prob": 2.0}, "$.low_prob"),
        ({"model": 5, "input": "x"}, "$.model"),
        ({"model": "m", "input": "x", "id": "has space"}, "$.id"),
        ({"model": "m", "input": object()}, "`input`"),
        ({"model": "m", "api": "chat", "input": "x"}, "needs `messages`"),
    ],
)
async def test_enqueue_with_bad_fields_raises_invalid_job_naming_the_field(
    client: Client, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidJob, match=re.escape(named)):
        await client.enqueue(**fields)
    assert await client.redis.xlen(client.keys.jobs) == 0


async def test_enqueue_checks_a_job_built_in_python(client: Client) -> None:
    # building a Job checks none of the schema's constraints; enqueue does
    with pytest.raises(InvalidJob, match=re.escape("$.params.top_logprobs")):
        await client.enqueue(Job(model="m", input="x", params=Params(top_logprobs=99)))
    assert await client.redis.xlen(client.keys.jobs) == 0


# ------------------------------------------------------------------------------ enqueue: conflicts


async def test_the_same_job_under_the_same_id_stays_idempotent(client: Client) -> None:
    first = Job(
        id="same", model="m", input="x", params=Params(temperature=0.5), metadata={"a": "1", "b": "2"}
    )
    assert await client.enqueue(first) == "same"
    # written differently, meaning the same: defaults spelt out, keys in another order
    again: dict[str, Any] = {
        "id": "same",
        "model": "m",
        "input": "x",
        "api": "native",
        "low_prob": float("0.2"),
        "params": {"max_tokens": None, "temperature": 0.5},
        "metadata": {"b": "2", "a": "1"},
    }
    assert await client.enqueue(**again) == "same"
    assert await client.redis.xlen(client.keys.jobs) == 1


async def test_a_different_job_under_a_taken_id_is_a_conflict(client: Client) -> None:
    await client.enqueue(Job(id="taken", model="m", input="x"))
    for other in (
        Job(id="taken", model="m", input="y"),
        Job(id="taken", model="m2", input="x"),
        Job(id="taken", model="m", input="x", params=Params(max_tokens=3)),
        Job(id="taken", model="m", input="x", metadata={"k": "v"}),
    ):
        with pytest.raises(JobConflict, match="'taken'") as caught:
            await client.enqueue(other)
        assert caught.value.job_id == "taken" and isinstance(caught.value, InvalidJob)
    assert await client.redis.xlen(client.keys.jobs) == 1
    state = await client.status("taken")
    assert state is not None and state.raw["job_sha256"] == job_digest(Job(id="taken", model="m", input="x"))


async def test_the_conflict_check_outlives_the_job(client: Client) -> None:
    await client.enqueue(Job(id="over", model="m", input="x"))
    assert await client.cancel("over") == "cancelled"
    assert await client.enqueue(Job(id="over", model="m", input="x")) == "over"
    with pytest.raises(JobConflict):
        await client.enqueue(Job(id="over", model="m", input="changed"))


async def test_a_job_without_a_kept_digest_is_not_compared(client: Client) -> None:
    # a job a worker created from a raw XADD (or an older client) keeps no digest: nothing to compare
    await client.store.fail("raw-job", "1-0", "invalid_job", "bad", {})
    assert await client.enqueue(Job(id="raw-job", model="m", input="x")) == "raw-job"
    assert await client.redis.xlen(client.keys.jobs) == 0


# ------------------------------------------------------------------------------ status and result


async def test_status_is_typed(client: Client) -> None:
    assert await client.status("nobody") is None
    await client.enqueue(Job(id="typed", model="m", input="x", provider="sim"))
    queued = await client.status("typed")
    assert queued is not None
    assert (queued.state, queued.attempt, queued.model, queued.api, queued.provider) == (
        "queued",
        0,
        "m",
        "native",
        "sim",
    )
    assert isinstance(queued.created, int) and queued.entry is not None and queued.tokens is None
    await client.redis.hset(
        client.keys.state("typed"),
        mapping={"cancel": "stop", "tokens": "7", "confidence": "0.5", "future_field": "z"},
    )
    later = await client.status("typed")
    assert (
        later is not None and later.cancel_reason == "stop" and later.tokens == 7 and later.confidence == 0.5
    )
    assert later.raw["future_field"] == "z" and later.raw["state"] == "queued"


async def test_an_unreadable_state_hash_is_a_clear_error(client: Client) -> None:
    await client.redis.hset(client.keys.state("bent"), mapping={"state": "queued", "attempt": "many"})
    with pytest.raises(ValueError, match=r"job 'bent'.*\$\.attempt"):
        await client.status("bent")


async def test_result_raises_with_the_error_or_cancelled_event(client: Client) -> None:
    await client.store.fail("failed", "1-0", "invalid_job", "bad payload", {"k": "v"})
    with pytest.raises(JobFailed, match=r"\[invalid_job\] bad payload") as failed:
        await client.result("failed", timeout=5)
    assert isinstance(failed.value.event, Error) and failed.value.event.metadata == {"k": "v"}
    await client.enqueue(Job(id="stopped", model="m", input="x"))
    await client.cancel("stopped", "no longer needed")
    with pytest.raises(JobCancelled, match="no longer needed") as cancelled:
        await client.result("stopped", timeout=5)
    assert isinstance(cancelled.value.event, Cancelled) and cancelled.value.event.reason == "no longer needed"


async def test_result_waits_for_a_running_job_and_reads_from_its_last_event(client: Client) -> None:
    job_id = await client.enqueue(Job(id="later", model="m", input="x"))
    key = client.keys.events(job_id)
    await client.redis.xadd(key, {"event": b"not json"}, id="1-0")  # history result() never reads
    await client.redis.xadd(key, {"event": encode_event(_token(job_id, 1, 0))}, id="1-1")
    waiting = asyncio.create_task(client.result(job_id, timeout=10))
    done = Done(
        job_id=job_id, attempt=1, finish_reason="length", text="a",
        usage=Usage(output_tokens=1), confidence=0.9, summary=_summary(),
    )  # fmt: skip
    await client.redis.xadd(key, {"event": encode_event(done)}, id="1-2")
    assert await waiting == done
    assert await client.result(job_id, timeout=5) == done  # already over: from the last event alone


async def test_result_of_an_unknown_job_raises(client: Client) -> None:
    with pytest.raises(JobNotFound):
        await client.result("never", timeout=5)


# ------------------------------------------------------------------------------ event decoding


def _token(job_id: str, attempt: int, index: int) -> Token:
    return Token(job_id=job_id, attempt=attempt, index=index, text="a", logprob=-0.1)


def _cancelled(job_id: str, attempt: int) -> bytes:
    return encode_event(Cancelled(job_id=job_id, attempt=attempt, reason="r"))


def test_decode_event_passes_an_unknown_type_on_opaque() -> None:
    raw = b'{"type":"claim","job_id":"j","attempt":2,"text":"x","spans":[1,2]}'
    event = decode_event(raw)
    assert isinstance(event, UnknownEvent)
    assert (event.type, event.job_id, event.attempt, event.raw) == ("claim", "j", 2, raw)
    assert event.data["spans"] == [1, 2] and not is_terminal(event) and event_type(event) == "claim"
    assert decode_event(raw.decode()) == event


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "no valid `type`"),
        (b'{"job_id":"j","attempt":1}', "no valid `type`"),
        (b'{"type":7,"job_id":"j","attempt":1}', "no valid `type`"),
        (b'{"type":"Not A Type","job_id":"j","attempt":1}', "no valid `type`"),
        (b'{"type":"token","job_id":"j","attempt":1,"index":"zero","text":"a","logprob":null}', "$.index"),
        (b'{"type":"done","job_id":"j","attempt":1}', "bad 'done' event"),
        (b'{"type":"claim","job_id":"j"}', "`attempt`"),
    ],
)
def test_a_malformed_event_is_a_clear_error_naming_it(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(says)) as caught:
        decode_event(raw, event_id="3-4", job_id="j")
    assert str(caught.value).startswith("malformed event 3-4 of job 'j': ")
    assert caught.value.event_id == "3-4" and not isinstance(caught.value, msgspec.DecodeError)


async def test_a_consumer_that_skips_unknown_types_follows_a_stream_with_new_ones(client: Client) -> None:
    job_id = await client.enqueue(Job(id="newer", model="m", input="x"))
    key = client.keys.events(job_id)
    segment = b'{ "type": "claim", "job_id": "newer", "attempt": 1, "text": "a" }'  # spacing kept
    start = Start(job_id=job_id, attempt=1, model="m", provider="p", api="native")
    await client.redis.xadd(key, {"event": encode_event(start)}, id="1-0")
    await client.redis.xadd(key, {"event": encode_event(_token(job_id, 1, 0))}, id="1-1")
    await client.redis.xadd(key, {"event": segment}, id="1-2")
    await client.redis.xadd(key, {"event": b'{"type":"rerank_hint","job_id":"newer","attempt":1}'}, id="1-3")
    await client.redis.xadd(key, {"event": _cancelled(job_id, 1)}, id="1-4")
    items = [i async for i in client.subscribe(job_id, timeout=5)]
    assert [i.type for i in items] == ["start", "token", "claim", "rerank_hint", "cancelled"]
    assert (
        items[2].raw == segment and isinstance(items[2].event, UnknownEvent) and items[2].event.raw == segment
    )
    known = [i.event for i in items if not isinstance(i.event, UnknownEvent)]
    assert [type(e) for e in known] == [Start, Token, Cancelled]
    with pytest.raises(JobCancelled):
        await client.result(job_id, timeout=5)


async def test_received_raw_is_the_stored_bytes(client: Client) -> None:
    job_id = "exact"
    raw = b'{"attempt": 1, "job_id": "exact", "type": "cancelled", "reason": "r\\u00e9", "extra": null}'
    await client.redis.xadd(client.keys.events(job_id), {"event": raw}, id="1-0")
    (item,) = [i async for i in client.subscribe(job_id, timeout=5)]
    assert item.raw == raw and item.type == "cancelled"
    assert item.event == Cancelled(job_id="exact", attempt=1, reason="ré")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"event": b'{"type":"token"}'}, "bad 'token' event"),
        ({"evnt": b"{}"}, "the entry has no `event` field"),
    ],
)
async def test_subscribe_names_the_malformed_event(
    client: Client, fields: dict[str, bytes], says: str
) -> None:
    job_id = "broken"
    await client.redis.xadd(
        client.keys.events(job_id), {"event": encode_event(_token(job_id, 1, 0))}, id="1-1"
    )
    await client.redis.xadd(client.keys.events(job_id), fields, id="1-2")  # type: ignore[arg-type]
    seen = []
    with pytest.raises(MalformedEvent, match=re.escape(f"malformed event 1-2 of job 'broken': {says}")):
        async for item in client.subscribe(job_id, timeout=5):
            seen.append(item.id)
    assert seen == ["1-1"]


async def test_a_redriven_job_keeps_its_digest(client: Client) -> None:
    job = Job(id="again", model="m", input="x")
    await client.redis.xadd(client.keys.dead, {"job": encode_job(job), "reason": "too many deliveries"})
    (moved,) = await redrive(client.redis, client.store, None)
    assert moved["job_id"] == "again"
    assert await client.enqueue(job) == "again"
    with pytest.raises(JobConflict):
        await client.enqueue(Job(id="again", model="m", input="other"))
