"""Shared provider budgets in a running worker (worker.ratelimit) on a real redis-server, a real
Redis Cluster and the simulator: jobs past the budget wait instead of failing, a waiting job keeps
its lease and can be cancelled, a 429 costs no attempt, and the deadline ends a job that never gets
budget with ``rate_limited``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import Cancelled, Done, Error, Start
from worker.keys import GROUP, Keys
from worker.ratelimit import KEY_TTL_MS
from worker.scripts import BUDGET_ACQUIRE
from worker.settings import Provider

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test on a single redis-server and on a Redis Cluster (a scope's keys share a slot)."""
    return str(request.param)


def limited(sim_url: str, **limits: Any) -> dict[str, Provider]:
    return {"sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}", **limits)}


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def sim_stats(sim_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        stats: dict[str, Any] = (await http.get(f"{sim_url}/stats")).json()
        return stats


async def last_event(client: Client, job_id: str) -> object:
    items = [item async for item in client.subscribe(job_id, timeout=30)]
    return items[-1].event


async def occupy(redis: Redis, prefix: str, scope: str, ticket: str, max_concurrency: int) -> None:
    """Take a slot of ``scope`` by hand for a minute (as a peer's long request would)."""
    acquire = redis.register_script(BUDGET_ACQUIRE)
    reply = await acquire(
        keys=list(Keys(prefix).budget(scope)),
        args=[ticket, 60_000, 60_000, max_concurrency, 0, 0, 0, KEY_TTL_MS],
    )
    assert int(reply[0]) == 1, reply


async def test_jobs_beyond_the_simulators_limit_wait_and_all_finish(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    """Two workers share max_concurrency=4 against a simulator that refuses a fifth stream."""
    providers = limited(sim_url, max_concurrency=4)
    workers = [await start_worker(providers=providers, max_attempts=1) for _ in range(2)]
    model = "tokenwire/sim;tokens=5;tps=100;limit=4;limit_retry_after=0.05"
    ids = [await client.enqueue(model=model, input=f"job {n}") for n in range(40)]
    ends = [await client.result(job_id, timeout=60) for job_id in ids]
    assert all(isinstance(end, Done) for end in ends), [e for e in ends if not isinstance(e, Done)]
    counts = (await sim_stats(sim_url))["limits"]["model:tokenwire/sim"]
    assert counts["peak"] <= 4 and counts["refused"] == 0, counts  # the budget kept to the limit
    for running in workers:
        await running.worker.budgets.settled()
        assert running.worker.budgets.held == 0


async def test_an_unknown_limit_is_found_by_aimd_and_429s_cost_no_attempt(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    """The workers' budget (16) is above the simulator's limit (3): 429s cut it; with max_attempts=1
    every job still ends done. Each job streams ~0.4 s, so more than three overlap however slowly a
    busy machine starts them (at 50 ms a job, a starved worker ran them three at a time: no 429)."""
    running = await start_worker(providers=limited(sim_url, max_concurrency=16), max_attempts=1)
    model = "tokenwire/sim;tokens=20;tps=50;limit=3;limit_retry_after=0.05"
    ids = [await client.enqueue(model=model, input=f"job {n}") for n in range(30)]
    ends = [await client.result(job_id, timeout=60) for job_id in ids]
    assert all(isinstance(end, Done) for end in ends), [e for e in ends if not isinstance(e, Done)]
    counts = (await sim_stats(sim_url))["limits"]["model:tokenwire/sim"]
    assert counts["peak"] <= 3 and counts["refused"] >= 1, counts
    throttled = running.worker.metrics.provider_throttled.labels("sim")._value.get()
    assert throttled == counts["refused"]
    budget = running.worker.metrics.provider_budget.labels("sim", "concurrency")._value.get()
    assert budget < 16, budget  # cut, and not yet grown back to the setting
    print(
        f"refused {counts['refused']} of {counts['admitted'] + counts['refused']} requests; budget {budget}"
    )


async def test_a_waiting_job_keeps_its_lease_and_can_be_cancelled(
    start_worker: StartWorker, client: Client, redis: Redis, sim_url: str, prefix: str
) -> None:
    running = await start_worker(providers=limited(sim_url, max_concurrency=1), lease_seconds=1.5)
    await occupy(redis, prefix, "sim", "peer", 1)  # the only slot is a peer's
    job_id = await client.enqueue(model="tokenwire/sim;tokens=3", input="wait")
    budgets = running.worker.budgets
    _, _, queue, _ = Keys(prefix).budget("sim")

    async def waiting() -> bool:
        return budgets.waiting.get("sim", 0) == 1 and await redis.zcard(queue) == 1

    await wait_for(waiting)
    status = await client.status(job_id)
    assert status is not None and status.state == "running"  # started, waiting for budget
    # two leases pass: the entry's idle time keeps being reset and nobody takes the job over
    for _ in range(4):
        await asyncio.sleep(0.75)  # lets time pass; the assertions below wait on nothing
        pending: Any = await redis.xpending_range(Keys(prefix).jobs, GROUP, "-", "+", 10)
        assert len(pending) == 1 and pending[0]["time_since_delivered"] < 1500, pending
        assert pending[0]["times_delivered"] == 1
    assert running.worker.metrics.provider_waiting.labels("sim")._value.get() == 1
    assert await client.cancel(job_id, "user gave up") == "requested"
    end = await last_event(client, job_id)
    assert isinstance(end, Cancelled) and end.reason == "user gave up", end

    async def left_the_queue() -> bool:
        return await redis.zcard(queue) == 0 and budgets.waiting.get("sim", 0) == 0

    await wait_for(left_the_queue)
    assert (await sim_stats(sim_url))["total_requests"] == 0  # it never reached the provider


async def test_a_job_that_never_gets_budget_fails_rate_limited_at_its_deadline(
    start_worker: StartWorker, client: Client, redis: Redis, sim_url: str, prefix: str
) -> None:
    await start_worker(providers=limited(sim_url, max_concurrency=1), job_deadline_seconds=1.5)
    await occupy(redis, prefix, "sim", "peer", 1)
    job_id = await client.enqueue(model="tokenwire/sim;tokens=3", input="never")
    end = await last_event(client, job_id)
    assert isinstance(end, Error) and end.code == "rate_limited", end
    assert "job_deadline_seconds=1.5" in end.message and "'sim'" in end.message


async def test_a_429_without_limits_waits_retry_after_and_spends_no_attempt(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    """No limits configured: no Redis budget, yet a 429 does not count against max_attempts=1."""
    await start_worker(max_attempts=1)
    model = "tokenwire/sim;tokens=4;fault=status;status=429;retry_after=0.2;fail_first=3"
    job_id = await client.enqueue(model=model, input="x")
    items = [item async for item in client.subscribe(job_id, timeout=30)]
    assert isinstance(items[-1].event, Done), items[-1].event
    assert sum(isinstance(i.event, Start) for i in items) == 1  # the same attempt throughout
    assert (await sim_stats(sim_url))["requests"][model] == 4


async def test_requests_per_minute_keep_to_the_simulators_rate(
    start_worker: StartWorker, client: Client, sim_url: str, redis: Redis, prefix: str
) -> None:
    """600 a minute is a bucket of 100 refilled at 10 a second: 150 jobs at once never give the
    simulator more than 100 + 10 requests within a second (it refuses beyond 120)."""
    await start_worker(providers=limited(sim_url, requests_per_minute=600), max_attempts=1)
    model = "tokenwire/sim;tokens=2;limit_rps=120;limit_retry_after=0.05"
    ids = [await client.enqueue(model=model, input=f"job {n}") for n in range(150)]
    ends = [await client.result(job_id, timeout=60) for job_id in ids]
    assert all(isinstance(end, Done) for end in ends)
    counts = (await sim_stats(sim_url))["limits"]["model:tokenwire/sim"]
    assert counts["admitted"] == 150 and counts["refused"] == 0, counts
    state = Keys(prefix).budget("sim")[0]
    assert int(await redis.hget(state, "granted") or 0) == 150
