"""The shared token budget of a job with candidates (worker/ratelimit.py) through a real worker, real
Redis and the simulator: the one chat request for ``n`` choices reserves ``max_tokens`` for each of
them (and the prompt once), and is settled with what the provider said it used (each candidate's
own request reserves one answer's worth: tests/unit/test_candidates_ratelimit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from worker import Client
from worker.keys import Keys
from worker.settings import Provider

from .conftest import RunningWorker
from .test_candidates import check_candidates, stream

pytestmark = pytest.mark.integration

Starter = Callable[..., Awaitable[RunningWorker]]

TPM = 3600  # a bucket of 600 tokens (ten seconds' worth), refilled at 0.06 a millisecond
CAP, RATE = TPM / 6, TPM / 60_000
PROMPT = "x" * 40  # ten tokens, as the worker estimates a prompt
MAX_TOKENS = 120


def limited(sim_url: str) -> dict[str, Provider]:
    return {
        "sim": Provider(
            native_url=f"{sim_url}/v1/inference/{{model}}",
            chat_url=f"{sim_url}/v1/openai/chat/completions",
            tokens_per_minute=TPM,
        )
    }


async def bucket(redis: Redis, prefix: str) -> tuple[float, int] | None:
    """The scope's token bucket as last written by a script: its level and when (Redis ms)."""
    state = Keys(prefix).budget("sim")[0]
    level, at = await redis.hmget(state, ["tl", "tts"])
    return None if level is None or at is None else (float(level), int(at))


async def wait_for_bucket(
    redis: Redis, prefix: str, changed_from: tuple[float, int] | None
) -> tuple[float, int]:
    async with asyncio.timeout(30):
        while True:
            now = await bucket(redis, prefix)
            if now is not None and now != changed_from:
                return now
            await asyncio.sleep(0.005)


async def test_one_request_for_n_choices_reserves_n_answers_and_settles_what_it_used(
    start_worker: Starter, client: Client, redis: Redis, prefix: str, sim_url: str
) -> None:
    await start_worker(providers=limited(sim_url))
    n = 4
    job_id = await client.enqueue(
        model="m;tokens=100;tps=200",  # 400 tokens over the one stream: two seconds in flight
        api="chat",
        messages=[{"role": "user", "content": PROMPT}],
        params={"max_tokens": MAX_TOKENS},
        candidates={"n": n},
    )
    # granted: the full bucket less the prompt and n answers of max_tokens (not one: 600 - 130)
    granted = await wait_for_bucket(redis, prefix, None)
    assert granted[0] == CAP - (10 + n * MAX_TOKENS)
    done = await client.result(job_id, timeout=60)
    settled = await wait_for_bucket(redis, prefix, granted)
    # settled: what it reserved less what it used came back, with what refilled meanwhile
    refilled = (settled[1] - granted[1]) * RATE
    used = granted[0] + (10 + n * MAX_TOKENS) + refilled - settled[0]
    assert done.usage.input_tokens is not None
    assert used == pytest.approx(done.usage.input_tokens + done.usage.output_tokens, abs=1e-6)
    assert done.usage.output_tokens >= n * 100  # every choice's tokens (the provider's count)
    assert settled[0] < CAP  # not clamped at the top: the arithmetic above is exact
    check_candidates(await stream(redis, prefix, job_id), n)
