"""Review finding on usage and cost (issue 15 §3), on a real redis-server with a real worker: the
upstream (an httpx.MockTransport given to the worker as its HTTP client) streams a whole answer and
reports ``usage`` with a negative count. ``xfail(strict=True)``: fails on today's code; see
/work/briefs/review-findings.md."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from worker import Client
from worker.client import JobFailed

pytestmark = pytest.mark.integration

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi",'
    b'"logprob":-0.1,"top_logprobs":[]}]},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":-1}}\n\n'
    b"data: [DONE]\n\n"
)


def _upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=STREAM)


async def test_a_negative_usage_count_from_upstream_does_not_crash_the_delivery(
    start_worker: Callable[..., Awaitable[Any]], client: Client
) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(_upstream))
    await start_worker(http=http, lease_seconds=1.0, max_deliveries=1)
    job_id = await client.enqueue(model="m", api="chat", messages=[{"role": "user", "content": "Hi"}])
    try:
        done = await client.result(job_id, timeout=15)
    except JobFailed as exc:
        pytest.fail(f"the job failed: {exc}")
    assert done.text == "Hi"
