"""Redis connections that keep the cancel Python 3.11's ``asyncio.wait_for`` loses (a correctness
guard, not a fast path; here because it reaches into redis-py's cluster client).

redis-py's asyncio ``Connection.send_packed_command`` writes every command through
``asyncio.wait_for(self._send_packed_command(...), self.socket_timeout)`` whenever a socket timeout
is set (tokenwire always sets one; redis-py 8 defaults to 5 s). On Python 3.11 ``wait_for`` runs the
write as a task of its own, and when the caller is cancelled after that task has finished but before
the caller resumes, it returns the write's result instead of raising (CPython gh-86296; 3.12 rebuilt
``wait_for`` on ``asyncio.timeout``, gh-96764). The write finishes within a loop iteration or two, so
any cancel landing while a command is written is lost: the command's reply is read as usual, the
task runs on with ``cancelling() == 1``, and an ``asyncio.timeout`` expiring then is lost the same
way (seen as the demo's follower reading on after its cancel).

:func:`keep_cancels` gives a client's connections :func:`keeping_cancel`'s class: a call to
``send_packed_command`` (or ``handle_pending_push_notifications``, redis-py's other ``wait_for``)
during which a cancel was requested and not raised raises ``CancelledError`` when it returns, as if
the cancel had landed a moment later in the read, and closes the connection first (the reply is
unread). A call that failed anyway raises ``CancelledError`` from its error. One request, one
``CancelledError``: ``cancelling()`` is left as the cancel left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from asyncio import current_task
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["GUARDED", "keep_cancels", "keeping_cancel"]

GUARDED = ("send_packed_command", "handle_pending_push_notifications")
"""The connection methods that run ``asyncio.wait_for`` (those a class has are guarded)."""

_classes: dict[type, type] = {}


def _guard(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``method``, raising the cancel that arrived during a call if the call did not."""

    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        task = current_task()
        if task is None:
            return await method(self, *args, **kwargs)
        before = task.cancelling()
        try:
            result = await method(self, *args, **kwargs)
        except Exception as exc:
            if task.cancelling() > before:
                raise asyncio.CancelledError from exc
            raise
        if task.cancelling() > before:  # requested during the call, and nothing raised it
            with contextlib.suppress(Exception):
                await self.disconnect(nowait=True)  # a reply is unread: never reuse this socket
            raise asyncio.CancelledError
        return result

    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = method.__doc__
    return guarded


def keeping_cancel(connection_class: type) -> type:
    """A subclass of ``connection_class`` whose :data:`GUARDED` methods keep a cancel (the class
    itself when it already is one). Everything else, ``read_response`` included, is inherited."""
    if getattr(connection_class, "_tokenwire_keeps_cancel", False):
        return connection_class
    kept = _classes.get(connection_class)
    if kept is None:
        body: dict[str, Any] = {"_tokenwire_keeps_cancel": True, "__module__": __name__}
        for name in GUARDED:
            method = getattr(connection_class, name, None)
            if inspect.iscoroutinefunction(method):
                body[name] = _guard(name, method)
        kept = _classes[connection_class] = type(connection_class.__name__, (connection_class,), body)
    return kept


def keep_cancels(client: Any) -> bool:
    """Make every connection ``client`` opens from now on (a ``Redis`` on a pool, or a
    ``RedisCluster``, before its first command) one of :func:`keeping_cancel`'s; whether it could
    (a client of another shape is left as it is, and a warning says so)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        if not isinstance(getattr(pool, "connection_class", None), type):
            return _cannot(client, "its pool has no connection_class")
        pool.connection_class = keeping_cancel(pool.connection_class)
        return True
    # RedisCluster: its nodes (startup nodes now, discovered ones later) take connection_class
    # from the manager's connection_kwargs, which RedisCluster fills and offers no parameter for
    manager = getattr(client, "nodes_manager", None)
    kwargs = getattr(manager, "connection_kwargs", None)
    nodes = getattr(manager, "startup_nodes", None)
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("connection_class"), type):
        return _cannot(client, "no nodes_manager.connection_kwargs['connection_class']")
    classes = [getattr(node, "connection_class", None) for node in (nodes or {}).values()]
    if not isinstance(nodes, dict) or not all(isinstance(c, type) for c in classes):
        return _cannot(client, "no nodes_manager.startup_nodes with a connection_class each")
    kwargs["connection_class"] = keeping_cancel(kwargs["connection_class"])
    for node in nodes.values():
        node.connection_class = keeping_cancel(node.connection_class)
    return True


def _cannot(client: Any, why: str) -> bool:
    import structlog  # here: a producer importing worker.Client loads no logging library

    structlog.get_logger("tokenwire.redis").warning(
        "a cancel landing while a Redis command is written may be lost (Python 3.11 wait_for)",
        client=type(client).__qualname__,
        why=why,
    )
    return False
