"""The fast paths on a real worker (redis-server, the simulator, httpx-aiohttp): with the locked
versions ``tokenwire_fast_path`` reads 1 for every component; with every internal moved the worker
still serves the same events on the fallbacks and the gauge reads 0; push frames between a batch's
replies are handled as redis-py handles them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator

import httpx
import msgspec
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from worker import Client, Done, Token
from worker.connect import http_client
from worker.fastpath import httpx_aiohttp, redis_py
from worker.fastpath.redis_py import bulk_reader
from worker.fastpath.startup import COMPONENTS
from worker.publisher import Publisher, Sink
from worker.redisproc import free_port
from worker.settings import Settings

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
BOUND = 30.0
PRIVATE_MODULES = ("httpx_aiohttp.transport", "redis._parsers.hiredis")


@pytest.fixture(autouse=True)
def _probed_again(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Probes remember their answer: after a test that moved internals, restore and probe again."""
    yield
    monkeypatch.undo()
    for module in (httpx_aiohttp, redis_py):
        assert module.probe().available


async def scraped(port: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        s.labels["component"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tokenwire_fast_path"
    }


async def run_job(client: Client) -> tuple[list[tuple[str, float | None]], Done]:
    """The tokens (text, logprob) of one job, and its ``done`` event without the job id."""
    job_id = await client.enqueue(model="tokenwire/sim;tokens=40", input="the same prompt")
    items = [item async for item in client.subscribe(job_id, timeout=BOUND)]
    done = items[-1].event
    assert isinstance(done, Done), done
    tokens = [(i.event.text, i.event.logprob) for i in items if isinstance(i.event, Token)]
    return tokens, msgspec.structs.replace(done, job_id="")


async def test_every_component_runs_its_fast_path_with_the_locked_versions(
    start_worker: StartWorker, client: Client
) -> None:
    """CI fails here when an upgrade of the locked versions loses a fast path."""
    port = free_port()
    with structlog.testing.capture_logs() as logs:
        running = await start_worker(metrics_port=port)
    assert await scraped(port) == dict.fromkeys(COMPONENTS, 1.0)
    (line,) = [entry for entry in logs if entry["event"] == "fast paths in use"]
    assert line["log_level"] == "info" and all(line[c].startswith("fast: ") for c in COMPONENTS)
    tokens, _ = await run_job(client)
    assert len(tokens) == 41
    assert bulk_reader(running.worker.publisher._conn) is not None


async def test_with_every_internal_moved_the_worker_serves_the_same_events_on_the_fallbacks(
    start_worker: StartWorker, client: Client, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_worker = await start_worker()
    fast = await run_job(client)
    await fast_worker.shutdown()

    for name in PRIVATE_MODULES:  # as after an upgrade that renamed them
        monkeypatch.setitem(sys.modules, name, None)
    port = free_port()
    with structlog.testing.capture_logs() as logs:
        running = await start_worker(metrics_port=port)
    assert await scraped(port) == dict.fromkeys(COMPONENTS, 0.0)
    (line,) = [entry for entry in logs if "fallback" in entry]
    assert line["log_level"] == "warning" and line["fallback"] == list(COMPONENTS)
    for component, module in zip(COMPONENTS, PRIVATE_MODULES, strict=True):
        assert line[component].startswith(f"fallback: cannot import {module}")

    assert await run_job(client) == fast
    # and each component really read through the public API
    assert bulk_reader(running.worker.publisher._conn) is None
    async with (
        http_client(Settings(upstream_transport="aiohttp")) as http,
        http.stream("POST", f"{sim_url}/v1/inference/tokenwire/sim;tokens=2", content=b'{"input":"x"}') as r,
    ):
        assert httpx_aiohttp.aiohttp_content(r) is None
        await r.aread()


async def test_a_push_frame_between_replies_is_not_taken_for_one(redis: Redis, prefix: str) -> None:
    """RESP3 lets Redis push frames (here a client-tracking invalidation) onto the publisher's
    connection between replies: the bulk read hands them to redis-py, as ``read_response`` does,
    so every reply still goes to its own entry and none is left behind on the connection."""
    publisher = Publisher(redis, maxlen=1000)
    first, watched = Sink(f"{prefix}:a"), f"{prefix}:watched"
    publisher.emit(first, b"1-1", b"x")
    async with asyncio.timeout(BOUND):
        await publisher.flush()
        conn = publisher._conn
        assert conn is not None and bulk_reader(conn) is not None
        await conn.send_command("CLIENT", "TRACKING", "ON")
        assert await conn.read_response() == b"OK"
        await conn.send_command("GET", watched)  # tracked from now on
        assert await conn.read_response() is None
        await redis.set(watched, "changed")  # another connection: an invalidation is pushed to conn

        sinks = [Sink(f"{prefix}:b{n}") for n in range(3)]
        for n, sink in enumerate(sinks, 2):
            publisher.emit(sink, b"1-%d" % n, b"y")
        publisher.emit(first, b"1-0", b"refused: ids only grow")
        await publisher.flush()
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"  # nothing left unread
    assert [s.ok for s in sinks] == [True, True, True] and first.fenced
    for n, sink in enumerate(sinks, 2):
        entries = await redis.xrange(sink.key) or []
        assert [entry_id for entry_id, _ in entries] == [b"1-%d" % n]
    await publisher.aclose()
