"""The Responses API, Gemini and SGLang end to end: the simulator's dialects read by our reader and
adapters (and, for Responses, by openai-python's own types), jobs through real Redis and a worker,
and the capability fallback when a model refuses logprobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pydantic
import pytest
from httpx_sse import aconnect_sse
from openai.types.responses import ResponseStreamEvent

from worker import ChatMessage, Client, Done, Error, Job, Params, Start, Token
from worker.client import Received
from worker.settings import Provider
from worker.upstream.http import StreamLimits, open_sse
from worker.upstream.responses import ResponsesAdapter

from .conftest import RunningWorker

pytestmark = pytest.mark.integration

StartWorker = Callable[..., Awaitable[RunningWorker]]
MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Why is the sky blue?"),
]
SDK = pydantic.TypeAdapter(ResponseStreamEvent)
LIMITS = StreamLimits(max_event_bytes=1 << 20, max_stream_bytes=1 << 26, max_tokens=4096, stall_seconds=10.0)


def providers(sim_url: str) -> dict[str, Provider]:
    return {
        "sim": Provider(
            native_url=f"{sim_url}/v1/inference/{{model}}",
            chat_url=f"{sim_url}/v1/openai/chat/completions",
            responses_url=f"{sim_url}/v1/responses",
            gemini_url=f"{sim_url}/v1beta/models/{{model}}:streamGenerateContent?alt=sse",
            sglang_url=f"{sim_url}/generate?model={{model}}",
        )
    }


async def collect(client: Client, job_id: str) -> list[Received]:
    return [item async for item in client.subscribe(job_id, timeout=30)]


def tokens(items: list[Received]) -> list[Token]:
    return [i.event for i in items if isinstance(i.event, Token)]


async def stats(sim_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{sim_url}/stats")).json()  # type: ignore[no-any-return]


async def test_the_responses_stream_is_what_the_sdk_reads_and_our_adapter_agrees(sim_url: str) -> None:
    """The oracle: every raw event validates as openai-python's ResponseStreamEvent; our parser
    sees the SDK's tokens (several per delta), logprobs, text and usage."""
    body = {
        "model": "tokenwire/sim;tokens=40;per_chunk=3;utf8split=1;reasoning=2",
        "input": [{"role": "user", "content": "Tell me about rivers."}],
        "stream": True,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
    }
    raw: list[tuple[str, str]] = []
    async with (
        httpx.AsyncClient() as http,
        asyncio.timeout(10),
        aconnect_sse(http, "POST", f"{sim_url}/v1/responses", json=body) as source,
    ):
        async for sse in source.aiter_sse():
            raw.append((sse.event, sse.data))
    sdk_tokens: list[tuple[str, float]] = []
    sdk_text, usage = "", None
    for name, data in raw:
        event = SDK.validate_json(data)
        assert event.type == name  # the SSE name is the JSON's type
        if event.type == "response.output_text.delta":
            assert "obfuscation" in json.loads(data)  # sent unless the request turns it off
            sdk_tokens += [(lp.token, lp.logprob) for lp in event.logprobs]
            sdk_text += event.delta
        elif event.type == "response.completed":
            assert event.response.usage is not None
            usage = (event.response.usage.input_tokens, event.response.usage.output_tokens)
    assert any(len(json.loads(d).get("logprobs") or []) > 1 for _, d in raw)  # several tokens a delta
    parser = ResponsesAdapter().parser(Job(model="m", api="responses", messages=MESSAGES))
    ours, text, end, reasoning = [], "", None, []
    for _, data in raw:
        parsed = parser.parse(data)
        reasoning += [r.text for r in parsed.tokens if r.channel == "reasoning"]
        ours += [(r.text, r.logprob) for r in parsed.tokens]
        text += parsed.text or ""
        end = parsed.end or end
    ours = [t for t in ours if t[0] not in reasoning]
    assert ours == sdk_tokens and text == sdk_text and len(ours) >= 40
    assert end is not None and (end.input_tokens, end.output_tokens) == usage
    assert reasoning == ["Step 1 of my reasoning. ", "Step 2 of my reasoning. "]


async def test_named_pings_are_skipped_by_the_responses_reader(sim_url: str) -> None:
    """The reader passes `response.*` and `error` events to the Responses adapter and skips other
    names: the `named` fault's token-shaped `event: ping` adds nothing."""
    adapter = ResponsesAdapter()
    job = Job(model="tokenwire/sim;tokens=12;fault=named;after=4", api="responses", messages=MESSAGES)
    url, body = adapter.build_request(
        job, model_url=f"{sim_url}/v1/responses", settings=_settings(), provider=Provider()
    )
    parser, seen = adapter.parser(job), []
    async with (
        httpx.AsyncClient() as http,
        open_sse(http, url, body, {}, LIMITS, event_prefix="response.") as events,
    ):
        async for data in events:
            seen += [r.text for r in parser.parse(data).tokens]
    assert len(seen) == 12


def _settings() -> Any:
    from worker.settings import Settings

    return Settings()


CASES = {
    "responses": ("tokenwire/sim;tokens=30;per_chunk=4", "messages"),
    "gemini": ("tokenwire/sim;tokens=30;per_chunk=3;split_top=1", "messages"),
    "sglang-cumulative": ("tokenwire/sim;tokens=30;per_chunk=2", "input"),
    "sglang-incremental": ("tokenwire/sim;tokens=30;per_chunk=2;incremental=1", "input"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_jobs_in_each_new_dialect_end_done_with_their_tokens(
    case: str, start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    model, prompt = CASES[case]
    api = case.split("-")[0]
    await start_worker(providers=providers(sim_url))
    fields: dict[str, Any] = (
        {"messages": MESSAGES} if prompt == "messages" else {"input": "Why is the sky blue?"}
    )
    job = Job(model=f"{model};utf8split=1", api=api, params=Params(top_logprobs=3, max_tokens=64), **fields)  # type: ignore[arg-type]
    items = await collect(client, await client.enqueue(job))
    start, done = items[0].event, items[-1].event
    assert isinstance(start, Start) and start.api == api
    assert isinstance(done, Done), done
    answer = [t for t in tokens(items) if t.channel == "content" and not t.special]
    assert len(answer) == 30  # each token once: no delta, chunk or cumulative event counted twice
    assert done.text == "".join(t.text for t in answer)
    assert all(t.logprob is not None for t in answer)
    with_top = [t for t in answer if t.top_logprobs]
    assert len(with_top) >= 25 and all(len(t.top_logprobs or []) <= 3 for t in with_top)  # split pieces: none
    assert done.logprobs_available and done.logprobs_reason is None
    assert done.confidence is not None and 0 < done.confidence <= 1
    if api == "sglang":  # the matched EOS tuple is the one special token
        specials = [t for t in tokens(items) if t.special]
        assert len(specials) == 1 and specials[0].token_id == 2


@pytest.mark.parametrize("api", ["responses", "gemini", "chat"])
async def test_a_model_refusing_logprobs_streams_without_them_and_is_remembered(
    api: str, start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    """`preferred`: the refused request is retried once without logprobs in the same attempt,
    tokens have logprob null, done says why; the next job skips the refused request."""
    await start_worker(providers=providers(sim_url))
    model = "tokenwire/sim;tokens=10;nologprobs=1"
    job = Job(model=model, api=api, messages=MESSAGES, params=Params(top_logprobs=2))  # type: ignore[arg-type]
    items = await collect(client, await client.enqueue(job))
    done = items[-1].event
    assert isinstance(done, Done), done
    assert [i.event.attempt for i in items if isinstance(i.event, Start)] == [1]  # one attempt, one start
    answer = [t for t in tokens(items) if not t.special]
    assert len(answer) == 10 and all(t.logprob is None and not t.top_logprobs for t in answer)
    assert done.logprobs_available is False and done.logprobs_reason is not None
    assert done.logprobs_reason.startswith("provider 'sim' gives no logprobs for model 'tokenwire/sim;")
    assert "HTTP 400 from upstream" in done.logprobs_reason
    assert (await stats(sim_url))["faults"]["nologprobs"] == 1

    again = await collect(client, await client.enqueue(job.__class__(**{**_fields(job), "id": None})))
    second = again[-1].event
    assert isinstance(second, Done) and second.logprobs_available is False
    assert second.logprobs_reason is not None and second.logprobs_reason.endswith(" (remembered)")
    assert (await stats(sim_url))["faults"]["nologprobs"] == 1  # the refused request was not sent again


def _fields(job: Job) -> dict[str, Any]:
    return {f: getattr(job, f) for f in job.__struct_fields__}


@pytest.mark.parametrize("api", ["responses", "gemini"])
async def test_a_job_requiring_logprobs_fails_clearly(
    api: str, start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    await start_worker(providers=providers(sim_url))
    job = Job(model="tokenwire/sim;tokens=5;nologprobs=1", api=api, messages=MESSAGES, logprobs="required")  # type: ignore[arg-type]
    items = await collect(client, await client.enqueue(job))
    error = items[-1].event
    assert isinstance(error, Error) and error.code == "logprobs_unsupported"
    assert (
        "logprobs: required" in error.message
        and "gives no logprobs for model 'tokenwire/sim;" in error.message
    )
    assert not tokens(items)


FAULTS = [
    "fault=disconnect;after=5",
    "fault=status;status=503",
    "fault=error;after=3",
    "fault=malformed;after=2;then=end",
    "fault=stall;stall=30;after=4",
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.split(";")[0].removeprefix("fault="))
@pytest.mark.parametrize("api", ["responses", "gemini", "sglang"])
async def test_the_simulators_faults_apply_to_each_new_dialect(
    api: str, fault: str, start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    """Each fault, in the dialect's own shape (response.failed, Gemini's error object, SGLang's
    abort), fails the first request; the retry (a new attempt after tokens) ends done."""
    await start_worker(providers=providers(sim_url), stall_timeout_seconds=1.0, retry_base_seconds=0.05)
    model = f"tokenwire/sim;tokens=12;{fault};fail_first=1"
    prompt: dict[str, Any] = {"input": "Why?"} if api == "sglang" else {"messages": MESSAGES}
    job = Job(model=model, api=api, params=Params(top_logprobs=1), **prompt)  # type: ignore[arg-type]
    items = await collect(client, await client.enqueue(job))
    done = items[-1].event
    assert isinstance(done, Done), done
    last = max(i.event.attempt for i in items if isinstance(i.event, Start))
    answer = [t for t in tokens(items) if t.attempt == done.attempt and not t.special]
    assert len(answer) == 12 and done.text == "".join(t.text for t in answer)
    assert last == done.attempt
    faults = (await stats(sim_url))["faults"]
    assert sum(faults.values()) == 1


@pytest.mark.parametrize("api", ["responses", "gemini"])
async def test_reasoning_is_its_own_channel_end_to_end(
    api: str, start_worker: StartWorker, client: Client, sim_url: str
) -> None:
    await start_worker(providers=providers(sim_url))
    job = Job(model="tokenwire/sim;tokens=10;reasoning=3", api=api, messages=MESSAGES)  # type: ignore[arg-type]
    items = await collect(client, await client.enqueue(job))
    done = items[-1].event
    assert isinstance(done, Done), done
    thoughts = [t for t in tokens(items) if t.channel == "reasoning"]
    answer = [t for t in tokens(items) if t.channel == "content" and not t.special]
    assert [t.text for t in thoughts] == [f"Step {i} of my reasoning. " for i in (1, 2, 3)]
    assert done.reasoning_text == "".join(t.text for t in thoughts)
    assert len(answer) == 10 and done.text == "".join(t.text for t in answer)
    assert "reasoning" not in done.text and done.summary.n_tokens == 10


GEMINI_KEY = "AIzaSy" + "TokenwireTestKey0123456789abcdefg"  # the shape of a Google API key


@pytest.mark.parametrize(("echo", "code"), [("error", "bad_request"), ("status", "unauthorized")])
async def test_a_gemini_upstream_echoing_its_key_never_shows_it(
    echo: str,
    code: str,
    start_worker: StartWorker,
    client: Client,
    sim_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key goes in x-goog-api-key; an upstream echoing it (in-stream error, a 401 body) is
    redacted, by its shape alone here (this process installed no Redactor knowing the key)."""
    monkeypatch.setenv("TW_TEST_GEMINI_KEY", GEMINI_KEY)
    gemini = Provider(
        gemini_url=f"{sim_url}/v1beta/models/{{model}}:streamGenerateContent?alt=sse",
        api_key_env="TW_TEST_GEMINI_KEY",
    )
    await start_worker(providers={"sim": gemini})
    job = Job(
        model=f"tokenwire/sim;tokens=8;fault=echo_key;echo={echo};after=2", api="gemini", messages=MESSAGES
    )
    items = await collect(client, await client.enqueue(job))
    error = items[-1].event
    assert isinstance(error, Error) and error.code == code, error
    assert "[redacted]" in error.message
    assert all(GEMINI_KEY[:12] not in json.dumps(msgspec_to_builtins(i.event)) for i in items)


def msgspec_to_builtins(event: object) -> object:
    import msgspec

    return msgspec.to_builtins(event)
