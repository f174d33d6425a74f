"""An upstream faster than the worker does not hold the event loop: its buffered events are read
without a pause, so the attempt gives the loop a turn every ``YIELD_EVERY`` tokens, and the
flusher (and every other job) runs in between. Real redis-server; the upstream is one HTTP body
chunk holding every event (``httpx.MockTransport``), so nothing else would ever suspend the read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from worker import Client, Done
from worker.attempt import YIELD_EVERY

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

TOKENS = 3000


def one_chunk_upstream() -> httpx.MockTransport:
    events: list[dict[str, Any]] = [
        {"token": {"id": i, "text": f" t{i}", "logprob": -0.25, "special": False}} for i in range(TOKENS)
    ]
    events.append(
        {"token": {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}, "generated_text": "x"}
    )
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.MockTransport(handler)


async def test_a_fast_upstream_yields_to_the_loop(
    start_worker: Callable[..., Awaitable[RunningWorker]], client: Client
) -> None:
    running = await start_worker(http=httpx.AsyncClient(transport=one_chunk_upstream()))
    publisher = running.worker.publisher
    sizes: list[int] = []
    on_batch = publisher.on_batch

    def record(count: int, oldest: float | None) -> None:
        sizes.append(count)
        if on_batch is not None:
            on_batch(count, oldest)

    publisher.on_batch = record
    job_id = await client.enqueue(model="org/model", input="x")
    items = [item async for item in client.subscribe(job_id, timeout=30)]
    assert isinstance(items[-1].event, Done) and items[-1].event.usage.output_tokens == TOKENS + 1
    assert sum(sizes) == TOKENS + 1
    # without the turns, one batch would hold every token of the body
    assert sizes[0] <= YIELD_EVERY and len(sizes) >= 4
