"""Replies taken in bulk from redis-py's hiredis reader (component ``redis_reply``).

A connection's parser (``_parser``, redis-py's ``_AsyncHiredisParser`` from the private module
``redis._parsers.hiredis``) holds a ``hiredis.Reader`` (``_reader``); taking the replies of a
pipelined batch from it directly, reading the socket only when it runs dry (``read_from_socket``),
costs a fraction of redis-py's public ``read_response`` per reply (~4 µs, about what Redis spends
on an XADD). The connection is left as ``read_response`` would leave it: push frames go to the
parser's ``handle_push_response``, a connection error is raised. When :func:`probe` finds any of
this changed, :func:`bulk_reader` returns ``None`` and the caller uses ``read_response``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker.fastpath import Probe, Remembered

__all__ = ["COMPONENT", "BulkReader", "bulk_reader", "probe", "probe_client"]

COMPONENT = "redis_reply"
_PARSERS = "redis._parsers.hiredis"
_CONNECTION = "redis.asyncio.connection"
_PUSH: type = getattr(hiredis, "PushNotification", None) or type("NoPush", (), {})
"""hiredis's type of RESP3 push frames (hiredis ≥ 3.2; before, none reach a reader)."""


class _Found(NamedTuple):
    parser_class: type
    read_response: object  # redis-py's own ``AbstractConnection.read_response``
    not_enough_data: object  # the reader's "no complete reply buffered" sentinel


class BulkReader:
    """The replies of one pipelined batch, from a stock connection's hiredis reader."""

    __slots__ = ("_gets", "_nothing", "_push", "_refill")

    def __init__(
        self,
        gets: Callable[[], object],
        refill: Callable[[], Awaitable[object]],
        push: Callable[[Any], Awaitable[object]],
        nothing: object,
    ) -> None:
        self._gets, self._refill, self._push, self._nothing = gets, refill, push, nothing

    async def read(self, count: int) -> list[object]:
        """``count`` replies in order, errors as :class:`ResponseError` values."""
        gets, nothing = self._gets, self._nothing
        out: list[object] = []
        append = out.append
        while len(out) < count:
            reply = gets()
            if type(reply) is bytes:  # the usual reply (an XADD's entry id) first
                append(reply)
            elif reply is nothing:
                await self._refill()
            elif isinstance(reply, _PUSH):  # not a reply: handled as read_response handles it
                await self._push(reply)
            elif isinstance(reply, RedisConnectionError):  # e.g. "max number of clients reached"
                raise reply
            else:
                append(reply)
        return out


def probe() -> Probe:
    """Look for the internals, run a parser on a few bytes (no socket), remember the answer."""
    return _memo.probe()


def _active() -> _Found | None:
    return _memo.found()


def probe_client(client: Redis) -> Probe:
    """:func:`probe`, and whether ``client``'s connections are ones :func:`bulk_reader` takes."""
    library = probe()
    found = _memo.found()
    if found is None:
        return library
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return Probe(COMPONENT, False, "a Redis Cluster client: replies go through redis-py's pipeline")
    connection_class = getattr(pool, "connection_class", None)
    if getattr(connection_class, "read_response", None) is not found.read_response:
        name = getattr(connection_class, "__qualname__", repr(connection_class))
        return Probe(COMPONENT, False, f"the client's connections ({name}) have their own read_response")
    connection_kwargs = getattr(pool, "connection_kwargs", {})
    parser_class = connection_kwargs.get("parser_class") or getattr(
        importlib.import_module(_CONNECTION), "DefaultParser", None
    )
    if not (isinstance(parser_class, type) and issubclass(parser_class, found.parser_class)):
        name = getattr(parser_class, "__qualname__", repr(parser_class))
        return Probe(COMPONENT, False, f"the client's connections parse with {name}, not hiredis")
    return library


def bulk_reader(conn: Any) -> BulkReader | None:
    """A :class:`BulkReader` on a stock redis-py connection with a hiredis parser, else ``None``
    (fakeredis, the pure-Python parser, a custom connection, or internals :func:`probe` did not
    find)."""
    found = _active()
    if found is None or getattr(type(conn), "read_response", None) is not found.read_response:
        return None
    parser: Any = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not (issubclass(type(parser), found.parser_class) and isinstance(reader, hiredis.Reader)):
        return None
    push = parser.handle_push_response
    return BulkReader(reader.gets, parser.read_from_socket, push, found.not_enough_data)


def _resolve() -> tuple[_Found | None, str]:
    try:
        parsers, connection = importlib.import_module(_PARSERS), importlib.import_module(_CONNECTION)
    except ImportError as exc:
        return None, f"cannot import {exc.name or 'a module'} ({exc})"
    parser_class = getattr(parsers, "_AsyncHiredisParser", None)
    if not isinstance(parser_class, type):
        return None, f"{_PARSERS}._AsyncHiredisParser is missing"
    nothing = getattr(parsers, "NOT_ENOUGH_DATA", None)
    if nothing is None:
        return None, f"{_PARSERS}.NOT_ENOUGH_DATA is missing"
    read_response = getattr(getattr(connection, "AbstractConnection", None), "read_response", None)
    if read_response is None:
        return None, f"{_CONNECTION}.AbstractConnection.read_response is missing"
    for name in ("read_from_socket", "handle_push_response"):
        if not inspect.iscoroutinefunction(getattr(parser_class, name, None)):
            return None, f"{_PARSERS}._AsyncHiredisParser.{name} is missing or not a coroutine function"
    try:
        problem = _self_test(parser_class, nothing)
    except Exception as exc:  # any failure of a private API means: do not use it
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        return None, f"{_PARSERS}._AsyncHiredisParser fails the self-test: {problem}"
    return _Found(parser_class, read_response, nothing), "replies are taken in bulk from the hiredis reader"


def _self_test(parser_class: type, nothing: object) -> str | None:
    """A parser attached to a stand-in connection (no socket) reads a reply, an error and a push
    frame as :meth:`BulkReader.read` expects, then says it needs more data."""
    parser = parser_class(socket_read_size=65536)
    parser.on_connect(SimpleNamespace(_reader=None, encoder=SimpleNamespace(decode_responses=False)))
    reader = getattr(parser, "_reader", None)
    if not isinstance(reader, hiredis.Reader):
        return f"its _reader is {type(reader).__name__}, not hiredis.Reader"
    reader.feed(b"$3\r\n1-1\r\n-ERR probe\r\n>2\r\n$7\r\nmessage\r\n$1\r\nx\r\n")
    got = [reader.gets() for _ in range(4)]
    if got[0] != b"1-1" or not isinstance(got[1], ResponseError) or got[3] is not nothing:
        return f"its reader gave {got!r}"
    if hasattr(hiredis, "PushNotification") and not isinstance(got[2], _PUSH):
        return f"its reader gave {got[2]!r} for a push frame"
    return None


_memo: Remembered[_Found] = Remembered(COMPONENT, _resolve)
