"""The gateway's floor: the tokenwire gateway's reads and frames with nothing else around them.

One ``XREAD`` of every watched job per call (``worker.gateway.xread``: the hub's kept connection, the
reply raw from hiredis), each entry framed once (``worker.gateway.sse.entry_of``: the same bytes the
gateway sends), and each job's new entries of a read written to every client of the job in one
``transport.write``: no HTTP server (a bare asyncio protocol answers the request head with fixed
headers), no auth, no resume, no heartbeats, no buffering checks, no slow-client drops. What it
costs per delivered event is what this design costs on this machine whatever the gateway adds
(mostly the kernel's one socket write per client per read): the gateway's CPU per event over the
floor's is its own overhead, and the naive gateway's over the floor's bounds the ratio any gateway
of this design could reach against it here.

``python -m bench.floor_gateway --port P --redis-url URL --prefix P``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any, cast

from redis.asyncio import Redis

from bench.sseload import raise_nofile
from worker.gateway.hub import streams_of
from worker.gateway.sse import chunked, entry_of
from worker.gateway.xread import XReader
from worker.keys import Keys

__all__ = ["main"]

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
MAX_HEAD = 16_384
BLOCK_MS = 100
COUNT = 256


class Floor:
    """Which transports watch which job's stream key, and where each job's reads are."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.watchers: dict[str, set[asyncio.Transport]] = {}
        self.positions: dict[str, str] = {}
        self.changed = asyncio.Event()

    def watch(self, job: str, transport: asyncio.Transport) -> str:
        key = self.keys.events(job)
        if key not in self.watchers:
            self.watchers[key] = set()
            self.positions[key] = "0-0"
            self.changed.set()
        self.watchers[key].add(transport)
        return key

    def unwatch(self, key: str, transport: asyncio.Transport) -> None:
        watchers = self.watchers.get(key)
        if watchers is not None:
            watchers.discard(transport)
            if not watchers:
                del self.watchers[key], self.positions[key]

    async def run(self, reader: XReader, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.watchers:
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 1.0)
                continue
            keys = list(self.positions)
            reply = await reader.read(keys, [self.positions[k] for k in keys], count=COUNT, block_ms=BLOCK_MS)
            for key, items in streams_of(reply):
                if key not in self.positions or not items:
                    continue
                entries = [entry_of(entry_id, fields) for entry_id, fields in items]
                self.positions[key] = entries[-1].id
                data = b"".join([e.chunk for e in entries])
                for transport in self.watchers[key]:
                    transport.write(data)


class Client(asyncio.Protocol):
    """One SSE client: its request head read, then only written to."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.key: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.key is not None or self.transport is None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > MAX_HEAD:
                self.transport.close()
            return
        parts = self.head.split(b" ", 2)
        path = parts[1].decode("latin-1") if len(parts) > 2 else ""
        job = path.removeprefix("/v1/jobs/").removesuffix("/events")
        if not path.startswith("/v1/jobs/") or "/" in job or not job:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(HEAD + chunked(b"retry: 1000\n\n"))
        self.key = self.floor.watch(job, self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None and self.transport is not None:
            self.floor.unwatch(self.key, self.transport)


async def _main(args: argparse.Namespace) -> None:
    raise_nofile()
    redis: Any = Redis.from_url(args.redis_url, socket_timeout=BLOCK_MS / 1000 + 10.0)
    floor = Floor(Keys(args.prefix))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(floor), "127.0.0.1", args.port, backlog=4096)
    print(f"floor gateway listening on 127.0.0.1:{args.port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = XReader(redis)
    task = asyncio.create_task(floor.run(reader, stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    server.close()
    await reader.aclose()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # the gateway runs on uvloop where it is installed: so does its floor
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
