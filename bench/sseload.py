"""The gateway benchmark's clients: thousands of SSE connections held by one process (aiohttp), each
following one job's ``/v1/jobs/{id}/events``, recording for every ``token`` event when it arrived
and how long after it became visible on Redis.

An SSE event's ``id:`` is its Redis entry id, whose first part is the Redis server's clock (ms) when
the entry was added: Redis-visible → client-received is the arrival time minus that, less half a
millisecond (the id's resolution: the latency is within ±0.5 ms). Everything runs on 127.0.0.1, so
the two clocks are one.

Connections are opened ``--open-concurrency`` at a time. ``--ready-file`` is written once every
connection has had its response headers (or failed); ``OUT.json`` counts how many are open. On
SIGTERM/SIGINT (or after ``--max-seconds``) it writes ``OUT.recv`` / ``OUT.lat`` (the subscriber's
format, bench/window.py) and ``OUT.json``, then exits. The soft ``RLIMIT_NOFILE`` is raised to the
hard limit first.

``python -m bench.sseload --base http://127.0.0.1:P --jobs-file F --watchers N --out PATH ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["TOKEN_FRAME", "Recorder", "main", "raise_nofile"]

# id: <ms>-<seq>\nevent: token\n   (worker/gateway/sse.py's frame order; the naive gateway's too)
TOKEN_FRAME = re.compile(rb"(?:^|\n)id: ?(\d{1,15})-\d+\nevent: ?token\n")
_FRAME_END = b"\n\n"
_TOKEN_LINE = b"\nevent: token\n"
_MAX_CARRY = 1 << 20  # bytes of an unfinished frame kept between reads at most


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Recorder:
    """Arrival times and latencies (µs) of token events, and the connections' fates."""

    def __init__(self) -> None:
        self.recv = array("q")
        self.lat = array("q")
        self.opened = 0
        self.failed = 0
        self.closed = 0  # opened, then ended by the server or the network before the stop
        self.statuses: dict[str, int] = {}
        self.bytes = 0

    def scan(self, now_us: int, data: bytes) -> None:
        # bytes.find, not a regex over every byte: this process holds every client, and must not be
        # what limits the run (TOKEN_FRAME says the same, for one frame)
        find, recv, lat = data.find, self.recv.append, self.lat.append
        at = find(_TOKEN_LINE)
        while at >= 0:
            head = data.rfind(b"id:", 0, at)
            dash = data.find(b"-", head, at) if head >= 0 else -1
            if dash > 0 and (head == 0 or data[head - 1] == 10):  # b"\n"
                ms = data[head + 3 : dash].strip()
                if ms.isdigit() and len(ms) <= 15:
                    recv(now_us)
                    lat(now_us - int(ms) * 1000 - 500)
            at = find(_TOKEN_LINE, at + len(_TOKEN_LINE))

    def save(self, out: Path, extra: dict[str, Any]) -> None:
        with out.with_suffix(".recv").open("wb") as fh:
            self.recv.tofile(fh)
        with out.with_suffix(".lat").open("wb") as fh:
            self.lat.tofile(fh)
        counters = {
            "tokens": len(self.recv),
            "opened": self.opened,
            "failed": self.failed,
            "closed": self.closed,
            "statuses": self.statuses,
            "bytes": self.bytes,
            **extra,
        }
        out.with_suffix(".json").write_text(json.dumps(counters))


async def _watch(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    recorder: Recorder,
    gate: asyncio.Semaphore,
    headers_in: asyncio.Event,
    pending: list[int],
) -> None:
    opened = False
    try:
        async with gate:
            response = await session.get(url, headers=headers)
        status = str(response.status)
        recorder.statuses[status] = recorder.statuses.get(status, 0) + 1
        if response.status != 200:
            recorder.failed += 1
            response.release()
            return
        opened = True
        recorder.opened += 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        recorder.failed += 1
        name = type(exc).__name__
        recorder.statuses[name] = recorder.statuses.get(name, 0) + 1
        return
    finally:
        pending[0] -= 1
        if pending[0] == 0:
            headers_in.set()
    carry = b""
    try:
        async for chunk in response.content.iter_any():
            now_us = time.time_ns() // 1000
            recorder.bytes += len(chunk)
            data = carry + chunk if carry else chunk
            cut = data.rfind(_FRAME_END)
            if cut < 0:
                carry = data[-_MAX_CARRY:]
                continue
            recorder.scan(now_us, data[: cut + 1])
            carry = data[cut + 2 :]
        recorder.closed += 1
        recorder.statuses["closed by the server"] = recorder.statuses.get("closed by the server", 0) + 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        recorder.closed += 1
        name = f"closed: {type(exc).__name__}"
        recorder.statuses[name] = recorder.statuses.get(name, 0) + 1
    finally:
        if opened:
            response.release()


async def _main(args: argparse.Namespace) -> None:
    limit = raise_nofile()
    jobs = [line for line in args.jobs_file.read_text().split() if line]
    base = args.base.rstrip("/")
    urls = [f"{base}/v1/jobs/{job}/events" for job in jobs for _ in range(args.watchers)]
    headers = {"Accept": "text/event-stream"}
    if args.bearer_file is not None:
        headers["Authorization"] = "Bearer " + args.bearer_file.read_text().strip()
    recorder = Recorder()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connector = aiohttp.TCPConnector(limit=0, force_close=True, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=30.0, sock_connect=30.0, sock_read=None)
    headers_in = asyncio.Event()
    pending = [len(urls)]
    if not urls:
        headers_in.set()
    gate = asyncio.Semaphore(args.open_concurrency)
    began = time.monotonic()
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=["User-Agent"]
    ) as session:
        tasks = [
            asyncio.create_task(_watch(session, url, headers, recorder, gate, headers_in, pending))
            for url in urls
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(headers_in.wait(), args.max_seconds)
        open_seconds = time.monotonic() - began
        if args.ready_file is not None:
            args.ready_file.write_text(json.dumps({"opened": recorder.opened, "failed": recorder.failed}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, args.max_seconds - open_seconds))
        open_at_stop = recorder.opened - recorder.closed
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    times = os.times()
    recorder.save(
        args.out,
        {
            "clients": len(urls),
            "open_at_stop": open_at_stop,
            "open_seconds": round(open_seconds, 3),
            "nofile": limit,
            "cpu_seconds": times.user + times.system,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE clients recording per-event latency")
    parser.add_argument("--base", required=True, help="the gateway's base URL (loopback)")
    parser.add_argument("--jobs-file", type=Path, required=True, help="one job id per line")
    parser.add_argument("--watchers", type=int, default=1, help="connections per job")
    parser.add_argument("--bearer-file", type=Path, help="a file holding the tenant key (Bearer)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--open-concurrency", type=int, default=200, help="connections opening at once")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    if not args.base.startswith(("http://127.0.0.1:", "http://[::1]:", "http://localhost:")):
        parser.error("--base must be a loopback URL")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
