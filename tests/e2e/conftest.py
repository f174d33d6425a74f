"""Fixtures of the end-to-end lane: a simulator process, a private Redis (single and Cluster), a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.clikit import TOKENWIRE, run, wait_until
from worker.redisproc import RedisServer, free_port


@pytest.fixture
def sim_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [TOKENWIRE, "sim", "--port", str(port), "--tps", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    proc.stdout.close()


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """The CLI runs against a single redis-server and a real three-master Redis Cluster."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url), True
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url, False


@pytest.fixture
def env(redis_target: tuple[str, bool], sim_port: int, tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text(
        "block_seconds = 0.5\n"
        'default_provider = "local"\n'
        "[providers.local]\n"
        f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n'
        f'chat_url = "http://127.0.0.1:{sim_port}/v1/openai/chat/completions"\n'
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": redis_target[0],
        "TOKENWIRE_REDIS_CLUSTER": "true" if redis_target[1] else "false",
        "TOKENWIRE_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "TOKENWIRE_CONSUMER_NAME": "e2e-worker-1",
    }


@pytest.fixture
def worker_proc(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=log, text=True)

    def started() -> bool:  # the worker creates the group first thing
        stats = run(env, "stats", "--json")
        return stats.returncode == 0 and json.loads(stats.stdout)["group_exists"]

    wait_until(started, 20, "the worker to create the consumer group")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    log.close()
