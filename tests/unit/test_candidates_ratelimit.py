"""What one upstream request of a job with candidates reserves from its provider's token budget
(worker/ratelimit.py): the one chat or completions request for ``n`` choices reserves the prompt
and ``n`` answers of ``max_tokens``; each candidate's own request (native, or ``n_choices =
"separate"``) one answer; a single stream one. The reservation is read back from the bucket, as
the ``BUDGET_ACQUIRE`` script leaves it (fakeredis runs it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import msgspec
import pytest

from worker.admit import Admitted, admit
from worker.candidates import candidate_job
from worker.keys import Keys
from worker.metrics import Metrics
from worker.ratelimit import Budgets, request_tokens
from worker.settings import Provider, Settings

pytestmark = pytest.mark.unit

PROMPT = "x" * 40  # ten tokens, as the worker estimates a prompt


def settings() -> Settings:
    provider = Provider(
        native_url="https://up.test/{model}",
        chat_url="https://up.test/chat",
        completions_url="https://up.test/completions",
        tokens_per_minute=6000,
    )
    return Settings(prefix="t", default_provider="up", providers={"up": provider})


def admitted(s: Settings, **fields: Any) -> Admitted:
    verdict = admit("1-0", msgspec.json.encode({"model": "m", "id": "j1", **fields}), s)
    assert isinstance(verdict, Admitted), verdict
    return verdict


CHAT = {"api": "chat", "messages": [{"role": "user", "content": PROMPT}]}


@pytest.mark.parametrize(
    ("fields", "answers"),
    [
        ({**CHAT, "candidates": {"n": 4}}, 4),  # one request for n choices
        ({"api": "completions", "input": PROMPT, "candidates": {"n": 3}}, 3),
        ({**CHAT, "candidates": {"n": 1}}, 1),  # one candidate: a single stream, no n asked
        ({**CHAT}, 1),
        ({"input": PROMPT, "candidates": {"n": 4}}, 1),  # native: never one request for all
    ],
)
def test_a_request_reserves_an_answer_for_each_choice_it_asks_for(
    fields: dict[str, Any], answers: int
) -> None:
    s = settings()
    assert request_tokens(admitted(s, params={"max_tokens": 100}, **fields), s) == 10 + answers * 100


def test_a_candidates_own_request_reserves_one_answer() -> None:
    s = settings()
    job = admitted(s, params={"max_tokens": 100}, candidates={"n": 4}, **CHAT)
    own = msgspec.structs.replace(job, job=candidate_job(job.job, 2))
    assert request_tokens(own, s) == 10 + 100


async def test_the_bucket_gives_n_answers_and_takes_back_what_was_not_used() -> None:
    s = settings()
    redis = fakeredis.FakeAsyncRedis()
    budgets = Budgets(redis, Keys("t"), s, Metrics())
    job = admitted(s, params={"max_tokens": 100}, candidates={"n": 4}, **CHAT)
    scope = budgets.scope_for(job)
    assert scope is not None

    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        yield "stream"

    async def bucket() -> tuple[float, int]:
        level, at = await redis.hmget(scope.keys[0], ["tl", "tts"])
        assert level is not None and at is not None
        return float(level), int(at)

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        async with budgets.request(job, loop.time() + 10, opener, lambda: 10 + 4 * 30) as got:
            assert got == "stream"
            granted = await bucket()
            assert granted[0] == 1000 - (10 + 4 * 100)  # a full bucket (ten seconds' worth) less 410
        await budgets.settled()
    # it used 130 of the 410 it reserved: 280 came back, besides what refilled (0.1 a millisecond)
    settled = await bucket()
    assert settled[0] == pytest.approx(granted[0] + (settled[1] - granted[1]) * 0.1 + 280)
    await redis.aclose()
