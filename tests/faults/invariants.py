"""The invariant checker run after every fault-injection test (reliability.md §7).

For every job it is given, it reads the job's event stream with ``XRANGE`` and asserts:

1. exactly one terminal event (``done``, ``error``, ``cancelled``), and it is the last entry:
   nothing follows it (no token of a stale owner resumed after a takeover, a cancel or a dead letter);
2. within the final attempt (from the last ``start`` on) the entry ids are ``<attempt>-0``,
   ``<attempt>-1``, ... with no gap (the terminal may instead sit at the fencing id
   ``<attempt>-TERMINAL_SEQ`` that scripts other than the attempt's own FINISH write), every event
   carries that attempt, and the token ``index`` values are ``0..n-1`` with no gap and no duplicate;
3. attempts never decrease along the stream: no event of a superseded attempt after a newer
   ``start``; each ``start`` opens a strictly higher attempt at ``<attempt>-0``; an entry id's attempt
   is its event's ``attempt``;
4. nothing is left pending in the consumer group ``workers`` of ``{P}:jobs`` (polled for a bounded
   time: acknowledgements follow terminal events);
5. every key of an ended job (``P:job:{ID}``, ``P:job:{ID}:events``) has a TTL;
   :func:`prefix_ttl_problems` extends that to every key under the prefix but the streams
   ``{P}:jobs``, ``{P}:dead`` and ``{P}:review``;
6. :func:`secret_problems`: no secret (whole, or its first 12 characters) in any event, state hash,
   dead letter or log.

It also checks that the state hash agrees with the terminal event (``state`` and ``attempt``) and that
every event names its own job. Every violation found is reported at once, job by job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.events import Event, MalformedEvent, Start, Token, UnknownEvent, decode_event, is_terminal
from worker.keys import GROUP, Keys
from worker.scripts import TERMINAL_SEQ

__all__ = [
    "InvariantViolation",
    "check_invariants",
    "job_problems",
    "pending_problems",
    "prefix_ttl_problems",
    "secret_problems",
]


class InvariantViolation(AssertionError):
    """One or more invariants do not hold; the message lists every violation."""


class _Entry(msgspec.Struct, frozen=True):
    id: str
    ms: int
    seq: int
    event: Event

    @property
    def type(self) -> str:
        return type(self.event).__name__.lower()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_invariants(
    redis: Redis, prefix: str, job_ids: Iterable[str], *, pending_timeout: float = 10.0
) -> None:
    """Raise :class:`InvariantViolation` listing every broken invariant of ``job_ids``."""
    keys = Keys(prefix)
    problems: list[str] = []
    for job_id in job_ids:
        problems += [f"job {job_id}: {p}" for p in await job_problems(redis, keys, job_id)]
    problems += await pending_problems(redis, keys, timeout=pending_timeout)
    if problems:
        raise InvariantViolation(f"{len(problems)} invariant violation(s):\n  " + "\n  ".join(problems))


async def job_problems(redis: Redis, keys: Keys, job_id: str) -> list[str]:
    """Every invariant one job breaks (invariants 1, 2, 3 and 5, plus state-hash agreement)."""
    raw: Any = await redis.xrange(keys.events(job_id), "-", "+")
    entries, problems = _decode(raw)
    if not entries and not problems:
        problems.append("no events: the event stream is missing or empty")
    problems += _identity_problems(entries, job_id)
    problems += _terminal_problems(entries)
    problems += _ordering_problems(entries)
    problems += _final_attempt_problems(entries)
    problems += await _state_problems(redis, keys, job_id, entries)
    problems += await _ttl_problems(redis, keys, job_id)
    return problems


def _decode(raw: list[tuple[Any, dict[Any, Any]]]) -> tuple[list[_Entry], list[str]]:
    entries: list[_Entry] = []
    problems: list[str] = []
    for entry_id, fields in raw or ():
        eid = _s(entry_id)
        ms, _, seq = eid.partition("-")
        payload = fields.get(b"event", fields.get("event"))
        if payload is None:
            problems.append(f"entry {eid} has no `event` field")
            continue
        try:
            event = decode_event(payload)
        except MalformedEvent as exc:
            problems.append(f"entry {eid} is not a valid event: {exc}")
            continue
        if isinstance(event, UnknownEvent):  # the worker writes only the types it knows
            problems.append(f"entry {eid} has an event type the worker never writes: {event.type!r}")
            continue
        entries.append(_Entry(eid, int(ms), int(seq), event))
    return entries, problems


def _identity_problems(entries: list[_Entry], job_id: str) -> list[str]:
    problems: list[str] = []
    for e in entries:
        if e.event.job_id != job_id:
            problems.append(f"entry {e.id} belongs to job {e.event.job_id!r}")
        if e.ms != e.event.attempt:
            problems.append(
                f"entry {e.id} ({e.type}) carries attempt {e.event.attempt}, but its id names attempt {e.ms}"
            )
    return problems


def _terminal_problems(entries: list[_Entry]) -> list[str]:
    """Invariant 1: exactly one terminal event, and it is the last."""
    if not entries:
        return []
    terminals = [i for i, e in enumerate(entries) if is_terminal(e.event)]
    if not terminals:
        return [f"no terminal event (last entry {entries[-1].id} is a {entries[-1].type})"]
    problems: list[str] = []
    if len(terminals) > 1:
        found = ", ".join(f"{entries[i].type}@{entries[i].id}" for i in terminals)
        problems.append(f"{len(terminals)} terminal events, expected exactly one: {found}")
    last = terminals[-1] if len(terminals) == 1 else terminals[0]
    if last != len(entries) - 1:
        after = ", ".join(f"{e.type}@{e.id}" for e in entries[last + 1 : last + 6])
        problems.append(f"terminal {entries[last].type}@{entries[last].id} is not last: followed by {after}")
    return problems


def _ordering_problems(entries: list[_Entry]) -> list[str]:
    """Invariant 3: attempts never decrease; each start opens a strictly higher attempt at seq 0."""
    problems: list[str] = []
    highest = 0
    last_start = 0
    for e in entries:
        attempt = e.event.attempt
        if attempt < highest:
            problems.append(
                f"entry {e.id} ({e.type}) of superseded attempt {attempt} written after attempt "
                f"{highest} started"
            )
        if isinstance(e.event, Start):
            if attempt <= last_start:
                problems.append(f"start {e.id} of attempt {attempt} does not follow attempt {last_start}")
            if e.seq != 0:
                problems.append(f"start of attempt {attempt} has id {e.id}, expected {attempt}-0")
            last_start = max(last_start, attempt)
        highest = max(highest, attempt)
    return problems


def _final_attempt_problems(entries: list[_Entry]) -> list[str]:
    """Invariant 2: the final attempt's ids are consecutive and its token indexes are 0..n-1."""
    starts = [i for i, e in enumerate(entries) if isinstance(e.event, Start)]
    if not starts:
        if len(entries) > 1:
            return [f"{len(entries)} events but no start: only a lone terminal event may lack one"]
        return []
    tail = entries[starts[-1] :]
    final = tail[0].event.attempt
    problems: list[str] = []
    for k, e in enumerate(tail):
        if e.event.attempt != final:
            problems.append(
                f"entry {e.id} ({e.type}) of attempt {e.event.attempt} inside final attempt {final}"
            )
        fencing = is_terminal(e.event) and k == len(tail) - 1 and e.id == f"{final}-{TERMINAL_SEQ}"
        if e.id != f"{final}-{k}" and not fencing:
            problems.append(
                f"final attempt {final}: entry {k} has id {e.id}, expected {final}-{k} (gap or dup)"
            )
            break
    indexes = [e.event.index for e in tail if isinstance(e.event, Token)]
    if indexes != list(range(len(indexes))):
        problems.append(
            f"final attempt {final}: token indexes are not 0..{len(indexes) - 1}: {_show(indexes)}"
        )
    return problems


def _show(indexes: list[int]) -> str:
    bad = [(i, x) for i, x in enumerate(indexes) if x != i]
    first = bad[0][0] if bad else 0
    window = indexes[max(0, first - 2) : first + 6]
    return f"first mismatch at position {first}: ...{window}..."


async def _state_problems(redis: Redis, keys: Keys, job_id: str, entries: list[_Entry]) -> list[str]:
    raw: Any = await redis.hgetall(keys.state(job_id))
    state = {_s(k): _s(v) for k, v in raw.items()}
    if not state:
        return ["state hash missing"]
    terminal = next((e for e in reversed(entries) if is_terminal(e.event)), None)
    if terminal is None:
        return []
    problems: list[str] = []
    if state.get("state") != terminal.type:
        problems.append(f"state hash says {state.get('state')!r}, but the stream ended with {terminal.type}")
    if state.get("attempt") != str(terminal.event.attempt):
        problems.append(
            f"state hash attempt {state.get('attempt')!r} differs from the terminal event's "
            f"attempt {terminal.event.attempt}"
        )
    return problems


async def _ttl_problems(redis: Redis, keys: Keys, job_id: str) -> list[str]:
    """Invariant 5: every key of an ended job expires."""
    problems: list[str] = []
    for key in (keys.state(job_id), keys.events(job_id)):
        ttl = int(await redis.pttl(key))
        if ttl == -1:
            problems.append(f"key {key} has no TTL")
        elif ttl == -2:
            problems.append(f"key {key} does not exist")
    return problems


async def pending_problems(redis: Redis, keys: Keys, *, timeout: float = 10.0) -> list[str]:
    """Invariant 4: nothing left pending in ``workers`` (waits up to ``timeout`` for late acks)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            summary: Any = await redis.xpending(keys.jobs, GROUP)
        except ResponseError as exc:
            return [f"cannot read the pending entries of {keys.jobs} group {GROUP}: {exc}"]
        count = int(summary["pending"])
        if count == 0:
            return []
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    rows: Any = await redis.xpending_range(keys.jobs, GROUP, min="-", max="+", count=10)
    shown = ", ".join(
        f"{_s(r['message_id'])} (consumer {_s(r['consumer'])}, delivered {r['times_delivered']}x)"
        for r in rows
    )
    return [f"{count} entr{'y' if count == 1 else 'ies'} still pending after {timeout}s: {shown}"]


async def secret_problems(
    redis: Redis,
    keys: Keys,
    job_ids: Iterable[str],
    secrets: Iterable[str],
    texts: Mapping[str, str] = MappingProxyType({}),
) -> list[str]:
    """No secret anywhere: not in any job's events or state hash, not in a dead letter, not in
    ``texts`` (e.g. the workers' logs, by name). A secret counts as found whole or clipped to its
    first 12 characters (an excerpt cut short is still a leak)."""
    needles = [(s, s.encode()) for secret in secrets for s in {secret, secret[:12]} if s]
    places: list[tuple[str, bytes]] = []
    for job_id in job_ids:
        events: Any = await redis.xrange(keys.events(job_id), "-", "+")
        for entry_id, fields in events:
            places.append((f"job {job_id} event {_s(entry_id)}", _joined(fields.values())))
        state: Any = await redis.hgetall(keys.state(job_id))
        places.append((f"job {job_id} state hash", _joined([*state.keys(), *state.values()])))
    dead: Any = await redis.xrange(keys.dead, "-", "+")
    for entry_id, fields in dead:
        places.append((f"dead letter {_s(entry_id)}", _joined([*fields.keys(), *fields.values()])))
    places += [(name, text.encode()) for name, text in texts.items()]
    problems: list[str] = []
    for where, data in places:
        for shown, needle in needles:
            if needle in data:
                problems.append(f"{where} shows a secret (starting {shown[:4]!r}...)")
                break
    return problems


def _joined(values: Iterable[Any]) -> bytes:
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in values)


async def prefix_ttl_problems(redis: Redis, keys: Keys, *, limit: int = 100_000) -> list[str]:
    """A TTL on every key under the prefix but the long-lived streams (``{P}:jobs``, ``{P}:dead``,
    the capped ``{P}:review``): no key of any job, however it ended (or was written by a stale
    writer after its keys expired), lives forever; nor does a review marker. Scans at most
    ``limit`` keys."""
    lasting = {keys.jobs, keys.dead, keys.review}
    problems: list[str] = []
    seen = 0
    for pattern in (f"{keys.prefix}:*", f"{{{keys.prefix}}}:*"):
        async for raw in redis.scan_iter(match=pattern, count=1000):
            seen += 1
            key = _s(raw)
            if key not in lasting and int(await redis.pttl(key)) == -1:
                problems.append(f"key {key} has no TTL")
            if seen >= limit:
                return [*problems, f"more than {limit} keys under {keys.prefix}: scan stopped"]
    return problems
