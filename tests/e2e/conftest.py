"""Fixtures of the end-to-end lane: a simulator process, a private Redis (single and Cluster), a worker,
fleets of worker processes (:class:`Fleet`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.clikit import TOKENWIRE
from worker import Client
from worker.connect import redis_client
from worker.redisproc import RedisServer, free_port
from worker.stats import collect_stats

ENDED = ("done", "error", "cancelled")


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
    asyncio.run(_group_created(env, proc))
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    log.close()


async def _group_created(env: dict[str, str], proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Until the worker has created the consumer group (the first thing it does), as ``tokenwire stats``
    sees it: its collect_stats, called here (a look costs no process start)."""
    cluster = env.get("TOKENWIRE_REDIS_CLUSTER") == "true"
    redis = redis_client(env["TOKENWIRE_REDIS_URL"], cluster=cluster)
    prefix = env.get("TOKENWIRE_PREFIX", "tokenwire")
    try:
        async with asyncio.timeout(timeout):
            while not (await collect_stats(redis, prefix))["group_exists"]:
                assert proc.poll() is None, f"the worker exited with {proc.returncode}"
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


class Fleet:
    """``tokenwire worker`` processes on one environment: consumer names w0, w1, ..., each with its
    own metrics port (``/readyz``, ``/metrics``) and log file. Start with :meth:`start` (the
    ``worker_fleet`` fixture does), :meth:`stop` drains them."""

    def __init__(self, env: dict[str, str], n: int, log_dir: Path, tag: str) -> None:
        self.env = env
        self.n = n
        self.logs = [log_dir / f"worker-{tag}-{k}.log" for k in range(n)]
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Fleet:
        for k, log_path in enumerate(self.logs):
            port = free_port()
            env = {**self.env, "TOKENWIRE_CONSUMER_NAME": f"w{k}", "TOKENWIRE_METRICS_PORT": str(port)}
            with log_path.open("wb") as log:
                proc = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
            self.ports.append(port)
            self.procs.append(proc)
        return self

    async def ready(self, timeout: float = 30.0) -> None:
        """Until every worker's ``/readyz`` answers 200."""
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http, asyncio.timeout(timeout):
            for port, proc in zip(self.ports, self.procs, strict=True):
                while True:
                    assert proc.poll() is None, f"a worker exited with {proc.returncode}"
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)

    async def metrics(self) -> list[str]:
        """Each worker's ``/metrics`` page."""
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            return [(await http.get(f"http://127.0.0.1:{port}/metrics")).text for port in self.ports]

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM every worker (each drains); their exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [proc.wait(timeout=timeout) for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


StartFleet = Callable[[dict[str, str], int, str], Fleet]


@pytest.fixture
def worker_fleet(tmp_path: Path) -> Iterator[StartFleet]:
    """``start(env, n, tag)``: a started :class:`Fleet` of ``n`` workers on ``env`` (logs named after
    ``tag``); a worker still running when the test ends is killed."""
    fleets: list[Fleet] = []

    def start(env: dict[str, str], n: int, tag: str) -> Fleet:
        fleets.append(Fleet(env, n, tmp_path, tag).start())
        return fleets[-1]

    yield start
    for fleet in fleets:
        fleet.kill()


async def wait_all_ended(client: Client, ids: list[str], timeout: float) -> list[dict[str, str]]:
    """Until every job's state is terminal; the states, in the order of ``ids``."""
    async with asyncio.timeout(timeout):
        while True:
            async with client.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(client.keys.state(job_id))
                states: list[Any] = await pipe.execute()
            decoded = [{k.decode(): v.decode() for k, v in s.items()} for s in states]
            if all(s.get("state") in ENDED for s in decoded):
                return decoded
            await asyncio.sleep(0.05)
