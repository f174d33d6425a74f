"""A gateway whose task is cancelled (a forced stop, or a program that embeds ``serve_gateway``)
still runs its whole shutdown (the hub stopped, then the heartbeat, the metrics endpoint and its
Redis clients closed; the test sees the metrics port freed), and stays cancelled. cancel_and_wait
(worker/supervise.py) re-raises the caller's cancel once the hub has stopped, which skipped every
step after it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import pytest

from worker.redisproc import free_port

from .gatewaykit import RunningGateway

pytestmark = pytest.mark.integration


async def test_a_cancelled_gateway_still_closes_what_it_opened(
    gateway: Callable[..., Awaitable[RunningGateway]],
) -> None:
    port = free_port()
    gw = await gateway(metrics_port=port)
    gw.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await gw.task
    assert gw.task.cancelled(), "the cancel was swallowed"
    with socket.socket() as sock:  # the metrics endpoint's listener is closed: the port is free
        sock.bind(("127.0.0.1", port))
