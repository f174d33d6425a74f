"""The naive gateway: the Redis tutorial's design, for the benchmark to compare the real one with.

Every SSE client gets its own loop of one blocking ``XREAD BLOCK`` on its job's stream, on its own
Redis connection (redis-py's asyncio pool, lifted so every client has one), and each entry is
written out as it is read: ``id:``, ``event:``, ``data:`` (the frames of worker/gateway/sse.py).
Resumes after ``Last-Event-ID`` or ``?after=``. No auth, no tenants, no limits.

``python -m bench.naive_gateway --port P --redis-url URL --prefix P``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from bench.sseload import raise_nofile
from worker.keys import Keys

__all__ = ["main"]

BLOCK_MS = 5_000
SOCKET_TIMEOUT = 15.0  # above the BLOCK (redis-py's default read timeout would cut a blocked XREAD)
TERMINAL = {b"done", b"error", b"cancelled"}
REDIS_KEY: web.AppKey[Redis] = web.AppKey("redis", Redis)
KEYS: web.AppKey[Keys] = web.AppKey("keys", Keys)


async def events(request: web.Request) -> web.StreamResponse:
    redis, keys = request.app[REDIS_KEY], request.app[KEYS]
    job = request.match_info["id"]
    last = request.headers.get("Last-Event-ID") or request.query.get("after") or "0-0"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    key = keys.events(job)
    while True:
        reply: Any = await redis.xread({key: last}, count=100, block=BLOCK_MS)
        if not reply:
            await response.write(b": heartbeat\n\n")
            continue
        for _, entries in reply:
            for entry_id, fields in entries:
                raw = fields.get(b"event", b"{}")
                kind = json.loads(raw).get("type", "unknown").encode()
                await response.write(b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id, kind, raw))
                last = entry_id.decode()
                if kind in TERMINAL:
                    return response


async def _main(args: argparse.Namespace) -> None:
    raise_nofile()
    pool = BlockingConnectionPool.from_url(
        args.redis_url, max_connections=args.max_connections, timeout=None, socket_timeout=SOCKET_TIMEOUT
    )
    app = web.Application()
    app[REDIS_KEY] = Redis(connection_pool=pool)
    app[KEYS] = Keys(args.prefix)
    app.router.add_get("/v1/jobs/{id}/events", events)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    print(f"naive gateway listening on 127.0.0.1:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    await runner.cleanup()
    await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--max-connections", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
