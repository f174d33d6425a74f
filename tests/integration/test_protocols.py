"""Chat and completions jobs end to end, in every dialect the simulator speaks, on real Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from worker import ChatMessage, Client, Done, Job, Params, Start, Token
from worker.client import Received
from worker.jobs import Escalate

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Why is the sky blue?"),
]


async def collect(client: Client, job_id: str) -> list[Received]:
    return [item async for item in client.subscribe(job_id, timeout=30)]


def tokens(items: list[Received]) -> list[Token]:
    return [i.event for i in items if isinstance(i.event, Token)]


@pytest.mark.parametrize("dialect", ["openai", "together", "vllm", "llamacpp"])
async def test_chat_jobs_in_every_dialect(start_worker: StartWorker, client: Client, dialect: str) -> None:
    await start_worker()
    job = Job(
        model=f"tokenwire/sim;tokens=30;dialect={dialect}",
        api="chat",
        messages=MESSAGES,
        params=Params(top_logprobs=5, max_tokens=64),
    )
    items = await collect(client, await client.enqueue(job))
    start, done = items[0].event, items[-1].event
    assert isinstance(start, Start) and start.api == "chat"
    assert isinstance(done, Done), done
    toks = tokens(items)
    answer = [t for t in toks if not t.special and t.channel == "content"]
    assert answer and done.text
    if dialect != "llamacpp":  # llama-server drops the pieces of a split character (wire-formats §5.2)
        assert done.text == "".join(t.text for t in answer)
    scored = [t for t in answer if t.logprob is not None]
    assert scored and done.confidence is not None and 0 < done.confidence <= 1
    with_top = [t for t in scored if t.top_logprobs]
    assert with_top and all(len(t.top_logprobs or []) <= 5 for t in with_top)
    assert all(t.topk is not None for t in with_top)
    assert done.summary.n_topk == len([t for t in answer if t.topk is not None])
    if dialect != "llamacpp":  # llama-server sends usage only when asked in its own way
        assert done.usage.input_tokens is not None


@pytest.mark.parametrize("dialect", ["openai", "vllm", "llamacpp"])
async def test_completions_jobs(start_worker: StartWorker, client: Client, dialect: str) -> None:
    await start_worker()
    job = Job(
        model=f"tokenwire/sim;tokens=25;dialect={dialect}",
        api="completions",
        input="The capital of France is",
        params=Params(top_logprobs=3),
    )
    items = await collect(client, await client.enqueue(job))
    done = items[-1].event
    assert isinstance(done, Done), done
    answer = [t for t in tokens(items) if not t.special]
    assert done.text == "".join(t.text for t in answer)
    assert any(t.top_logprobs for t in answer) and done.confidence is not None


async def test_chat_escalation(start_worker: StartWorker, client: Client) -> None:
    await start_worker()
    job = Job(
        model="tokenwire/sim-cheap;tokens=30",
        api="chat",
        messages=MESSAGES,
        params=Params(top_logprobs=2),
        escalate=Escalate(model="tokenwire/sim-strong;tokens=10", below=0.999, after_tokens=4),
    )
    items = await collect(client, await client.enqueue(job))
    starts = [i.event for i in items if isinstance(i.event, Start)]
    assert [s.model for s in starts] == ["tokenwire/sim-cheap;tokens=30", "tokenwire/sim-strong;tokens=10"]
    done = items[-1].event
    assert isinstance(done, Done) and done.escalation is not None and done.escalation.tokens == 4
