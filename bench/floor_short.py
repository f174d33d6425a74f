"""The short-job floor: the least work that turns a queued job into its events and its ack, with
the libraries tokenwire is built on (asyncio, aiohttp, redis-py's reader, hiredis).

Jobs are read from ``{P}:jobs`` through the ``workers`` group in batches (as :mod:`bench.jobloop`
reads them); per job, one aiohttp request whose SSE bytes are cut into raw ``data:`` payloads
(:func:`bench.floor.split_events`), each written as it arrives as a pipelined ``XADD`` (the payload
as is: no parsing, no re-encoding), then a ``done`` event and the ``XACK``, pipelined on the same
raw connection, whose replies one reader task counts. No state hash, no start event, no admission,
no lease, no confidence, no log line: what is left is what any Python worker of these libraries
spends per job, the bound under a short job's CPU (``bench/shortjobs.py``'s ``floor`` row).

``python -m bench.floor_short --redis-url URL --sim-url URL [--prefix P] [--max-seconds S]``
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from bench.floor import Writer, run_floor, split_events
from bench.jobloop import EVENTS_MAXLEN, GROUP, BenchJob, parse_args
from bench.resp import bulk, encode_command, xadd_prefix

__all__ = ["main"]


async def _run_job(session: aiohttp.ClientSession, writer: Writer, ack: bytes, job: BenchJob) -> None:
    head = xadd_prefix(job.events_key.encode(), EVENTS_MAXLEN)
    buffer = b""
    tokens = 0
    async with session.post(job.url, json=job.body) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_any():
            payloads, buffer = split_events(buffer + chunk)
            if payloads:
                writer.send(b"".join(head + bulk(p) for p in payloads), len(payloads))
                tokens += sum(b'"token"' in p for p in payloads)
    done = json.dumps({"type": "done", "job_id": job.job_id, "tokens": tokens}).encode()
    await writer.write(head + bulk(done) + ack + bulk(job.entry_id), 2)


async def _main() -> None:
    args = parse_args("the short-job floor: one aiohttp request, raw pipelined XADDs and XACK per job")
    ack_head = encode_command(b"XACK", f"{{{args.prefix}}}:jobs".encode(), GROUP.encode())
    ack = b"*4" + ack_head[2:]  # the entry id follows as a fourth argument

    async def run_job(session: aiohttp.ClientSession, writer: Writer, job: BenchJob) -> None:
        await _run_job(session, writer, ack, job)

    await run_floor(args, run_job, what="floor_short", ack=False)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
