"""Routing by confidence (escalation) and top-k metrics, end to end on real Redis + the simulator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from worker import Client, Done, Error, Job, Params, Provider, Start, Token
from worker.client import Received
from worker.jobs import Escalate

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
CHEAP = "tokenwire/sim-cheap;tokens=30"
STRONG = "tokenwire/sim-strong;tokens=12"


async def collect(client: Client, job_id: str) -> list[Received]:
    return [item async for item in client.subscribe(job_id, timeout=30)]


def by_attempt(items: list[Received], attempt: int) -> list[Token]:
    return [i.event for i in items if isinstance(i.event, Token) and i.event.attempt == attempt]


async def test_escalates_after_n_tokens_when_not_confident(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=0.999, after_tokens=5)
    job_id = await client.enqueue(Job(model=CHEAP, input="classify this", escalate=esc))
    items = await collect(client, job_id)
    starts = [i.event for i in items if isinstance(i.event, Start)]
    assert [(s.attempt, s.model) for s in starts] == [(1, CHEAP), (2, STRONG)]
    assert starts[1].reason is not None and "after 5 tokens" in starts[1].reason
    assert "< 0.999" in starts[1].reason
    assert len(by_attempt(items, 1)) == 5  # the cheap stream was stopped there
    assert [i.restarted for i in items if isinstance(i.event, Start)] == [False, True]
    done = items[-1].event
    assert isinstance(done, Done) and done.attempt == 2
    strong_tokens = by_attempt(items, 2)
    assert len(strong_tokens) == 13
    assert done.text == "".join(t.text for t in strong_tokens if not t.special)
    assert done.escalation is not None
    assert done.escalation.from_model == CHEAP and done.escalation.from_attempt == 1
    assert done.escalation.tokens == 5 and done.escalation.summary.n_tokens == 5
    assert done.escalation.confidence == by_attempt(items, 1)[-1].confidence
    state = await client.status(job_id)
    assert state is not None and state.escalated_from == CHEAP and state.attempt == 2


async def test_escalates_at_the_end_without_after_tokens(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=0.999)
    job_id = await client.enqueue(Job(model="tokenwire/sim-cheap;tokens=8", input="x", escalate=esc))
    items = await collect(client, job_id)
    assert len(by_attempt(items, 1)) == 9  # the cheap stream ran to its end
    starts = [i.event for i in items if isinstance(i.event, Start)]
    assert len(starts) == 2 and starts[1].reason is not None and "at the end" in starts[1].reason
    done = items[-1].event
    assert isinstance(done, Done) and done.escalation is not None and done.escalation.tokens == 9


async def test_a_confident_answer_is_not_escalated(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=1e-9, after_tokens=3)
    job_id = await client.enqueue(Job(model=CHEAP, input="x", escalate=esc))
    items = await collect(client, job_id)
    assert sum(isinstance(i.event, Start) for i in items) == 1
    done = items[-1].event
    assert isinstance(done, Done) and done.escalation is None and done.attempt == 1


async def test_escalation_to_an_unknown_provider_is_rejected_up_front(
    start_worker: StartWorker, client: Client
) -> None:
    await start_worker()
    esc = Escalate(model=STRONG, below=0.5, provider="nowhere")
    job_id = await client.enqueue(Job(model=CHEAP, input="x", escalate=esc))
    items = await collect(client, job_id)
    assert len(items) == 1 and isinstance(items[0].event, Error)
    assert items[0].event.code == "unknown_provider" and "escalate:" in items[0].event.message


async def test_native_top_k_metrics_in_tokens_and_summary(
    start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    providers = {"sim": Provider(native_url=f"{sim_url}/v1/inference/{{model}}", supports_top_n_tokens=True)}
    await start_worker(providers=providers)
    job_id = await client.enqueue(
        Job(model="tokenwire/sim;tokens=20", input="top k please", params=Params(top_logprobs=4))
    )
    items = await collect(client, job_id)
    tokens = [t for t in by_attempt(items, 1) if not t.special]
    assert tokens and all(t.top_logprobs is not None and 1 <= len(t.top_logprobs) <= 4 for t in tokens)
    assert all(t.topk is not None for t in tokens)
    for t in tokens:
        assert t.topk is not None and t.topk.chosen_rank >= 1
        assert 0.0 <= t.topk.tail_mass <= 1.0 and t.topk.entropy_lump <= t.topk.entropy_lb + 1e-12
    done = items[-1].event
    assert isinstance(done, Done)
    assert done.summary.n_topk == len(tokens) and done.summary.mean_entropy_lb is not None
    assert tokens[-1].topk is not None and tokens[-1].topk.n_not_top1 == done.summary.n_not_top1
