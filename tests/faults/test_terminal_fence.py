"""Nothing follows a terminal event, with real worker processes (issue 12, item 5).

A job's owner is frozen (SIGSTOP) past its lease; while it sleeps the job ends without it: a cancel
found by the peer that takes it over, or a dead letter because it was delivered too often. The owner
is then resumed with a stream's worth of upstream tokens buffered. The terminal event (written at
``<attempt>-TERMINAL_SEQ``) fences it: none of its writes may land after the terminal, which the
invariant checker proves. Also here: the checker itself catches events after a terminal and accepts
a terminal at the fencing id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.faults.harness import Harness, WorkerProc, wait_until
from tests.faults.invariants import InvariantViolation, check_invariants
from worker.connect import redis_client
from worker.events import Cancelled, Error, Start, Token, encode_event
from worker.keys import GROUP, Keys
from worker.redisproc import RedisServer
from worker.scripts import TERMINAL_SEQ

LEASE, RECLAIM, SLACK = 2.0, 0.5, 5.0


def _other(workers: list[WorkerProc], name: str | None) -> WorkerProc:
    return next(w for w in workers if w.name != name)


@pytest.mark.parametrize("ending", ["cancel", "dead_letter"])
async def test_a_stale_owner_resumed_after_the_terminal_writes_nothing_after_it(
    harness: Harness, ending: str
) -> None:
    h = harness
    # max_deliveries=1: the peer's takeover is delivery 2, over the limit, so it dead-letters
    extra = {"max_deliveries": 1} if ending == "dead_letter" else {}
    workers = await h.start_workers(2, **extra)
    job = await h.enqueue("tokens=400;tps=50", tag=f"fence-{ending}")
    await h.wait_tokens(job, 10)
    owner = await h.owner_of(job)
    zombie = h.worker(owner or "?")
    peer = _other(workers, owner)

    zombie.stop()  # past its lease: the peer takes the entry over
    if ending == "cancel":
        await h.cancel(job, "stop it")  # running: only flagged (the owner is asleep)
    ended = await h.wait_terminal([job], LEASE + RECLAIM + SLACK + 10)
    terminal_id = (await h.state(job))["terminal_id"]
    assert terminal_id == f"1-{TERMINAL_SEQ}", terminal_id
    last = ended[job]
    if ending == "cancel":
        assert isinstance(last, Cancelled) and last.reason == "stop it", last
    else:
        assert isinstance(last, Error) and last.code == "max_deliveries_exceeded", last
    before = await h.events(job)

    zombie.cont()  # it wakes with upstream tokens buffered, and writes them

    async def zombie_gave_up() -> bool:  # fenced by a write, or told by its lease renewal
        return any(w in r.get("event", "") for r in zombie.log_records() for w in ("fenced", "lease", "gone"))

    await wait_until(zombie_gave_up, 20, "the resumed owner to stop the job")
    events = await h.events(job)
    assert events == before, f"the stale owner appended {events[len(before) :][:5]}"
    assert zombie.alive() and peer.alive(), zombie.log_tail()
    await h.check([job])


# ------------------------------------------------------------------------- the checker itself


@pytest.fixture
async def redis(faults_redis: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(faults_redis.url)
    yield client
    await client.aclose()


async def _write(redis: Redis, keys: Keys, job: str, entries: list[tuple[str, object]], state: str) -> None:
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    for entry_id, event in entries:
        await redis.xadd(keys.events(job), {"event": encode_event(event)}, id=entry_id)  # type: ignore[arg-type]
    await redis.hset(keys.state(job), mapping={"state": state, "attempt": 1})
    for key in (keys.state(job), keys.events(job)):
        await redis.pexpire(key, 60_000)


def _stream(job: str, tokens: int) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        ("1-0", Start(job_id=job, attempt=1, model="m", provider="sim", api="native"))
    ]
    out += [
        (f"1-{i + 1}", Token(job_id=job, attempt=1, index=i, text="t", logprob=-0.1)) for i in range(tokens)
    ]
    return out


async def test_the_checker_accepts_a_terminal_at_the_fencing_id(redis: Redis) -> None:
    keys, job = Keys(f"tw-fence-{uuid.uuid4().hex[:8]}"), "j"
    cancelled = Cancelled(job_id=job, attempt=1, reason="r")
    await _write(redis, keys, job, [*_stream(job, 3), (f"1-{TERMINAL_SEQ}", cancelled)], "cancelled")
    await check_invariants(redis, keys.prefix, [job], pending_timeout=0.3)


async def test_the_checker_catches_events_after_the_terminal(redis: Redis) -> None:
    """The stream the issue saw: ``1-301 cancelled`` then the stale owner's ``1-302``..."""
    keys, job = Keys(f"tw-fence-{uuid.uuid4().hex[:8]}"), "j"
    late = [
        (f"1-{i + 5}", Token(job_id=job, attempt=1, index=i + 3, text="t", logprob=-0.1)) for i in range(2)
    ]
    entries = [*_stream(job, 3), ("1-4", Cancelled(job_id=job, attempt=1, reason="r")), *late]
    await _write(redis, keys, job, entries, "cancelled")
    with pytest.raises(
        InvariantViolation, match=r"terminal cancelled@1-4 is not last: followed by token@1-5"
    ):
        await check_invariants(redis, keys.prefix, [job], pending_timeout=0.3)
