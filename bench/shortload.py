"""The producer and observer of the short-job benchmark: enqueues jobs of 1-5 tokens, watches each
job's event stream until its terminal event, and measures jobs/s, enqueue -> terminal-visible
latency and the worker processes' CPU per job over a fixed window.

It runs in the benchmark's own environment (enqueueing by ``XADD`` on ``{P}:jobs``, as tokenwire
and the naive worker read it) and in the arq environment (``bench/arq``: enqueueing with arq's
``enqueue_job``), so it imports nothing of tokenwire's and only redis-py (``redis.asyncio``, in
both redis-py 5 and newer).

Two loads: ``--rate R`` offers R jobs/s open loop (paced, whatever the workers do), ``--rate 0``
keeps ``--inflight`` jobs outstanding (closed loop: as fast as the workers finish them). Jobs enqueued
in the warm-up are not measured; a job counts in the window when its terminal event became visible
inside it; its latency counts when it was enqueued inside it.

``python bench/shortload.py --redis-url URL --mode xadd|arq --seconds S --out F.json ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

__all__ = ["main"]

_TICKS = os.sysconf("SC_CLK_TCK")
_KEYS_PER_CALL = 500
_BLOCK_MS = 2  # a job enqueued while a call blocks is first read by the next: <= 2 ms added
_TERMINAL = re.compile(rb'"type": ?"(done|error|cancelled)"')  # tokenwire's JSON and json.dumps'
TOKENS_MIN, TOKENS_MAX = 1, 5


def cpu_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tokens_of(i: int) -> int:
    """Job ``i``'s length: 1..5 tokens, the same sequence for every variant."""
    return TOKENS_MIN + (i * 7919 + 13) % (TOKENS_MAX - TOKENS_MIN + 1)


def job_of(i: int, run: str, model: str = "tokenwire/sim") -> dict[str, Any]:
    return {
        "id": f"short-{run}-{i}",
        "model": f"{model};tokens={tokens_of(i)}",
        "input": f"Classify email {i} as one of: billing, support, sales, spam.",
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Load:
    def __init__(self, args: argparse.Namespace, redis: Redis) -> None:
        self.args = args
        self.redis = redis
        self.run = args.run
        self.watching: dict[str, tuple[float, bytes]] = {}  # events key -> (enqueued at, last id)
        self.enqueued = 0
        self.started = time.monotonic()
        self.window_start = self.started + args.warmup
        self.window_end = self.window_start + args.seconds
        self.done_in_window = 0
        self.failed = 0
        self.latencies_ms: list[float] = []
        self.room = asyncio.Event()
        self.room.set()
        self.arq: Any = None

    def key(self, job_id: str) -> str:
        return f"{self.args.prefix}:job:{{{job_id}}}:events"

    async def enqueue(self, i: int) -> None:
        job = job_of(i, self.run, self.args.model)
        now = time.monotonic()
        self.watching[self.key(job["id"])] = (now, b"0-0")
        self.enqueued += 1
        if self.args.mode == "arq":
            await self.arq.enqueue_job("short_job", json.dumps(job), _job_id=job["id"])
        else:
            await self.redis.xadd(f"{{{self.args.prefix}}}:jobs", {"job": json.dumps(job)})

    async def produce(self) -> None:
        i = 0
        if self.args.rate > 0:
            while time.monotonic() < self.window_end:
                due = self.started + i / self.args.rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await self.enqueue(i)
                i += 1
            return
        while time.monotonic() < self.window_end:
            while len(self.watching) >= self.args.inflight:
                self.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.room.wait(), 1.0)
                if time.monotonic() >= self.window_end:
                    return
            await self.enqueue(i)
            i += 1

    def _ended(self, key: str, payload: bytes, now: float) -> None:
        enqueued_at, _ = self.watching.pop(key)
        self.room.set()
        if self.window_start <= now < self.window_end:
            self.done_in_window += 1
        if self.window_start <= enqueued_at < self.window_end:
            self.latencies_ms.append(1000 * (now - enqueued_at))
        found = _TERMINAL.search(payload)
        if found is None or found[1] != b"done":
            self.failed += 1

    async def observe(self) -> None:
        """XREAD BLOCK over every watched stream (``_KEYS_PER_CALL`` per call) until the window ends
        and nothing enqueued in it is still running, or ``--drain`` seconds after the window."""
        hard_end = self.window_end + self.args.drain
        while time.monotonic() < hard_end:
            if time.monotonic() >= self.window_end and not any(
                t >= self.window_start for t, _ in self.watching.values()
            ):
                return
            keys = list(self.watching)[:_KEYS_PER_CALL]
            if not keys:
                await asyncio.sleep(0.001)
                continue
            streams: dict[Any, Any] = {k: self.watching[k][1] for k in keys}
            reply: Any = await self.redis.xread(streams, count=64, block=_BLOCK_MS)
            now = time.monotonic()
            for raw_key, entries in reply or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                if key not in self.watching:
                    continue
                for entry_id, fields in entries:
                    payload = fields.get(b"event", b"")
                    if _TERMINAL.search(payload):
                        self._ended(key, payload, now)
                        break
                    self.watching[key] = (self.watching[key][0], entry_id)

    async def probe(self, timeout: float = 60.0) -> None:
        """One job through before the load starts: every worker is up and connected."""
        job = {**job_of(0, self.run), "id": f"short-{self.run}-probe"}  # always a healthy job
        key = self.key(job["id"])
        if self.args.mode == "arq":
            await self.arq.enqueue_job("short_job", json.dumps(job), _job_id=job["id"])
        else:
            await self.redis.xadd(f"{{{self.args.prefix}}}:jobs", {"job": json.dumps(job)})
        last = b"0-0"
        async with asyncio.timeout(timeout):
            while True:
                reply: Any = await self.redis.xread({key: last}, count=64, block=100)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        if _TERMINAL.search(fields.get(b"event", b"")):
                            return
                        last = entry_id

    async def measure(self) -> dict[str, Any]:
        if self.args.mode == "arq":
            from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
            from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]

            self.arq = await create_pool(RedisSettings.from_dsn(self.args.redis_url))
        await self.probe()
        self.started = time.monotonic()
        self.window_start = self.started + self.args.warmup
        self.window_end = self.window_start + self.args.seconds
        pids = [int(p) for p in self.args.worker_pids.split(",") if p]
        producer = asyncio.create_task(self.produce())
        observer = asyncio.create_task(self.observe())
        await asyncio.sleep(max(0.0, self.window_start - time.monotonic()))
        cpu_before = sum(cpu_seconds(p) for p in pids)
        await asyncio.sleep(max(0.0, self.window_end - time.monotonic()))
        cpu_after = sum(cpu_seconds(p) for p in pids)
        await producer
        await observer
        if self.arq is not None:
            await self.arq.aclose()
        cpu = cpu_after - cpu_before
        unfinished = sum(1 for t, _ in self.watching.values() if self.window_start <= t < self.window_end)
        return {
            "mode": self.args.mode,
            "rate": self.args.rate,
            "inflight": self.args.inflight,
            "window_s": self.args.seconds,
            "enqueued": self.enqueued,
            "done_in_window": self.done_in_window,
            "jobs_per_s": self.done_in_window / self.args.seconds,
            "worker_cpu_s": cpu,
            "cpu_us_per_job": 1e6 * cpu / self.done_in_window if self.done_in_window else None,
            "p50_ms": _percentile(self.latencies_ms, 0.5),
            "p99_ms": _percentile(self.latencies_ms, 0.99),
            "measured_latencies": len(self.latencies_ms),
            "failed": self.failed,
            "unfinished": unfinished,
        }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url, socket_timeout=30.0)
    try:
        result = await Load(args, redis).measure()
    finally:
        await redis.aclose()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--mode", choices=("xadd", "arq"), default="xadd")
    parser.add_argument("--prefix", default="tokenwire")
    parser.add_argument("--model", default="tokenwire/sim", help="the simulated model (directives allowed)")
    parser.add_argument("--run", default="r", help="a tag in the job ids (one per run)")
    parser.add_argument("--rate", type=float, default=0.0, help="jobs/s offered; 0: closed loop")
    parser.add_argument("--inflight", type=int, default=64, help="closed loop: jobs outstanding")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="the measured window")
    parser.add_argument("--drain", type=float, default=10.0, help="at most this long after the window")
    parser.add_argument("--worker-pids", default="", help="comma-separated pids whose CPU is measured")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rate < 0 or args.inflight < 1:
        parser.error("--seconds > 0, --warmup >= 0, --rate >= 0 and --inflight >= 1")
    result = asyncio.run(_main(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
