"""The worker process's lifecycle: read as many jobs as there are free slots, run each as its own
task, keep their leases, take over abandoned ones, honour cancellations, and on stop let in-flight
jobs finish within the drain grace, then cancel the rest (waiting a bounded time for them to stop)
and hand them back so a peer takes them at once.

No I/O happens in the constructor and no signal handler is installed here: the CLI owns signals and
sets the ``stop`` event; embedders set it themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .backoff import REDIS, Backoff
from .coalesce import Coalescer
from .fastpath import startup as fast_paths
from .jobs import job_id_of
from .keys import GROUP, Keys, read_cancel_message
from .lease import LeaseKeeper
from .metrics import Metrics, serve_metrics
from .publisher import Publisher
from .queue import Delivery, JobQueue
from .ratelimit import Budgets
from .refusals import OUTAGE, is_outage, refusal
from .runner import Control, Runner
from .settings import Settings
from .stats import collect_stats
from .store import JobStore
from .supervise import Supervisor, cancel_and_wait
from .upstream.adapters import Adapter, default_adapters

__all__ = ["Worker", "default_consumer_name"]

log = structlog.get_logger("tokenwire.worker")


def default_consumer_name() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in ``tokenwire stats``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Job:
    __slots__ = ("control", "delivery", "job_id", "stopping", "task")

    def __init__(self, delivery: Delivery, task: asyncio.Task[None], control: Control) -> None:
        self.delivery = delivery
        self.task = task
        self.control = control
        self.job_id = job_id_of(delivery.payload, delivery.entry_id)
        self.stopping = False  # a stop (Worker._stop_jobs) has waited for it: never again


class Worker:
    """A worker: one consumer in the ``workers`` group, up to ``concurrency`` jobs in flight."""

    abandon_after: float = 5.0
    """Seconds the jobs still running at the end of the drain grace get to stop once cancelled; a
    job whose task has not stopped by then is abandoned (logged, handed back) so a stop is never
    held by one job."""

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
        self.redis = redis
        self.keys = Keys(settings.prefix)
        self.consumer = consumer or settings.consumer_name or default_consumer_name()
        self.coalescer = coalescer = Coalescer(redis)  # the jobs' begin/finish/ack, batched across jobs
        self.queue = JobQueue(
            redis, reader, self.keys, self.consumer, dead_maxlen=settings.dead_maxlen, coalescer=coalescer
        )
        self.store = JobStore(
            redis,
            self.keys,
            output_ttl_seconds=settings.output_ttl_seconds,
            running_ttl_seconds=settings.running_ttl_seconds,
            events_maxlen=settings.events_maxlen,
            coalescer=coalescer,
        )
        self.metrics = Metrics()
        self.publisher = Publisher(redis, maxlen=settings.events_maxlen, on_batch=self.metrics.batch_written)
        self.leases = LeaseKeeper(redis, self.keys, self.consumer, settings.lease_seconds)
        self.budgets = Budgets(redis, self.keys, settings, self.metrics)  # shared provider budgets
        self.runner = Runner(
            settings=settings,
            store=self.store,
            queue=self.queue,
            publisher=self.publisher,
            http=http,
            adapters=adapters or default_adapters(),
            metrics=self.metrics,
            budgets=self.budgets,
        )
        self.supervisor = Supervisor(self.metrics.task_restarts)
        self.jobs: dict[str, _Job] = {}
        self.ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._closing = asyncio.Event()

    @property
    def inflight(self) -> list[asyncio.Task[None]]:
        return [job.task for job in self.jobs.values()]

    @property
    def free(self) -> int:
        return self.settings.concurrency - len(self.jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve jobs until ``stop`` is set, then drain and return."""
        log.info(
            "worker starting",
            consumer=self.consumer,
            redis=self.settings.redacted_redis_url(),
            concurrency=self.settings.concurrency,
            stream=self.keys.jobs,
        )
        probes = fast_paths.probe_all(upstream_transport=self.settings.upstream_transport, redis=self.redis)
        fast_paths.report(probes, self.metrics.fast_path)
        await self._retry_forever("create the consumer group", self.queue.ensure_group, stop)
        endpoints = await self._start_endpoints()
        supervise = self.supervisor.start  # a helper that raises is logged, counted, restarted
        helpers = [
            supervise("heartbeat", self._heartbeat),
            supervise("publisher", self.publisher.run),
            supervise("leases", self.leases.run),
            supervise("budgets", self.budgets.run),
            supervise("reclaim", self._reclaim_loop),
        ]
        listener = supervise("cancel", self._cancel_listener)
        self.ready.set()
        try:
            await self.supervisor.run("serve", lambda: self._serve(stop))
            await self._drain()
        finally:
            await self._stop_jobs()  # none left after a drain; a forced stop leaves them running
            self._closing.set()  # the cancel listener stops by itself; the other helpers are cancelled
            for task in helpers:
                task.cancel()
            _, stuck = await asyncio.wait([*helpers, listener], timeout=5.0)
            for task in stuck:  # bounded: a stop never hangs on a helper
                log.warning("helper did not stop in time; abandoning it", task=task.get_name())
                task.cancel()
            await self.publisher.flush()
            with contextlib.suppress(TimeoutError):  # free this worker's provider slots now, not in a lease
                async with asyncio.timeout(5.0):  # wait_for can lose a cancel (fastpath/redis_cancel)
                    await self.budgets.settled()
            await self.publisher.aclose()
            await self.coalescer.aclose()
            if endpoints is not None:
                await endpoints.cleanup()
        log.info("worker stopped", consumer=self.consumer)

    # -- health and metrics ----------------------------------------------------------------------

    async def _start_endpoints(self) -> web.AppRunner | None:
        port = self.settings.metrics_port
        if not port:
            return None
        host = self.settings.metrics_host
        runner = await serve_metrics(self.metrics, port, host=host, ready=self._not_ready, stale_after=10.0)
        log.info("metrics and health endpoints up", host=host, port=port, paths="/metrics /healthz /readyz")
        return runner

    async def _heartbeat(self) -> None:
        while True:
            self.metrics.beat()
            await asyncio.sleep(1.0)

    async def _not_ready(self) -> str | None:
        """None when every supervised task is up, Redis answers and the consumer group exists;
        else why not."""
        down = self.supervisor.down()
        if down is not None:
            return down
        try:
            stats = await collect_stats(self.redis, self.settings.prefix)
        except RedisError as exc:
            return f"Redis not reachable: {exc}"
        return None if stats["group_exists"] else f"consumer group {GROUP!r} missing"

    async def _observe_queue(self) -> None:
        stats = await collect_stats(self.redis, self.settings.prefix)
        self.metrics.queue_length.set(stats["length"])
        self.metrics.dead_length.set(stats["dead_letters"])
        self.metrics.queue_pending.set(stats["pending"])
        if stats["lag"] is not None:
            self.metrics.queue_lag.set(stats["lag"])

    # -- reading -------------------------------------------------------------------------------

    async def _serve(self, stop: asyncio.Event) -> None:
        block_ms = int(self.settings.block_seconds * 1000)
        stopping = asyncio.create_task(stop.wait())
        backoff = Backoff(REDIS)
        try:
            while not stop.is_set():
                if self.free <= 0:
                    self._slot_freed.clear()
                    waiter = asyncio.create_task(self._slot_freed.wait())
                    await asyncio.wait({stopping, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    continue
                try:
                    deliveries = await self._read(self.free, block_ms, stopping)
                    backoff.succeeded()
                except RedisError as exc:
                    await self._pause_after_error("read the job stream", exc, backoff, stopping)
                    continue
                for delivery in deliveries:
                    self._spawn(delivery)
        finally:
            stopping.cancel()

    async def _read(self, count: int, block_ms: int, stopping: asyncio.Task[bool]) -> list[Delivery]:
        read = asyncio.create_task(self.queue.read(count, block_ms))
        try:
            await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # a forced stop: left reading, it would take jobs nobody works
            await cancel_and_wait(read, RedisError)  # then raises this cancel
            raise
        if read.done():
            return read.result()
        await cancel_and_wait(read, RedisError)
        await self.queue.reset_reader()
        return []

    async def _pause_after_error(
        self, what: str, exc: Exception, backoff: Backoff, stopping: asyncio.Task[bool] | None
    ) -> None:
        """Count a failure and wait as :data:`~worker.backoff.REDIS` says, waking early on stop."""
        delay = backoff.failed()
        log.warning(f"could not {what}; retrying", error=str(exc), retry_in=round(delay, 2))
        if stopping is None:
            await asyncio.sleep(delay)
        else:
            await asyncio.wait({stopping}, timeout=delay)

    async def _retry_forever(self, what: str, op: Callable[[], Awaitable[Any]], stop: asyncio.Event) -> None:
        backoff = Backoff(REDIS)
        while not stop.is_set():
            try:
                await op()
                return
            except RedisError as exc:
                await self._pause_after_error(what, exc, backoff, None)

    # -- jobs ----------------------------------------------------------------------------------

    def _spawn(self, delivery: Delivery) -> None:
        if delivery.entry_id in self.jobs:
            return  # already running here (a reclaim of our own entry)
        control = Control()
        task = asyncio.create_task(self._handle(delivery, control), name=f"job-{delivery.entry_id}")
        self.jobs[delivery.entry_id] = _Job(delivery, task, control)
        self.metrics.inflight.set(len(self.jobs))
        self.leases.hold(
            delivery.entry_id,
            lambda: self._interrupt(delivery.entry_id, "fence"),
            lambda: self._interrupt(delivery.entry_id, "gone"),  # deleted: the job ends itself
        )
        task.add_done_callback(lambda _: self._finished(delivery.entry_id))

    def _finished(self, entry_id: str) -> None:
        self.jobs.pop(entry_id, None)
        self.metrics.inflight.set(len(self.jobs))
        self.leases.release(entry_id)
        self._slot_freed.set()

    def _interrupt(self, entry_id: str, kind: Any, reason: str = "") -> None:
        job = self.jobs.get(entry_id)
        if job is not None and not job.task.done():
            job.control.set(kind, reason)
            job.task.cancel()

    async def _handle(self, delivery: Delivery, control: Control) -> None:
        try:
            await self.runner.handle(delivery, control)
        except asyncio.CancelledError:
            if control.kind == "fence":
                log.warning("job stopped: its lease was lost", entry=delivery.entry_id)
                self.metrics.leases_lost.inc()
                return
            raise
        except Exception:
            log.exception(
                "job crashed; its entry stays pending for another delivery", entry=delivery.entry_id
            )

    # -- reclaim, cancel, drain ------------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        interval = self.settings.reclaim_interval_seconds
        min_idle_ms = int(self.settings.lease_seconds * 1000)
        reap_every = max(1, int(min(60.0, self.settings.consumer_reap_idle_seconds) / interval))
        ticks = 0
        gate = self.leases.gate  # after any sign of an outage, claims wait (lease.ClaimGate)
        failed = False
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            ticks += 1
            try:
                if OUTAGE.waiting:  # a step of this worker is waiting on a refusal now
                    gate.trouble()
                if self.free > 0 and gate.troubled:
                    await self.queue.try_claim()  # a claim that takes nothing: does Redis run claims?
                    gate.answered()
                elif self.free > 0 and gate.open():
                    claimed, _ = await self.queue.reclaim(self.free, min_idle_ms)
                    for delivery in claimed:
                        if delivery.entry_id in self.jobs:
                            continue  # our own job, its renewal late (Redis slow or paused): no takeover
                        self.metrics.takeovers.inc()
                        log.warning(
                            "took over an abandoned job",
                            entry=delivery.entry_id,
                            deliveries=delivery.deliveries,
                        )
                        self._spawn(delivery)
                await self._observe_queue()
                if ticks % reap_every == 0:
                    await self.queue.reap(int(self.settings.consumer_reap_idle_seconds * 1000))
            except RedisError as exc:
                if is_outage(exc):  # (an error of this command alone, NOPERM say, holds nothing off)
                    gate.trouble()
                if not failed or refusal(exc) is None:  # a refusal: once per outage
                    log.warning("reclaim pass failed", error=str(exc))
                failed = True
            else:
                failed = False

    async def _cancel_listener(self) -> None:
        """Cancellation wake-ups arrive on a pub/sub channel; the job's holder checks the job's
        state and acts on them (:meth:`_on_cancel`). Once (re)subscribed, it checks every job in
        flight, so a request made while it was not listening is honoured too.

        It polls with a short timeout and stops on ``_closing``, so it never has to be cancelled in
        the middle of a socket read (which could leave the pub/sub connection's close hanging).
        """
        backoff = Backoff(REDIS)
        while not self._closing.is_set():
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.cancel)
                    backoff.succeeded()
                    if pubsub.connection is not None:  # redis-py reconnects it by itself too
                        pubsub.connection.register_connect_callback(self._listener_reconnected)
                    await self._check_cancel_requests()
                    while not self._closing.is_set():
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                        if message is not None:
                            await self._on_cancel(message.get("data"))
            except RedisError as exc:
                await self._pause_after_error("listen for cancellations", exc, backoff, None)

    async def _on_cancel(self, data: Any) -> None:
        """A message on ``P:cancel`` is a wake-up, not the authority: the job is cancelled only if
        its state hash carries the ``cancel`` field that :meth:`JobStore.cancel` sets (anyone who
        can PUBLISH could send the message), and with the reason recorded there."""
        if not isinstance(data, bytes | str):
            return
        job_id, _ = read_cancel_message(data)
        await self._cancel_if_requested(job_id)

    async def _listener_reconnected(self, _connection: object) -> None:
        """redis-py re-subscribed the listener after a lost connection: what was published
        meanwhile is lost, the state is not."""
        try:
            await self._check_cancel_requests()
        except RedisError as exc:  # never fail the reconnection: the next one checks again
            log.warning("could not check the jobs for cancel requests", error=str(exc))

    async def _check_cancel_requests(self) -> None:
        for job_id in {job.job_id for job in self.jobs.values()}:
            await self._cancel_if_requested(job_id)

    async def _cancel_if_requested(self, job_id: str) -> None:
        running = [e for e, job in self.jobs.items() if job.control.kind is None and job.job_id == job_id]
        if not running:
            return
        reason = await self.store.cancel_requested(job_id)
        if reason is None:
            log.warning("cancel message for a job whose state has no cancel request: ignored", job_id=job_id)
            return
        for entry_id in running:
            log.info("cancelling job", job_id=job_id, reason=reason)
            self._interrupt(entry_id, "cancel", reason or "cancelled")

    async def _drain(self) -> None:
        """Let in-flight jobs finish within the drain grace, cancel the rest, wait at most
        :attr:`abandon_after` for them to stop, and hand them all back for a peer. Bounded: a job
        that ignores its cancellation is abandoned, never waited for (its writes are fenced once a
        peer begins the job again)."""
        if not self.jobs:
            return
        grace = self.settings.drain_grace_seconds
        log.info("draining", inflight=len(self.jobs), grace=grace)
        _, pending = await asyncio.wait(self.inflight, timeout=grace)
        if pending:
            await self._stop_jobs()

    async def _stop_jobs(self) -> None:
        """Cancel every job still running here, wait at most :attr:`abandon_after` for them to stop
        and hand each back for a peer: after the drain grace, and when the worker itself is cancelled
        (a forced stop), which must not leave its jobs running on without it. A job already stopped
        so (and abandoned, if it ignored that) is not handed back twice. A job already stopping on
        its own is waited for as long but not cancelled again: one whose lease was lost is never
        handed back (it is another worker's: a hand-back would delete the entry that worker
        holds), one stopping for a cancel or a deleted entry only if it did not stop (it writes
        its own terminal event)."""
        left = [job for job in self.jobs.values() if not job.task.done() and not job.stopping]
        if not left:
            return
        for job in left:
            job.stopping = True
            if job.control.kind is None:
                job.control.set("drain")
                job.task.cancel()
        _, stuck = await asyncio.wait({job.task for job in left}, timeout=self.abandon_after)
        for job in left:
            if job.task in stuck:
                log.warning(
                    "job did not stop when cancelled; abandoning it",
                    entry=job.delivery.entry_id,
                    job_id=job.job_id,
                    waited=self.abandon_after,
                )
            kind = job.control.kind
            if kind == "fence" or (kind != "drain" and job.task not in stuck):
                continue  # stopping on its own (above): not this stop's to hand back
            try:
                replaces = await self.store.hand_back(job.job_id, job.delivery.entry_id)
                new_entry = await self.queue.hand_back(job.delivery, replaces)
                log.info("handed a job back for a peer", entry=job.delivery.entry_id, new_entry=new_entry)
            except RedisError as exc:
                log.warning("could not hand a job back; a peer takes it after its lease", error=str(exc))
