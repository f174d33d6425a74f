"""The worker process's lifecycle: read as many jobs as there are free slots, run each as its own
task, and on stop let in-flight jobs finish within the drain grace.

No I/O happens in the constructor and no signal handler is installed here: the CLI owns signals and
sets the ``stop`` event; embedders cancel or set it themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import httpx
import structlog
from redis.asyncio import Redis

from .keys import Keys
from .publisher import Publisher
from .queue import Delivery, JobQueue
from .runner import Adapter, Runner
from .settings import Settings
from .store import JobStore
from .upstream.native import NativeAdapter

__all__ = ["Worker", "default_adapters", "default_consumer_name"]

log = structlog.get_logger("tokenwire.worker")


def default_consumer_name() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in ``tokenwire stats``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def default_adapters() -> dict[str, Adapter]:
    return {"native": NativeAdapter()}


class Worker:
    """A worker: one consumer in the ``workers`` group, up to ``concurrency`` jobs in flight."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        reader: Redis,
        http: httpx.AsyncClient,
        adapters: dict[str, Adapter] | None = None,
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.consumer = consumer or settings.consumer_name or default_consumer_name()
        self.queue = JobQueue(redis, reader, self.keys, self.consumer, dead_maxlen=settings.dead_maxlen)
        self.store = JobStore(
            redis,
            self.keys,
            output_ttl_seconds=settings.output_ttl_seconds,
            running_ttl_seconds=settings.running_ttl_seconds,
            events_maxlen=settings.events_maxlen,
        )
        self.publisher = Publisher(redis, maxlen=settings.events_maxlen)
        self.runner = Runner(
            settings=settings,
            store=self.store,
            queue=self.queue,
            publisher=self.publisher,
            http=http,
            adapters=adapters or default_adapters(),
        )
        self.inflight: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve jobs until ``stop`` is set, then drain and return."""
        log.info(
            "worker starting",
            consumer=self.consumer,
            redis=self.settings.redacted_redis_url(),
            concurrency=self.settings.concurrency,
            stream=self.keys.jobs,
        )
        await self.queue.ensure_group()
        flusher = asyncio.create_task(self.publisher.run(), name="tokenwire-publisher")
        self.ready.set()
        try:
            await self._serve(stop)
            await self._drain()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self.publisher.flush()
        log.info("worker stopped", consumer=self.consumer)

    async def _serve(self, stop: asyncio.Event) -> None:
        block_ms = int(self.settings.block_seconds * 1000)
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = self.settings.concurrency - len(self.inflight)
                if free <= 0:
                    await asyncio.wait({stopping, *self.inflight}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                deliveries = await self._read(free, block_ms, stopping)
                for delivery in deliveries:
                    self._spawn(delivery)
        finally:
            stopping.cancel()

    async def _read(self, count: int, block_ms: int, stopping: asyncio.Task[bool]) -> list[Delivery]:
        read = asyncio.create_task(self.queue.read(count, block_ms))
        await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if read.done():
            return read.result()
        read.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read
        await self.queue.reset_reader()
        return []

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._handle(delivery), name=f"job-{delivery.entry_id}")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self.runner.handle(delivery)
        except asyncio.CancelledError:
            log.warning("job interrupted", entry=delivery.entry_id)
            raise
        except Exception:
            log.exception("job crashed; it stays pending for another delivery", entry=delivery.entry_id)

    async def _drain(self) -> None:
        if not self.inflight:
            return
        log.info("draining", inflight=len(self.inflight), grace=self.settings.drain_grace_seconds)
        _, pending = await asyncio.wait(set(self.inflight), timeout=self.settings.drain_grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("drain grace over: unfinished jobs left pending", count=len(pending))
