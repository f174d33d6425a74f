"""Hostile job entries cannot take a worker down (real redis-server, the real simulator, in-process
workers): each one is dead-lettered once, with a terminal ``error`` where its id is readable, next
to healthy jobs that complete, whether the worker reads it or takes it over from a dead consumer. A
helper task that crashes is restarted and /readyz fails meanwhile. A producer's raw ``replaces``
field cannot move or restart a running job; the drain's own hand-back still does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import structlog
from redis.asyncio import Redis

from worker import Client, Done, Error, Start, Token
from worker.backoff import RetryPolicy
from worker.keys import GROUP, Keys, as_text

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
BOUND = 30.0


def nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# (payload, the id its terminal event is written under, or None)
HOSTILE: list[tuple[bytes, str | None]] = [
    (b'{"id":"deep","model":"m","input":"x","z":' + nest(1000) + b"}", "deep"),
    (b'{"id":"deepobj","model":"m","z":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", "deepobj"),
    (b'{"id":"bigint","model":"m","input":"x","params":{"seed":' + b"9" * 50_000 + b"}}", "bigint"),
    (b'{"id":"utf8","model":"m","input":"\xff\xfe"}', "utf8"),
    (b'{"id":"nul\x00","model":"m","input":"x"}', None),
    (b'[{"id":"list","model":"m","input":"x"}]', None),
    (b"\x00" * 64, None),
]


async def _dead(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(keys.dead)
    return [{as_text(k): as_text(v) for k, v in fields.items()} for _, fields in entries]


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(BOUND):
        while not await condition():
            await asyncio.sleep(0.02)
    assert await condition(), what


async def _events(redis: Redis, keys: Keys, job_id: str) -> list[tuple[str, Any]]:
    from worker.events import decode_event, event_type

    entries: Any = await redis.xrange(keys.events(job_id))
    out = []
    for entry_id, fields in entries:
        event = decode_event(fields[b"event"])
        out.append((as_text(entry_id), event))
        assert event_type(event)
    return out


async def _assert_each_dead_lettered_once(redis: Redis, keys: Keys, entries: dict[str, str | None]) -> None:
    await _until(lambda: _count_dead(redis, keys, len(entries)), "every hostile entry dead-lettered")
    dead = await _dead(redis, keys)
    assert sorted(d["entry"] for d in dead) == sorted(entries), dead
    for record in dead:
        job_id = entries[record["entry"]]
        assert record["code"] == "invalid_job" and record["reason"]
        assert record.get("job_id") == job_id
        if job_id is not None:
            events = await _events(redis, keys, job_id)
            assert len(events) == 1 and isinstance(events[0][1], Error), events
            assert events[0][1].code == "invalid_job"


async def _count_dead(redis: Redis, keys: Keys, n: int) -> bool:
    return bool(await redis.xlen(keys.dead) >= n)


async def test_hostile_entries_next_to_healthy_jobs(
    start_worker: StartWorker, client: Client, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    running = await start_worker()
    healthy = [await client.enqueue(model="tokenwire/sim;tokens=5", input=f"h{i}") for i in range(3)]
    hostile = {as_text(await redis.xadd(keys.jobs, {"job": payload})): job_id for payload, job_id in HOSTILE}
    odd = {
        as_text(await redis.xadd(keys.jobs, {"other": b"x"})): None,  # no `job` field
        as_text(await redis.xadd(keys.jobs, {"job": HOSTILE[0][0], "x": b"\xff", "extra": b""})): "deep",
    }
    healthy += [await client.enqueue(model="tokenwire/sim;tokens=5", input=f"h{i}") for i in range(3, 6)]
    for job_id in healthy:
        done = await client.result(job_id, timeout=BOUND)
        assert isinstance(done, Done)
    # the second entry of id "deep" finds the job ended: dead-lettered, no second terminal
    await _until(lambda: _count_dead(redis, keys, len(hostile) + len(odd)), "all dead-lettered")
    dead = await _dead(redis, keys)
    assert sorted(d["entry"] for d in dead) == sorted([*hostile, *odd])
    for payload_entry, trusted in hostile.items():
        [record] = [d for d in dead if d["entry"] == payload_entry]
        assert record["code"] == "invalid_job" and record.get("job_id") == trusted
    for job_id in {j for j in hostile.values() if j is not None}:
        events = await _events(redis, keys, job_id)
        assert len(events) == 1 and isinstance(events[0][1], Error) and events[0][1].code == "invalid_job"
    assert not running.task.done() and running.worker.supervisor.down() is None
    assert await redis.xlen(keys.jobs) == 0


async def test_hostile_entries_taken_over_from_a_dead_consumer(
    start_worker: StartWorker, client: Client, redis: Redis, prefix: str
) -> None:
    """Delivered first to a consumer that died, with a healthy job behind them: the worker's
    reclaim takes them all over (their second delivery) in one pass, dead-letters the hostile ones
    and runs the healthy one, its reclaim task never crashing."""
    keys = Keys(prefix)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    entries = {as_text(await redis.xadd(keys.jobs, {"job": payload})): job_id for payload, job_id in HOSTILE}
    healthy = await client.enqueue(model="tokenwire/sim;tokens=5", input="behind them")
    taken: Any = await redis.xreadgroup(GROUP, "dead-consumer", {keys.jobs: ">"})
    assert len(taken[0][1]) == len(HOSTILE) + 1
    running = await start_worker(lease_seconds=0.5, reclaim_interval_seconds=0.1)
    await _assert_each_dead_lettered_once(redis, keys, entries)
    assert isinstance(await client.result(healthy, timeout=BOUND), Done)
    assert running.worker.metrics.takeovers._value.get() == len(HOSTILE) + 1

    assert not running.task.done() and running.worker.supervisor.down() is None
    assert running.worker.metrics.task_restarts.labels("reclaim")._value.get() == 0


async def test_a_crashed_reclaim_is_restarted_and_readyz_fails_meanwhile(
    start_worker: StartWorker, client: Client, redis: Redis, prefix: str, unused_tcp_port: int
) -> None:
    running = await start_worker(
        lease_seconds=0.5, reclaim_interval_seconds=0.05, metrics_port=unused_tcp_port
    )
    worker = running.worker
    worker.supervisor.policy = RetryPolicy(base=2.0, cap=2.0)  # down for 1-2 s: seen by polling
    original, calls = worker.queue.reclaim, 0

    async def crashes_once(count: int, min_idle_ms: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RecursionError("maximum recursion depth exceeded while deserializing an object")
        return await original(count, min_idle_ms)

    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
        assert (await http.get("/readyz")).status_code == 200
        with structlog.testing.capture_logs() as logs:
            worker.queue.reclaim = crashes_once  # type: ignore[method-assign]

            async def not_ready() -> bool:
                return (await http.get("/readyz")).status_code == 503

            await _until(not_ready, "/readyz fails while reclaim is down")
            answer = await http.get("/readyz")
            assert "worker task 'reclaim' is down (RecursionError" in answer.text

            async def ready() -> bool:
                return calls >= 2 and (await http.get("/readyz")).status_code == 200

            await _until(ready, "reclaim restarted, /readyz passes again")
        metrics = (await http.get("/metrics")).text
    assert 'tokenwire_task_restarts_total{task="reclaim"} 1.0' in metrics
    [line] = [r for r in logs if r["event"] == "worker task crashed; restarting it"]
    assert line["task"] == "reclaim" and isinstance(line["exc_info"], RecursionError)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=5", input="still serving")
    assert isinstance(await client.result(job_id, timeout=BOUND), Done)


# -- replaces ------------------------------------------------------------------------------------


async def _first_token(client: Client, job_id: str) -> None:
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                return


@pytest.mark.parametrize("forged", ["{entry}", "{entry} 0123456789abcdef0123456789abcdef", "{entry} "])
async def test_a_raw_replaces_field_does_not_restart_a_running_job(
    start_worker: StartWorker, client: Client, redis: Redis, prefix: str, forged: str
) -> None:
    keys = Keys(prefix)
    await start_worker(lease_seconds=30.0)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=40;tps=40", input="slow")
    await _first_token(client, job_id)
    state: Any = await redis.hgetall(keys.state(job_id))
    entry = as_text(state[b"entry"])
    payload: Any = await redis.xrange(keys.jobs, entry, entry)
    with structlog.testing.capture_logs() as logs:
        await redis.xadd(keys.jobs, {"job": payload[0][1][b"job"], "replaces": forged.format(entry=entry)})
        done = await client.result(job_id, timeout=BOUND)
    assert isinstance(done, Done) and done.attempt == 1
    starts = [e for _, e in await _events(redis, keys, job_id) if isinstance(e, Start)]
    assert [s.attempt for s in starts] == [1]
    assert any(r["event"] == "job skipped" and r["reason"] == "duplicate" for r in logs)
    assert as_text(await redis.hget(keys.state(job_id), "entry")) == entry
    assert await redis.xlen(keys.jobs) == 0


async def test_the_drains_own_hand_back_moves_the_job(
    start_worker: StartWorker, client: Client, redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    first = await start_worker(drain_grace_seconds=0.1, lease_seconds=30.0)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=60;tps=30", input="slow")
    await _first_token(client, job_id)
    await start_worker(lease_seconds=30.0)
    with structlog.testing.capture_logs() as logs:
        await first.shutdown()
    [handed] = [r for r in logs if r["event"] == "handed a job back for a peer"]
    done = await client.result(job_id, timeout=BOUND)
    assert isinstance(done, Done) and done.attempt == 2
    state: Any = await redis.hgetall(keys.state(job_id))
    assert as_text(state[b"entry"]) == handed["new_entry"] and b"handback" not in state
