"""Bad input from producers and from upstream ends cleanly, and dead consumers are reaped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client, Error, Job, Params
from worker.keys import GROUP, Keys

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


async def terminal(client: Client, job_id: str) -> Any:
    items = [i async for i in client.subscribe(job_id, timeout=30)]
    return items[-1].event


async def test_over_the_limits_jobs_are_dead_lettered_with_a_clear_reason(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    await start_worker(max_payload_bytes=4000, max_input_chars=100, max_tokens_cap=50, default_max_tokens=20)
    keys = Keys(client.keys.prefix)
    cases = {
        "big": (msgspec.json.encode({"id": "big", "model": "m", "input": "x", "metadata": {"k": "v" * 4000}}),
                "payload_too_large", "max_payload_bytes=4000"),
        "long": (msgspec.json.encode({"id": "long", "model": "m", "input": "y" * 150}),
                 "input_too_large", "max_input_chars=100"),
        "cap": (msgspec.json.encode({"id": "cap", "model": "m", "input": "z", "params": {"max_tokens": 51}}),
                "max_tokens_above_cap", "max_tokens_cap=50"),
        "topk": (msgspec.json.encode({"id": "topk", "model": "m", "input": "z",
                                      "params": {"top_logprobs": 50}}), "invalid_job", "top_logprobs"),
        "api": (msgspec.json.encode({"id": "api", "model": "m", "input": "z", "api": "images"}),
                "invalid_job", "api"),
    }  # fmt: skip
    for payload, _, _ in cases.values():
        await redis.xadd(keys.jobs, {"job": payload})
    for job_id, (_, code, words) in cases.items():
        error = await terminal(client, job_id)
        assert isinstance(error, Error) and error.code == code and words in error.message, error
    async with asyncio.timeout(10):  # the terminal is written first, then the entry dead-lettered
        while await redis.xlen(keys.dead) < len(cases):
            await asyncio.sleep(0.02)
    dead: Any = await redis.xrange(keys.dead)
    assert sorted(f[b"code"].decode() for _, f in dead) == sorted(c for _, c, _ in cases.values())


@pytest.mark.parametrize(
    ("model", "overrides", "code", "words"),
    [
        (
            "tokenwire/sim;fault=big;after=2;size=300000",
            {"max_event_bytes": 100_000},
            "upstream_event_too_large",
            "",
        ),
        (
            "tokenwire/sim;fault=status;status=503;body=html",
            {"max_attempts": 1},
            "upstream_unavailable",
            "HTTP 503",
        ),
        (
            "tokenwire/sim;fault=malformed;after=3;then=end",
            {"max_attempts": 1},
            "upstream_malformed_event",
            "",
        ),
    ],
)
@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_bad_upstream_streams_end_with_a_clear_error(
    start_worker: StartWorker,
    client: Client,
    model: str,
    overrides: dict[str, Any],
    code: str,
    words: str,
    transport: str,
) -> None:
    await start_worker(upstream_transport=transport, **overrides)
    error = await terminal(client, await client.enqueue(Job(model=model, input="x", params=Params())))
    assert isinstance(error, Error) and error.code.startswith(code), error
    assert words in error.message and "<html" not in error.message.lower()


async def test_consumers_of_dead_workers_are_reaped_once_they_own_nothing(
    start_worker: StartWorker, client: Client, redis: Redis
) -> None:
    keys = Keys(client.keys.prefix)
    await redis.xgroup_create(keys.jobs, GROUP, id="0", mkstream=True)
    for name in ("gone-1", "gone-2"):
        await redis.xgroup_createconsumer(keys.jobs, GROUP, name)
    await redis.xadd(
        keys.jobs, {"job": msgspec.json.encode({"id": "held", "model": "tokenwire/sim", "input": "x"})}
    )
    await redis.xreadgroup(GROUP, "holder", {keys.jobs: ">"}, count=1)  # owns an entry: must stay
    handle = await start_worker(
        consumer_reap_idle_seconds=0.3, reclaim_interval_seconds=0.1, lease_seconds=600
    )

    async def names() -> set[str]:
        consumers: Any = await redis.xinfo_consumers(keys.jobs, GROUP)
        return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers}

    async with asyncio.timeout(15):
        while {"gone-1", "gone-2"} & await names():
            await asyncio.sleep(0.05)
    assert "holder" in await names()
    assert handle.worker.consumer not in {"gone-1", "gone-2"}
