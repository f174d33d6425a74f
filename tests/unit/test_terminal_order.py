"""No job is acked without its terminal event: the terminal is written first (fenced, written once),
then the entry is dead-lettered or acked. A failure injected between the two leaves the entry
pending, and the retry finds the terminal already written and acks without writing a second one.
Redis refusing for now (out of memory, a busy script, loading, failed snapshots) on any of these
steps is waited out, never a failure. On fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import httpx
import pytest
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.dead import redrive
from worker.events import decode_event, event_type
from worker.keys import GROUP, Keys
from worker.publisher import Entry, Publisher
from worker.queue import Delivery, JobQueue
from worker.runner import Runner
from worker.settings import Provider, Settings
from worker.store import JobStore
from worker.upstream.adapters import default_adapters

SETTINGS = Settings(
    prefix="t",
    default_provider="up",
    providers={"up": Provider(native_url="https://up.test/v1/inference/{model}")},
    max_deliveries=3,
)
KEYS = Keys(SETTINGS.prefix)
GOOD = b'{"id":"j","model":"m","input":"x"}'
BAD = b'{"id":"j","model":"m","input":"x","nope":1}'


def upstream() -> httpx.MockTransport:
    events: list[dict[str, Any]] = [
        {"token": {"id": 1, "text": "a", "logprob": -0.1, "special": False}},
        {"token": {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}, "generated_text": "a"},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return httpx.MockTransport(
        lambda _: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    )


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
async def runner(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[Runner]:
    publisher = Publisher(redis, maxlen=1000)
    async with httpx.AsyncClient(transport=upstream()) as http:
        run = Runner(
            settings=SETTINGS,
            store=JobStore(redis, KEYS),
            queue=JobQueue(redis, redis, KEYS, "me", dead_maxlen=100, check_permissions=False),
            publisher=publisher,
            http=http,
            adapters=default_adapters(),
        )
        await run.queue.ensure_group()
        flusher = asyncio.create_task(publisher.run())
        yield run
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher


async def delivered(redis: fakeredis.FakeAsyncRedis, payload: bytes) -> str:
    entry: Any = await redis.xadd(KEYS.jobs, {"job": payload})
    await redis.xreadgroup(GROUP, "me", {KEYS.jobs: ">"})
    return str(entry.decode())


async def pending(redis: fakeredis.FakeAsyncRedis) -> list[str]:
    found: Any = await redis.xpending_range(KEYS.jobs, GROUP, "-", "+", 10)
    return [p["message_id"].decode() for p in found]


async def terminals(redis: fakeredis.FakeAsyncRedis) -> list[str]:
    entries: Any = await redis.xrange(KEYS.events("j"))
    events = [decode_event(f[b"event"]) for _, f in entries]
    return [event_type(e) for e in events if event_type(e) in ("done", "error", "cancelled")]


def fail_once(obj: object, name: str, error: Exception) -> list[int]:
    """Make ``obj.name`` raise ``error`` on its first call; the list counts the calls."""
    real: Callable[..., Any] = getattr(obj, name)
    calls: list[int] = []

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return await real(*args, **kwargs)

    setattr(obj, name, wrapped)
    return calls


@pytest.mark.parametrize("deliveries", [1, 4], ids=["rejected at admission", "max deliveries exceeded"])
async def test_a_failure_between_terminal_and_dead_letter_leaves_the_entry_pending(
    redis: fakeredis.FakeAsyncRedis, runner: Runner, deliveries: int
) -> None:
    payload = BAD if deliveries == 1 else GOOD
    entry = await delivered(redis, payload)
    fail_once(runner.queue, "dead_letter", RedisConnectionError("lost"))
    with pytest.raises(RedisConnectionError):
        await runner.handle(Delivery(entry, payload, deliveries=deliveries))
    assert await terminals(redis) == ["error"]  # the terminal came first
    assert await pending(redis) == [entry] and await redis.xlen(KEYS.dead) == 0
    await runner.handle(Delivery(entry, payload, deliveries=deliveries + 1))  # the redelivery
    assert await terminals(redis) == ["error"]  # found, not written again
    assert await pending(redis) == [] and await redis.xlen(KEYS.dead) == 1


async def test_a_failure_writing_the_terminal_of_a_rejection_acks_nothing(
    redis: fakeredis.FakeAsyncRedis, runner: Runner
) -> None:
    entry = await delivered(redis, BAD)
    fail_once(runner.store, "fail", RedisConnectionError("lost"))
    with pytest.raises(RedisConnectionError):
        await runner.handle(Delivery(entry, BAD))
    assert await terminals(redis) == [] and await pending(redis) == [entry]
    assert await redis.xlen(KEYS.dead) == 0


async def test_a_failure_between_done_and_ack_is_acked_by_the_retry(
    redis: fakeredis.FakeAsyncRedis, runner: Runner
) -> None:
    entry = await delivered(redis, GOOD)
    fail_once(runner.queue, "ack", RedisConnectionError("lost"))
    with pytest.raises(RedisConnectionError):
        await runner.handle(Delivery(entry, GOOD))
    assert await terminals(redis) == ["done"] and await pending(redis) == [entry]
    await runner.handle(Delivery(entry, GOOD, deliveries=2))
    assert await terminals(redis) == ["done"] and await pending(redis) == []
    assert await redis.xlen(KEYS.dead) == 0


async def test_an_exhausted_entry_of_a_job_that_ended_is_acked_not_dead_lettered(
    redis: fakeredis.FakeAsyncRedis, runner: Runner
) -> None:
    """Its ``done`` was written and every ack failed: a dead letter would let a redrive run it again."""
    entry = await delivered(redis, GOOD)
    fail_once(runner.queue, "ack", RedisConnectionError("lost"))
    with pytest.raises(RedisConnectionError):
        await runner.handle(Delivery(entry, GOOD))
    await runner.handle(Delivery(entry, GOOD, deliveries=SETTINGS.max_deliveries + 1))
    assert await terminals(redis) == ["done"] and await pending(redis) == []
    assert await redis.xlen(KEYS.dead) == 0


OOM = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
REFUSALS = {  # as redis-py's parser makes them of Redis's replies
    "OOM": OOM,
    "BUSY": ResponseError(
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
    ),
    "LOADING": BusyLoadingError("Redis is loading the dataset in memory"),
    "MISCONF": ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize(
    ("payload", "owner", "name"),
    [
        (GOOD, "store", "begin"),
        (GOOD, "store", "finish"),
        (BAD, "store", "fail"),
        (BAD, "queue", "dead_letter"),
        (GOOD, "queue", "ack"),
    ],
)
async def test_a_refusal_is_waited_out_not_a_failure(
    redis: fakeredis.FakeAsyncRedis, runner: Runner, payload: bytes, owner: str, name: str, refusal: str
) -> None:
    """Redis out of memory, busy with a script, loading its dataset, unable to persist."""
    entry = await delivered(redis, payload)
    calls = fail_once(getattr(runner, owner), name, REFUSALS[refusal])
    await runner.handle(Delivery(entry, payload))  # raises nothing
    assert len(calls) == 2  # refused, then retried
    assert await terminals(redis) == (["done"] if payload == GOOD else ["error"])
    assert await pending(redis) == []
    assert await redis.xlen(KEYS.dead) == (0 if payload == GOOD else 1)


class _Gapping(Publisher):
    """Refuses (OOM) attempt 1's first token in a round trip that also carries its second, which
    lands: the gap that memory freed within one round trip leaves."""

    async def _pipeline(self, entries: list[Entry]) -> list[object]:
        sent = [i for _, i, _ in entries]
        if not (b"1-1" in sent and b"1-2" in sent):
            return await super()._pipeline(entries)
        out: list[object] = []
        for entry, entry_id in zip(entries, sent, strict=True):
            out += [OOM] if entry_id == b"1-1" else await super()._pipeline([entry])
        return out


async def test_an_event_lost_to_out_of_memory_starts_a_new_attempt(redis: fakeredis.FakeAsyncRedis) -> None:
    publisher = _Gapping(redis, maxlen=1000)
    flusher = asyncio.create_task(publisher.run())
    async with httpx.AsyncClient(transport=upstream()) as http:
        runner = Runner(
            settings=SETTINGS,
            store=JobStore(redis, KEYS),
            queue=JobQueue(redis, redis, KEYS, "me", dead_maxlen=100, check_permissions=False),
            publisher=publisher,
            http=http,
            adapters=default_adapters(),
        )
        await runner.queue.ensure_group()
        entry = await delivered(redis, GOOD)
        await runner.handle(Delivery(entry, GOOD))
    flusher.cancel()
    entries: Any = await redis.xrange(KEYS.events("j"))
    events = [decode_event(f[b"event"]) for _, f in entries]
    starts = [e for e in events if event_type(e) == "start"]
    assert [s.attempt for s in starts] == [1, 2] and "lost event" in str(getattr(starts[1], "reason", ""))
    assert await terminals(redis) == ["done"] and events[-1].attempt == 2
    assert await pending(redis) == [] and await redis.xlen(KEYS.dead) == 0


async def test_a_dead_letter_is_moved_back_once_however_many_re_drives_race(
    redis: fakeredis.FakeAsyncRedis, runner: Runner
) -> None:
    """The move is one script on the {P} slot: the new entry exists exactly when the dead letter is
    gone, so two re-drives of the same dead letter enqueue it once."""
    entry = await delivered(redis, GOOD)
    await runner.handle(Delivery(entry, GOOD, deliveries=SETTINGS.max_deliveries + 1))
    assert await redis.xlen(KEYS.dead) == 1 and await redis.xlen(KEYS.jobs) == 0
    first, second = await asyncio.gather(
        redrive(redis, runner.store, None), redrive(redis, runner.store, None)
    )
    assert len(first) + len(second) == 1
    assert await redis.xlen(KEYS.jobs) == 1 and await redis.xlen(KEYS.dead) == 0
    moved = (first or second)[0]
    assert moved["job_id"] == "j" and (await runner.store.status("j") or {}).get("entry") == moved["entry"]
