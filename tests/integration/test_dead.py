"""Dead letters: listed (raw payloads that are not UTF-8 included), re-driven afresh, purged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client, Done, Error, Start
from worker.dead import list_dead, purge_dead, redrive
from worker.keys import Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


async def events(client: Client, job_id: str) -> list[Any]:
    return [i.event async for i in client.subscribe(job_id, timeout=30)]


async def test_list_redrive_and_purge(start_worker: StartWorker, client: Client, redis: Redis) -> None:
    keys = Keys(client.keys.prefix)
    await redis.xadd(keys.jobs, {"job": b"\xff\xfe not utf-8"})
    good = msgspec.json.encode({"id": "again", "model": "tokenwire/sim;tokens=4", "input": "x"})
    await redis.xadd(keys.jobs, {"job": good})
    strict = await start_worker(max_payload_bytes=40)  # `again` is over the limit: dead-lettered
    first = await events(client, "again")
    assert len(first) == 1 and isinstance(first[0], Error) and first[0].code == "payload_too_large"

    async with asyncio.timeout(30):  # the terminal is written first, then the entry dead-lettered
        while len(rows := {r["code"]: r for r in await list_dead(redis, keys)}) < 2:  # any order
            await asyncio.sleep(0.02)
    assert sorted(rows) == ["invalid_job", "payload_too_large"]
    assert "\ufffd" in rows["invalid_job"]["job"] and rows["payload_too_large"]["job_id"] == "again"

    await strict.shutdown()
    await start_worker(max_payload_bytes=1000)  # the limit is fixed: re-drive it
    moved = await redrive(redis, client.store, [rows["payload_too_large"]["id"]])
    assert [m["job_id"] for m in moved] == ["again"]
    second = await events(client, "again")
    assert isinstance(second[0], Start) and isinstance(second[-1], Done)
    assert sum(isinstance(e, Done | Error) for e in second) == 1  # it started afresh: one terminal

    with pytest.raises(LookupError):
        await redrive(redis, client.store, ["1-1"])
    assert await purge_dead(redis, keys) == 1 and await redis.xlen(keys.dead) == 0
