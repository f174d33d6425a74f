"""What the naive worker and the floor share: their command line, and reading jobs from ``{P}:jobs``
through the ``workers`` consumer group (one task per job, acknowledged when it ends).

The job path is not what the benchmark measures (a handful of jobs per run), so it uses redis-py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = ["EVENTS_MAXLEN", "GROUP", "BenchJob", "parse_args", "serve_jobs"]

GROUP = "workers"
EVENTS_MAXLEN = 100_000  # tokenwire's default events_maxlen: every variant caps its streams alike
_READ_COUNT = 256
_BLOCK_MS = 1000


@dataclass(frozen=True, slots=True)
class BenchJob:
    entry_id: bytes
    job_id: str
    events_key: str
    url: str
    body: dict[str, Any]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sim-url", required=True, help="the simulator's base URL (http://host:port)")
    parser.add_argument("--prefix", default="tokenwire")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="exit after this long")
    return parser.parse_args()


def _job(entry_id: bytes, raw: bytes, args: argparse.Namespace) -> BenchJob:
    job = json.loads(raw)
    job_id = job.get("id") or entry_id.decode()
    body: dict[str, Any] = {"input": job["input"], "stream": True}
    if (max_tokens := job.get("params", {}).get("max_tokens")) is not None:
        body["max_new_tokens"] = max_tokens  # else the simulated model's own length (``tokens=``)
    return BenchJob(
        entry_id=entry_id,
        job_id=job_id,
        events_key=f"{args.prefix}:job:{{{job_id}}}:events",
        url=f"{args.sim_url}/v1/inference/{quote(job['model'], safe='/')}",
        body=body,
    )


async def serve_jobs(
    args: argparse.Namespace,
    redis: Redis,
    run_job: Callable[[BenchJob], Awaitable[None]],
    *,
    ack: bool = True,
) -> None:
    """Read jobs until ``--max-seconds`` pass, each run as its own task, then acknowledged (with
    ``ack=False`` the job acknowledges itself: ``run_job`` sends the ``XACK``)."""
    jobs_key = f"{{{args.prefix}}}:jobs"
    consumer = f"bench-{os.getpid()}"
    with contextlib.suppress(ResponseError):
        await redis.xgroup_create(jobs_key, GROUP, id="0", mkstream=True)
    tasks: set[asyncio.Task[None]] = set()

    async def one(job: BenchJob) -> None:
        try:
            await run_job(job)
            if ack:
                await redis.xack(jobs_key, GROUP, job.entry_id)
        except Exception as exc:
            print(f"job {job.job_id} failed: {exc!r}", file=sys.stderr, flush=True)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.max_seconds):
            while True:
                reply: Any = await redis.xreadgroup(
                    GROUP, consumer, {jobs_key: ">"}, count=_READ_COUNT, block=_BLOCK_MS
                )
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        task = asyncio.create_task(one(_job(entry_id, fields[b"job"], args)))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
