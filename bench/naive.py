"""The naive worker: what one writes first. httpx (default transport) + httpx-sse, ``json.loads``
per event, and one awaited ``XADD`` per token to the job's event stream (field ``event``: the token
re-encoded as JSON). Stock redis-py client, no batching, no pipelining.

``python -m bench.naive --redis-url URL --sim-url URL [--prefix P] [--max-seconds S]``
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from bench.jobloop import EVENTS_MAXLEN, BenchJob, parse_args, serve_jobs

__all__ = ["main", "run_job"]

_MAX_CONNECTIONS = 4096


def _token_event(job_id: str, index: int, token: dict[str, Any]) -> str:
    return json.dumps(
        {
            "type": "token",
            "job_id": job_id,
            "index": index,
            "text": token.get("text"),
            "logprob": token.get("logprob"),
            "token_id": token.get("id"),
            "special": token.get("special", False),
        }
    )


async def run_job(redis: Redis, http: httpx.AsyncClient, job: BenchJob) -> None:
    index = 0
    async with aconnect_sse(http, "POST", job.url, json=job.body) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            event = json.loads(sse.data)
            token = event.get("token")
            if token is not None:
                payload = _token_event(job.job_id, index, token)
                await redis.xadd(job.events_key, {"event": payload}, maxlen=EVENTS_MAXLEN, approximate=True)
                index += 1
            if event.get("details") is not None or event.get("generated_text") is not None:
                done = json.dumps({"type": "done", "job_id": job.job_id, "tokens": index})
                await redis.xadd(job.events_key, {"event": done}, maxlen=EVENTS_MAXLEN, approximate=True)
                return


async def _main() -> None:
    args = parse_args("the naive worker (httpx + httpx-sse + json + one XADD per token)")
    # redis-py caps its pool at 100 connections and fails beyond: lifted, one per awaited XADD.
    redis = Redis.from_url(args.redis_url, max_connections=_MAX_CONNECTIONS)
    # httpx's default pool holds 100 connections: lifted so every stream gets one.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as http:
            await serve_jobs(args, redis, lambda job: run_job(redis, http, job))
    finally:
        await redis.aclose()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
