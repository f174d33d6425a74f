"""The invariant checker catches every violation it exists for (a checker that cannot fail proves
nothing). Streams are written by hand on a real redis-server, each breaking one invariant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio import Redis

from tests.faults.invariants import InvariantViolation, check_invariants
from worker.connect import redis_client
from worker.events import Cancelled, Done, Error, Event, Start, Summary, Token, Usage, encode_event
from worker.keys import GROUP, Keys
from worker.redisproc import RedisServer

pytestmark = pytest.mark.faults

TTL_MS = 60_000


@pytest.fixture
async def redis(faults_redis: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(faults_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis: Redis) -> Keys:
    k = Keys(f"tw-inv-{uuid.uuid4().hex[:8]}")
    await redis.xgroup_create(k.jobs, GROUP, id="0", mkstream=True)
    return k


# ------------------------------------------------------------------------------- event builders

JOB = "job-1"


def start(attempt: int, job: str = JOB) -> Start:
    return Start(job_id=job, attempt=attempt, model="tokenwire/sim", provider="sim", api="native")


def token(attempt: int, index: int, job: str = JOB) -> Token:
    return Token(job_id=job, attempt=attempt, index=index, text=f"t{index}", logprob=-0.1)


SUMMARY = Summary(
    mean_logprob=-0.1,
    cum_logprob=-0.3,
    perplexity=1.1,
    min_prob=0.9,
    min_index=0,
    ewma_confidence=0.9,
    mean_prob=0.9,
    bits_per_byte=0.1,
    n_tokens=3,
    n_scored=3,
    n_missing=0,
    n_excluded=0,
    n_clamped=0,
    logprobs_available=True,
    low_spans=[],
)


def done(attempt: int, job: str = JOB) -> Done:
    return Done(
        job_id=job,
        attempt=attempt,
        finish_reason="eos_token",
        text="t0t1t2",
        usage=Usage(input_tokens=3, output_tokens=3),
        confidence=0.9,
        summary=SUMMARY,
    )


def error(attempt: int, code: str = "max_deliveries_exceeded", job: str = JOB) -> Error:
    return Error(job_id=job, attempt=attempt, code=code, message="boom")


def attempt_events(attempt: int, tokens: int, job: str = JOB) -> list[tuple[str, Event]]:
    """A ``start`` and ``tokens`` tokens of ``attempt``, with their ``<attempt>-<seq>`` ids."""
    out: list[tuple[str, Event]] = [(f"{attempt}-0", start(attempt, job))]
    out += [(f"{attempt}-{i + 1}", token(attempt, i, job)) for i in range(tokens)]
    return out


def finished(attempt: int, tokens: int, terminal: Event, job: str = JOB) -> list[tuple[str, Event]]:
    return [*attempt_events(attempt, tokens, job), (f"{attempt}-{tokens + 1}", terminal)]


async def write_job(
    redis: Redis,
    keys: Keys,
    entries: Sequence[tuple[str, Event]],
    *,
    job: str = JOB,
    state: str | None = None,
    attempt: int | None = None,
    ttl: bool = True,
    state_ttl: bool = True,
    state_hash: bool = True,
) -> None:
    """Write ``entries`` with their explicit ids, and the state hash matching the last event
    (unless told otherwise)."""
    events_key = keys.events(job)
    for entry_id, event in entries:
        await redis.xadd(events_key, {"event": encode_event(event)}, id=entry_id)
    last = entries[-1][1] if entries else None
    if state_hash:
        name = state or (type(last).__name__.lower() if last is not None else "queued")
        if name in ("start", "token"):
            name = "running"
        number = attempt if attempt is not None else (last.attempt if last is not None else 0)
        await redis.hset(keys.state(job), mapping={"state": name, "attempt": number, "owner": "w1"})
        if state_ttl:
            await redis.pexpire(keys.state(job), TTL_MS)
    if ttl and entries:
        await redis.pexpire(events_key, TTL_MS)


async def violations(redis: Redis, keys: Keys, jobs: Sequence[str] = (JOB,)) -> str:
    with pytest.raises(InvariantViolation) as caught:
        await check_invariants(redis, keys.prefix, jobs, pending_timeout=0.3)
    return str(caught.value)


# -------------------------------------------------------------------------------- good streams


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param(finished(1, 3, done(1)), id="one-attempt-done"),
        pytest.param(attempt_events(1, 4) + finished(2, 3, done(2)), id="retried-attempt-2-done"),
        pytest.param(
            attempt_events(1, 2) + attempt_events(2, 1) + finished(3, 0, done(3)), id="three-attempts"
        ),
        pytest.param(attempt_events(1, 2) + finished(2, 2, error(2)), id="dead-lettered"),
        pytest.param(finished(1, 5, Cancelled(job_id=JOB, attempt=1, reason="user")), id="cancelled"),
        pytest.param([("1-0", error(1, "invalid_job"))], id="rejected-before-any-start"),
    ],
)
async def test_valid_streams_pass(redis: Redis, keys: Keys, entries: list[tuple[str, Event]]) -> None:
    await write_job(redis, keys, entries)
    await check_invariants(redis, keys.prefix, [JOB], pending_timeout=0.3)


async def test_acknowledged_entries_do_not_count_as_pending(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)))
    entry = await redis.xadd(keys.jobs, {"job": b"{}"})
    await redis.xreadgroup(GROUP, "w1", {keys.jobs: ">"}, count=1)
    await redis.xack(keys.jobs, GROUP, entry)
    await check_invariants(redis, keys.prefix, [JOB], pending_timeout=0.3)


# ----------------------------------------------------------------------- invariant 1: terminal


async def test_catches_a_job_without_terminal_event(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, attempt_events(1, 3))
    assert "no terminal event" in await violations(redis, keys)


async def test_catches_two_terminal_events(redis: Redis, keys: Keys) -> None:
    entries = [*finished(1, 2, done(1)), ("1-4", error(1, "upstream_unavailable"))]
    await write_job(redis, keys, entries, state="error")
    message = await violations(redis, keys)
    assert "2 terminal events, expected exactly one" in message


async def test_catches_a_terminal_event_that_is_not_last(redis: Redis, keys: Keys) -> None:
    entries = [*finished(1, 2, done(1)), ("1-4", token(1, 2))]
    await write_job(redis, keys, entries, state="done")
    assert "is not last" in await violations(redis, keys)


async def test_catches_a_missing_event_stream(redis: Redis, keys: Keys) -> None:
    await redis.hset(keys.state(JOB), mapping={"state": "done", "attempt": 1})
    await redis.pexpire(keys.state(JOB), TTL_MS)
    assert "no events" in await violations(redis, keys)


# -------------------------------------------------------------- invariant 2: the final attempt


async def test_catches_a_gap_in_token_indexes(redis: Redis, keys: Keys) -> None:
    entries: list[tuple[str, Event]] = [
        ("1-0", start(1)),
        ("1-1", token(1, 0)),
        ("1-2", token(1, 1)),
        ("1-3", token(1, 3)),
    ]
    entries.append(("1-4", done(1)))
    await write_job(redis, keys, entries)
    assert "token indexes are not 0..2" in await violations(redis, keys)


async def test_catches_a_duplicated_token_index(redis: Redis, keys: Keys) -> None:
    entries: list[tuple[str, Event]] = [
        ("2-0", start(2)),
        ("2-1", token(2, 0)),
        ("2-2", token(2, 1)),
        ("2-3", token(2, 1)),
    ]
    entries.append(("2-4", done(2)))
    await write_job(redis, keys, attempt_events(1, 2) + entries)
    assert "final attempt 2: token indexes are not 0..2" in await violations(redis, keys)


async def test_catches_a_gap_in_event_ids(redis: Redis, keys: Keys) -> None:
    entries: list[tuple[str, Event]] = [
        ("2-0", start(2)),
        ("2-1", token(2, 0)),
        ("2-3", token(2, 1)),
        ("2-4", done(2)),
    ]
    await write_job(redis, keys, attempt_events(1, 1) + entries)
    assert "entry 2 has id 2-3, expected 2-2" in await violations(redis, keys)


async def test_a_gap_in_a_superseded_attempt_is_allowed(redis: Redis, keys: Keys) -> None:
    # a killed attempt may stop anywhere; only the final attempt must be whole
    entries: list[tuple[str, Event]] = [
        ("1-0", start(1)),
        ("1-1", token(1, 0)),
        ("1-5", token(1, 4)),
        *finished(2, 2, done(2)),
    ]
    await write_job(redis, keys, entries)
    await check_invariants(redis, keys.prefix, [JOB], pending_timeout=0.3)


async def test_catches_events_without_a_start(redis: Redis, keys: Keys) -> None:
    entries: list[tuple[str, Event]] = [("1-1", token(1, 0)), ("1-2", done(1))]
    await write_job(redis, keys, entries)
    assert "no start" in await violations(redis, keys)


# --------------------------------------------------------------------- invariant 3: fencing


async def test_catches_a_superseded_attempt_writing_after_the_new_start(redis: Redis, keys: Keys) -> None:
    # attempt 1 is a zombie: its token lands (under an id Redis accepts) after attempt 2 started
    entries = [*attempt_events(1, 2), ("2-0", start(2)), ("2-1", token(1, 2)), ("2-2", token(2, 0))]
    entries.append(("2-3", done(2)))
    await write_job(redis, keys, entries)
    message = await violations(redis, keys)
    assert "of superseded attempt 1 written after attempt 2 started" in message


async def test_catches_an_entry_id_naming_another_attempt(redis: Redis, keys: Keys) -> None:
    entries = [*attempt_events(1, 1), ("1-2", start(2)), ("1-3", token(2, 0)), ("1-4", done(2))]
    await write_job(redis, keys, entries)
    message = await violations(redis, keys)
    assert "carries attempt 2, but its id names attempt 1" in message
    assert "expected 2-0" in message


async def test_catches_a_start_that_does_not_raise_the_attempt(redis: Redis, keys: Keys) -> None:
    entries = [*attempt_events(2, 1), ("2-2", start(2)), ("2-3", token(2, 0)), ("2-4", done(2))]
    await write_job(redis, keys, entries)
    assert "start 2-2 of attempt 2 does not follow attempt 2" in await violations(redis, keys)


async def test_catches_an_event_of_another_job(redis: Redis, keys: Keys) -> None:
    entries: list[tuple[str, Event]] = [
        ("1-0", start(1)),
        ("1-1", token(1, 0, job="other")),
        ("1-2", done(1)),
    ]
    await write_job(redis, keys, entries)
    assert "belongs to job 'other'" in await violations(redis, keys)


# ---------------------------------------------------------------------- invariant 4: pending


async def test_catches_an_entry_left_pending(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)))
    entry = await redis.xadd(keys.jobs, {"job": b"{}"})
    await redis.xreadgroup(GROUP, "w-gone", {keys.jobs: ">"}, count=1)
    message = await violations(redis, keys)
    assert "1 entry still pending" in message
    assert (entry.decode() if isinstance(entry, bytes) else entry) in message and "consumer w-gone" in message


async def test_catches_a_missing_consumer_group(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 1, done(1)))
    await redis.xgroup_destroy(keys.jobs, GROUP)
    assert "cannot read the pending entries" in await violations(redis, keys)


# -------------------------------------------------------------------------- invariant 5: TTL


async def test_catches_an_event_stream_without_ttl(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)), ttl=False)
    assert f"key {keys.events(JOB)} has no TTL" in await violations(redis, keys)


async def test_catches_a_state_hash_without_ttl(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)), state_ttl=False)
    assert f"key {keys.state(JOB)} has no TTL" in await violations(redis, keys)


async def test_catches_a_missing_state_hash(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)), state_hash=False)
    message = await violations(redis, keys)
    assert "state hash missing" in message and f"key {keys.state(JOB)} does not exist" in message


# ------------------------------------------------------------------ state hash and reporting


async def test_catches_a_state_hash_that_disagrees_with_the_stream(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)), state="running", attempt=2)
    message = await violations(redis, keys)
    assert "state hash says 'running', but the stream ended with done" in message
    assert "state hash attempt '2' differs" in message


async def test_reports_every_broken_job(redis: Redis, keys: Keys) -> None:
    await write_job(redis, keys, finished(1, 2, done(1)))
    await write_job(redis, keys, [("1-0", start(1, job="b"))], job="b")
    await write_job(redis, keys, finished(1, 1, done(1, job="c"), job="c"), job="c", ttl=False)
    message = await violations(redis, keys, [JOB, "b", "c"])
    assert "2 invariant violation(s)" in message
    assert "job b: no terminal event" in message and "job c: key" in message
    assert f"job {JOB}:" not in message
