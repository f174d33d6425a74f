"""Fault injection (reliability.md §7): real worker processes, a real redis-server, the simulator.

Each test injects one fault, asserts the behaviour the issue specifies, then runs the invariant
checker over every job it enqueued: exactly one terminal event per job, gap-free final attempt, no
write from a superseded attempt after the newer start, nothing left pending, TTLs on ended jobs.

Timings are shortened through settings (``FAST`` in the harness: lease 2 s, reclaim 0.5 s, ...);
every wait is bounded. The soak test is also marked ``slow``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from tests.faults.harness import (
    FAST,
    REDIS_DOWN,
    Harness,
    SimProcess,
    WorkerProc,
    wait_until,
)
from worker.client import Received
from worker.events import Cancelled, Done, Error, Event, Start, Token
from worker.redisproc import RedisServer

pytestmark = pytest.mark.faults

LEASE = float(FAST["lease_seconds"])
RECLAIM = float(FAST["reclaim_interval_seconds"])
SLACK = 5.0  # process start-up, scheduling on a busy 2-core machine, jitter
REDIS_ERRORS = (*REDIS_DOWN, ResponseError)


async def collect(h: Harness, job_id: str, timeout: float = 60.0) -> list[Received]:
    """Everything a subscriber sees from the first event to the terminal one."""
    return [item async for item in h.client.subscribe(job_id, timeout=timeout)]


def attempts_seen(items: list[Received]) -> list[int]:
    return [i.event.attempt for i in items if isinstance(i.event, Start)]


async def running_on(h: Harness, job_id: str, name: str) -> bool:
    state = await h.state(job_id)
    return state.get("state") == "running" and state.get("owner") == name


def the_other(workers: list[WorkerProc], name: str | None) -> WorkerProc:
    others = [w for w in workers if w.name != name]
    assert len(others) == 1, (name, workers)
    return others[0]


# ---------------------------------------------------------------------------------- leases


async def test_long_stream_renews_its_lease(harness: Harness) -> None:
    """A job streaming for 3 leases on a live worker is never taken by its idle peer."""
    h = harness
    await h.start_workers(2)
    job = await h.enqueue("tokens=300;tps=50", tag="renew")  # 6 s = 3 leases
    ended = await h.wait_terminal([job], 30)
    assert isinstance(ended[job], Done), ended[job]
    assert [s.attempt for s in await h.starts(job)] == [1], "a healthy job was taken from a live worker"
    await h.check([job])


async def test_kill_9_mid_stream_job_ends_on_the_peer_as_attempt_2(harness: Harness) -> None:
    h = harness
    workers = await h.start_workers(2)
    job = await h.enqueue("tokens=200;tps=100", tag="kill")  # 2 s: attempt 2 streams all of it
    subscriber = asyncio.create_task(collect(h, job))
    await h.wait_tokens(job, 5)
    owner = await h.owner_of(job)
    victim = h.worker(owner or "?")
    peer = the_other(workers, owner)
    victim.kill()
    killed_at = time.monotonic()

    async def taken_over() -> bool:
        return await h.attempt_of(job) >= 2

    await wait_until(taken_over, LEASE + RECLAIM + SLACK + 10, "the peer to take the job over")
    takeover = time.monotonic() - killed_at
    assert takeover <= LEASE + RECLAIM + SLACK, f"takeover took {takeover:.1f}s"

    ended = await h.wait_terminal([job], 30)
    assert isinstance(ended[job], Done), ended[job]
    state = await h.state(job)
    assert (state["state"], state["attempt"], state["owner"]) == ("done", "2", peer.name)

    items = await asyncio.wait_for(subscriber, 10)
    assert attempts_seen(items) == [1, 2]
    restarts = [i for i in items if i.restarted]
    assert len(restarts) == 1 and isinstance(restarts[0].event, Start) and restarts[0].event.attempt == 2
    assert peer.alive()
    await h.check([job])


async def test_poison_job_is_dead_lettered_after_max_deliveries(harness: Harness) -> None:
    """A job that kills every worker taking it: each new attempt's owner is SIGKILLed (and replaced)
    until the job is dead-lettered; jobs enqueued alongside are unharmed."""
    h = harness
    cfg: dict[str, str | int | float] = {"max_deliveries": 2, "concurrency": 1}
    await h.start_workers(3, **cfg)
    poison = await h.enqueue("tokens=300;tps=50", tag="poison")
    others = [await h.enqueue("tokens=20;tps=100", tag=f"bystander{i}") for i in range(4)]
    killed: dict[int, str] = {}

    async def dead_lettered() -> Event | None:
        terminal = await h.terminal(poison)
        if terminal is not None:
            return terminal
        state = await h.state(poison)
        attempt, owner = int(state.get("attempt", 0)), state.get("owner")
        if state.get("state") == "running" and owner and attempt not in killed:
            h.worker(owner).kill()  # "the job kills every worker that takes it"
            killed[attempt] = owner
            h.spawn(**cfg)
        return None

    bound = 2 * (LEASE + RECLAIM) + 3 * SLACK + 20
    terminal = await wait_until(dead_lettered, bound, "the poison job to be dead-lettered")
    assert isinstance(terminal, Error), terminal
    assert terminal.code == "max_deliveries_exceeded", terminal
    assert sorted(killed) == [1, 2], f"attempts whose owner was killed: {killed}"
    assert [s.attempt for s in await h.starts(poison)] == [1, 2]

    dead = [d for d in await h.dead_letters() if d.get("job_id") == poison]
    assert len(dead) == 1, await h.dead_letters()
    state = await h.state(poison)
    assert dead[0]["code"] == "max_deliveries_exceeded"
    assert dead[0]["entry"] == state["entry"]
    assert {"reason", "consumer", "ts", "job"} <= dead[0].keys() and dead[0]["reason"]
    assert state["state"] == "error"

    ended = await h.wait_terminal(others, 30)
    assert all(isinstance(e, Done) for e in ended.values()), ended
    await h.check([poison, *others])


async def test_sigstopped_worker_is_fenced_after_its_lease_and_moves_on(harness: Harness) -> None:
    h = harness
    workers = await h.start_workers(2)
    job = await h.enqueue("tokens=200;tps=100", tag="zombie")  # 2 s: all sent while it sleeps
    await h.wait_tokens(job, 5)
    owner = await h.owner_of(job)
    zombie = h.worker(owner or "?")
    peer = the_other(workers, owner)
    entry = (await h.state(job))["entry"]

    zombie.stop()

    async def taken_over() -> bool:
        return await h.attempt_of(job) >= 2

    await wait_until(taken_over, LEASE + RECLAIM + SLACK + 10, "the peer to take over from the zombie")
    assert await h.owner_of(job) == peer.name
    zombie.cont()

    # The zombie wakes with a stream's worth of upstream tokens buffered: none of them may land,
    # and it must not acknowledge the entry the peer now holds.
    async def ended_or_check_pending() -> bool:
        pending = await h.pending_entry(entry)  # read before the state: acks follow terminals
        state = await h.state(job)
        if state.get("state") == "running":
            assert pending is not None, "the job entry was acknowledged while attempt 2 was running"
            assert pending[0] == peer.name, f"the entry moved to {pending[0]} while the peer runs it"
        return await h.terminal(job) is not None

    await wait_until(ended_or_check_pending, 30, "the job to end on the peer")
    state = await h.state(job)
    assert (state["state"], state["attempt"], state["owner"]) == ("done", "2", peer.name)
    events = await h.events(job)
    start2 = next(i for i, (_, e) in enumerate(events) if isinstance(e, Start) and e.attempt == 2)
    stale = [eid for eid, e in events[start2:] if e.attempt < 2]
    assert not stale, f"the fenced zombie wrote {stale} after attempt 2 started"
    assert zombie.alive(), f"the fenced worker died:\n{zombie.log_tail()}"

    # It moves on: with the peer drained away, the zombie alone runs the next job normally.
    assert await peer.term(timeout=20) == 0
    nxt = await h.enqueue("tokens=10;tps=100", tag="after-zombie")
    ended = await h.wait_terminal([nxt], 20)
    assert isinstance(ended[nxt], Done), ended[nxt]
    state = await h.state(nxt)
    assert (state["owner"], state["attempt"]) == (zombie.name, "1")
    await h.check([job, nxt])


# ----------------------------------------------------------------------------------- drain


async def test_sigterm_drains_what_fits_the_grace_and_hands_back_the_rest(harness: Harness) -> None:
    """20 streams on worker A; SIGTERM with a 3 s grace: the 10 short ones (about 1.5 s left) finish
    on A, the 10 long ones (about 6 s left) are handed back and the peer starts them at once: well
    before the 10 s lease would have let it."""
    h = harness
    lease, grace = 10.0, 3.0
    cfg: dict[str, str | int | float] = {"lease_seconds": lease, "drain_grace_seconds": grace}
    a = await h.start_worker("a", **cfg)
    short = [await h.enqueue("tokens=150;tps=50", tag=f"short{i}") for i in range(10)]  # 3 s
    long = [await h.enqueue("tokens=400;tps=50", tag=f"long{i}") for i in range(10)]  # 8 s
    jobs = short + long

    async def all_on_a() -> bool:
        return all([await running_on(h, j, "a") for j in jobs])

    await wait_until(all_on_a, 15, "worker a to run all 20 jobs")
    b = await h.start_worker("b", **cfg)

    takeover: dict[str, float] = {}

    async def watch() -> None:
        while len(takeover) < len(long):
            for j in long:
                if j not in takeover and await h.attempt_of(j) >= 2:
                    takeover[j] = time.monotonic()
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    sigterm_at = time.monotonic()
    rc = await a.term(timeout=grace + 20)
    exited_after = time.monotonic() - sigterm_at
    assert rc == 0, f"worker a exited with {rc}:\n{a.log_tail()}"
    assert exited_after <= grace + SLACK, f"worker a took {exited_after:.1f}s to exit (grace {grace}s)"

    try:
        ended = await h.wait_terminal(jobs, 40)
    finally:
        watcher.cancel()
    assert all(isinstance(e, Done) for e in ended.values()), {j: e for j, e in ended.items()}
    for j in short:
        state = await h.state(j)
        assert (state["owner"], state["attempt"]) == ("a", "1"), f"short job {j} did not finish on a: {state}"
    for j in long:
        state = await h.state(j)
        assert (state["owner"], state["attempt"]) == (b.name, "2"), f"long job {j}: {state}"
        waited = takeover[j] - sigterm_at
        assert waited < lease, f"the peer started {j} {waited:.1f}s after SIGTERM: after a lease, not at once"
    await h.check(jobs)


async def test_sigint_drains_like_sigterm(harness: Harness) -> None:
    h = harness
    w = await h.start_worker()
    job = await h.enqueue("tokens=100;tps=50", tag="sigint")  # 2 s, within the 5 s grace
    await h.wait_tokens(job, 5)
    assert await w.interrupt(timeout=20) == 0, w.log_tail()
    terminal = await h.terminal(job)
    assert isinstance(terminal, Done), f"the in-flight job did not finish before exit: {terminal}"
    state = await h.state(job)
    assert (state["owner"], state["attempt"]) == (w.name, "1")
    await h.check([job])


# ------------------------------------------------------------------------------ redis outage


async def test_redis_killed_and_restarted_with_aof_every_job_ends_once(
    sim: SimProcess, tmp_path: Path
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(appendonly=True, directory=directory).start()
    h = Harness(redis_url=server.url, sim=sim, tmp_path=tmp_path, settings={**FAST, "lease_seconds": 3.0})
    try:
        workers = await h.start_workers(2)
        jobs = [await h.enqueue("tokens=150;tps=50", tag=f"outage{i}") for i in range(20)]  # 3 s

        async def all_streaming() -> bool:
            return all([await h.event_count(j) >= 4 for j in jobs])

        await wait_until(all_streaming, 20, "all 20 jobs to be streaming")
        server = await h.restart_redis(server, down_for=1.0)

        ended = await h.wait_terminal(jobs, 60, tolerate_redis_down=True)
        outcomes = {type(e).__name__ for e in ended.values()}
        assert outcomes <= {"Done", "Error"}, ended
        for w in workers:
            assert w.alive(), f"worker {w.name} died after the Redis restart:\n{w.log_tail()}"
        await h.check(jobs, pending_timeout=15)
        print(f"outcomes after the restart: {[type(e).__name__ for e in ended.values()]}")
    finally:
        await h.close()
        server.stop()


async def test_redis_restarted_empty_workers_recreate_the_group(sim: SimProcess, tmp_path: Path) -> None:
    """Redis comes back without its data (no persistence): the workers recreate the consumer group
    on NOGROUP, without a crash loop, and serve the next job."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(appendonly=False, directory=directory).start()
    h = Harness(redis_url=server.url, sim=sim, tmp_path=tmp_path)
    try:
        workers = await h.start_workers(2)
        before = await h.enqueue("tokens=10;tps=100", tag="before-loss")
        await h.wait_terminal([before], 20)
        server = await h.restart_redis(server, down_for=1.0)

        async def group_back() -> bool:
            groups: Any = await h.redis.xinfo_groups(h.keys.jobs)
            return any(str(g["name"], "utf-8") == "workers" for g in groups)

        await wait_until(group_back, 20, "a worker to recreate the consumer group", tolerate=REDIS_ERRORS)
        job = await h.enqueue("tokens=20;tps=100", tag="after-loss")
        ended = await h.wait_terminal([job], 20)
        assert isinstance(ended[job], Done), ended[job]
        for w in workers:
            assert w.alive(), f"worker {w.name} died after the Redis restart:\n{w.log_tail()}"
            lines = len(w.log_text().splitlines())
            assert lines < 100, f"worker {w.name} logged {lines} lines around a 1 s outage: a hot loop?"
        await h.check([job])
    finally:
        await h.close()
        server.stop()


# -------------------------------------------------------------------------------- upstream


async def _run_one(h: Harness, directives: str, tag: str, timeout: float = 30) -> tuple[str, Event, float]:
    job = await h.enqueue(directives, tag=tag)
    t0 = time.monotonic()
    ended = await h.wait_terminal([job], timeout)
    return job, ended[job], time.monotonic() - t0


async def test_upstream_disconnect_mid_stream_is_retried_as_a_new_attempt(harness: Harness) -> None:
    h = harness
    await h.start_worker()
    directives = "tokens=40;tps=100;fault=disconnect;after=5;fail_first=1"
    job = await h.enqueue(directives, tag="disconnect")
    items = await collect(h, job, timeout=30)
    assert isinstance(items[-1].event, Done), items[-1].event
    assert attempts_seen(items) == [1, 2], "tokens were published: the retry is a new attempt"
    assert [i.restarted for i in items if isinstance(i.event, Start)] == [False, True]
    first = [i.event for i in items if isinstance(i.event, Token) and i.event.attempt == 1]
    assert len(first) == 5
    assert await h.sim.requests_for(h.model(directives, "disconnect")) == 2
    await h.check([job])


async def test_upstream_stall_is_detected_and_retried(harness: Harness) -> None:
    h = harness
    await h.start_worker(stall_timeout_seconds=1.0)
    directives = "tokens=30;tps=100;fault=stall;after=3;fail_first=1"
    job, terminal, took = await _run_one(h, directives, "stall")
    assert isinstance(terminal, Done), terminal
    assert took >= 1.0, f"done after {took:.2f}s: the 1 s stall timeout cannot have fired"
    assert [s.attempt for s in await h.starts(job)] == [1, 2]
    assert await h.sim.requests_for(h.model(directives, "stall")) == 2
    await h.check([job])


@pytest.mark.parametrize(
    ("retry_after", "least"),
    [
        pytest.param("retry_after=1", 1.0, id="seconds"),
        # an HTTP date has 1 s resolution: "now + 2 s" means a wait of 1..2 s
        pytest.param("retry_after=2;retry_after_date=1", 1.0, id="http-date"),
    ],
)
async def test_429_honours_retry_after(harness: Harness, retry_after: str, least: float) -> None:
    h = harness
    await h.start_worker()
    directives = f"tokens=20;tps=100;fault=status;status=429;{retry_after};fail_first=1"
    job, terminal, took = await _run_one(h, directives, "ratelimit")
    assert isinstance(terminal, Done), terminal
    assert took >= least, f"done {took:.2f}s after enqueue: Retry-After ({retry_after}) was not honoured"
    assert await h.sim.requests_for(h.model(directives, "ratelimit")) == 2
    # Not asserted: whether the retry wrote a second `start` (no token was published before it).
    print(f"starts: {[s.attempt for s in await h.starts(job)]}")
    await h.check([job])


async def test_503_twice_then_success(harness: Harness) -> None:
    h = harness
    await h.start_worker()
    directives = "tokens=20;tps=100;fault=status;status=503;fail_first=2"
    job, terminal, _ = await _run_one(h, directives, "unavailable")
    assert isinstance(terminal, Done), terminal
    assert await h.sim.requests_for(h.model(directives, "unavailable")) == 3
    await h.check([job])


async def test_400_is_not_retried(harness: Harness) -> None:
    h = harness
    await h.start_worker()
    directives = "tokens=20;tps=100;fault=status;status=400"
    job, terminal, _ = await _run_one(h, directives, "badrequest")
    assert isinstance(terminal, Error) and terminal.code == "bad_request", terminal
    assert await h.sim.requests_for(h.model(directives, "badrequest")) == 1
    assert len(await h.starts(job)) == 1
    await h.check([job])


async def test_retries_are_capped_by_max_attempts(harness: Harness) -> None:
    h = harness
    await h.start_worker(max_attempts=3)
    directives = "tokens=20;tps=100;fault=status;status=503"
    job, terminal, _ = await _run_one(h, directives, "alwaysdown")
    assert isinstance(terminal, Error) and terminal.code == "upstream_unavailable", terminal
    assert await h.sim.requests_for(h.model(directives, "alwaysdown")) == 3
    await h.check([job])


async def test_connection_refused_is_retried_then_fails_with_its_code(harness: Harness) -> None:
    h = harness
    await h.start_worker(max_attempts=3)
    job = await h.enqueue("tokens=20", tag="refused", provider="dead")
    ended = await h.wait_terminal([job], 30)
    terminal = ended[job]
    assert isinstance(terminal, Error) and terminal.code == "upstream_connection_error", terminal
    worker_log = h.workers[0].log_records()
    retries = [r for r in worker_log if r.get("job_id") == job and "retry" in str(r.get("event", ""))]
    assert retries, "no retry was logged before the job failed"
    await h.check([job])


# ---------------------------------------------------------------------------- cancellation


async def _wait_cancelled(h: Harness, job: str, since: float) -> tuple[Cancelled, float]:
    ended = await h.wait_terminal([job], 10)
    took = time.monotonic() - since
    terminal = ended[job]
    assert isinstance(terminal, Cancelled), terminal
    return terminal, took


async def test_cli_cancel_closes_the_upstream_and_writes_cancelled(harness: Harness) -> None:
    h = harness
    await h.start_worker()
    directives = "tokens=500;tps=50"
    job = await h.enqueue(directives, tag="cli-cancel")
    await h.wait_tokens(job, 5)
    active_before = int((await h.sim.stats())["active_streams"])
    assert active_before >= 1

    result = await h.run_cli("cancel", job)
    returned = time.monotonic()
    assert result.returncode == 0, result
    terminal, took = await _wait_cancelled(h, job, returned)
    assert took <= 1.5, f"`cancelled` written {took:.2f}s after `tokenwire cancel` returned"
    assert terminal.reason

    async def upstream_closed() -> bool:
        return int((await h.sim.stats())["active_streams"]) < active_before

    await wait_until(upstream_closed, 2, "the upstream stream to be closed")
    assert (await h.state(job))["state"] == "cancelled"
    await h.check([job])


async def test_client_cancel_works_whichever_worker_holds_the_job(harness: Harness) -> None:
    h = harness
    a = await h.start_worker("a", concurrency=1)
    first = await h.enqueue("tokens=500;tps=50", tag="cancel-a")

    async def on_a() -> bool:
        return await running_on(h, first, "a")

    await wait_until(on_a, 10, "worker a to take the first job")
    b = await h.start_worker("b", concurrency=1)  # a has no free slot: the second job goes to b
    second = await h.enqueue("tokens=500;tps=50", tag="cancel-b")
    await h.wait_tokens(first, 3)
    await h.wait_tokens(second, 3)
    assert {await h.owner_of(first), await h.owner_of(second)} == {a.name, b.name}

    for job in (first, second):
        asked = time.monotonic()
        await h.cancel(job, reason="fault test: no longer needed")
        terminal, took = await _wait_cancelled(h, job, asked)
        assert took <= 1.5, f"`cancelled` written {took:.2f}s after Client.cancel returned"
        assert terminal.reason == "fault test: no longer needed"
    await h.check([first, second])


# ------------------------------------------------------------------------------------ soak


SOAK_SECONDS = 30.0  # a kill every ~3 s for this long
SOAK_JOBS = 100  # enqueued over all but the last 5 s of it


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_soak_random_kills(harness: Harness) -> None:
    """100 jobs over ~25 s on 4 workers; a random worker is SIGKILLed (and replaced) every ~3 s for
    30 s. Every job ends exactly once, `done`, and the invariants hold; the kills took jobs over."""
    h = harness
    rng = random.Random(20240601)
    cfg: dict[str, str | int | float] = {"max_deliveries": 10}
    await h.start_workers(4, **cfg)
    jobs: list[str] = []
    kills = 0
    t0 = time.monotonic()
    next_kill = t0 + 3.0
    while (now := time.monotonic()) - t0 < SOAK_SECONDS:
        due = min(SOAK_JOBS, int((now - t0) / (SOAK_SECONDS - 5.0) * SOAK_JOBS) + 1)
        while len(jobs) < due:
            tokens = rng.randint(30, 150)
            jobs.append(await h.enqueue(f"tokens={tokens};tps=50", tag=f"soak{len(jobs)}"))
        if now >= next_kill:
            victim = rng.choice(h.alive_workers())
            victim.kill()
            kills += 1
            h.spawn(**cfg)
            next_kill += rng.uniform(2.5, 3.5)
        await asyncio.sleep(0.05)
    assert len(jobs) == SOAK_JOBS and kills >= 8

    ended = await h.wait_terminal(jobs, 60)
    not_done = {j: e for j, e in ended.items() if not isinstance(e, Done)}
    assert not not_done, f"{len(not_done)} jobs did not end done: {list(not_done.items())[:5]}"
    await h.check(jobs, pending_timeout=20)
    assert len(h.alive_workers()) == 4
    attempts = Counter([await h.attempt_of(j) for j in jobs])
    assert sum(n for attempt, n in attempts.items() if attempt >= 2) >= 3, f"few jobs taken over: {attempts}"
    print(f"soak: {kills} kills, {len(h.workers)} worker processes, {len(jobs)} jobs, attempts {attempts}")
