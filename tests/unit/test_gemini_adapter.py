"""GeminiAdapter: ``streamGenerateContent?alt=sse`` chunks (``GenerateContentResponse`` with
``logprobsResult``, as the Gemini API reference and google-generativeai's ``LogprobsResult`` types
write them), alternatives arriving on another chunk, and the request mapping."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs import ChatMessage, Job, Params
from worker.settings import Provider, Settings
from worker.upstream.base import Candidate, UpstreamError
from worker.upstream.errors import CODES
from worker.upstream.gemini import GeminiAdapter

pytestmark = pytest.mark.unit

ADAPTER = GeminiAdapter()
SETTINGS = Settings()
URL = "https://generativelanguage.test/v1beta/models/{model}:streamGenerateContent?alt=sse"
PROVIDER = Provider(gemini_url=URL)


Tokens = list[dict[str, Any]]


def _chunk(
    parts: Tokens,
    chosen: Tokens | None,
    tops: list[Tokens] | None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> str:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if chosen is not None or tops is not None:
        result: dict[str, Any] = {}
        if chosen is not None:
            result["chosenCandidates"] = chosen
        if tops is not None:
            result["topCandidates"] = [{"candidates": t} for t in tops]
        result["logProbabilitySum"] = sum(c.get("logProbability") or 0.0 for c in chosen or [])
        candidate["logprobsResult"] = result
        candidate["avgLogprobs"] = -0.1
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-2.0-flash",
        "responseId": "r1",
    }
    if usage:
        chunk["usageMetadata"] = usage
    return json.dumps(chunk)


HELLO = {"token": "Hello", "tokenId": 9259, "logProbability": -0.0413}
COMMA = {"token": ",", "tokenId": 235269, "logProbability": -0.25}
WORLD = {"token": " world", "tokenId": 2134, "logProbability": -1.5}
TOP_HELLO = [HELLO, {"token": "Hi", "tokenId": 2151, "logProbability": -3.25}]
TOP_COMMA = [COMMA, {"token": "!", "tokenId": 235341, "logProbability": -1.625}]
TOP_WORLD = [WORLD, {"token": " there", "tokenId": 1104, "logProbability": -0.5}]
USAGE = {"promptTokenCount": 6, "candidatesTokenCount": 3, "totalTokenCount": 9}


def _job(top: int = 2, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "model": "gemini-2.0-flash",
        "api": "gemini",
        "messages": [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")],
        "params": Params(top_logprobs=top),
    }
    fields.update(kw)
    return Job(**fields)


def test_chosen_and_top_candidates_on_the_same_chunk() -> None:
    parsed = ADAPTER.parser(_job()).parse(
        _chunk([{"text": "Hello,"}], [HELLO, COMMA], [TOP_HELLO, TOP_COMMA])
    )
    assert [(r.text, r.logprob, r.token_id, r.special, r.bytes) for r in parsed.tokens] == [
        ("Hello", -0.0413, 9259, False, None),
        (",", -0.25, 235269, False, None),
    ]
    assert parsed.tokens[0].top == [
        Candidate("Hello", -0.0413, token_id=9259),
        Candidate("Hi", -3.25, token_id=2151),
    ]
    assert parsed.text == "Hello," and parsed.end is None


def test_top_candidates_on_a_later_chunk_are_paired_by_position() -> None:
    parser = ADAPTER.parser(_job())
    first = parser.parse(_chunk([{"text": "Hello,"}], [HELLO, COMMA], [TOP_HELLO]))
    assert [r.text for r in first.tokens] == ["Hello"] and first.text == "Hello,"  # "," waits
    second = parser.parse(_chunk([{"text": " world"}], [WORLD], [TOP_COMMA, TOP_WORLD], "STOP", USAGE))
    assert [(r.text, [c.token for c in r.top or []]) for r in second.tokens] == [
        (",", [",", "!"]),
        (" world", [" world", " there"]),
    ]
    assert second.end is not None and second.end.finish_reason == "stop"
    assert (second.usage_input_tokens, second.usage_output_tokens) == (6, 3)


def test_chosen_tokens_whose_alternatives_never_come_are_flushed_at_the_end() -> None:
    parser = ADAPTER.parser(_job())
    assert parser.parse(_chunk([{"text": "Hello"}], [HELLO], None)).tokens == []
    last = parser.parse(_chunk([{"text": ""}], [], None, "MAX_TOKENS"))
    assert [(r.text, r.top) for r in last.tokens] == [("Hello", None)]
    assert last.end is not None and last.end.finish_reason == "length"


def test_without_alternatives_nothing_waits() -> None:
    parser = ADAPTER.parser(_job(top=0))
    assert [r.text for r in parser.parse(_chunk([{"text": "Hello"}], [HELLO], None)).tokens] == ["Hello"]


def test_thoughts_are_reasoning_and_text_without_logprobs_is_kept() -> None:
    parser = ADAPTER.parser(_job(), logprobs=False)
    parsed = parser.parse(_chunk([{"text": "Let me think", "thought": True}, {"text": "Hello"}], None, None))
    assert [(r.text, r.channel, r.logprob) for r in parsed.tokens] == [
        ("Let me think", "reasoning", None),
        ("Hello", "content", None),
    ]
    assert parsed.text == "Hello"


def test_a_blocked_prompt_ends_the_stream() -> None:
    parsed = ADAPTER.parse(json.dumps({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": USAGE}))
    assert parsed.end is not None and parsed.end.finish_reason == "blocked_safety"


def test_an_error_chunk_raises_by_its_code() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(UpstreamError) as caught:
        ADAPTER.parse(json.dumps(error))
    assert caught.value.code == "upstream_unavailable" and "overloaded" in caught.value.message


def test_the_request_asks_for_logprobs_in_generation_config() -> None:
    job = _job(top=3, params=Params(top_logprobs=3, max_tokens=50, temperature=0.2, stop=["\n"], seed=7))
    url, raw = ADAPTER.build_request(job, model_url=URL, settings=SETTINGS, provider=PROVIDER)
    assert (
        url == "https://generativelanguage.test/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    )
    assert msgspec.json.decode(raw) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {
            "maxOutputTokens": 50,
            "temperature": 0.2,
            "stopSequences": ["\n"],
            "seed": 7,
            "responseLogprobs": True,
            "logprobs": 3,
        },
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }
    _, raw = ADAPTER.build_request(job, model_url=URL, settings=SETTINGS, provider=PROVIDER, logprobs=False)
    assert not {"responseLogprobs", "logprobs"} & msgspec.json.decode(raw)["generationConfig"].keys()
    assert ADAPTER.headers("k") == {"x-goog-api-key": "k"}
    with pytest.raises(UpstreamError):
        ADAPTER.build_request(
            _job(params=Params(repetition_penalty=1.1)), model_url=URL, settings=SETTINGS, provider=PROVIDER
        )


_token = st.fixed_dictionaries(
    {},
    optional={
        "token": st.text(max_size=4) | st.none(),
        "tokenId": st.integers(-5, 10**6) | st.none(),
        "logProbability": st.floats(allow_nan=False) | st.none(),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(_token, max_size=4), st.lists(st.lists(_token, max_size=3), max_size=4),
                          st.sampled_from([None, "STOP", "MAX_TOKENS", "SAFETY"])), max_size=6))  # fmt: skip
def test_every_chosen_token_comes_out_once(chunks: list[tuple[Tokens, list[Tokens], str | None]]) -> None:
    """Property: however alternatives are spread over chunks, each chosen token is one record, in
    order, by the end of the stream."""
    parser = ADAPTER.parser(_job())
    out, sent = [], []
    for chosen, tops, finish in chunks:
        sent += [c.get("token") or "" for c in chosen]
        try:
            out += [r.text for r in parser.parse(_chunk([], chosen, tops, finish)).tokens]
        except UpstreamError as exc:
            assert exc.code in CODES
            return
        if finish:
            assert out == sent
    out += [r.text for r in parser.parse("[DONE]").tokens]
    assert out == sent
