"""Fixtures for every lane. Nothing here touches a Redis the tests did not start."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

from worker.redisproc import RedisClusterServers, RedisServer, redis_server_available


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit the machine's tokenwire or proxy settings."""
    for name in list(os.environ):
        if name.startswith("TOKENWIRE_") or name.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session; tests isolate by key prefix."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A private three-master Redis Cluster for the whole session."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed (make test installs it)")
    with RedisClusterServers(masters=3) as cluster:
        yield cluster
