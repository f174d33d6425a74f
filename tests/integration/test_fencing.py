"""Terminal events fence every attempt; a cancel needs the job's state; no key lives without a TTL
(issue 12, items 5, 6 and 10), on a real redis-server and a real Redis Cluster.

- A terminal written by a script other than the attempt's own FINISH (a dead letter, a cancel found
  at pickup, a queued job's cancel) sits at ``<attempt>-TERMINAL_SEQ``: a stale owner's later writes
  are refused by Redis, and a refused write counts as landed only if the very same event is there.
- ``PUBLISH P:cancel "ID\\nreason"`` alone cancels nothing: the worker checks the state hash.
- After a FLUSHALL (or the job's keys expiring) mid-job, nothing the worker writes re-creates a job
  key without a TTL, and a subscriber learns the job is gone instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from worker import Cancelled, Client, Done, Start, Token
from worker.client import JobNotFound
from worker.events import encode_event
from worker.keys import Keys, cancel_message
from worker.publisher import Publisher, Sink
from worker.scripts import TERMINAL_SEQ
from worker.store import JobStore

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

BOUND = 30.0
StartWorker = Callable[..., Awaitable[RunningWorker]]
FAST = {"lease_seconds": 1.5, "reclaim_interval_seconds": 0.2}


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


def _start(job_id: str) -> Start:
    return Start(job_id=job_id, attempt=0, model="m", provider="sim", api="native")


def _token(job_id: str, index: int) -> bytes:
    return encode_event(Token(job_id=job_id, attempt=1, index=index, text="t", logprob=-0.1))


async def _ids(redis: Redis, key: str) -> list[str]:
    raw: Any = await redis.xrange(key)
    return [entry_id.decode() for entry_id, _ in raw]


# ------------------------------------------------------------------------ item 5: the fence


@pytest.mark.parametrize("ending", ["cancel_at_pickup", "dead_letter"])
async def test_a_terminal_written_for_a_stale_owner_fences_its_later_writes(
    redis: Redis, prefix: str, ending: str
) -> None:
    """The owner of attempt 1 stalls; the job ends without it (a peer finds the cancel at pickup,
    or dead-letters the entry); the owner's next tokens are refused, none lands after the terminal."""
    store, keys, job = JobStore(redis, Keys(prefix)), Keys(prefix), "fenced"
    await store.create(job, "m", "native", "sim")
    assert (await store.begin(job, "5-0", "owner", _start(job))).attempt == 1
    publisher = Publisher(redis, maxlen=1000)
    sink = Sink(keys.events(job), existing_only=True)
    for seq in range(1, 4):
        publisher.emit(sink, b"1-%d" % seq, _token(job, seq - 1))
    await publisher.flush()
    assert sink.ok

    if ending == "cancel_at_pickup":
        assert await store.cancel(job, "stop") == "requested"
        begun = await store.begin(job, "5-0", "peer", _start(job))
        assert begun.outcome == "cancel"
        assert await store.fail(job, "5-0", "cancelled", begun.detail, {}, cancelled=True) == "ok"
    else:
        assert await store.fail(job, "5-0", "max_deliveries_exceeded", "too often", {}) == "ok"
    fence = f"1-{TERMINAL_SEQ}"
    assert (await store.status(job) or {})["terminal_id"] == fence

    for seq in range(4, 8):  # the stale owner resumes: 1-4 is the id the old `1-*` terminal took
        publisher.emit(sink, b"1-%d" % seq, _token(job, seq - 1))
    await publisher.flush()
    await publisher.aclose()
    assert sink.fenced and sink.error is None
    assert await _ids(redis, keys.events(job)) == ["1-0", "1-1", "1-2", "1-3", fence]
    # and nothing begins again after it, even with the state hash gone
    await redis.delete(keys.state(job))
    assert (await store.begin(job, "6-0", "late", _start(job))).outcome == "terminal"
    assert await store.fail(job, "6-0", "x", "y", {}) == "terminal"


async def test_a_refused_write_is_landed_only_if_the_same_event_is_there(redis: Redis, prefix: str) -> None:
    """A write retried after a lost reply finds its own event (landed); an id another writer's
    event took is a fence, never "landed" (what let the stale owner go on after ``1-301 cancelled``)."""
    keys, job = Keys(prefix), "collide"
    key = keys.events(job)
    await redis.xadd(key, {"event": b"start"}, id="1-0")
    await redis.xadd(key, {"event": _token(job, 0)}, id="1-1")  # ours, its reply lost
    cancelled = encode_event(Cancelled(job_id=job, attempt=1, reason="r"))
    await redis.xadd(key, {"event": cancelled}, id="1-2")  # another writer's, at our next id
    publisher = Publisher(redis, maxlen=1000)
    retried, stale = Sink(key, existing_only=True), Sink(key, existing_only=True)
    publisher.emit(retried, b"1-1", _token(job, 0))
    await publisher.flush()
    assert retried.ok
    publisher.emit(stale, b"1-2", _token(job, 1))
    await publisher.flush()
    assert stale.fenced
    publisher.emit(stale, b"1-3", _token(job, 2))  # a fenced sink's later events are never sent
    await publisher.flush()
    await publisher.aclose()
    assert await _ids(redis, key) == ["1-0", "1-1", "1-2"]


async def test_a_queued_job_s_cancel_is_written_at_the_fencing_id(redis: Redis, prefix: str) -> None:
    store, keys = JobStore(redis, Keys(prefix)), Keys(prefix)
    await store.create("q", "m", "native", "sim")
    assert await store.cancel("q", "never mind") == "cancelled"
    assert await _ids(redis, keys.events("q")) == [f"1-{TERMINAL_SEQ}"]
    assert (await store.begin("q", "7-0", "w", _start("q"))).outcome == "terminal"


# --------------------------------------------------------------- item 6: cancel needs the state


async def _listening(redis: Redis, channel: str) -> bool:
    """Whether the worker's cancel listener is subscribed (on a cluster: on any node)."""
    nodes: dict[str, Any] = {"target_nodes": "all"} if not hasattr(redis, "connection_pool") else {}
    counts: Any = await redis.pubsub_numsub(channel, **nodes)
    if isinstance(counts, dict):  # one reply per node
        return any(int(reply[0][1]) >= 1 for reply in counts.values() if reply)
    return bool(counts) and int(counts[0][1]) >= 1


async def test_a_bare_publish_cancels_nothing(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker()
    job = await client.enqueue(model="tokenwire/sim;tokens=80;tps=80", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token):
                break
    await wait_for(lambda: _listening(redis, client.keys.cancel))
    # anyone who can PUBLISH: the message names the job but the state has no cancel request
    await redis.publish(client.keys.cancel, cancel_message(job, "forged"))
    items = [item async for item in client.subscribe(job, timeout=BOUND)]
    assert isinstance(items[-1].event, Done), items[-1].event
    assert "cancel" not in ((await client.store.status(job)) or {})


async def test_client_cancel_cancels_with_the_reason_it_recorded(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker()
    job = await client.enqueue(model="tokenwire/sim;tokens=400;tps=50", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token):
                break
    await wait_for(lambda: _listening(redis, client.keys.cancel))
    # a forged message first (the listener reads in order), then the real request
    await redis.publish(client.keys.cancel, cancel_message(job, "forged"))
    assert await client.cancel(job, "real") == "requested"
    items = [item async for item in client.subscribe(job, timeout=BOUND)]
    last = items[-1].event
    assert isinstance(last, Cancelled) and last.reason == "real", last


# ------------------------------------------------------------------ item 10: a TTL on every key


async def _job_keys_without_ttl(redis: Redis, keys: Keys) -> list[str]:
    """The job keys (``P:job:*``) that exist without a TTL. The queue's own keys (``{P}:jobs``,
    ``{P}:dead``) live for good by design and are not job keys."""
    pattern = keys.state("*").replace("{*}", "*")
    found = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        if int(await redis.pttl(key)) == -1:
            found.append(key.decode() if isinstance(key, bytes) else str(key))
    return found


@pytest.mark.parametrize("loss", ["flushall", "expired"])
async def test_no_job_key_is_recreated_without_a_ttl(
    start_worker: StartWorker, client: Client, redis: Redis, loss: str
) -> None:
    """The worker goes on streaming after the job's keys vanish (FLUSHALL, or its keys expiring
    under a stale writer): every job key that exists again has a TTL, and a subscriber is told the
    job is gone (``tail`` exits 4) instead of waiting forever."""
    running = await start_worker(**FAST)
    keys = client.keys
    job = await client.enqueue(model="tokenwire/sim;tokens=400;tps=50", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token) and item.event.index >= 3:
                break
    if loss == "flushall":
        await redis.flushall()  # on a cluster client: every primary
    else:
        await redis.pexpire(keys.state(job), 1)
        await redis.pexpire(keys.events(job), 1)

    async def job_stopped() -> bool:  # its next write found the stream gone
        return not running.worker.jobs

    await wait_for(job_stopped, BOUND)
    assert await _job_keys_without_ttl(redis, keys) == []
    if loss == "expired":
        return  # its entry is still pending: a later delivery runs the job again (keys with TTLs)
    with pytest.raises(JobNotFound):
        async for _ in client.subscribe(job, timeout=BOUND):
            pass


async def test_recording_an_entry_never_recreates_a_vanished_state_hash(redis: Redis, prefix: str) -> None:
    store, keys = JobStore(redis, Keys(prefix)), Keys(prefix)
    await store.record_entry("gone", "1-0")
    assert not await redis.exists(keys.state("gone"))
    await store.create("here", "m", "native", "sim")
    await store.record_entry("here", "2-0")
    assert await redis.hget(keys.state("here"), "entry") == b"2-0"
    assert int(await redis.pttl(keys.state("here"))) > 0


async def test_a_request_made_while_the_listener_was_away_is_honoured_when_it_is_back(
    start_worker: StartWorker, client: Client, redis: Redis, backend: str
) -> None:
    """The wake-up message is lost (the worker's pub/sub connection was cut): once the listener has
    subscribed again it checks the state of every job it runs, and the recorded cancel wins."""
    await start_worker()
    job = await client.enqueue(model="tokenwire/sim;tokens=2000;tps=50", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token):
                break
    await client.store.cancel(job, "while away")  # recorded, but no message is published
    nodes: dict[str, Any] = {"target_nodes": "all"} if backend == "cluster" else {}
    assert await redis.client_kill_filter(_type="pubsub", **nodes)  # the listener reconnects
    items = [item async for item in client.subscribe(job, timeout=BOUND)]
    last = items[-1].event
    assert isinstance(last, Cancelled) and last.reason == "while away", last
