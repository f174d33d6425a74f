"""The producer and subscriber API: all another service needs is a Redis URL.

::

    client = Client.from_url("redis://localhost:6379/0")
    job_id = await client.enqueue(model="meta-llama/Meta-Llama-3-8B-Instruct", input="Hello")
    async for item in client.subscribe(job_id):
        print(item.id, item.event)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.asyncio import Redis

from .events import Done, Error, Event, Start, decode_event, is_terminal
from .jobs import Job, encode_job, new_job_id
from .keys import Keys, as_text
from .store import JobStore

__all__ = ["Client", "JobNotFound", "Received", "SubscriptionTimeout"]


class JobNotFound(LookupError):
    """No job with this id: never enqueued, or its keys expired after it ended."""


class SubscriptionTimeout(TimeoutError):
    """The job did not reach its terminal event in time."""


class Received(msgspec.Struct, frozen=True):
    """An event and its stream id (pass the id as ``after=`` to resume right after it).

    ``restarted`` is True on a ``start`` whose attempt is higher than one seen before: discard the
    tokens of the earlier attempt. ``raw`` is the event's JSON exactly as stored.
    """

    id: str
    event: Event
    restarted: bool = False
    raw: bytes = b""

    @property
    def type(self) -> str:
        return type(self.event).__name__.lower()


class Client:
    """Enqueue jobs and follow their event streams. Holds no connection until used."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "tokenwire",
        block_ms: int = 2000,
        job_ttl_seconds: int = 86400,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.block_ms = block_ms
        self.store = JobStore(redis, self.keys, running_ttl_seconds=job_ttl_seconds)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tokenwire", cluster: bool = False, **kwargs: Any) -> Client:
        """A client for ``url``; ``cluster=True`` when it names a node of a Redis Cluster."""
        from .connect import redis_client

        block_ms = int(kwargs.pop("block_ms", 2000))
        redis = redis_client(url, block_seconds=block_ms / 1000, cluster=cluster)
        return cls(redis, prefix=prefix, block_ms=block_ms, **kwargs)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def enqueue(self, job: Job | None = None, **fields: Any) -> str:
        """Enqueue ``job`` (or a job built from keyword fields); returns its id.

        Enqueueing an id that already exists returns that id and enqueues nothing.
        """
        if job is None:
            job = msgspec.convert(fields, Job)
        elif fields:
            raise TypeError("pass a Job or keyword fields, not both")
        if job.id is None:
            job = msgspec.structs.replace(job, id=new_job_id())
        job_id = job.id
        assert job_id is not None
        created, state, entry = await self.store.create(job_id, job.model, job.api, job.provider or "")
        if not created and (entry or state != "queued"):
            return job_id
        entry_id = await self.redis.xadd(self.keys.jobs, {"job": encode_job(job)})
        await self.store.record_entry(job_id, as_text(entry_id))
        return job_id

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> str:
        """Cancel a job. A queued job ends at once; a running one's worker closes its upstream
        request and writes ``cancelled``. Returns ``cancelled``, ``requested``, ``terminal`` (it had
        already ended) or ``unknown``."""
        outcome = await self.store.cancel(job_id, reason)
        if outcome == "requested":
            await self.redis.publish(f"{self.keys.prefix}:cancel", f"{job_id}\n{reason}")
        return outcome

    async def status(self, job_id: str) -> dict[str, str] | None:
        """The job's state hash (``state``, ``attempt``, ``tokens``, ...), or None if unknown."""
        return await self.store.status(job_id)

    async def subscribe(
        self, job_id: str, *, after: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[Received]:
        """Every event of the job from the first (or from after event id ``after``), live, ending
        after the terminal event. Raises :class:`JobNotFound` for an unknown or expired job and
        :class:`SubscriptionTimeout` when ``timeout`` seconds pass first."""
        key = self.keys.events(job_id)
        last = after or "0-0"
        attempt = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block = self._block_for(deadline)
            reply: Any = await self.redis.xread({key: last}, count=512, block=block)
            if not reply:
                await self._check_alive(job_id, deadline)
                continue
            for entry_id, fields in reply[0][1]:
                last = as_text(entry_id)
                raw = fields[b"event"]
                event = decode_event(raw)
                restarted = isinstance(event, Start) and attempt > 0 and event.attempt > attempt
                attempt = max(attempt, event.attempt)
                yield Received(last, event, restarted, raw)
                if is_terminal(event):
                    return

    def _block_for(self, deadline: float | None) -> int:
        if deadline is None:
            return self.block_ms
        left = deadline - time.monotonic()
        return max(1, min(self.block_ms, int(left * 1000)))

    async def _check_alive(self, job_id: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise SubscriptionTimeout(f"job {job_id!r} did not end in time")
        if not await self.redis.exists(self.keys.state(job_id), self.keys.events(job_id)):
            raise JobNotFound(f"no job {job_id!r}: never enqueued, or expired after it ended")

    async def result(self, job_id: str, *, timeout: float | None = None) -> Done | Error | Event:
        """Wait for the job's terminal event and return it (``Done``, ``Error`` or ``Cancelled``)."""
        async for item in self.subscribe(job_id, timeout=timeout):
            if is_terminal(item.event):
                return item.event
        raise AssertionError("unreachable: subscribe ends on the terminal event")  # pragma: no cover
