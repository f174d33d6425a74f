"""Adding workers adds capacity: 1, 2 and 4 `tokenwire worker` processes on the same 200 paced jobs.

Each worker has a fixed number of slots and every job is paced, so one worker is slot-bound and a
second process adds slots. Throughput is compared as a ratio within one run; the bounds are loose
(a noisy 2-core machine), the behaviour they check is not. The simulator runs as its own process
and the test only polls job states, so the test process is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.clikit import TOKENWIRE
from tests.e2e.conftest import StartFleet, wait_all_ended
from worker import Client
from worker.connect import redis_client
from worker.redisproc import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = 200
SLOTS = 10
MODEL = "tokenwire/sim;tokens=20;tps=50"  # 0.4 s a job: one worker needs ~8 s for 200


async def run_round(
    redis_server: RedisServer, sim_url: str, workers: int, tmp: Path, start_fleet: StartFleet
) -> tuple[float, Counter[str]]:
    prefix = f"scale-{workers}-{uuid.uuid4().hex[:6]}"
    cfg = tmp / f"tw-{workers}.toml"
    cfg.write_text(
        f'default_provider = "sim"\nblock_seconds = 0.5\nconcurrency = {SLOTS}\n'
        f'[providers.sim]\nnative_url = "{sim_url}/v1/inference/{{model}}"\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": redis_server.url,
        "TOKENWIRE_PREFIX": prefix,
        "TOKENWIRE_LOG_LEVEL": "warning",
    }
    fleet = start_fleet(env, workers, f"scale{workers}")
    client = Client(redis_client(redis_server.url, block_seconds=2.0), prefix=prefix)
    clean = False
    try:
        await fleet.ready()
        began = time.monotonic()
        ids = [await client.enqueue(model=MODEL, input=f"job {n}") for n in range(JOBS)]
        states = await wait_all_ended(client, ids, 120)
        elapsed = time.monotonic() - began
        assert {s["state"] for s in states} == {"done"}
        owners = Counter(s["owner"] for s in states)
        stats = subprocess.run(
            [TOKENWIRE, "stats", "--json"], env=env, capture_output=True, text=True, timeout=30, check=True
        )
        assert {c["name"] for c in json.loads(stats.stdout)["consumers"]} == {f"w{n}" for n in range(workers)}
        await _assert_once(client, ids)
        clean = True
    finally:
        codes = fleet.stop()
        await client.aclose()
    assert not clean or codes == [0] * workers, codes
    return elapsed, owners


async def _assert_once(client: Client, ids: list[str]) -> None:
    """Every job has exactly one start and one terminal event."""
    for job_id in ids:
        entries: Any = await client.redis.xrange(client.keys.events(job_id))
        kinds = Counter(json.loads(fields[b"event"])["type"] for _, fields in entries)
        assert kinds["start"] == 1 and kinds["done"] == 1 and kinds["error"] == 0, (job_id, kinds)


def test_throughput_grows_with_workers(
    redis_server: RedisServer, sim_port: int, worker_fleet: StartFleet, tmp_path: Path
) -> None:
    sim_url = f"http://127.0.0.1:{sim_port}"

    async def main() -> dict[int, tuple[float, Counter[str]]]:
        return {n: await run_round(redis_server, sim_url, n, tmp_path, worker_fleet) for n in (1, 2, 4)}

    rounds = asyncio.run(main())
    rate = {n: JOBS / elapsed for n, (elapsed, _) in rounds.items()}
    print("jobs/s by worker count:", {n: round(r, 1) for n, r in rate.items()})
    for n, (_, owners) in rounds.items():
        assert sum(owners.values()) == JOBS and len(owners) == n
        assert min(owners.values()) >= JOBS / n / 4, owners  # each worker takes a real share
    assert rate[2] >= 1.4 * rate[1], rate
    assert rate[4] >= 1.5 * rate[1], rate  # 4 processes on 2 cores: past this the cores are busy
