"""Segments and verdicts through a real worker and the simulator: ``segment`` events in order before
``done``, tiling the answer, their offsets consistent with ``done.text`` and the token events, each
published right after the token that confirms its end; ``done.verdict``; and jobs without
``review`` publish exactly today's events (no ``segment``, no ``verdict``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from worker import Client
from worker.events import Done, Segment, Token, decode_event
from worker.jobs import Review
from worker.keys import Keys
from worker.segments import band_of

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]


async def stream(redis: Redis, prefix: str, job_id: str) -> list[tuple[str, Any, bytes]]:
    entries: Any = await redis.xrange(Keys(prefix).events(job_id))
    return [(e.decode(), decode_event(f[b"event"]), f[b"event"]) for e, f in entries]


@pytest.mark.parametrize("api", ["native", "chat"])
@pytest.mark.parametrize("unit", ["sentence", "line", "paragraph"])
async def test_segments_tile_the_answer_in_order_before_done(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, unit: str, api: str
) -> None:
    await start_worker()
    review = {"unit": unit, "publish_above": -0.3, "review_below": -1.2}
    prompt: dict[str, Any] = (
        {"messages": [{"role": "user", "content": "hi"}]} if api == "chat" else {"input": "hi"}
    )
    job_id = await client.enqueue(model="m", api=api, params={"max_tokens": 150}, review=review, **prompt)
    done = await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    ids = [tuple(map(int, i.split("-"))) for i, _, _ in events]
    assert ids == sorted(ids) and isinstance(events[-1][1], Done)
    tokens = [e for _, e, _ in events if isinstance(e, Token) and e.channel == "content"]
    segments = [e for _, e, _ in events if isinstance(e, Segment)]
    assert len(segments) >= (2 if unit == "sentence" else 1)
    assert [s.index for s in segments] == list(range(len(segments)))
    assert "".join(s.text for s in segments) == done.text
    cursor = (tokens[0].index, 0, 0)
    data = done.text.encode()
    for s in segments:
        assert (s.token_start, s.char_start, s.byte_start) == cursor
        assert done.text[s.char_start : s.char_end] == s.text
        assert data[s.byte_start : s.byte_end] == s.text.encode()
        mine = [t for t in tokens if s.token_start <= t.index < s.token_end]
        if not any("\\x" in t.text for t in mine):  # a chat token may carry bytes as "\\xe2\\x80"
            assert "".join(t.text for t in mine) == s.text
        assert (mine[0].char_start, mine[-1].char_end) == (s.char_start, s.char_end)
        scored = [t.logprob for t in mine if t.logprob is not None]
        assert s.n_scored == len(scored)
        assert s.mean_logprob == pytest.approx(sum(scored) / len(scored), rel=1e-12)
        assert s.band == band_of(s.mean_logprob, msgspec.convert(review, type=Review))
        cursor = (s.token_end, s.char_end, s.byte_end)
    assert cursor == (tokens[-1].index + 1, len(done.text), len(data))
    # each segment right after the token that confirmed it: the one at its token_end (or its last)
    order = [e for _, e, _ in events if isinstance(e, Token | Segment)]
    for s in segments[:-1]:
        before = order[order.index(s) - 1]
        assert isinstance(before, Token) and before.index in (s.token_end, s.token_end - 1)
    assert order[-1] == segments[-1]  # the last one is closed before done
    verdict = done.verdict
    assert not isinstance(verdict, msgspec.UnsetType)
    assert verdict.n_low == sum(s.band == "low" for s in segments)
    assert verdict.n_medium == sum(s.band == "medium" for s in segments)
    assert verdict.decision == ("review" if verdict.n_low else "publish")


async def test_a_job_without_review_publishes_no_segment_and_no_verdict(
    start_worker: Starter, client: Client, redis: Redis, prefix: str
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="m", input="hi", params={"max_tokens": 60})
    await client.result(job_id, timeout=60)
    events = await stream(redis, prefix, job_id)
    assert {type(e).__name__ for _, e, _ in events} == {"Start", "Token", "Done"}
    raw_done = events[-1][2]
    assert b'"verdict"' not in raw_done and b"segment" not in b"".join(r for _, _, r in events)
    ids = [i for i, _, _ in events]
    assert ids == [f"1-{n}" for n in range(len(ids))]  # token ids and the done's as before


async def test_min_confidence_sends_a_confident_enough_answer_to_review(
    start_worker: Starter, client: Client
) -> None:
    await start_worker()
    job_id = await client.enqueue(
        model="m",
        input="hi",
        params={"max_tokens": 40},
        review={"review_below": -20.0, "min_confidence": 1.0},
    )
    done = await client.result(job_id, timeout=60)
    verdict = done.verdict
    assert not isinstance(verdict, msgspec.UnsetType) and done.confidence is not None
    assert verdict.decision == "review" and verdict.n_low == 0
    assert verdict.reasons == [f"confidence {done.confidence:.4f} under min_confidence 1.0"]
