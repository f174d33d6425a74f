"""The short-job scenario of ``make bench`` end to end on short windows: real redis-server, simulator,
the three workers (tokenwire, the naive worker, the naive task on arq in its own locked environment)
and the load generator. Behaviour is checked (every row measured, the ratios computed, a failing job
refused), never a speed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bench import shortjobs, shortload
from worker.redisproc import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHORT = ["--warmup", "0.5", "--window", "1.5"]
PACED_RATE = 100.0
"""The paced load's offered rate here: one every variant keeps up with on a loaded machine (at the
scenario's 500 jobs/s the naive worker and arq fall behind, and drain for up to 10 s or fail the row)."""


def test_every_variant_and_load_is_measured_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flat, paced_load = shortjobs.LOADS
    monkeypatch.setattr(
        shortjobs, "LOADS", (flat, shortjobs.Load(paced_load.name, PACED_RATE, paced_load.inflight))
    )
    out = tmp_path / "short.json"
    variants = ["--variant", "naive", "--variant", "floor", "--variant", "tokenwire", "--variant", "arq"]
    assert shortjobs.main([*SHORT, *variants, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["variant"], r["load"]): r for r in result["rows"]}
    names = ("naive", "floor", "tokenwire", "arq")
    assert set(rows) == {(v, ld) for v in names for ld in ("flat", "paced")}
    for row in rows.values():
        assert row.get("error") is None, row
        assert row["done_in_window"] > 0 and row["failed"] == 0 and row["unfinished"] == 0
        assert row["cpu_us_per_job"] > 0 and row["jobs_per_cpu_s"] > 0
        assert row["p99_ms"] >= row["p50_ms"] > 0
    paced = rows[("tokenwire", "paced")]
    # open loop at the offered rate (how many the producer got out depends on the machine's load:
    # not asserted); closed loop keeps its 64 outstanding
    assert paced["rate"] == PACED_RATE and paced["enqueued"] > 0
    assert rows[("tokenwire", "flat")]["inflight"] == 64
    assert set(result["ratios"]) == {
        f"tokenwire/{v} {ld}" for v in ("naive", "floor", "arq") for ld in ("flat", "paced")
    }
    printed = capsys.readouterr().out
    assert "tokenwire/arq flat" in printed and f"wrote {out}" in printed


def test_a_job_that_ends_in_error_fails_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an upstream that refuses every request (400): every job ends in `error`, never counted as done
    monkeypatch.setattr(shortjobs, "LOADS", (shortjobs.Load("flat", 0.0, 4),))
    model = "tokenwire/sim;fault=status;status=400"
    argv = [*SHORT, "--variant", "tokenwire", "--model", model, "--out", str(tmp_path / "short.json")]
    assert shortjobs.main(argv) == 1
    (row,) = json.loads((tmp_path / "short.json").read_text())["rows"]
    assert "jobs failed" in row["error"]


def test_job_lengths_are_one_to_five_tokens_the_same_for_every_variant() -> None:
    lengths = [shortload.tokens_of(i) for i in range(1000)]
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert shortload.job_of(7, "a")["model"] == shortload.job_of(7, "b")["model"]


def test_profile_samples_the_tokenwire_worker_over_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shortjobs._py_spy() is None:
        pytest.skip("py-spy is not installed here")
    profiles = tmp_path / "prof"
    argv = [*SHORT, "--variant", "tokenwire", "--load", "flat", "--profile", str(profiles)]
    assert shortjobs.main([*argv, "--out", str(tmp_path / "short.json")]) == 0
    raw = (profiles / "short-flat-tokenwire.txt").read_text()
    assert "Runner.handle" in raw  # the worker's job path was sampled
    assert "profile short-flat-tokenwire.txt:" in capsys.readouterr().out  # and summarised


def test_profile_without_py_spy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shortjobs, "_py_spy", lambda: None)
    argv = [*SHORT, "--variant", "tokenwire", "--profile", str(tmp_path / "p"), "--out", str(tmp_path / "o")]
    assert shortjobs.main(argv) == 2
    assert not (tmp_path / "o").exists()


async def _floor_events(redis_url: str, key: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    redis = Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                entries: Any = await redis.xrange(key)
                events = [json.loads(fields[b"event"]) for _, fields in entries]
                if events and events[-1].get("type") == "done":
                    return events
                await asyncio.sleep(0.02)
    finally:
        await redis.aclose()


def test_the_short_job_floor_writes_each_jobs_events_a_done_and_acks_it(
    redis_server: RedisServer, sim_port: int
) -> None:
    # the floor row is the bound the worker is measured against: it must do the job (every upstream
    # event in, a done, the ack), or its CPU per job says nothing
    prefix = f"floor-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "bench.floor_short", "--redis-url", redis_server.url]
    argv += ["--sim-url", f"http://127.0.0.1:{sim_port}", "--prefix", prefix, "--max-seconds", "30"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        async def scenario() -> None:
            redis = Redis.from_url(redis_server.url)
            try:
                for i in range(1, 4):
                    job = {**shortload.job_of(i, prefix), "id": f"{prefix}-{i}"}
                    await redis.xadd(f"{{{prefix}}}:jobs", {"job": json.dumps(job)})
                for i in range(1, 4):
                    events = await _floor_events(redis_server.url, f"{prefix}:job:{{{prefix}-{i}}}:events")
                    tokens = [e for e in events if "token" in e]  # the simulator's events, as they came
                    assert tokens and tokens[-1]["details"]["generated_tokens"] == len(tokens)
                    assert events[-1] == {"type": "done", "job_id": f"{prefix}-{i}", "tokens": len(tokens)}
                async with asyncio.timeout(20):
                    while (await redis.xpending(f"{{{prefix}}}:jobs", "workers"))["pending"]:
                        await asyncio.sleep(0.02)
            finally:
                await redis.aclose()

        asyncio.run(scenario())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "failed" not in out, out
