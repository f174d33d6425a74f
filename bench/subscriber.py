"""The subscriber: follows the event streams of the jobs under test with ``XREAD BLOCK``, many streams
per call, and records for every token event when it became visible and how long after the upstream
wrote it.

The upstream's write time rides in the token id (the simulator's ``stamp=1`` directive: integer
microseconds since the epoch); tokenwire carries it as ``token_id``, the naive worker as
``token_id``, the floor as the raw payload's ``"token":{"id":...}``. Every token event is counted;
those with a stamp also give a latency.

Keys are split into groups of ``--keys-per-call``, each followed by its own connection. After a
reply a group waits until ``--min-interval-ms`` have passed since its call began, so that at low
rates a call returns a batch rather than one event (this adds at most that interval to a latency).

On SIGTERM or SIGINT (or after ``--max-seconds``) it writes ``OUT.recv`` and ``OUT.lat`` (native
int64 arrays: receive time in µs since the epoch, latency in µs or -1 without a stamp) and
``OUT.json`` (counters), then exits.

``python -m bench.subscriber --port P --keys-file F --out PATH [--ready-file F] ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import time
from array import array
from pathlib import Path
from typing import Any

from bench.resp import RawRedis, bulk, encode_command

__all__ = ["STAMP", "Recorder", "main"]

# "token_id":123 (tokenwire, naive) or "token":{"id":123 (raw native payload); a stamp has 13+ digits.
STAMP = re.compile(rb'"(?:token_)?id": ?(-?\d+|null)')
_MIN_STAMP_DIGITS = 13
_COUNT = b"10000"
_BLOCK_MS = b"500"


class Recorder:
    """Receive times and latencies of token events, in µs."""

    def __init__(self) -> None:
        self.recv = array("q")
        self.lat = array("q")
        self.other = 0  # events without a token (start, done)
        self.calls = 0

    def add(self, now_us: int, payload: bytes) -> None:
        found = STAMP.search(payload)
        if found is None:
            self.other += 1
            return
        digits = found[1]
        self.recv.append(now_us)
        self.lat.append(now_us - int(digits) if len(digits) >= _MIN_STAMP_DIGITS else -1)

    def save(self, out: Path, extra: dict[str, Any]) -> None:
        with out.with_suffix(".recv").open("wb") as fh:
            self.recv.tofile(fh)
        with out.with_suffix(".lat").open("wb") as fh:
            self.lat.tofile(fh)
        counters = {"tokens": len(self.recv), "other": self.other, "calls": self.calls, **extra}
        out.with_suffix(".json").write_text(json.dumps(counters))


class Group:
    """One connection following up to ``--keys-per-call`` streams."""

    def __init__(self, conn: RawRedis, keys: list[bytes], recorder: Recorder) -> None:
        self.conn = conn
        self.recorder = recorder
        self.index = {key: i for i, key in enumerate(keys)}
        self.ids = [b"0-0"] * len(keys)
        fixed = encode_command(b"XREAD", b"COUNT", _COUNT, b"BLOCK", _BLOCK_MS, b"STREAMS", *keys)
        self.head = b"*%d" % (6 + 2 * len(keys)) + fixed[fixed.index(b"\r\n") :]

    def command(self) -> bytes:
        return self.head + b"".join(bulk(i) for i in self.ids)

    def take(self, reply: Any) -> None:
        now_us = time.time_ns() // 1000
        add = self.recorder.add
        for key, entries in reply:
            for _, fields in entries:
                add(now_us, fields[1])
            self.ids[self.index[key]] = entries[-1][0]

    async def follow(self, stop: asyncio.Event, min_interval: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            reply = await self.conn.call(self.command())
            self.recorder.calls += 1
            if reply:
                self.take(reply)
            wait = min_interval - (loop.time() - started)
            if wait > 0:
                await asyncio.sleep(wait)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="XREAD BLOCK subscriber recording per-event latency")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-file", type=Path, required=True, help="one event-stream key per line")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--keys-per-call", type=int, default=1000)
    parser.add_argument("--min-interval-ms", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    return parser.parse_args()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def _main(args: argparse.Namespace) -> None:
    keys = [line.encode() for line in args.keys_file.read_text().split() if line]
    size = max(1, args.keys_per_call)
    recorder = Recorder()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    conns = [await RawRedis.connect(args.host, args.port) for _ in range(0, len(keys), size)]
    groups = [Group(conn, keys[i * size : (i + 1) * size], recorder) for i, conn in enumerate(conns)]
    if args.ready_file is not None:
        args.ready_file.write_text("ready\n")
    tasks = [asyncio.create_task(g.follow(stop, args.min_interval_ms / 1000)) for g in groups]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=2.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    recorder.save(args.out, {"groups": len(groups), "cpu_seconds": _cpu_seconds()})
    for conn in conns:
        await conn.close()


def main() -> None:
    asyncio.run(_main(_parse_args()))


if __name__ == "__main__":
    main()
