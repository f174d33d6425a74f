"""The gateway benchmark's producer: jobs as ``Client.enqueue`` creates them, and their events as a
worker writes them (``start``, then ``token`` events paced at ``--tps`` per job), on a private Redis.

No simulator and no worker: what is measured is the gateway, from an event's arrival on its job's
stream to a client receiving it, so the producer is the cheapest faithful writer (one pipeline of
``XADD``s per tick for every job due, with the worker's own event encoding). Jobs' streams are
spread over the tick so they do not tick in step. ``--tps 0`` writes no token: idle jobs, whose
watchers only receive heartbeats.

It writes ``--ready-file`` once every job exists and has its ``start``, and with ``--wait-go`` writes no
token before it gets SIGUSR1 (the benchmark sends it once every client is connected, so that clients
measure live delivery, not a replay of what was written while they connected). It stops (SIGTERM/SIGINT, or
after ``--max-seconds``) without writing a terminal: clients keep watching until they are stopped.

``python -m bench.gwproducer --url redis://... --prefix P --jobs N --tps T --ready-file F``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from pathlib import Path

from redis.asyncio import Redis

from worker.client import Client
from worker.connect import redis_client
from worker.events import Start, Token, encode_event
from worker.keys import Keys

__all__ = ["job_id", "main"]

TICK_SECONDS = 0.005
_TEXTS = (" river", " city", " bridge", " delta", " the", " of", " and", " port", "s", ",")


def job_id(i: int) -> str:
    return f"gw-{i}"


def token_event(job: str, index: int, char_start: int) -> tuple[bytes, int]:
    """One token event (its probability cycles so the page and the clients see a spread) and the
    offset after it."""
    text = _TEXTS[index % len(_TEXTS)]
    logprob = -0.05 * (index % 40)
    event = Token(
        job_id=job,
        attempt=1,
        index=index,
        text=text,
        logprob=logprob,
        token_id=time.time_ns() // 1000,
        confidence=0.9,
        char_start=char_start,
        char_end=char_start + len(text),
    )
    return encode_event(event), char_start + len(text)


async def _enqueue(redis: Redis, prefix: str, jobs: int) -> list[str]:
    client = Client(redis, prefix=prefix)
    keys = Keys(prefix)
    ids = []
    for i in range(jobs):
        job = job_id(i)
        await client.enqueue(id=job, model="tokenwire/sim", input=f"gateway benchmark job {i}")
        start = Start(job_id=job, attempt=1, model="tokenwire/sim", provider="sim", api="native")
        await redis.xadd(keys.events(job), {"event": encode_event(start)})
        ids.append(job)
    return ids


async def _produce(redis: Redis, prefix: str, ids: list[str], tps: float, stop: asyncio.Event) -> None:
    keys = [Keys(prefix).events(job) for job in ids]
    n = len(ids)
    period = 1.0 / tps
    loop = asyncio.get_running_loop()
    began = loop.time()
    due = [began + period * i / n for i in range(n)]  # phases spread over one period
    index = [0] * n
    offset = [0] * n
    while not stop.is_set():
        now = loop.time()
        pipe = redis.pipeline(transaction=False)
        queued = 0
        for i in range(n):
            while due[i] <= now:
                raw, offset[i] = token_event(ids[i], index[i], offset[i])
                pipe.xadd(keys[i], {"event": raw})
                index[i] += 1
                due[i] += period
                queued += 1
        if queued:
            await pipe.execute()
        wait = min(due) - loop.time()
        await asyncio.sleep(max(TICK_SECONDS, wait))


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    go = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    redis = redis_client(args.url, cluster=True) if args.cluster else Redis.from_url(args.url)
    try:
        ids = await _enqueue(redis, args.prefix, args.jobs)
        args.ready_file.write_text("ready\n")
        if args.wait_go:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(go.wait(), args.max_seconds)
        if args.tps > 0:
            task = asyncio.create_task(_produce(redis, args.prefix, ids, args.tps, stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.max_seconds)
        stop.set()
        if args.tps > 0:
            await asyncio.wait_for(task, 5.0)
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--tps", type=float, required=True, help="tokens per second per job; 0: idle")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--wait-go", action="store_true", help="write no token before SIGUSR1")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--cluster", action="store_true", help="--url names a node of a Redis Cluster")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
