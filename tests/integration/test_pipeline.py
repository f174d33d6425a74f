"""Enqueue → worker → subscribe, on a real redis-server and the simulator over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client, Done, Error, Job, Params, Start, Token
from worker.client import Received
from worker.keys import GROUP, Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """These tests run on a single redis-server and on a real three-master Redis Cluster."""
    return str(request.param)


StartWorker = Callable[..., Awaitable[RunningWorker]]


async def collect(client: Client, job_id: str, *, after: str | None = None) -> list[Received]:
    return [item async for item in client.subscribe(job_id, after=after, timeout=30)]


async def state_name(client: Client, job_id: str) -> str | None:
    status = await client.status(job_id)
    return None if status is None else status.state


async def settled(redis: Redis, keys: Keys) -> bool:
    """Nothing pending and nothing left on the job stream."""
    pending = (await redis.xpending(keys.jobs, GROUP))["pending"]
    return pending == 0 and await redis.xlen(keys.jobs) == 0


def tokens_of(items: list[Received]) -> list[Token]:
    return [i.event for i in items if isinstance(i.event, Token)]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_one_job_end_to_end(start_worker: StartWorker, client: Client, redis: Redis) -> None:
    await start_worker()
    job_id = await client.enqueue(
        model="tokenwire/sim;tokens=30", input="Tell me about Redis.", metadata={"user": "u1"}
    )
    items = await collect(client, job_id)

    start, *middle, last = (i.event for i in items)
    assert isinstance(start, Start) and start.attempt == 1 and start.metadata == {"user": "u1"}
    assert start.model == "tokenwire/sim;tokens=30" and start.provider == "sim" and start.api == "native"
    assert isinstance(last, Done), last
    tokens = tokens_of(items)
    assert len(tokens) == len(middle) == 31  # 30 tokens, then the special end token
    assert [t.index for t in tokens] == list(range(31))
    assert tokens[-1].special and last.finish_reason == "eos_token"
    assert last.text == "".join(t.text for t in tokens if not t.special)
    assert last.usage.output_tokens == 31 and last.usage.input_tokens is not None
    assert last.metadata == {"user": "u1"}
    assert last.confidence is not None and 0 < last.confidence <= 1
    assert last.confidence == tokens[-1].confidence or tokens[-1].confidence is None
    assert [i.id for i in items] == [f"1-{n}" for n in range(len(items))]

    keys = Keys(client.keys.prefix)
    state = await client.status(job_id)
    assert state is not None and state.state == "done" and state.tokens == 31
    # acknowledged (just after the terminal event), removed from the job stream, keys expire
    await wait_for(lambda: settled(redis, keys))
    for key in (keys.state(job_id), keys.events(job_id)):
        ttl = await redis.ttl(key)
        assert 0 < ttl <= 3600


async def test_fifty_concurrent_jobs(start_worker: StartWorker, client: Client) -> None:
    await start_worker(concurrency=64)
    lengths = {await client.enqueue(model=f"tokenwire/sim;tokens={5 + n}", input=f"job {n}"): 5 + n
               for n in range(50)}  # fmt: skip
    results = await asyncio.gather(*(collect(client, job_id) for job_id in lengths))
    for (job_id, n), items in zip(lengths.items(), results, strict=True):
        done = items[-1].event
        assert isinstance(done, Done), (job_id, done)
        tokens = tokens_of(items)
        assert len(tokens) == n + 1, job_id
        assert done.text == "".join(t.text for t in tokens if not t.special)
        assert sum(isinstance(i.event, Start) for i in items) == 1


async def test_late_subscriber_replays_and_resume_gets_the_rest(
    start_worker: StartWorker, client: Client
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="tokenwire/sim;tokens=40", input="replay me")
    live = await collect(client, job_id)
    late = await collect(client, job_id)
    assert [(i.id, i.raw) for i in late] == [(i.id, i.raw) for i in live]

    cut = 17
    rest = await collect(client, job_id, after=live[cut].id)
    assert [i.id for i in rest] == [i.id for i in live[cut + 1 :]]
    assert [i.raw for i in rest] == [i.raw for i in live[cut + 1 :]]


async def test_resume_while_the_job_is_still_streaming(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    job_id = await client.enqueue(model="tokenwire/sim;tokens=60;tps=200", input="slow")
    first: list[Received] = []
    async for item in client.subscribe(job_id, timeout=30):
        first.append(item)
        if len(first) == 5:
            break  # the subscriber disconnects mid-stream
    rest = await collect(client, job_id, after=first[-1].id)
    everything = await collect(client, job_id)
    assert [i.id for i in first + rest] == [i.id for i in everything]
    assert isinstance(rest[-1].event, Done)


async def test_acked_only_after_the_terminal_event(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker()
    keys = Keys(client.keys.prefix)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=40;tps=40", input="paced")
    async for item in client.subscribe(job_id, timeout=30):
        if isinstance(item.event, Token):
            break
    assert (await redis.xpending(keys.jobs, GROUP))["pending"] == 1
    assert await state_name(client, job_id) == "running"
    await collect(client, job_id)
    await wait_for(lambda: settled(redis, keys))


async def test_duplicate_enqueue_is_one_job(start_worker: StartWorker, client: Client, redis: Redis) -> None:
    job = Job(id="same-id-1", model="tokenwire/sim;tokens=5", input="once")
    first = await client.enqueue(job)
    second = await client.enqueue(job)
    assert first == second == "same-id-1"
    assert await redis.xlen(client.keys.jobs) == 1
    await start_worker()
    items = await collect(client, first)
    assert sum(isinstance(i.event, Start) for i in items) == 1
    assert isinstance(items[-1].event, Done)
    await wait_for(lambda: settled(redis, client.keys))
    assert await client.enqueue(job) == "same-id-1"  # still one job after it ended
    assert await redis.xlen(client.keys.jobs) == 0


BAD_PAYLOADS: list[tuple[dict[Any, Any], str]] = [
    ({"job": b"{not json"}, "not valid JSON"),
    ({"job": msgspec.json.encode({"input": "no model"})}, "model"),
    ({"job": msgspec.json.encode({"model": 5, "input": "x"})}, "Expected `str`"),
    ({"job": msgspec.json.encode({"model": "m", "api": "chat", "input": "x"})}, "messages"),
    ({"job": msgspec.json.encode({"model": "m", "input": "x", "api": "telepathy"})}, "api"),
    ({"job": b"\xff\xfe not utf-8"}, "JSON"),
    ({"payload": b"{}"}, "no `job` field"),
]


async def test_invalid_payloads_are_dead_lettered_and_the_worker_goes_on(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker()
    keys = Keys(client.keys.prefix)
    entries: list[Any] = [await redis.xadd(keys.jobs, fields) for fields, _ in BAD_PAYLOADS]
    # an invalid job whose id is readable also gets its terminal error event
    await redis.xadd(keys.jobs, {"job": msgspec.json.encode({"id": "bad-1", "model": "m", "input": 3})})
    # unknown provider and limits are checked against this worker's settings
    await client.enqueue(Job(id="bad-2", model="m", input="x", provider="nowhere"))
    await client.enqueue(Job(id="bad-3", model="m", input="x", params=Params(max_tokens=10**6)))
    good = await client.enqueue(model="tokenwire/sim;tokens=3", input="still alive")

    assert isinstance((await collect(client, good))[-1].event, Done)
    for job_id, code, words in [
        ("bad-1", "invalid_job", "got `int` - at `$.input`"),
        ("bad-2", "unknown_provider", "nowhere"),
        ("bad-3", "max_tokens_above_cap", "max_tokens_cap"),
    ]:
        items = await collect(client, job_id)
        assert len(items) == 1 and isinstance(items[0].event, Error)
        assert items[0].event.code == code and words in items[0].event.message

    async with asyncio.timeout(10):  # the terminal is written first, then the entry dead-lettered
        while await redis.xlen(keys.dead) < len(BAD_PAYLOADS) + 3:
            await asyncio.sleep(0.02)
    dead: Any = await redis.xrange(keys.dead)
    assert len(dead) == len(BAD_PAYLOADS) + 3
    reasons = {fields[b"entry"]: fields[b"reason"].decode() for _, fields in dead}
    for entry, (_, words) in zip(entries, BAD_PAYLOADS, strict=True):
        assert words in reasons[entry], (words, reasons[entry])
    await wait_for(lambda: settled(redis, keys))


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        ("tokenwire/sim;fault=status;status=404", "model_not_found", "Model not found"),
        ("tokenwire/sim;fault=status;status=422", "bad_request", "HTTP 422"),
        ("tokenwire/sim;fault=error;after=3", "upstream_generation_error", "Request failed"),
        ("tokenwire/sim;fault=eof;after=4", "upstream_incomplete", "without its end marker"),
    ],
)
async def test_upstream_failures_end_the_job_with_one_error(
    start_worker: StartWorker, client: Client, model: str, code: str, words: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(model=model, input="fail please")
    items = await collect(client, job_id)
    terminals = [i.event for i in items if isinstance(i.event, (Done, Error))]
    assert len(terminals) == 1 and isinstance(terminals[0], Error), terminals
    assert terminals[0].code == code and words in terminals[0].message, terminals[0]
    assert items[-1].event is terminals[0]


async def test_missing_api_key_names_the_variable(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    from worker import Provider

    providers = {
        "sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}"),
        "keyed": Provider(native_url=f"{sim_url}/v1/inference/{{model}}", api_key_env="TW_TEST_UNSET_KEY"),
    }
    await start_worker(providers=providers)
    job_id = await client.enqueue(model="tokenwire/sim", input="x", provider="keyed")
    items = await collect(client, job_id)
    error = items[-1].event
    assert isinstance(error, Error) and error.code == "missing_api_key"
    assert "TW_TEST_UNSET_KEY" in error.message


async def test_a_worker_takes_only_as_many_jobs_as_it_has_slots(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    keys = Keys(client.keys.prefix)
    ids = [await client.enqueue(model="tokenwire/sim;tokens=15;tps=100", input=f"{n}") for n in range(6)]
    handle = await start_worker(concurrency=2)
    seen_pending: list[int] = []

    async def all_done() -> bool:
        seen_pending.append((await redis.xpending(keys.jobs, GROUP))["pending"])
        states = [await state_name(client, i) for i in ids]
        return all(s == "done" for s in states)

    await wait_for(all_done, timeout=30)
    assert max(seen_pending) == 2  # never more delivered than the free slots

    async def idle() -> bool:  # each task exits just after its ack, which follows the terminal event
        return not handle.worker.inflight

    await wait_for(idle)


async def test_event_streams_are_capped_and_expire_as_configured(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker(events_maxlen=50, output_ttl_seconds=7)
    job_id = await client.enqueue(
        model="tokenwire/sim;tokens=600", input="long", params=Params(max_tokens=700)
    )
    async with asyncio.timeout(30):
        while await state_name(client, job_id) != "done":
            await asyncio.sleep(0.02)
    keys = Keys(client.keys.prefix)
    length = await redis.xlen(keys.events(job_id))
    assert length < 602 and length <= 50 + 100  # MAXLEN ~ trims whole 100-entry nodes
    for key in (keys.state(job_id), keys.events(job_id)):
        assert 0 < await redis.ttl(key) <= 7
