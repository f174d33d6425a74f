"""Review findings on the gateway (issue 14), proved on a real redis-server, worker and simulator.

Each test is ``xfail(strict=True)``: it fails on today's code and shows the defect; the owner's fix
makes it pass (and strict xfail then turns it red, so the marker is removed with the fix).
See /work/briefs/review-findings.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from worker import Client
from worker.gateway.ids import scoped_id

from .gatewaykit import RunningGateway, bearer, read_sse

pytestmark = pytest.mark.integration


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as c:
        yield c


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_future_resume_id_does_not_starve_other_watchers_of_the_job(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient
) -> None:
    gw = await gateway()
    answer = await web.post(
        f"{gw.url}/v1/jobs",
        json={"id": "poison-1", "model": "m;tps=10;tokens=30", "input": "hi"},
        headers=bearer("acme"),
    )
    assert answer.status_code == 201
    url = f"{gw.url}/v1/jobs/poison-1/events"
    internal = scoped_id("acme", "poison-1")
    # A client (any holder of the job's read token) resumes with an id past the stream's end, e.g.
    # an id kept from another job's stream: it attaches first and creates the job's shared feed.
    poisoner = asyncio.create_task(
        read_sse(web, url, headers={**bearer("acme"), "Last-Event-ID": "99999999999999-0"}, timeout=20)
    )
    try:
        await _until(lambda: internal in gw.gateway.hub.feeds)
        # An honest watcher of the same job, from the start: it must see the job through to its end.
        try:
            honest = await read_sse(web, url, headers=bearer("acme"), timeout=8)
        except TimeoutError:
            pytest.fail("the honest watcher never got the job's later events nor its terminal event")
        assert honest.types[-1] == "done"
    finally:
        poisoner.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, httpx.HTTPError):
            await poisoner


async def test_an_unscoped_id_with_a_slash_does_not_collide_with_a_tenants_job(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient, client: Client
) -> None:
    gw = await gateway()
    # An internal service (no tenant) enqueues ids that happen to look like "<name>/<id>".
    await client.enqueue(id="acme/c-1", model="m;tokens=4", input="internal report")
    # Tenant acme posts its own job "c-1": it is acme's own new job, whatever exists outside the gateway.
    posted = await web.post(
        f"{gw.url}/v1/jobs", json={"id": "c-1", "model": "m;tokens=4", "input": "hi"}, headers=bearer("acme")
    )
    assert posted.status_code == 201, f"{posted.status_code}: {posted.text}"
    events = await read_sse(web, f"{gw.url}/v1/jobs/c-1/events", headers=bearer("acme"), timeout=10)
    assert events.status == 200 and events.types[-1] == "done"


async def test_a_read_token_does_not_read_a_later_job_reusing_the_id(
    gateway: Callable[..., Awaitable[RunningGateway]], web: httpx.AsyncClient, redis: Any, prefix: str
) -> None:
    from worker.keys import Keys

    gw = await gateway()
    first = await web.post(
        f"{gw.url}/v1/jobs",
        json={"id": "t-1", "model": "m;tokens=3", "input": "for user one"},
        headers=bearer("acme"),
    )
    token = first.json()["read_token"]
    url = f"{gw.url}/v1/jobs/t-1/events"
    done = await read_sse(web, url, params={"token": token}, timeout=10)
    assert done.types[-1] == "done"
    internal, keys = scoped_id("acme", "t-1"), Keys(prefix)
    await redis.delete(keys.state(internal), keys.events(internal))  # its keys expired (output_ttl)
    second = await web.post(
        f"{gw.url}/v1/jobs",
        json={"id": "t-1", "model": "m;tokens=3", "input": "for user two"},
        headers=bearer("acme"),
    )
    assert second.status_code == 201
    leaked = await read_sse(web, url, params={"token": token}, timeout=10)
    assert leaked.status in (401, 404), "user one's token reads user two's job"
