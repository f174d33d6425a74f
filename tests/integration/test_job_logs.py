"""A job's log lines on real Redis with the simulator: every line its task writes carries its id
(bound by the runner for the job)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog

from worker import Client, Done

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


async def test_a_jobs_lines_carry_its_id(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for job_id in ("logged-1", "logged-2"):
            await client.enqueue(model="tokenwire/sim;tokens=3", input="x", id=job_id)
            assert isinstance(await client.result(job_id, timeout=30), Done)
        async with asyncio.timeout(10):  # "job done" follows the ack, after the done is visible
            while sum(r["event"] == "job done" for r in logs) < 2:
                await asyncio.sleep(0.01)
    mine = [(r["event"], r.get("job_id")) for r in logs if r["event"] in ("attempt started", "job done")]
    assert mine == [
        ("attempt started", "logged-1"),
        ("job done", "logged-1"),
        ("attempt started", "logged-2"),
        ("job done", "logged-2"),
    ]
