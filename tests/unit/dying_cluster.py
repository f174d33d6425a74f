"""A Redis Cluster client as the worker's batching code sees it (no ``connection_pool``, a
``pipeline`` run with ``raise_on_error=False``) whose connection dies while replies are read:
redis-py's cluster pipeline then hands back the error as the result of every command read after
it, without retrying them (a CI run under load met this). Everything else is fakeredis's."""

from __future__ import annotations

from typing import Any

import fakeredis
from redis.exceptions import ResponseError


class DiesMidRead:
    """Its first pipeline answers the first ``answered`` commands from fakeredis and ``error`` for
    every later one; the pipelines after it answer everything (the connection came back)."""

    connection_pool = None  # what tells the worker's code this is a cluster client

    def __init__(self, redis: fakeredis.FakeAsyncRedis, answered: int, error: Exception) -> None:
        self.redis, self.answered, self.error = redis, answered, error
        self.sent: list[tuple[Any, ...]] = []
        self.pipelines = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)

    def pipeline(self, transaction: bool) -> DiesMidRead:
        assert not transaction
        self.sent = []
        return self

    async def __aenter__(self) -> DiesMidRead:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def execute_command(self, *args: Any) -> None:
        self.sent.append(args)

    async def execute(self, raise_on_error: bool) -> list[Any]:
        assert not raise_on_error
        self.pipelines += 1
        replies: list[Any] = []
        for i, args in enumerate(self.sent):
            if self.pipelines == 1 and i >= self.answered:
                replies.append(self.error)
                continue
            try:
                replies.append(await self.redis.execute_command(*args))  # type: ignore[no-untyped-call]
            except ResponseError as exc:
                replies.append(exc)
        return replies
