"""Metrics and health endpoints, scraped during a real run and checked against what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from worker import Client, Done, Error, Token
from worker.keys import Keys
from worker.redisproc import free_port

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_what_happened(start_worker: StartWorker, client: Client, redis: Redis) -> None:
    port = free_port()
    await start_worker(metrics_port=port, retry_base_seconds=0.05, retry_max_seconds=0.1)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/readyz")).text == "ready\n"
        jobs = [await client.enqueue(model=f"tokenwire/sim;tokens={n}", input="ok") for n in (3, 4, 5)]
        jobs.append(await client.enqueue(model="tokenwire/sim;fault=status;status=400", input="bad"))
        jobs.append(
            await client.enqueue(
                model="tokenwire/sim;tokens=6;fault=status;status=503;fail_first=1", input="x"
            )
        )
        await redis.xadd(Keys(client.keys.prefix).jobs, {"job": msgspec.json.encode({"model": 7})})
        tokens = 0
        for job_id in jobs:
            items = [i async for i in client.subscribe(job_id, timeout=30)]
            tokens += sum(isinstance(i.event, Token) for i in items)
            assert isinstance(items[-1].event, Done | Error)

        async def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return samples((await http.get(f"{base}/metrics")).text)

        def ended(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(
                m.get(("tokenwire_jobs_total", (("outcome", o),)), 0)
                for o in ("done", "error", "dead_lettered")
            )

        def settled(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
            # counted at the ack, just after the terminal event; the gauge falls once the job's
            # task is gone, a loop turn later: a scrape may fall between the two (CI met it)
            return ended(m) == 6 and m.get(("tokenwire_inflight_jobs", ()), -1) == 0

        async with asyncio.timeout(10):
            while not settled(m := await scraped()):
                await asyncio.sleep(0.05)
    assert m[("tokenwire_jobs_total", (("outcome", "done"),))] == 4
    assert m[("tokenwire_jobs_total", (("outcome", "error"),))] == 1
    assert m[("tokenwire_dead_letters_total", (("code", "invalid_job"),))] == 1
    assert m[("tokenwire_tokens_published_total", ())] == tokens
    assert m[("tokenwire_upstream_errors_total", (("code", "bad_request"), ("status", "400")))] == 1
    assert m[("tokenwire_upstream_errors_total", (("code", "upstream_unavailable"), ("status", "503")))] == 1
    assert m[("tokenwire_retries_total", (("code", "upstream_unavailable"),))] == 1
    assert m[("tokenwire_token_latency_seconds_count", ())] >= 1
    assert m[("tokenwire_inflight_jobs", ())] == 0
