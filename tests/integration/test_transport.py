"""Both upstream transports (aiohttp-backed, the default, and httpx's own) behave the same: streams,
retries on disconnects, stalls and 429s, HTTP errors and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from worker import Cancelled, Client, Done, Error, Start, Token
from worker.client import Received

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
FAST = {
    "stall_timeout_seconds": 1.0,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
}


async def collect(client: Client, job_id: str) -> list[Received]:
    return [item async for item in client.subscribe(job_id, timeout=30)]


@pytest.mark.parametrize(
    ("directives", "starts"),
    [
        ("tokens=40", 1),
        ("tokens=12;fault=disconnect;after=5;fail_first=1", 2),
        ("tokens=12;fault=stall;after=3;fail_first=1", 2),
        ("tokens=12;fault=status;status=429;retry_after=0.2;fail_first=1", 1),
    ],
)
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_jobs_and_retries_on_both_transports(
    start_worker: StartWorker, client: Client, directives: str, starts: int, transport: str
) -> None:
    await start_worker(upstream_transport=transport, **FAST)
    items = await collect(client, await client.enqueue(model=f"tokenwire/sim;{directives}", input="x"))
    done = items[-1].event
    assert isinstance(done, Done), done
    assert sum(isinstance(i.event, Start) for i in items) == starts
    final = [i.event for i in items if isinstance(i.event, Token) and i.event.attempt == done.attempt]
    assert done.text == "".join(t.text for t in final if not t.special)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_http_errors_and_cancel_on_both_transports(
    start_worker: StartWorker, client: Client, transport: str
) -> None:
    await start_worker(upstream_transport=transport, **FAST)
    failed = await collect(
        client, await client.enqueue(model="tokenwire/sim;fault=status;status=404", input="x")
    )
    assert isinstance(failed[-1].event, Error) and "Model not found" in failed[-1].event.message
    job_id = await client.enqueue(model="tokenwire/sim;tokens=500;tps=50", input="long")
    async with asyncio.timeout(10):
        async for item in client.subscribe(job_id):
            if isinstance(item.event, Token):
                break
    await client.cancel(job_id)
    assert isinstance((await collect(client, job_id))[-1].event, Cancelled)
