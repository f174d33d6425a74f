"""The floor: the least work that moves upstream events into Redis. Per job, read the SSE bytes
with aiohttp; per read, cut out the raw ``data:`` payloads and write one pipelined batch of
``XADD key MAXLEN ~ N * event <payload>`` on a shared raw RESP connection, whose replies a
single reader task counts. No parsing, no re-encoding, no waiting for replies per job.

``python -m bench.floor --redis-url URL --sim-url URL [--prefix P] [--max-seconds S]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
from redis.asyncio import Redis

from bench.jobloop import EVENTS_MAXLEN, BenchJob, parse_args, serve_jobs
from bench.resp import RawRedis, bulk, xadd_prefix

__all__ = ["Writer", "main", "run_floor", "split_events"]

_HIGH_WATER = 1 << 20  # bytes buffered towards Redis before a job waits for the socket
_SEPARATOR = b"\n\n"
_DATA = b"data: "


class Writer:
    """Pipelined XADDs on one connection; replies are read (and errors counted) as they come."""

    def __init__(self, conn: RawRedis) -> None:
        self.conn = conn
        self.sent = 0
        self.errors = 0

    async def read_replies(self) -> None:
        while True:
            self.errors += await self.conn.drain_replies(1)

    def send(self, commands: bytes, count: int) -> None:
        self.conn.send(commands)
        self.sent += count

    async def write(self, commands: bytes, count: int) -> None:
        self.send(commands, count)
        transport = self.conn.writer.transport
        if transport.get_write_buffer_size() > _HIGH_WATER:
            await self.conn.writer.drain()


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete events' ``data`` payloads, and the incomplete rest of the buffer."""
    parts = buffer.split(_SEPARATOR)
    rest = parts.pop()
    return [p[len(_DATA) :] for p in parts if p.startswith(_DATA)], rest


async def _run_job(session: aiohttp.ClientSession, writer: Writer, job: BenchJob) -> None:
    head = xadd_prefix(job.events_key.encode(), EVENTS_MAXLEN)
    buffer = b""
    async with session.post(job.url, json=job.body) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_any():
            payloads, buffer = split_events(buffer + chunk)
            if payloads:
                commands = b"".join(head + bulk(p) for p in payloads)
                await writer.write(commands, len(payloads))


RunJob = Callable[[aiohttp.ClientSession, Writer, BenchJob], Awaitable[None]]


async def run_floor(args: argparse.Namespace, run_job: RunJob, *, what: str, ack: bool = True) -> None:
    """Serve jobs with ``run_job`` on one aiohttp session and one raw RESP connection whose replies
    a reader task counts (``ack=False``: ``run_job`` sends each job's ``XACK`` itself)."""
    where = urlsplit(args.redis_url)
    conn = await RawRedis.connect(where.hostname or "127.0.0.1", where.port or 6379)
    writer = Writer(conn)
    replies = asyncio.create_task(writer.read_replies())
    redis = Redis.from_url(args.redis_url)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60.0, sock_connect=10.0)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await serve_jobs(args, redis, lambda job: run_job(session, writer, job), ack=ack)
    finally:
        replies.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await replies
        await conn.close()
        await redis.aclose()
        if writer.errors:
            print(f"{what}: {writer.errors} of {writer.sent} commands failed", file=sys.stderr, flush=True)


async def _main() -> None:
    args = parse_args("the floor: SSE bytes in, pipelined raw XADDs out, nothing else")
    await run_floor(args, _run_job, what="floor")


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
