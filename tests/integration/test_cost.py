"""Usage, cost and budgets end to end on real Redis with the simulator and a worker: ``done.usage``
sums every attempt's cost from the provider's price table, an escalation's strong share apart; a
job's ``budget`` refuses an attempt whose worst case is over it and stops a stream whose running
cost passes it; a provider without prices publishes exactly today's ``usage``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from worker import Client, Done, Error, Job, Params, Provider, Start, Token
from worker.jobs import Escalate
from worker.settings import Price

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
CHEAP = "tokenwire/sim-cheap;tokens=12"
STRONG = "tokenwire/sim-strong;tokens=10"
PRICES = {CHEAP: Price(input=0.5, output=1.5), "*": Price(input=3.0, output=15.0)}


def _priced(sim_url: str, prices: dict[str, Price] | None = None) -> dict[str, Provider]:
    return {
        "sim": Provider(
            native_url=f"{sim_url}/v1/inference/{{model}}",
            chat_url=f"{sim_url}/v1/openai/chat/completions",
            prices=PRICES if prices is None else prices,
        )
    }


async def _events(client: Client, job_id: str) -> list[Any]:
    return [item.event async for item in client.subscribe(job_id, timeout=30)]


def _cost(price: Price, input_tokens: int | None, output_tokens: int) -> float:
    return ((input_tokens or 0) * price.input + output_tokens * price.output) / 1e6


async def test_done_usage_carries_the_cost_of_the_answering_attempt(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    running = await start_worker(providers=_priced(sim_url))
    job_id = await client.enqueue(
        Job(api="chat", model=STRONG, messages=[{"role": "user", "content": "hello"}])  # type: ignore[list-item]
    )
    done = (await _events(client, job_id))[-1]
    assert isinstance(done, Done)
    usage = done.usage
    assert isinstance(usage.attempts, list)
    (attempt,) = usage.attempts
    assert attempt.model == STRONG and attempt.provider == "sim" and attempt.attempt == 1
    assert not attempt.counted  # the chat stream's usage chunk reported both counts
    assert attempt.input_tokens is not None and attempt.input_tokens > 0
    assert attempt.cost == pytest.approx(_cost(PRICES["*"], attempt.input_tokens, attempt.output_tokens))
    assert usage.cost == pytest.approx(attempt.cost)
    assert usage.escalation_cost is None
    metrics = running.worker.metrics
    sample = metrics.usage_tokens.labels(STRONG, "output")._value.get()
    assert sample == attempt.output_tokens
    assert metrics.cost.labels(STRONG)._value.get() == pytest.approx(attempt.cost)


async def test_an_escalation_shows_both_attempts_and_the_strong_share(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    await start_worker(providers=_priced(sim_url))
    esc = Escalate(model=STRONG, below=0.999, after_tokens=4)
    job_id = await client.enqueue(Job(model=CHEAP, input="classify this", escalate=esc))
    events = await _events(client, job_id)
    done = events[-1]
    assert isinstance(done, Done) and done.attempt == 2
    assert isinstance(done.usage.attempts, list)
    weak, strong = done.usage.attempts
    assert (weak.model, weak.escalation, weak.output_tokens) == (CHEAP, False, 4)
    assert weak.cost == pytest.approx(_cost(PRICES[CHEAP], weak.input_tokens, 4))
    assert (strong.model, strong.escalation) == (STRONG, True)
    assert strong.output_tokens == done.usage.output_tokens == 11
    assert done.usage.escalation_cost == pytest.approx(strong.cost)
    assert done.usage.cost == pytest.approx((weak.cost or 0) + (strong.cost or 0))


async def test_a_budget_under_the_worst_case_refuses_the_request(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    await start_worker(providers=_priced(sim_url))
    # 1,000 output tokens at 15 per million are 0.015: over a budget of 0.001
    job = Job(model=STRONG, input="x", params=Params(max_tokens=1000), budget=0.001)
    events = await _events(client, await client.enqueue(job))
    assert [type(e) for e in events] == [Start, Error]
    error = events[-1]
    assert error.code == "budget_exceeded"
    assert "budget=0.001" in error.message and "max_tokens=1000" in error.message


async def test_a_stream_passing_its_budget_ends_budget_exceeded_keeping_its_tokens(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    price = Price(input=0.0, output=1000.0)  # a token costs 0.001
    # default_max_tokens=40 (worst case 0.04 fits 0.0505) but the simulated model ignores it here:
    # `overrun=1` streams all 100 tokens, as a provider that overruns its limit would
    await start_worker(providers=_priced(sim_url, {"*": price}), default_max_tokens=40)
    job = Job(model="tokenwire/sim;tokens=100;overrun=1", input="x", budget=0.0505)
    events = await _events(client, await client.enqueue(job))
    error = events[-1]
    assert isinstance(error, Error) and error.code == "budget_exceeded", error
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) == 50  # 0.0505 / 0.001: what was generated stays on the stream
    assert "50 output tokens" in error.message


async def test_without_prices_usage_is_exactly_as_before(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    job_id = await client.enqueue(model="tokenwire/sim;tokens=5", input="x")
    await _events(client, job_id)
    raw: Any = await client.redis.xrevrange(client.keys.events(job_id), count=1)
    assert b'"usage":{"input_tokens"' in raw[0][1][b"event"]
    assert b'"cost"' not in raw[0][1][b"event"] and b'"attempts"' not in raw[0][1][b"event"]


async def test_a_budget_without_a_price_is_refused_at_admission(
    start_worker: StartWorker, client: Client
) -> None:
    await start_worker()
    job_id = await client.enqueue(model="tokenwire/sim;tokens=5", input="x", budget=1.0)
    (error,) = await _events(client, job_id)
    assert isinstance(error, Error) and error.code == "invalid_job"
    assert "no price for model 'tokenwire/sim;tokens=5'" in error.message
