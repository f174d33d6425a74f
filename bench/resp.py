"""A minimal RESP2 connection (asyncio streams + hiredis): the cheapest way to talk to Redis from
Python, used where the benchmark must not measure a client library (the floor, the subscriber)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import hiredis

__all__ = ["RawRedis", "bulk", "encode_command", "xadd_prefix"]

_READ_SIZE = 1 << 16


def bulk(arg: bytes) -> bytes:
    """One RESP bulk string: ``$len\r\narg\r\n``."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def encode_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def xadd_prefix(key: bytes, maxlen: int) -> bytes:
    """``XADD key MAXLEN ~ maxlen * event`` without the payload: append ``$len\\r\\npayload\\r\\n``."""
    args = (b"XADD", key, b"MAXLEN", b"~", str(maxlen).encode(), b"*", b"event")
    return b"*%d\r\n" % (len(args) + 1) + b"".join(bulk(a) for a in args)


class RawRedis:
    """One connection. :meth:`call` sends a command and waits for its reply; :meth:`send` only
    writes (pipelined commands whose replies :meth:`drain_replies` reads in order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 10.0) -> RawRedis:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def reply(self) -> Any:
        while True:
            value = self.parser.gets()
            if value is not False:
                return value
            data = await self.reader.read(_READ_SIZE)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.parser.feed(data)

    async def call(self, command: bytes) -> Any:
        self.writer.write(command)
        return await self.reply()

    def send(self, commands: bytes) -> None:
        self.writer.write(commands)

    async def drain_replies(self, count: int) -> int:
        """Read ``count`` replies; returns how many were errors."""
        errors = 0
        for _ in range(count):
            if isinstance(await self.reply(), hiredis.ReplyError):
                errors += 1
        return errors

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)
