"""Fixtures for every lane. Nothing here touches a Redis the tests did not start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker.redisproc import RedisClusterServers, RedisServer, redis_server_available

LANES = ("unit", "integration", "e2e", "faults", "deploy")
"""Each directory under tests/ is a lane, marked here so that ``-m LANE`` selects exactly it."""

_lane_seconds: dict[str, float] = {}


def _lane_of(path: str) -> str | None:
    parts = path.replace(os.sep, "/").split("/")
    if "tests" in parts:
        index = parts.index("tests")
        if index + 1 < len(parts) and parts[index + 1] in LANES:
            return parts[index + 1]
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        lane = _lane_of(str(item.path))
        if lane is not None:
            item.add_marker(getattr(pytest.mark, lane))
        needs_redis = {"redis_server", "redis_cluster"} & set(getattr(item, "fixturenames", ()))
        if lane == "unit" and needs_redis:
            raise pytest.UsageError(f"{item.nodeid} asks for {needs_redis}: the unit lane runs without Redis")


LANE_ORDER = ("faults", "e2e", "integration", "deploy", "unit")
"""Longest-running lanes first (``-n`` runs): faults and e2e tests take seconds, unit tests milliseconds."""


class _LongestFirst:
    """Orders the run longest first: tests marked ``slow``, then by lane (:data:`LANE_ORDER`), each group
    in collection order (a stable sort). With ``-n`` (pytest-xdist's ``--dist load``) tests are handed
    out one at a time (``--maxschedchunk 1`` unless given), so a process that finishes takes the next
    test in this order: the long tests start first and the run ends on short ones, with no core left
    idle behind a long test handed out last. (xdist's default hands each process a quarter of the
    collection up front, in collection order: one got deploy, e2e and faults, almost every slow test.)
    ``--ff``/``--nf`` keep their own order."""

    @pytest.hookimpl(trylast=True)  # after -m/-k deselection and the fixture-scope reordering
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if config.getoption("failedfirst", False) or config.getoption("newfirst", False):
            return
        rank = {lane: n for n, lane in enumerate(LANE_ORDER)}

        def key(item: pytest.Item) -> tuple[int, int]:
            lane = _lane_of(str(item.path))
            return (item.get_closest_marker("slow") is None, rank.get(lane or "", len(rank)))

        items.sort(key=key)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_LongestFirst(), "tokenwire-longest-first")
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    lane = _lane_of(report.nodeid) or "other"
    _lane_seconds[lane] = _lane_seconds.get(lane, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _lane_seconds:
        times = ", ".join(f"{lane} {seconds:.1f} s" for lane, seconds in sorted(_lane_seconds.items()))
        terminalreporter.write_line(f"lane times (test seconds, summed over processes): {times}")


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
