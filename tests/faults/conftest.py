"""Fixtures of the fault-injection suite: a private redis-server and simulator per module, and a
:class:`~tests.faults.harness.Harness` (own key prefix, own workers) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Harness, SimProcess
from worker.redisproc import RedisServer, redis_server_available


@pytest.fixture(scope="module")
def faults_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own (tests isolate by key prefix)."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """``tokenwire sim`` as a process; tests use model strings of their own, so its per-model
    request counters are theirs."""
    log_dir: Path = tmp_path_factory.mktemp("sim")
    process = SimProcess(log_dir / "sim.log").start()
    yield process
    process.stop()


@pytest.fixture
async def harness(faults_redis: RedisServer, sim: SimProcess, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(redis_url=faults_redis.url, sim=sim, tmp_path=tmp_path)
    try:
        yield h
    finally:
        await h.close()
