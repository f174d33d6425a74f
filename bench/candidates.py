"""``make bench``'s candidates scenario (issue 16 §2): what ``n = 4`` candidates in one job cost
against 4 separate jobs for the same answers.

For each API (``native``: the job's 4 candidates are 4 concurrent requests; ``chat``: one request
for 4 choices) and each answer length, the tokenwire worker (its own process, a fresh
``redis-server`` and simulator on loopback) runs ``--sets`` answer sets twice: as jobs with
``"candidates": {"n": 4}`` and as 4 single jobs each (seeds varied the same way), at most
``--inflight`` sets outstanding. Each row: worker CPU per answer set (user + system, ``/proc``),
sets/s, Redis streams and events written per set, and the ratio of the two forms. Every child is
stopped in a ``finally``.

``python -m bench.candidates [--quick] [--sets N] [--out PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import ProcessSet, cpu_seconds, wait_until
from bench.variants import PREFIX, Setup, _tokenwire
from worker import Client
from worker.connect import redis_client
from worker.redisproc import RedisServer, free_port

__all__ = ["main", "run_case"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "candidates.json"
N = 4
START_TIMEOUT = 30.0


def _sim_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as reply:  # loopback only
            return bool(reply.status == 200)
    except OSError:
        return False


async def _load(
    redis_url: str, form: str, api: str, tokens: int, sets: int, inflight: int
) -> tuple[int, int]:
    """Run ``sets`` answer sets as ``form`` (``n4`` or ``4x1``); (streams, events) written."""
    redis = redis_client(redis_url, block_seconds=5.0)
    client = Client(redis, prefix=PREFIX, block_ms=500)
    gate = asyncio.Semaphore(inflight)
    prompt: dict[str, Any] = (
        {"messages": [{"role": "user", "content": "q"}]} if api == "chat" else {"input": "q"}
    )
    model = f"tokenwire/sim;tokens={tokens}"
    ids: list[str] = []

    async def one_set(i: int) -> None:
        async with gate:
            if form == "n4":
                fields: dict[str, Any] = {"params": {"seed": i * N}, "candidates": {"n": N}}
                jobs = [await client.enqueue(model=model, api=api, **prompt, **fields)]
            else:
                jobs = [
                    await client.enqueue(model=model, api=api, params={"seed": i * N + k}, **prompt)
                    for k in range(N)
                ]
            ids.extend(jobs)
            for job_id in jobs:
                await client.result(job_id, timeout=120)

    try:
        await asyncio.gather(*(one_set(i) for i in range(sets)))
        events = 0
        for job_id in ids:
            events += int(await redis.xlen(client.keys.events(job_id)))
        return len(ids), events
    finally:
        await client.aclose()


def run_case(work: Path, form: str, api: str, tokens: int, sets: int, inflight: int) -> dict[str, Any]:
    """One form of one case, from a fresh Redis to its row."""
    procs = ProcessSet(work)
    (work / "redis").mkdir(parents=True)
    redis = RedisServer(directory=work / "redis")
    row: dict[str, Any] = {"form": form, "api": api, "tokens": tokens, "sets": sets}
    try:
        redis.start()
        port = free_port()
        sim_url = f"http://127.0.0.1:{port}"
        tokenwire = Path(sys.executable).with_name("tokenwire")
        procs.start("sim", [str(tokenwire), "sim", "--port", str(port), "--tps", "0", "--seed", "1"])
        argv, env = _tokenwire(Setup(redis.url, sim_url, inflight * N, 600.0, work))
        config = Path(env["TOKENWIRE_CONFIG"])
        config.write_text(config.read_text() + f'chat_url = "{sim_url}/v1/openai/chat/completions"\n')
        worker = procs.start("worker", argv, env)
        wait_until(lambda: _sim_ready(sim_url), START_TIMEOUT, "tokenwire sim")
        asyncio.run(_load(redis.url, form, api, tokens, 2, 2))  # every process up, connections made
        cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
        streams, events = asyncio.run(_load(redis.url, form, api, tokens, sets, inflight))
        cpu, wall = cpu_seconds(worker.pid) - cpu0, time.monotonic() - t0
        row.update(
            cpu_us_per_set=cpu / sets * 1e6,
            sets_per_s=sets / wall,
            streams_per_set=streams / sets,
            events_per_set=events / sets,
        )
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        procs.stop_all()
        redis.stop()
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'api':<7} {'tokens':>6} {'form':<4} {'CPU us/set':>11} {'sets/s':>8} {'streams':>8} {'events':>7}"
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['api']:<7} {r['tokens']:>6} {r['form']:<4} error: {r['error']}")
            continue
        lines.append(
            f"{r['api']:<7} {r['tokens']:>6} {r['form']:<4} {r['cpu_us_per_set']:>11.0f} "
            f"{r['sets_per_s']:>8.1f} {r['streams_per_set']:>8.0f} {r['events_per_set']:>7.1f}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU of n=4 over 4 separate jobs, per api and length (under 1: the candidates cost less)."""
    out = []
    for r in rows:
        if r["form"] != "n4" or "error" in r:
            continue
        twin = next(
            (o for o in rows if o["form"] == "4x1" and (o["api"], o["tokens"]) == (r["api"], r["tokens"])),
            None,
        )
        if twin is not None and "error" not in twin:
            cpu = r["cpu_us_per_set"] / twin["cpu_us_per_set"]
            out.append({"api": r["api"], "tokens": r["tokens"], "cpu_ratio_n4_over_4x1": cpu})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 sets, 5-token answers only")
    parser.add_argument("--sets", type=int, help="answer sets per form (default 300; --quick 100)")
    parser.add_argument("--inflight", type=int, default=16, help="answer sets outstanding at once")
    parser.add_argument("--api", action="append", choices=["native", "chat"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    sets = args.sets or (100 if args.quick else 300)
    lengths = (5,) if args.quick else (5, 50)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokenwire-bench-candidates-") as tmp:
        work = Path(tmp)
        for api in args.api or ["native", "chat"]:
            for tokens in lengths:
                for form in ("n4", "4x1"):
                    rows.append(
                        run_case(work / f"{api}-{tokens}-{form}", form, api, tokens, sets, args.inflight)
                    )
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    result = {"rows": rows, "ratios": ratios(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows))
    for r in result["ratios"]:
        print(
            f"{r['api']} {r['tokens']} tokens: n=4 costs {r['cpu_ratio_n4_over_4x1']:.2f}x the CPU of 4 jobs"
        )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
