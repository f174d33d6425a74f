"""The metrics and health server listens exactly where ``metrics_host`` says, on loopback here.

127.0.0.2 is another loopback address (Linux routes all of 127/8 to ``lo``): a server bound to
127.0.0.1 refuses it, one bound to every address (0.0.0.0) accepts it. That tells the two apart without
needing a second network interface.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httpx
import pytest

from worker.metrics import Metrics, serve_metrics
from worker.redisproc import free_port

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]


async def accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted (refused: False)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except ConnectionRefusedError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def ready() -> str | None:
    return None


async def test_serve_metrics_binds_the_host_it_is_given() -> None:
    port = free_port()
    runner = await serve_metrics(Metrics(), port, host="127.0.0.1", ready=ready, stale_after=10.0)
    try:
        assert runner.addresses == [("127.0.0.1", port)], "the listening socket's own address"
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).text == "ok\n"
        assert not await accepts("127.0.0.2", port), "bound to 127.0.0.1 only"
    finally:
        await runner.cleanup()


async def test_serve_metrics_on_every_address_accepts_any() -> None:
    """The control: the address the other tests must be refused on is reachable with a wildcard bind."""
    port = free_port()
    runner = await serve_metrics(Metrics(), port, host="0.0.0.0", ready=ready, stale_after=10.0)
    try:
        assert runner.addresses == [("0.0.0.0", port)]
        assert await accepts("127.0.0.2", port) and await accepts("127.0.0.1", port)
    finally:
        await runner.cleanup()


async def test_worker_serves_its_endpoints_on_metrics_host(start_worker: StartWorker) -> None:
    port = free_port()
    await start_worker(metrics_port=port, metrics_host="127.0.0.1")
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"http://127.0.0.1:{port}/readyz")).text == "ready\n"
    assert not await accepts("127.0.0.2", port), "the worker's default-style bind is loopback only"


async def test_worker_default_is_loopback(start_worker: StartWorker) -> None:
    port = free_port()
    running = await start_worker(metrics_port=port)
    assert running.worker.settings.metrics_host == "127.0.0.1"
    assert await accepts("127.0.0.1", port) and not await accepts("127.0.0.2", port)


async def test_worker_on_every_address_when_told(start_worker: StartWorker) -> None:
    port = free_port()
    await start_worker(metrics_port=port, metrics_host="0.0.0.0")
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"http://127.0.0.2:{port}/healthz")).status_code == 200
