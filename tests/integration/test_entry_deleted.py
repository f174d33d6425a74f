"""Deleting a running job's queue entry does not lose the job (issue 12, item 7), on a real
redis-server and a real Redis Cluster.

``XDEL`` or an operator's ``XTRIM`` of a running entry: the lease renewal tells "another worker owns
it" (stop silently) from "the entry is gone" (nobody can ever retry or take it over), and the job
ends with a terminal ``error`` ``entry_deleted``, its state updated, nothing left pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from worker import Client, Error, Job, Token
from worker.jobs import encode_job
from worker.keys import GROUP, Keys
from worker.lease import LeaseKeeper
from worker.publisher import Publisher
from worker.queue import Delivery, JobQueue
from worker.runner import Control, Runner
from worker.scripts import TERMINAL_SEQ
from worker.store import JobStore
from worker.upstream.adapters import default_adapters

from .conftest import RunningWorker, all_acked

pytestmark = pytest.mark.integration

BOUND = 30.0
StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("delete", ["xdel", "xtrim"])
async def test_a_running_job_whose_entry_is_deleted_ends_with_entry_deleted(
    start_worker: StartWorker, client: Client, redis: Redis, delete: str
) -> None:
    await start_worker(lease_seconds=1.5, reclaim_interval_seconds=0.2)
    keys = client.keys
    job = await client.enqueue(model="tokenwire/sim;tokens=2000;tps=50", input="x")
    async with asyncio.timeout(BOUND):
        async for item in client.subscribe(job):
            if isinstance(item.event, Token) and item.event.index >= 2:
                break
    status = await client.status(job)
    assert status is not None and status.entry is not None
    if delete == "xdel":
        assert await redis.xdel(keys.jobs, status.entry) == 1
    else:
        assert await redis.xtrim(keys.jobs, maxlen=0, approximate=False) >= 1

    items = [item async for item in client.subscribe(job, timeout=BOUND)]
    last = items[-1].event
    assert isinstance(last, Error) and last.code == "entry_deleted", last
    assert status.entry in last.message and "XDEL or XTRIM" in last.message
    assert sum(isinstance(i.event, Error) for i in items) == 1
    after = await client.status(job)
    assert after is not None and (after.state, after.error_code) == ("error", "entry_deleted")
    await all_acked(redis, keys.jobs)  # the ack follows the error event
    for key in (keys.state(job), keys.events(job)):
        assert int(await redis.pttl(key)) > 0


async def test_renewal_tells_a_deleted_entry_from_one_another_worker_owns(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    added: list[Any] = [await redis.xadd(keys.jobs, {"job": b"{}"}) for _ in range(4)]
    ids = [entry_id.decode() for entry_id in added]
    await redis.xreadgroup(GROUP, "me", {keys.jobs: ">"}, count=4)
    kept, stolen, deleted, trimmed_later = ids
    await redis.xclaim(keys.jobs, GROUP, "peer", 0, [stolen], justid=True)
    await redis.xdel(keys.jobs, deleted)

    keeper = LeaseKeeper(redis, keys, "me", lease_seconds=30.0)
    lost: list[str] = []
    gone: list[str] = []
    for entry_id in ids:
        keeper.hold(entry_id, lambda e=entry_id: lost.append(e), lambda e=entry_id: gone.append(e))  # type: ignore[misc]
    assert await keeper.renew_once() == [stolen]
    assert (lost, gone) == ([stolen], [deleted])
    # the deleted entry is still pending to us (never claimed, which would have dropped it), so the
    # job's ack after its terminal event clears it
    rows: Any = await redis.xpending_range(keys.jobs, GROUP, min=deleted, max=deleted, count=1)
    assert [r["consumer"] for r in rows] == [b"me"]
    assert keeper.held == 2 and kept and trimmed_later


class _GatedStore(JobStore):
    """A real store whose ``begin`` waits (forever) once it is called: the job's task is then
    interrupted exactly while its first attempt begins."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        super().__init__(redis, keys)
        self.entered = asyncio.Event()

    async def begin(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await asyncio.Event().wait()
        return await super().begin(*args, **kwargs)  # pragma: no cover - never reached


async def test_an_entry_deleted_while_its_job_begins_still_ends_the_job(
    redis: Redis, prefix: str, settings_for: Callable[..., Any]
) -> None:
    """Told "gone" before its first attempt has begun (the BEGIN call in flight): the job ends with
    the fencing terminal ``entry_deleted`` all the same, and the entry is acknowledged."""
    settings = settings_for()
    keys = Keys(settings.prefix)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    await redis.xadd(keys.jobs, {"job": encode_job(Job(id="early", model="tokenwire/sim", input="x"))})
    reply: Any = await redis.xreadgroup(GROUP, "me", {keys.jobs: ">"}, count=1)
    entry_id, fields = reply[0][1][0]
    delivery = Delivery(entry_id.decode(), fields[b"job"])
    await redis.xdel(keys.jobs, entry_id)
    store = _GatedStore(redis, keys)
    async with httpx.AsyncClient() as http:
        runner = Runner(
            settings=settings,
            store=store,
            queue=JobQueue(redis, redis, keys, "me", dead_maxlen=100, check_permissions=False),
            publisher=Publisher(redis, maxlen=1000),
            http=http,
            adapters=default_adapters(),
        )
        control = Control()
        task = asyncio.create_task(runner.handle(delivery, control))
        async with asyncio.timeout(BOUND):
            await store.entered.wait()  # the job's task waits for its BEGIN
            control.set("gone")  # what the lease keeper's on_gone does
            task.cancel()
            await task
    state = await store.status("early") or {}
    assert (state.get("state"), state.get("error_code")) == ("error", "entry_deleted")
    assert state.get("terminal_id", "").endswith(f"-{TERMINAL_SEQ}")
    pending: Any = await redis.xpending(keys.jobs, GROUP)
    assert int(pending["pending"]) == 0
