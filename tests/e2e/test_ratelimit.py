"""Shared rate limits on real processes: 300 jobs on three `tokenwire worker` processes against a
simulator process that refuses (HTTP 429, Retry-After) any stream beyond 10 at once.

Every job must end ``done`` with ``max_attempts = 1`` (a 429 costs no attempt), the simulator must
never have streamed more than its limit at once (it counts what it admitted and refused), and the
429s must be few: with the limit configured (``max_concurrency = 10``) only the edges (a slot freed
in Redis a moment before the simulator closed its stream) can be refused; with the workers' budget
above the limit (``max_concurrency = 64``) AIMD must find the limit, at a bounded cost in 429s.
Each run prints its numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.clikit import TOKENWIRE
from tests.e2e.conftest import StartFleet, wait_all_ended
from worker import Client
from worker.connect import redis_client
from worker.redisproc import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = 300
WORKERS = 3
LIMIT = 10
MODEL = f"tokenwire/sim;tokens=10;tps=50;limit={LIMIT};limit_retry_after=0.05"


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text page (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


async def run_round(
    redis_server: RedisServer, sim_url: str, budget: int, tmp: Path, start_fleet: StartFleet
) -> dict[str, Any]:
    prefix = f"rl-{budget}-{uuid.uuid4().hex[:6]}"
    cfg = tmp / f"tw-{budget}.toml"
    cfg.write_text(
        'default_provider = "sim"\nblock_seconds = 0.5\nconcurrency = 64\nmax_attempts = 1\n'
        "job_deadline_seconds = 120\nretry_base_seconds = 0.05\n"
        f'[providers.sim]\nnative_url = "{sim_url}/v1/inference/{{model}}"\nmax_concurrency = {budget}\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": redis_server.url,
        "TOKENWIRE_PREFIX": prefix,
        "TOKENWIRE_LOG_LEVEL": "warning",
    }
    fleet = start_fleet(env, WORKERS, f"rl{budget}")
    client = Client(redis_client(redis_server.url, block_seconds=2.0), prefix=prefix)
    try:
        await fleet.ready()
        began = time.monotonic()
        ids = [await client.enqueue(model=MODEL, input=f"job {n}") for n in range(JOBS)]
        states = await wait_all_ended(client, ids, 90)
        elapsed = time.monotonic() - began
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            sim = (await http.get(f"{sim_url}/stats")).json()["limits"]["model:tokenwire/sim"]
        pages = await fleet.metrics()
        stats = subprocess.run(
            [TOKENWIRE, "stats", "--json"], env=env, capture_output=True, text=True, timeout=30, check=True
        )
    finally:
        codes = fleet.stop()
        await client.aclose()
    assert codes == [0] * WORKERS, codes
    return {
        "elapsed": elapsed,
        "states": states,
        "sim": sim,
        "throttled": sum(metric(page, "tokenwire_provider_throttled_total") for page in pages),
        "waiting": sum(metric(page, "tokenwire_provider_waiting_jobs") for page in pages),
        "stats": json.loads(stats.stdout),
    }


@pytest.mark.parametrize(
    ("budget", "most_429s"),
    [
        pytest.param(LIMIT, 15, id="limit-configured"),  # only the edges
        pytest.param(64, 60, id="limit-discovered"),  # AIMD finds 10 from 64
    ],
)
def test_300_jobs_on_3_workers_keep_to_a_limit_of_10(
    redis_server: RedisServer,
    sim_port: int,
    worker_fleet: StartFleet,
    tmp_path: Path,
    budget: int,
    most_429s: int,
) -> None:
    sim_url = f"http://127.0.0.1:{sim_port}"
    result = asyncio.run(run_round(redis_server, sim_url, budget, tmp_path, worker_fleet))
    sim, states = result["sim"], result["states"]
    print(
        f"max_concurrency={budget}: {JOBS} jobs in {result['elapsed']:.1f}s; simulator admitted "
        f"{sim['admitted']}, refused {sim['refused']} (429), at most {sim['peak']} at once (limit {LIMIT}); "
        f"workers counted {result['throttled']:.0f} 429s"
    )
    failed = [s for s in states if s.get("state") != "done"]
    assert not failed, failed[:3]
    assert sim["peak"] <= LIMIT, sim  # never more streams at once than the limit
    assert sim["admitted"] == JOBS, sim  # each job streamed once: no attempt was spent on a 429
    assert sim["refused"] <= most_429s, sim  # over-limit requests, refused at the edges: few
    assert result["throttled"] == sim["refused"]  # every 429 was seen and counted by a worker
    assert result["waiting"] == 0  # nobody is left waiting
    assert all(int(s["attempt"]) == 1 for s in states)
    # tokenwire stats: the scope, every request sent had a permit, nothing held or waiting now
    (budget_stats,) = result["stats"]["budgets"]
    assert budget_stats["scope"] == "sim" and budget_stats["waiting"] == 0 and budget_stats["in_use"] == 0
    assert budget_stats["granted"] == sim["admitted"] + sim["refused"]
    assert budget_stats["throttled"] == sim["refused"]
