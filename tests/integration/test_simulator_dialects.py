"""tokenwire sim's OpenAI-style routes over loopback HTTP: chat and legacy completions in the
OpenAI, vLLM, llama.cpp and Together dialects; shapes, determinism, top-k lists, faults."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from worker.sim.generate import estimate_tokens
from worker.sim.openai_api import render_messages

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(5.0)
READ_LIMIT = 10.0  # seconds for any one stream read in these tests
MODEL = "tokenwire/sim-small"
CHAT = "/v1/openai/chat/completions"
COMPLETIONS = "/v1/openai/completions"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers."}]
PROMPT = render_messages((m["role"], m["content"]) for m in MESSAGES)
DIALECTS = ["openai", "vllm", "llamacpp", "together"]
HEAD_KEYS = {"id", "object", "created", "model"}

Obj = dict[str, Any]


def _chat_body(model: str, **extra: Any) -> Obj:
    return {"model": model, "messages": MESSAGES, "stream": True, **extra}


def _completion_body(model: str, **extra: Any) -> Obj:
    return {"model": model, "prompt": "Tell me about rivers.", "stream": True, **extra}


async def _data(http: httpx.AsyncClient, url: str, path: str, body: Obj) -> list[str]:
    """The SSE data strings of one stream (status must be 200)."""
    out: list[str] = []
    async with asyncio.timeout(READ_LIMIT), aconnect_sse(http, "POST", url + path, json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream"
        async for sse in source.aiter_sse():
            out.append(sse.data)
    return out


async def _chunks(http: httpx.AsyncClient, url: str, path: str, body: Obj) -> list[Obj]:
    """The JSON chunks of a stream that must end with exactly one ``[DONE]``."""
    data = await _data(http, url, path, body)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    return [json.loads(d) for d in data[:-1]]


async def _chat(http: httpx.AsyncClient, url: str, model: str, **extra: Any) -> list[Obj]:
    return await _chunks(http, url, CHAT, _chat_body(model, **extra))


async def _completions(http: httpx.AsyncClient, url: str, model: str, **extra: Any) -> list[Obj]:
    return await _chunks(http, url, COMPLETIONS, _completion_body(model, **extra))


def _choices(chunks: list[Obj]) -> list[Obj]:
    return [c["choices"][0] for c in chunks if c["choices"]]


def _content(chunks: list[Obj]) -> str:
    return "".join(choice["delta"].get("content") or "" for choice in _choices(chunks))


def _entries(chunks: list[Obj]) -> list[Obj]:
    """Every ``logprobs.content`` entry, in order."""
    out: list[Obj] = []
    for choice in _choices(chunks):
        logprobs = choice.get("logprobs")
        if logprobs:
            out.extend(logprobs["content"])
    return out


def _finish(chunks: list[Obj]) -> list[str]:
    return [choice["finish_reason"] for choice in _choices(chunks) if choice["finish_reason"] is not None]


def _usage(chunks: list[Obj]) -> list[Obj]:
    return [c["usage"] for c in chunks if c.get("usage")]


def _check_top(logprob: float, token: str, top: list[tuple[str, float]], k: int) -> None:
    """A top-k list consistent with its sampled token."""
    values = [lp for _, lp in top]
    assert 0 < len(top) <= k
    assert values == sorted(values, reverse=True)
    assert math.fsum(math.exp(lp) for lp in values) < 1.0
    listed = dict(top)
    if logprob > values[-1]:  # it ranks in the top k: it is listed, with its own logprob
        assert listed.get(token) == logprob
    if token in listed:
        assert listed[token] == logprob


# --- openai ----------------------------------------------------------------------------------


async def test_openai_chat_shape(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(
        http, sim, f"{MODEL};tokens=12", logprobs=True, top_logprobs=3, stream_options={"include_usage": True}
    )
    assert len(chunks) == 1 + 12 + 1 + 1
    for chunk in chunks:
        assert set(chunk) == HEAD_KEYS | {"system_fingerprint", "choices", "usage"}
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MODEL
        assert chunk["id"] == chunks[0]["id"] and chunk["id"].startswith("chatcmpl-")
        assert abs(chunk["created"] - time.time()) < 60
        assert chunk["system_fingerprint"] == chunks[0]["system_fingerprint"]
    role, tokens, finish, usage = chunks[0], chunks[1:-2], chunks[-2], chunks[-1]
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": {"content": [], "refusal": None},
            "finish_reason": None,
        }
    ]
    for chunk in tokens:
        choice = chunk["choices"][0]
        assert chunk["usage"] is None
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["finish_reason"] is None
        assert choice["logprobs"]["refusal"] is None
        (entry,) = choice["logprobs"]["content"]
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["token"] == choice["delta"]["content"]
        assert bytes(entry["bytes"]) == entry["token"].encode()
        assert len(entry["top_logprobs"]) <= 3
        for top in entry["top_logprobs"]:
            assert set(top) == {"token", "logprob", "bytes"}
            assert bytes(top["bytes"]) == top["token"].encode()
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert finish["usage"] is None
    assert usage["choices"] == []
    prompt_tokens = estimate_tokens(PROMPT)
    assert usage["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 13,
        "total_tokens": prompt_tokens + 13,
    }


async def test_openai_chat_without_logprobs_or_usage(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=5")
    assert len(chunks) == 1 + 5 + 1
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert _finish(chunks) == ["stop"]


async def test_max_tokens_ends_with_length(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, MODEL, max_tokens=7, stream_options={"include_usage": True})
    assert _finish(chunks) == ["length"]
    assert len(_choices(chunks)) == 1 + 7 + 1
    assert _usage(chunks)[0]["completion_tokens"] == 7
    newer = await _chat(http, sim, MODEL, max_completion_tokens=4)
    assert _finish(newer) == ["length"]
    assert len(newer) == 1 + 4 + 1


async def test_same_request_gives_the_same_chunks(sim: str, http: httpx.AsyncClient) -> None:
    def strip(chunks: list[Obj]) -> list[Obj]:
        return [{k: v for k, v in c.items() if k != "created"} for c in chunks]

    body = {"logprobs": True, "top_logprobs": 4, "seed": 5}
    first = await _chat(http, sim, f"{MODEL};tokens=40", **body)
    second = await _chat(http, sim, f"{MODEL};tokens=40", **body)
    other = await _chat(http, sim, f"{MODEL};tokens=40", **{**body, "seed": 6})
    assert strip(first) == strip(second)
    assert _content(first) != _content(other)


async def test_chat_tokens_match_native_for_the_rendered_prompt(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=60", logprobs=True, seed=3)
    native = await _data(
        http,
        sim,
        f"/v1/inference/{MODEL};tokens=60",
        {"input": PROMPT, "stream": True, "seed": 3},
    )
    events = [json.loads(d) for d in native]
    assert [e["logprob"] for e in _entries(chunks)] == [e["token"]["logprob"] for e in events[:-1]]
    assert _content(chunks) == events[-1]["generated_text"]


async def test_utf8_split_openai_escapes_partial_bytes(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=300;utf8split=1", logprobs=True, top_logprobs=2)
    entries = _entries(chunks)
    partial = [e for e in entries if e["token"].startswith("\\x")]
    assert partial
    for entry in partial:
        assert len(entry["bytes"]) == 1
        assert entry["token"] == f"\\x{entry['bytes'][0]:02x}"
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == _content(chunks)
    assert any(not ch.isascii() for ch in _content(chunks))
    # the piece completing a character carries it in delta.content; the others carry ""
    pieces = [c for c in _choices(chunks)[1:-1] if c["logprobs"]["content"][0]["token"].startswith("\\x")]
    completed = [c["delta"]["content"] for c in pieces if c["delta"]["content"]]
    assert len(completed) == len([e for e in partial if e["bytes"][0] >= 0xC0])  # one per lead byte
    assert all(len(ch) == 1 and not ch.isascii() for ch in completed)


async def test_sentinel_marks_unlikely_tokens(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=300;sentinel=1", logprobs=True, top_logprobs=5)
    marked = [e for e in _entries(chunks) if e["logprob"] == -9999.0]
    assert 0 < len(marked) < 30
    for entry in marked:
        assert entry["token"] not in {t["token"] for t in entry["top_logprobs"]}
    plain = await _chat(http, sim, f"{MODEL};tokens=300", logprobs=True, top_logprobs=5)
    assert all(e["logprob"] > -9999.0 for e in _entries(plain))
    assert _content(plain) == _content(chunks)


@pytest.mark.parametrize("dialect", ["openai", "vllm", "llamacpp"])
async def test_chat_top_k_is_consistent(sim: str, http: httpx.AsyncClient, dialect: str) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=200;dialect={dialect}", logprobs=True, top_logprobs=5)
    entries = [e for e in _entries(chunks) if e["token"] or e["bytes"]]  # not vLLM's stop token
    assert len(entries) >= 190
    for entry in entries:
        top = [(t["token"], t["logprob"]) for t in entry["top_logprobs"]]
        _check_top(entry["logprob"], entry["token"], top, 5)
        if dialect == "llamacpp":
            assert all(isinstance(t["id"], int) for t in entry["top_logprobs"])


@pytest.mark.parametrize("dialect", ["openai", "vllm", "together"])
async def test_completions_top_k_is_consistent(sim: str, http: httpx.AsyncClient, dialect: str) -> None:
    chunks = await _completions(http, sim, f"{MODEL};tokens=200;dialect={dialect}", logprobs=5)
    count = 0
    for choice in _choices(chunks)[:-1]:
        logprobs = choice["logprobs"]
        for token, logprob, top in zip(
            logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
        ):
            assert token in top  # the sampled token is always listed: up to k + 1 entries
            assert top[token] == logprob
            others = sorted(top.items(), key=lambda kv: -kv[1])
            _check_top(logprob, token, others, 6)
            count += 1
    assert count == 200


# --- every dialect ---------------------------------------------------------------------------


async def test_every_dialect_streams_the_same_text(sim: str, http: httpx.AsyncClient) -> None:
    texts = set()
    for dialect in DIALECTS:
        model = f"{MODEL};tokens=80;utf8split=1;dialect={dialect}"
        chat = await _chat(http, sim, model, seed=9, logprobs=True)
        texts.add(_content(chat))
        legacy = await _completions(http, sim, model, seed=9, prompt=PROMPT)
        texts.add("".join(c["text"] for c in _choices(legacy)))
    assert len(texts) == 1
    assert len(texts.pop()) > 100


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_every_dialect_ends_with_usage_and_done(
    sim: str, http: httpx.AsyncClient, dialect: str
) -> None:
    model = f"{MODEL};tokens=6;dialect={dialect}"
    for chunks in (
        await _chat(http, sim, model, stream_options={"include_usage": True}),
        await _completions(http, sim, model, stream_options={"include_usage": True}),
    ):
        usage = _usage(chunks)
        assert len(usage) == 1
        assert usage[0]["completion_tokens"] == 7
        assert usage[0]["total_tokens"] == usage[0]["prompt_tokens"] + 7
        assert chunks[-1]["usage"] == usage[0]
        assert _finish(chunks) == ["eos" if dialect == "together" else "stop"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_route_aliases(sim: str, http: httpx.AsyncClient, path: str) -> None:
    body = _chat_body(f"{MODEL};tokens=3") if "chat" in path else _completion_body(f"{MODEL};tokens=3")
    data = await _data(http, sim, path, body)
    assert data[-1] == "[DONE]"
    assert len(data) == (1 if "chat" in path else 0) + 3 + 1 + 1


# --- vllm ------------------------------------------------------------------------------------


async def test_vllm_chat_shape(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(
        http,
        sim,
        f"{MODEL};tokens=10;dialect=vllm;per_chunk=3",
        logprobs=True,
        top_logprobs=2,
        stream_options={"include_usage": True},
    )
    assert all("system_fingerprint" not in c for c in chunks)
    assert all("usage" not in c for c in chunks[:-1])
    role = chunks[0]["choices"][0]
    assert role["delta"] == {"role": "assistant", "content": ""}
    assert role["logprobs"] is None
    assert role["stop_reason"] is None
    sizes = [len(c["choices"][0]["logprobs"]["content"]) for c in chunks[1:-1]]
    assert sizes == [3, 3, 3, 2]  # ten tokens three at a time, then the last one with the EOS
    last = chunks[-2]["choices"][0]
    assert last["finish_reason"] == "stop"
    assert last["stop_reason"] is None
    assert last["logprobs"]["content"][-1] == {
        "token": "",
        "logprob": -9999.0,
        "bytes": [],
        "top_logprobs": [],
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 11


async def test_vllm_replaces_partial_utf8(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};tokens=300;utf8split=1;dialect=vllm"
    entries = _entries(await _chat(http, sim, model, logprobs=True, top_logprobs=1))
    replaced = [e for e in entries if e["token"] == "\ufffd"]
    assert replaced
    assert all(e["bytes"] == [239, 191, 189] for e in replaced)
    assert all(e["logprob"] >= -9999.0 for e in entries)


async def test_vllm_stop_reason_names_the_stop_sequence(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};tokens=40;dialect=vllm"
    text = _content(await _chat(http, sim, model))
    stop = text[20:24]
    chunks = await _chat(http, sim, model, stop=[stop])
    last = _choices(chunks)[-1]
    assert last["finish_reason"] == "stop"
    assert last["stop_reason"] == stop


async def test_openai_stop_sequence_is_not_sent(sim: str, http: httpx.AsyncClient) -> None:
    text = _content(await _chat(http, sim, f"{MODEL};tokens=40"))
    stop = text[20:24]
    chunks = await _chat(http, sim, f"{MODEL};tokens=40", stop=stop)
    assert _finish(chunks) == ["stop"]
    assert len(_content(chunks)) < 24
    assert text.startswith(_content(chunks))


# --- llama.cpp -------------------------------------------------------------------------------


async def test_llamacpp_chat_shape(sim: str, http: httpx.AsyncClient) -> None:
    data = await _data(
        http,
        sim,
        CHAT,
        _chat_body(f"{MODEL};tokens=8;dialect=llamacpp;nolp_every=3", logprobs=True, top_logprobs=2),
    )
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for raw, chunk in zip(data, chunks, strict=False):
        assert list(chunk) == sorted(chunk)  # nlohmann::json order
        assert raw == json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
        assert set(chunk) == HEAD_KEYS | {"choices", "system_fingerprint"}
    assert chunks[0]["choices"] == [
        {"delta": {"role": "assistant", "content": None}, "finish_reason": None, "index": 0}
    ]
    tokens = [c["choices"][0] for c in chunks[1:-1]]
    assert len(tokens) == 8
    without = [i for i, choice in enumerate(tokens) if "logprobs" not in choice]
    assert without == [2, 5]  # every third token
    for choice in tokens:
        assert choice["delta"]["content"]
        for entry in choice.get("logprobs", {"content": []})["content"]:
            assert set(entry) == {"id", "token", "bytes", "logprob", "top_logprobs"}
            assert entry["token"] == choice["delta"]["content"]
    assert chunks[-1]["choices"] == [{"delta": {}, "finish_reason": "stop", "index": 0}]


async def test_llamacpp_drops_partial_utf8_pieces(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};tokens=300;utf8split=1"
    openai = await _chat(http, sim, model, logprobs=True)
    llama = await _chat(http, sim, f"{model};dialect=llamacpp", logprobs=True)
    assert _content(llama) == _content(openai)
    partial = [e for e in _entries(openai) if e["token"].startswith("\\x")]
    completing = [e for e in _entries(llama) if e["token"] == ""]
    assert completing
    assert all(len(e["bytes"]) == 1 and 0x80 <= e["bytes"][0] < 0xC0 for e in completing)
    assert len(_entries(llama)) == len(_entries(openai)) - len(partial) + len(completing)
    assert all(c["delta"].get("content") != "" for c in _choices(llama)[1:-1])


async def test_llamacpp_completions_use_content_entries(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _completions(http, sim, f"{MODEL};tokens=4;dialect=llamacpp", logprobs=2)
    assert all(c["object"] == "text_completion" for c in chunks)
    choices = _choices(chunks)
    assert len(choices) == 5
    for choice in choices[:-1]:
        (entry,) = choice["logprobs"]["content"]
        assert entry["token"] == choice["text"]
        assert len(entry["top_logprobs"]) == 2
    assert choices[-1] == {"finish_reason": "stop", "index": 0, "text": ""}


# --- together --------------------------------------------------------------------------------


async def test_together_chat_shape(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};tokens=6;dialect=together", logprobs=3, seed=11)
    assert len(chunks) == 7  # no role chunk; the EOS chunk ends it
    for chunk in chunks:
        assert set(chunk) == HEAD_KEYS | {"choices", "usage"}
        choice = chunk["choices"][0]
        assert set(choice) == {"index", "delta", "logprobs", "top_logprobs", "finish_reason", "seed"}
        assert set(choice["delta"]) == {"content", "token_id", "role"}
        assert isinstance(choice["logprobs"], float)
        assert isinstance(choice["top_logprobs"], dict)
        assert len(choice["top_logprobs"]) <= 3
    for chunk in chunks[:-1]:
        assert chunk["usage"] is None
        assert chunk["choices"][0]["finish_reason"] is None
        assert chunk["choices"][0]["seed"] is None
    last = chunks[-1]
    assert last["choices"][0]["delta"] == {"content": "", "token_id": 2, "role": "assistant"}
    assert last["choices"][0]["finish_reason"] == "eos"
    assert last["choices"][0]["seed"] == 11
    assert last["usage"]["completion_tokens"] == 7


async def test_together_without_logprobs_and_with_length(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _chat(http, sim, f"{MODEL};dialect=together", max_tokens=4)
    assert len(chunks) == 4
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert all("top_logprobs" not in c["choices"][0] for c in chunks)
    assert _finish(chunks) == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 4


# --- legacy completions ----------------------------------------------------------------------


async def test_openai_completions_shape(sim: str, http: httpx.AsyncClient) -> None:
    prompt = "Tell me about rivers."
    chunks = await _completions(
        http, sim, f"{MODEL};tokens=5", logprobs=2, stream_options={"include_usage": True}
    )
    assert len(chunks) == 5 + 1 + 1
    offset = len(prompt)
    for chunk in chunks[:-1]:
        assert set(chunk) == HEAD_KEYS | {"choices", "usage"}
        assert chunk["object"] == "text_completion"
        assert chunk["id"].startswith("cmpl-")
        assert chunk["usage"] is None
    for chunk in chunks[:-2]:
        choice = chunk["choices"][0]
        assert list(choice) == ["index", "text", "finish_reason", "logprobs"]
        logprobs = choice["logprobs"]
        assert logprobs["tokens"] == [choice["text"]]
        assert logprobs["text_offset"] == [offset]
        assert len(logprobs["top_logprobs"][0]) in (2, 3)
        offset += len(choice["text"])
    assert chunks[-2]["choices"] == [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}


async def test_completions_utf8_split_and_zero_logprobs(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _completions(http, sim, f"{MODEL};tokens=300;utf8split=1", logprobs=0)
    tokens = [t for c in _choices(chunks)[:-1] for t in c["logprobs"]["tokens"]]
    assert any(t.startswith("bytes:\\x") for t in tokens)
    assert all(c["logprobs"]["top_logprobs"] is None for c in _choices(chunks)[:-1])
    plain = await _completions(http, sim, f"{MODEL};tokens=300;utf8split=1")
    assert all(c["logprobs"] is None for c in _choices(plain))


async def test_vllm_completions_several_tokens_per_chunk(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _completions(http, sim, f"{MODEL};tokens=7;dialect=vllm;per_chunk=4", logprobs=1)
    choices = _choices(chunks)
    assert [len(c["logprobs"]["tokens"]) for c in choices[:-1]] == [4, 3]
    assert all("stop_reason" in c for c in choices)
    first = choices[0]["logprobs"]
    assert first["text_offset"][1] == first["text_offset"][0] + len(first["tokens"][0])
    assert choices[0]["text"] == "".join(first["tokens"])


async def test_together_completions_usage_on_the_finish_chunk(sim: str, http: httpx.AsyncClient) -> None:
    chunks = await _completions(http, sim, f"{MODEL};tokens=3;dialect=together", logprobs=1)
    assert _finish(chunks) == ["eos"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "eos"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


# --- request errors and faults ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "text"),
    [
        (CHAT, {"model": MODEL, "messages": MESSAGES}, "stream", "stream"),
        (CHAT, _chat_body(f"{MODEL};colour=blue"), "model", "colour"),
        (CHAT, _chat_body(MODEL, top_logprobs=3), "top_logprobs", "logprobs"),
        (CHAT, _chat_body(MODEL, top_logprobs=21, logprobs=True), None, "top_logprobs"),
        (CHAT, {"model": MODEL, "stream": True}, None, "messages"),
        (COMPLETIONS, {"model": MODEL, "stream": True, "prompt": 5}, None, "prompt"),
    ],
)
async def test_request_errors_are_openai_shaped(
    sim: str, http: httpx.AsyncClient, path: str, body: Obj, param: str | None, text: str
) -> None:
    response = await http.post(sim + path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert text in error["message"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_status_fault(sim: str, http: httpx.AsyncClient, dialect: str, path: str) -> None:
    model = f"{MODEL};fault=status;status=429;retry_after=2;dialect={dialect}"
    body = _chat_body(model) if path == CHAT else _completion_body(model)
    response = await http.post(sim + path, json=body)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    if dialect == "llamacpp":
        assert set(error) == {"code", "message", "type"}
        assert error["code"] == 429
    else:
        assert error == {
            "message": "Model busy, retry later",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }


async def test_status_fault_with_a_non_json_body(sim: str, http: httpx.AsyncClient) -> None:
    response = await http.post(sim + CHAT, json=_chat_body(f"{MODEL};fault=status;status=502;body=html"))
    assert response.status_code == 502
    assert "<h1>502 Bad Gateway</h1>" in response.text


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_in_stream_error(sim: str, http: httpx.AsyncClient, dialect: str) -> None:
    model = f"{MODEL};fault=error;after=2;dialect={dialect}"
    data = await _data(http, sim, CHAT, _chat_body(model))
    if dialect == "llamacpp":
        error = json.loads(data[-1])["error"]
        assert error["code"] == 500 and error["type"] == "server_error"
    else:
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["type"] == "server_error"
        assert error["param"] is None and error["code"] is None
    assert error["message"].startswith("Request failed during generation")
    chunks = [c for c in (json.loads(d) for d in data if d != "[DONE]") if "choices" in c]
    assert len([c for c in _choices(chunks) if c["delta"].get("content")]) == 2


async def test_disconnect_flushes_held_tokens_first(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};fault=disconnect;after=5;dialect=vllm;per_chunk=3"
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with (
            asyncio.timeout(READ_LIMIT),
            aconnect_sse(http, "POST", sim + CHAT, json=_chat_body(model, logprobs=True)) as source,
        ):
            async for sse in source.aiter_sse():
                received.append(sse.data)
    chunks = [json.loads(d) for d in received]
    assert len(_entries(chunks)) == 5
    assert [len(c["choices"][0]["logprobs"]["content"]) for c in chunks[1:]] == [3, 2]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_eof_and_malformed_faults(sim: str, http: httpx.AsyncClient, path: str) -> None:
    def body(model: str) -> Obj:
        return _chat_body(model) if path == CHAT else _completion_body(model)

    eof = await _data(http, sim, path, body(f"{MODEL};fault=eof;after=3"))
    assert "[DONE]" not in eof
    assert len(eof) == (1 if path == CHAT else 0) + 3
    malformed = await _data(http, sim, path, body(f"{MODEL};fault=malformed;after=2;tokens=4"))
    assert "{not json" in malformed
    assert malformed[-1] == "[DONE]"


async def test_fail_first_counts_per_model_string(sim: str, http: httpx.AsyncClient) -> None:
    model = f"{MODEL};fault=status;status=503;fail_first=1;tokens=2;dialect=together"
    first = await http.post(sim + CHAT, json=_chat_body(model))
    assert first.status_code == 503
    assert first.json()["error"]["type"] == "server_error"
    chunks = await _chat(http, sim, model)
    assert _finish(chunks) == ["eos"]
    stats = (await http.get(f"{sim}/stats")).json()
    assert stats["requests"][model] == 2
