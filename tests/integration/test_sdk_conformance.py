"""The simulator's streams as the providers' own SDKs read them, and our adapters agreeing with them.

The official ``openai`` package reads the chat and legacy completions streams (its client over
loopback, and its pydantic types validating every raw chunk); ``huggingface_hub``'s TGI types read
the native and ``/generate_stream`` events. Then the same raw ``data`` strings go through our
adapters, which must see what the SDK sees: token by token the same text, logprob, bytes and top-k
list, the same finish reason, usage and text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pydantic
import pytest
from httpx_sse import aconnect_sse
from huggingface_hub import TextGenerationStreamOutput
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.completion_choice import Logprobs

from worker.sim import SimConfig, serve
from worker.upstream.base import Parsed, TokenRecord
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.native import NativeAdapter

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(5.0)
READ_LIMIT = 10.0  # seconds for any one stream in these tests
MODEL = "tokenwire/sim-small;tokens=60;utf8split=1"  # split characters: partial bytes on the wire
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers."}]
PROMPT = "Tell me about rivers."
CHAT = "/v1/openai/chat/completions"
COMPLETIONS = "/v1/openai/completions"

Top = tuple[tuple[str, float | None, bytes | None], ...]
Tok = tuple[str, float | None, bytes | None, Top]


@dataclass
class Seen:
    """What one reader made of a whole stream."""

    tokens: list[Tok] = field(default_factory=list)
    text: str = ""
    finish: list[str] = field(default_factory=list)
    usage: tuple[int | None, int | None] | None = None


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    async with serve(SimConfig(seed=3, tokens_per_second=0)) as url:
        yield url


@pytest.fixture
async def client(sim: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{sim}/v1/openai", api_key="x", max_retries=0, timeout=5.0) as c:
        yield c


async def _data(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[str]:
    """The raw SSE data strings of one stream."""
    out: list[str] = []
    async with asyncio.timeout(READ_LIMIT), aconnect_sse(http, "POST", url, json=body) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            out.append(sse.data)
    return out


def _raw(values: Iterable[int] | None) -> bytes | None:
    return None if values is None else bytes(values)


def _ours(parse: Callable[[str], Parsed], data: Sequence[str]) -> Seen:
    """Our adapter's reading of the stream (``parse``: an adapter's ``parse`` method)."""
    seen = Seen()
    for payload in data:
        parsed = parse(payload)
        seen.tokens += [_record(r) for r in parsed.tokens]
        seen.text += parsed.text or ""
        if parsed.end is not None:
            seen.finish.append(parsed.end.finish_reason)
        if parsed.usage_input_tokens is not None or parsed.usage_output_tokens is not None:
            seen.usage = (parsed.usage_input_tokens, parsed.usage_output_tokens)
    return seen


def _record(r: TokenRecord) -> Tok:
    top = tuple((c.token, c.logprob, c.bytes) for c in r.top or ())
    return (r.text, r.logprob, r.bytes, top)


# --- chat ------------------------------------------------------------------------------------


def _chat_body(model: str = MODEL, top_logprobs: int = 5) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "stream": True,
        "seed": 1,
        "logprobs": True,
        "top_logprobs": top_logprobs,
        "stream_options": {"include_usage": True},
    }


def _validate_chat(data: Sequence[str]) -> list[ChatCompletionChunk]:
    assert data[-1] == "[DONE]"
    return [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]


def _sdk_chat(chunks: Iterable[ChatCompletionChunk]) -> Seen:
    seen = Seen()
    for chunk in chunks:
        if chunk.usage is not None:
            seen.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            seen.text += choice.delta.content or ""
            if choice.finish_reason is not None:
                seen.finish.append(choice.finish_reason)
            entries = choice.logprobs.content if choice.logprobs is not None else None
            for e in entries or ():
                top = tuple((t.token, t.logprob, _raw(t.bytes)) for t in e.top_logprobs)
                seen.tokens.append((e.token, e.logprob, _raw(e.bytes), top))
    return seen


def _dump(chunks: Iterable[pydantic.BaseModel]) -> list[dict[str, Any]]:
    return [c.model_dump(exclude={"created"}) for c in chunks]


async def test_openai_client_reads_the_chat_stream(
    sim: str, http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    async with asyncio.timeout(READ_LIMIT):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            seed=1,
            logprobs=True,
            top_logprobs=5,
            stream_options={"include_usage": True},
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
    data = await _data(http, sim + CHAT, _chat_body())
    assert _dump(chunks) == _dump(_validate_chat(data))
    seen = _sdk_chat(chunks)
    assert len(seen.tokens) == 60
    assert any(token.startswith("\\x") for token, *_ in seen.tokens)  # OpenAI's partial-byte form
    assert seen.finish == ["stop"]
    assert seen.usage is not None and seen.usage[1] == 61


@pytest.mark.parametrize("dialect", ["openai", "vllm", "llamacpp"])
async def test_chat_adapter_agrees_with_the_sdk(sim: str, http: httpx.AsyncClient, dialect: str) -> None:
    data = await _data(http, sim + CHAT, _chat_body(f"{MODEL};dialect={dialect};per_chunk=2"))
    sdk = _sdk_chat(_validate_chat(data))
    ours = _ours(ChatAdapter().parse, data)
    assert sdk.tokens
    assert ours.tokens == sdk.tokens
    assert ours.text == sdk.text
    assert ours.finish == sdk.finish == ["stop"]
    assert ours.usage == sdk.usage
    assert sdk.usage is not None and sdk.usage[1] == 61


async def test_openai_client_raises_the_in_stream_error(client: openai.AsyncOpenAI) -> None:
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError, match="Request failed during generation"):
        async with asyncio.timeout(READ_LIMIT):
            stream = await client.chat.completions.create(
                model="tokenwire/sim-small;fault=error;after=3", messages=MESSAGES, stream=True
            )
            async with stream:
                async for chunk in stream:
                    received.append(chunk)
    assert len(received) == 1 + 3  # the role chunk and three tokens


async def test_openai_client_maps_the_status_fault(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        async with asyncio.timeout(READ_LIMIT):
            await client.chat.completions.create(
                model="tokenwire/sim-small;fault=status;status=429", messages=MESSAGES, stream=True
            )
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"


# --- legacy completions ----------------------------------------------------------------------


def _completion_body(model: str = MODEL) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": PROMPT,
        "stream": True,
        "seed": 1,
        "logprobs": 5,
        "stream_options": {"include_usage": True},
    }


def _validate_completion(payload: str) -> Completion:
    """``Completion.model_validate``. The SDK types ``finish_reason`` as required and non-null,
    while OpenAI streams ``null`` until the end (the SDK's own client does not validate), so a
    ``None`` there is the one error allowed: the chunk is then validated with it filled in, and the
    ``None`` put back."""
    obj = json.loads(payload)
    try:
        return Completion.model_validate(obj)
    except pydantic.ValidationError as exc:
        assert {(e["loc"], e["input"]) for e in exc.errors()} == {(("choices", 0, "finish_reason"), None)}
    filled = {**obj, "choices": [{**c, "finish_reason": "length"} for c in obj["choices"]]}
    chunk = Completion.model_validate(filled)
    chunk.choices = [c.model_copy(update={"finish_reason": None}) for c in chunk.choices]
    return chunk


def _sdk_completions(chunks: Iterable[Completion]) -> Seen:
    seen = Seen()
    for chunk in chunks:
        if chunk.usage is not None:
            seen.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            seen.text += choice.text
            if choice.finish_reason is not None:
                seen.finish.append(choice.finish_reason)
            if choice.logprobs is not None:
                seen.tokens += _legacy_tokens(choice.logprobs)
    return seen


def _validate_completions(data: Sequence[str]) -> list[Completion]:
    assert data[-1] == "[DONE]"
    return [_validate_completion(d) for d in data[:-1]]


def _legacy_tokens(logprobs: Logprobs) -> list[Tok]:
    tokens = logprobs.tokens or []
    values = logprobs.token_logprobs or []
    tops = logprobs.top_logprobs or [{} for _ in tokens]
    rows = zip(tokens, values, tops, strict=True)
    return [(t, lp, None, tuple((k, v, None) for k, v in top.items())) for t, lp, top in rows]


async def test_openai_client_reads_the_completions_stream(
    sim: str, http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    async with asyncio.timeout(READ_LIMIT):
        stream = await client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            stream=True,
            seed=1,
            logprobs=5,
            stream_options={"include_usage": True},
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
    data = await _data(http, sim + COMPLETIONS, _completion_body())
    validated = _validate_completions(data)
    assert _dump(chunks) == _dump(validated)
    seen = _sdk_completions(chunks)
    assert len(seen.tokens) == 60
    assert any(token.startswith("bytes:\\x") for token, *_ in seen.tokens)
    assert seen.finish == ["stop"]


@pytest.mark.parametrize("dialect", ["openai", "vllm"])
async def test_completions_adapter_agrees_with_the_sdk(
    sim: str, http: httpx.AsyncClient, dialect: str
) -> None:
    data = await _data(http, sim + COMPLETIONS, _completion_body(f"{MODEL};dialect={dialect};per_chunk=3"))
    sdk = _sdk_completions(_validate_completions(data))
    ours = _ours(CompletionsAdapter().parse, data)
    assert len(sdk.tokens) == 60
    assert ours.tokens == sdk.tokens
    assert ours.text == sdk.text
    assert ours.finish == sdk.finish == ["stop"]
    assert ours.usage == sdk.usage
    assert sdk.usage is not None and sdk.usage[1] == 61


# --- native / TGI ----------------------------------------------------------------------------


def _hf(data: Sequence[str]) -> list[TextGenerationStreamOutput]:
    return [TextGenerationStreamOutput.parse_obj_as_instance(d) for d in data]


def _hf_seen(outputs: Sequence[TextGenerationStreamOutput]) -> Seen:
    seen = Seen()
    for out in outputs:
        top = tuple((t.text, t.logprob, None) for t in out.top_tokens or ())
        seen.tokens.append((out.token.text, out.token.logprob, None, top))
        if out.details is not None:
            seen.finish.append(out.details.finish_reason)
    return seen


def _ids(outputs: Sequence[TextGenerationStreamOutput]) -> list[tuple[int, bool, list[int]]]:
    return [(o.token.id, o.token.special, [t.id for t in o.top_tokens or ()]) for o in outputs]


def _our_ids(data: Sequence[str]) -> list[tuple[int | None, bool | None, list[int | None]]]:
    adapter = NativeAdapter()
    records = [r for d in data for r in adapter.parse(d).tokens]
    return [(r.token_id, r.special, [c.token_id for c in r.top or ()]) for r in records]


async def test_native_stream_parses_as_huggingface_tgi_output(sim: str, http: httpx.AsyncClient) -> None:
    body = {"input": PROMPT, "stream": True, "top_n_tokens": 5, "seed": 1}
    data = await _data(http, f"{sim}/v1/inference/{MODEL}", body)
    outputs = _hf(data)
    assert len(outputs) == 61
    assert all(o.top_tokens is not None and len(o.top_tokens) == 5 for o in outputs)
    final = outputs[-1]
    assert final.token.special
    assert final.details is not None
    assert final.details.finish_reason == "eos_token"
    assert final.details.generated_tokens == 61
    assert final.generated_text == "".join(o.token.text for o in outputs[:-1])
    ours = _ours(NativeAdapter().parse, data)
    hf = _hf_seen(outputs)
    assert ours.tokens == hf.tokens
    assert ours.finish == hf.finish
    assert _our_ids(data) == _ids(outputs)


async def test_tgi_stream_parses_as_huggingface_tgi_output(sim: str, http: httpx.AsyncClient) -> None:
    body = {
        "inputs": PROMPT,
        "model": MODEL,
        "parameters": {"max_new_tokens": 20, "details": True, "top_n_tokens": 3, "seed": 1},
    }
    data = await _data(http, f"{sim}/generate_stream", body)
    outputs = _hf(data)
    assert [o.index for o in outputs] == list(range(1, 21))
    details = outputs[-1].details
    assert details is not None
    assert (details.finish_reason, details.generated_tokens, details.seed) == ("length", 20, 1)
    assert details.input_length > 0
    assert _ours(NativeAdapter().parse, data).tokens == _hf_seen(outputs).tokens
    assert _our_ids(data) == _ids(outputs)
