"""Hostile upstreams on real processes over loopback: the simulator runs as its own process
(``tokenwire sim``), the worker on a private redis-server, on both HTTP transports.

A compressed bomb or a blank-line flood ends its job with a classified error at once, and jobs
running beside it keep their latency; oversized or too many headers and deeply nested events end
their request with a classified error, not a crashed delivery; named events carry no tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx
import pytest

from tests.faults.harness import SimProcess
from worker import Client, Job, JobFailed, Params

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
TRANSPORTS = ["aiohttp", "httpx"]

HEALTHY = "tokenwire/sim;tokens=20;tps=0"
HEALTHY_BOUND = 0.75
"""Seconds for a healthy 20-token job from enqueue to its ``done``, beside a hostile one (about
0.05 s unloaded; 1.6-3.7 s was seen beside a blank-line flood before the reader was bounded)."""
HOSTILE_BOUND = 10.0
"""Seconds for a hostile job to end (it ends in well under one: the bound only stops a hang)."""
MB = 1_000_000


@pytest.fixture
def sim_url(tmp_path: Path) -> Iterator[str]:
    """The simulator as its own process: its CPU (compressing a bomb, writing a flood) is not the
    worker's, as with a real upstream."""
    sim = SimProcess(tmp_path / "sim.log", tps=0).start()
    yield sim.url
    sim.stop()


async def outcome(client: Client, job: Job, bound: float) -> tuple[str, float]:
    """``"done"`` or the error's code, and the seconds from enqueue to the terminal event."""
    started = time.monotonic()
    job_id = await client.enqueue(job)
    async with asyncio.timeout(bound):
        try:
            await client.result(job_id)
            code = "done"
        except JobFailed as exc:
            code = f"{exc.event.code}: {exc.event.message}"
    return code, time.monotonic() - started


async def warm(sim_url: str, model: str) -> None:
    """Ask the simulator for ``model`` once (it builds a bomb once, then serves it from memory)."""
    url = f"{sim_url}/v1/inference/{quote(model, safe='/;=')}"
    body = {"input": "x", "stream": True}
    async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", url, json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers.get("content-encoding") == ("deflate" if "deflate" in model else "gzip")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        (f"tokenwire/sim;fault=gzipbomb;size={200 * MB}", "upstream_protocol_error"),
        (f"tokenwire/sim;fault=gzipbomb;coding=deflate;size={20 * MB}", "upstream_protocol_error"),
        (f"tokenwire/sim;fault=blankflood;after=2;size={200 * MB}", "upstream_event_too_large"),
    ],
    ids=["gzip", "deflate", "blankflood"],
)
async def test_a_bomb_or_a_flood_fails_at_once_and_healthy_jobs_keep_their_latency(
    start_worker: StartWorker, client: Client, sim_url: str, transport: str, hostile: str, code: str
) -> None:
    await start_worker(upstream_transport=transport)
    if "bomb" in hostile:
        await warm(sim_url, hostile)
    assert (await outcome(client, Job(model=HEALTHY, input="warm up", params=Params()), 30))[0] == "done"
    hostiles = [
        outcome(client, Job(model=hostile, input=f"h{i}", params=Params()), HOSTILE_BOUND) for i in range(4)
    ]
    healthy = [outcome(client, Job(model=HEALTHY, input=f"ok{i}", params=Params()), 30) for i in range(8)]
    results = await asyncio.gather(*hostiles, *healthy)
    for found, _ in results[:4]:
        assert found.startswith(f"{code}: "), found
    for found, seconds in results[4:]:
        assert found == "done"
        assert seconds < HEALTHY_BOUND, f"a healthy job took {seconds:.2f}s beside {hostile}"


@pytest.mark.parametrize(
    ("transport", "model", "code", "words"),
    [
        ("aiohttp", "tokenwire/sim;fault=bigheader;size=9000", "upstream_protocol_error", "8190 bytes"),
        ("aiohttp", "tokenwire/sim;fault=bigheader;size=1000000", "upstream_protocol_error", "8190 bytes"),
        (
            "aiohttp",
            "tokenwire/sim;fault=manyheaders;headers=100000",
            "upstream_protocol_error",
            "Too many headers",
        ),
        ("httpx", "tokenwire/sim;fault=manyheaders;headers=100000", "upstream_connection_error", "upstream"),
        ("aiohttp", "tokenwire/sim;fault=deepjson;after=2", "upstream_malformed_event", "recursion"),
        (
            "httpx",
            "tokenwire/sim;fault=deepjson;after=2;depth=100000",
            "upstream_malformed_event",
            "recursion",
        ),
    ],
)
async def test_unreadable_responses_end_the_request_with_a_classified_error(
    start_worker: StartWorker, client: Client, transport: str, model: str, code: str, words: str
) -> None:
    """Not a crashed delivery retried until "the workers that took it died": one attempt, its code."""
    await start_worker(upstream_transport=transport, max_attempts=1)
    found, seconds = await outcome(client, Job(model=model, input="x", params=Params()), HOSTILE_BOUND)
    assert found.startswith(f"{code}: ") and words in found, found
    assert seconds < HOSTILE_BOUND


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("api", ["native", "completions"])
async def test_named_events_carry_no_tokens(
    start_worker: StartWorker, client: Client, transport: str, api: Literal["native", "completions"]
) -> None:
    await start_worker(upstream_transport=transport)
    texts = []
    for model in ("tokenwire/sim;tokens=6", "tokenwire/sim;tokens=6;fault=named;after=3;event=ping"):
        done = await client.result(
            await client.enqueue(Job(model=model, api=api, input="same", params=Params()))
        )
        texts.append((done.text, done.usage))
    assert texts[0] == texts[1]
    assert "lorem" not in texts[1][0]
