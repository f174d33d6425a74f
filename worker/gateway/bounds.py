"""What one request may cost the gateway: its refusals, its body's deadline, its Redis deadline.

A request's head must arrive within :data:`worker.gateway.server.HEAD_TIMEOUT`; its body within
:data:`BODY_SECONDS` more (:func:`read_body`: a client sending it slowly, or never, is answered 408
and its connection closed, so it holds no handler nor buffer longer); a body that cannot be decoded
as its ``Content-Encoding`` or ``Transfer-Encoding`` says is a 400, never a 500. The Redis work of a
request runs within :data:`REDIS_SECONDS` (:func:`redis_deadline`): a Redis that stops answering
(frozen, overloaded, its network gone quiet) is a 503 with ``Retry-After`` then, instead of the
40 s and more of the clients' socket timeouts and retries (a pooled connection's connect is retried
inside each command's retry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["BODY_SECONDS", "REDIS_SECONDS", "Refused", "read_body", "redis_deadline"]

BODY_SECONDS: Final = 30.0
"""The longest a request's body may take to arrive, once its head has (``max_payload_bytes`` in
this time is 35 KB/s at the 1 MiB default)."""

REDIS_SECONDS: Final = 5.0
"""The longest a request waits on Redis: its answer, or the next step of a stream's replay."""


class Refused(Exception):
    """A request answered with an error: ``status``, a ``code`` and a message naming what was wrong.
    ``close``: the connection closes after the answer (what is left of the request cannot be read)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.close = close


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request's body, read within :data:`BODY_SECONDS`; :class:`Refused` (408, 413 or 400)
    when it is late, over ``max_bytes`` (the application's ``client_max_size``) or undecodable."""
    try:
        async with asyncio.timeout(BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        raise Refused(
            408, "body_timeout", f"the body did not arrive within {BODY_SECONDS:g} s", close=True
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "payload_too_large", f"the body is over max_payload_bytes={max_bytes}") from None
    except web.RequestPayloadError as exc:
        # aiohttp's reason is on the parser's error (the cause): e.g. "Can not decode
        # content-encoding: gzip"; its first line only, bounded
        reason = str(getattr(exc.__cause__, "message", "") or "").strip().splitlines()
        why = f": {reason[0][:120]}" if reason else ""
        raise Refused(
            400, "bad_body", f"the body cannot be read as its headers describe it{why}", close=True
        ) from None


@contextlib.asynccontextmanager
async def redis_deadline() -> AsyncIterator[None]:
    """Redis work bounded by :data:`REDIS_SECONDS`: past it, a :class:`redis.exceptions.TimeoutError`
    (which the gateway answers 503, or ends a stream with a comment saying to reconnect). The
    commands cut short are cancelled: redis-py drops a connection whose reply it did not read."""
    seconds = REDIS_SECONDS
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise  # another timer's, inside
        raise RedisTimeoutError(f"Redis did not answer within {seconds:g} s") from None
