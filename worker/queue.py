"""The job stream ``{P}:jobs`` seen through the consumer group ``workers``.

A worker reads only as many entries as it has free slots, acknowledges an entry only after the job's
terminal event is written, and deletes acknowledged entries so the stream does not grow. Blocking
reads use their own client (``reader``), whose socket timeout must exceed the block time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from . import scripts
from .coalesce import Coalescer
from .keys import GROUP, Keys, as_text

__all__ = ["Delivery", "JobQueue", "NotPermitted"]

_NO_IDLE_REACHES = 2**62  # ms: an idle time no pending entry has


class NotPermitted(Exception):
    """The worker's Redis user lacks a permission it needs (Redis answered NOPERM). Fatal: no retry
    can help, so the worker stops at start-up with this message (the command and the key, never a
    password). Deliberately not a ``RedisError``, which start-up retries."""


log = structlog.get_logger("tokenwire.queue")


class Delivery(msgspec.Struct, frozen=True):
    """One job stream entry handed to this consumer. ``payload`` is None when the entry has no
    ``job`` field (or was deleted while pending). ``deliveries`` counts this one."""

    entry_id: str
    payload: bytes | None
    deliveries: int = 1
    replaces: str | None = None


class JobQueue:
    def __init__(
        self,
        redis: Redis,
        reader: Redis,
        keys: Keys,
        consumer: str,
        *,
        dead_maxlen: int,
        check_permissions: bool = True,
        coalescer: Coalescer | None = None,
    ) -> None:
        """``check_permissions``: the first :meth:`ensure_group` checks the user's permissions.
        ``coalescer``: acks go out batched with other calls of the same loop turn (:mod:`worker.coalesce`)."""
        self.redis = redis
        self.coalescer = coalescer
        self.reader = reader
        self.keys = keys
        self.consumer = consumer
        self.dead_maxlen = dead_maxlen
        self._ack = redis.register_script(scripts.ACK)
        self._dead = redis.register_script(scripts.DEAD)
        self._reap = redis.register_script(scripts.REAP)
        self._renew = redis.register_script(scripts.RENEW)
        self._checked = not check_permissions

    async def ensure_group(self) -> None:
        """Create the group (and the stream) when missing; start from the beginning so jobs
        enqueued before any worker existed are not lost (acknowledged entries are deleted).

        The first call (at start-up) also checks the user's permissions on each key and the script
        commands, raising :class:`NotPermitted` naming the command and key Redis refused (Redis 7.0's
        NOPERM names neither the key nor, for a script, the command inside it)."""
        if not self._checked:
            await self._check_permissions()
            self._checked = True
            return
        await self._create_group()

    async def _check_permissions(self) -> None:
        probe = self.keys.state("tokenwire-permission-check")
        steps: list[tuple[str, str, Callable[[], Awaitable[object]]]] = [
            ("XGROUP CREATE", self.keys.jobs, self._create_group),
            # this consumer's own pending entries (none yet): reads nothing new, claims nothing
            (
                "XREADGROUP",
                self.keys.jobs,
                lambda: self.redis.xreadgroup(GROUP, self.consumer, {self.keys.jobs: "0"}, count=1),
            ),
            ("XLEN", self.keys.dead, lambda: self.redis.xlen(self.keys.dead)),
            ("HGET", probe, lambda: self.redis.hget(probe, "state")),
            ("SCRIPT LOAD", "-", lambda: self.redis.script_load(scripts.RENEW)),
            # RENEW with no entries: runs on the job stream's key and changes nothing
            (
                "EVALSHA",
                self.keys.jobs,
                lambda: self._renew(keys=[self.keys.jobs], args=[GROUP, self.consumer]),
            ),
            ("SUBSCRIBE", self.keys.cancel, self._subscribe_once),
        ]
        for command, key, step in steps:
            try:
                await step()
            except RedisClusterException as exc:  # redis-py's word for a slot map it may not read
                if "Cluster mode is not enabled" not in str(exc):
                    raise
                raise NotPermitted(
                    "the Redis user may not run CLUSTER SLOTS, or the node is not in a Redis Cluster "
                    f"(redis_cluster is on; redis-py: {exc}); give it the worker's ACL: "
                    f"python -m worker.roles worker --cluster --prefix {self.keys.prefix}"
                ) from None
            except NoPermissionError as exc:
                on = "" if key == "-" else f" on {key}"
                raise NotPermitted(
                    f"the Redis user may not run {command}{on} (Redis: {exc}); give it the worker's ACL: "
                    f"python -m worker.roles worker --prefix {self.keys.prefix}"
                ) from None

    async def _subscribe_once(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(self.keys.cancel)
            # the confirmation, or Redis's refusal; no answer in time proves nothing either way
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    while await pubsub.get_message(timeout=1.0) is None:
                        pass

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
            log.info("consumer group created", stream=self.keys.jobs, group=GROUP)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new entries, waiting at most ``block_ms`` for the first."""
        try:
            reply: Any = await self.reader.xreadgroup(
                GROUP, self.consumer, {self.keys.jobs: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing: recreating it", stream=self.keys.jobs)
            await self.ensure_group()
            return []
        out: list[Delivery] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                out.append(self._delivery(entry_id, fields))
        return out

    @staticmethod
    def _delivery(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> Delivery:
        payload = fields.get(b"job") if fields else None
        replaces = fields.get(b"replaces") if fields else None
        return Delivery(as_text(entry_id), payload, replaces=None if replaces is None else as_text(replaces))

    async def ack(self, entry_id: str) -> None:
        """Acknowledge and delete the entry (one round trip, atomically)."""
        if self.coalescer is None:
            await self._ack(keys=[self.keys.jobs], args=[GROUP, entry_id])
        else:
            await self.coalescer.run(self._ack, [self.keys.jobs], [GROUP, entry_id])

    async def dead_letter(
        self, entry_id: str, payload: bytes | None, reason: str, *, job_id: str | None, code: str
    ) -> str:
        """Move the entry to ``{P}:dead`` with the reason and acknowledge it, atomically."""
        fields: list[str | bytes] = [
            "entry", entry_id,
            "code", code,
            "reason", reason,
            "consumer", self.consumer,
            "ts", str(int(time.time() * 1000)),
            "job", payload if payload is not None else b"",
        ]  # fmt: skip
        if job_id:
            fields += ["job_id", job_id]
        dead_id = await self._dead(
            keys=[self.keys.jobs, self.keys.dead], args=[GROUP, entry_id, self.dead_maxlen, *fields]
        )
        log.warning("job dead-lettered", entry=entry_id, job_id=job_id, code=code, reason=reason)
        return as_text(dead_id)

    async def reclaim(self, count: int, min_idle_ms: int) -> tuple[list[Delivery], list[str]]:
        """Take over up to ``count`` entries idle for ``min_idle_ms`` (their owner stopped renewing).

        Returns the claimed deliveries, with their delivery counts, and the ids of pending entries
        whose stream entry had been deleted (nothing to run; they are acknowledged here).
        """
        reply: Any = await self.redis.xautoclaim(
            self.keys.jobs, GROUP, self.consumer, min_idle_ms, "0-0", count=count
        )
        claimed = reply[1] or []
        deleted = [as_text(e) for e in (reply[2] if len(reply) > 2 else [])]
        if deleted:
            await self.redis.xack(self.keys.jobs, GROUP, *deleted)
        if not claimed:
            return [], deleted
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(self.keys.jobs, GROUP, min=entry_id, max=entry_id, count=1)
            counts: list[Any] = await pipe.execute()
        out = []
        for (entry_id, fields), pending in zip(claimed, counts, strict=True):
            times = int(pending[0]["times_delivered"]) if pending else 1
            out.append(msgspec.structs.replace(self._delivery(entry_id, fields), deliveries=times))
        return out, deleted

    async def try_claim(self) -> None:
        """A claim that takes nothing (``XAUTOCLAIM`` with an idle time no entry reaches): it fails
        exactly when Redis would refuse or fail a claim now."""
        await self.redis.xautoclaim(self.keys.jobs, GROUP, self.consumer, _NO_IDLE_REACHES, "0-0", count=1)

    async def hand_back(self, delivery: Delivery, replaces: str) -> str:
        """Re-add the entry's job as a new entry that names the one it replaces (peers blocked on
        the stream get it at once; their pickup moves the job to it) and drop the old one.
        ``replaces``: what :meth:`JobStore.hand_back` recorded for it (a raw one moves nothing)."""
        fields = {"job": delivery.payload or b"", "replaces": replaces}
        new_id = await self.redis.xadd(self.keys.jobs, fields)  # type: ignore[arg-type]
        await self.ack(delivery.entry_id)
        return as_text(new_id)

    async def reap(self, idle_ms: int) -> list[str]:
        """Remove consumers idle for ``idle_ms`` that own nothing (dead workers' names)."""
        removed = []
        for info in await self.redis.xinfo_consumers(self.keys.jobs, GROUP):
            name = as_text(info["name"])
            if name == self.consumer or int(info["pending"]) or int(info["idle"]) < idle_ms:
                continue
            if await self._reap(keys=[self.keys.jobs], args=[GROUP, name]):
                removed.append(name)
        if removed:
            log.info("removed idle consumers that owned nothing", consumers=removed)
        return removed

    async def reset_reader(self) -> None:
        """Drop the blocking reader's connections (after a cancelled or timed-out blocking read the
        connection's state is unknown, so it must not be reused)."""
        pool = getattr(self.reader, "connection_pool", None)
        if pool is not None:
            await asyncio.shield(pool.disconnect())
        else:  # a cluster client: close it (it is not read from again after a stop)
            await asyncio.shield(self.reader.aclose())
