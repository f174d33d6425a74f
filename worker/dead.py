"""Dead letters: list them, re-drive them onto the job stream, purge them."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from . import scripts
from .jobs import InvalidJob, decode_job
from .keys import Keys, as_text
from .store import JobStore, job_digest

__all__ = ["list_dead", "purge_dead", "redrive"]


async def list_dead(redis: Redis, keys: Keys, count: int = 100) -> list[dict[str, str]]:
    """The newest ``count`` dead letters, oldest first: their fields plus ``id``."""
    entries: Any = await redis.xrevrange(keys.dead, count=count)
    return [
        {"id": as_text(i), **{as_text(k): as_text(v) for k, v in f.items()}} for i, f in reversed(entries)
    ]


async def redrive(redis: Redis, store: JobStore, ids: list[str] | None) -> list[dict[str, str]]:
    """Put dead letters back on the job stream (all when ``ids`` is None).

    A re-driven job starts afresh: its old state and events are deleted (its terminal ``error``
    included), so a subscriber sees exactly one terminal event again. Then the dead letter is
    moved onto the job stream in one script (both are ``{P}`` keys): an interrupted re-drive leaves
    either the dead letter (re-drive it again) or the new entry, never both.
    """
    keys = store.keys
    if ids is None:
        entries: Any = await redis.xrange(keys.dead)
    else:
        entries = []
        for dead_id in ids:
            found: Any = await redis.xrange(keys.dead, dead_id, dead_id)
            if not found:
                raise LookupError(f"no dead letter {dead_id!r} in {keys.dead}")
            entries.extend(found)
    move = redis.register_script(scripts.REDRIVE)
    out = []
    for dead_id, fields in entries:
        payload = fields.get(b"job", b"")
        job_id = await _reset(redis, store, payload)  # a failure after this leaves the dead letter
        # the dead letter becomes the new entry in one step: never both, never neither
        moved = await move(keys=[keys.jobs, keys.dead], args=[dead_id, payload])
        if moved is None:
            continue  # another re-drive took it meanwhile
        new_entry = as_text(moved)
        if job_id is not None:
            await store.record_entry(job_id, new_entry)  # else the entry's first pickup records it
        out.append({"dead_id": as_text(dead_id), "job_id": job_id or "", "entry": new_entry})
    return out


async def _reset(redis: Redis, store: JobStore, payload: bytes) -> str | None:
    try:
        job = decode_job(payload)
    except InvalidJob:
        return None  # it will be dead-lettered again, with its reason
    if job.id is None:
        return None
    await redis.delete(store.keys.state(job.id), store.keys.events(job.id))
    await store.create(job.id, job.model, job.api, job.provider or "", digest=job_digest(job))
    return job.id


async def purge_dead(redis: Redis, keys: Keys) -> int:
    count = int(await redis.xlen(keys.dead))
    await redis.delete(keys.dead)
    return count
