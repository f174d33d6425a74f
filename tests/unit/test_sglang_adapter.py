"""SGLangAdapter: ``/generate`` stream events (``meta_info.output_token_logprobs`` tuples as SGLang's
``GenerateReqInput`` docs and ``tokenizer_manager`` send them), cumulative and incremental streams,
null-text tuples, and the request mapping."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs import Job, Params
from worker.settings import Provider, Settings
from worker.upstream.base import UpstreamError
from worker.upstream.errors import CODES
from worker.upstream.sglang import SGLangAdapter

pytestmark = pytest.mark.unit

ADAPTER = SGLangAdapter()
SETTINGS = Settings()
PROVIDER = Provider(sglang_url="http://127.0.0.1:30000/generate")

TOKENS: list[list[Any]] = [
    [-0.0123, 12366, " Paris"],
    [-0.5, 13, "."],
    [-1.25, 29871, None],  # a piece the detokenizer gave no text of its own
    [-0.0002, 2, "</s>"],
]
TOPS: list[list[list[Any]] | None] = [
    [[-0.0123, 12366, " Paris"], [-4.5, 3681, " Lyon"]],
    [[-0.5, 13, "."], [-1.0, 29892, ","]],
    None,
    [[-0.0002, 2, "</s>"]],
]


def _event(
    text: str, tokens: list[list[Any]], tops: list[Any], completion: int | None, finish: Any = None
) -> str:
    meta: dict[str, Any] = {
        "id": "6e2f",
        "finish_reason": finish,
        "prompt_tokens": 7,
        "cached_tokens": 0,
        "output_token_logprobs": tokens,
        "output_top_logprobs": tops,
    }
    if completion is not None:
        meta["completion_tokens"] = completion
    return json.dumps({"text": text, "output_ids": [t[1] for t in tokens], "meta_info": meta})


STOP = {"type": "stop", "matched": 2}
TEXTS = [" Paris", " Paris.", " Paris.", " Paris."]


def _cumulative(counts: bool = True) -> list[str]:
    return [
        _event(TEXTS[i], TOKENS[: i + 1], TOPS[: i + 1], i + 1 if counts else None, STOP if i == 3 else None)
        for i in range(4)
    ]


def _incremental(counts: bool = True) -> list[str]:
    deltas = [" Paris", ".", "", ""]
    return [
        _event(
            deltas[i], TOKENS[i : i + 1], TOPS[i : i + 1], i + 1 if counts else None, STOP if i == 3 else None
        )
        for i in range(4)
    ]


def _read(
    events: list[str],
) -> tuple[list[tuple[str, float | None, int | None, bool | None]], str, str | None]:
    parser = ADAPTER.parser(_job())
    records, text, reason = [], "", None
    for data in [*events, "[DONE]"]:
        parsed = parser.parse(data)
        records += [(r.text, r.logprob, r.token_id, r.special) for r in parsed.tokens]
        text += parsed.text or ""
        if parsed.end is not None:
            reason = parsed.end.finish_reason
    return records, text, reason


EXPECTED = [
    (" Paris", -0.0123, 12366, False),
    (".", -0.5, 13, False),
    ("", -1.25, 29871, False),  # null text with an id: a generated token, never control
    ("</s>", -0.0002, 2, True),  # the matched stop token
]


@pytest.mark.parametrize("counts", [True, False], ids=["completion_tokens", "no-counts"])
@pytest.mark.parametrize("stream", [_cumulative, _incremental], ids=["cumulative", "incremental"])
def test_both_streaming_modes_read_each_token_once(stream: Any, counts: bool) -> None:
    records, text, reason = _read(stream(counts))
    assert records == EXPECTED
    assert text == " Paris." and reason == "stop"


def test_alternatives_come_with_their_token() -> None:
    parser = ADAPTER.parser(_job())
    first = parser.parse(_cumulative()[0]).tokens[0]
    assert first.top is not None and [(c.token, c.logprob, c.token_id) for c in first.top] == [
        (" Paris", -0.0123, 12366),
        (" Lyon", -4.5, 3681),
    ]
    second = parser.parse(_cumulative()[1]).tokens
    assert [r.text for r in second] == ["."] and second[0].top is not None and second[0].top[1].token == ","


def test_a_stop_string_or_the_length_limit_marks_nothing_special() -> None:
    events = _incremental()[:2]
    length = _event("", [TOKENS[2]], [None], 3, {"type": "length", "length": 3})
    records, _, reason = _read([*events, length])
    assert reason == "length" and all(r[3] is False for r in records)
    records, _, reason = _read([_event(" Paris", TOKENS[:1], TOPS[:1], 1, {"type": "stop", "matched": "\n"})])
    assert reason == "stop" and records[0][3] is False


def test_text_only_streams_without_logprobs() -> None:
    parser = ADAPTER.parser(_job(), logprobs=False)
    texts = [
        json.dumps({"text": t, "meta_info": {"completion_tokens": n}})
        for n, t in enumerate([" Paris", " Paris."], 1)
    ]
    out = [r.text for data in texts for r in parser.parse(data).tokens]
    assert out == [" Paris", "."] and all(r.logprob is None for r in parser.parse(texts[1]).tokens)


def test_abort_and_error_events_raise() -> None:
    with pytest.raises(UpstreamError) as caught:
        ADAPTER.parse(_event("", [], [], 0, {"type": "abort", "message": "Request aborted: out of memory"}))
    assert "out of memory" in caught.value.message and caught.value.retryable
    with pytest.raises(UpstreamError) as error:
        ADAPTER.parse(json.dumps({"error": {"message": "Input too long", "code": 400}}))
    assert error.value.code == "bad_request"


def _job(**kw: Any) -> Job:
    return Job(model="meta-llama/Llama-3.1-8B-Instruct", api="sglang", input="The capital of France is", **kw)


def test_the_request_asks_for_logprobs_with_their_text() -> None:
    job = _job(params=Params(max_tokens=32, top_logprobs=2, seed=5, stop=["\n"], temperature=0.0))
    url, raw = ADAPTER.build_request(
        job, model_url=PROVIDER.sglang_url or "", settings=SETTINGS, provider=PROVIDER
    )
    assert url == "http://127.0.0.1:30000/generate"
    assert msgspec.json.decode(raw) == {
        "text": "The capital of France is",
        "stream": True,
        "sampling_params": {"max_new_tokens": 32, "temperature": 0.0, "stop": ["\n"], "sampling_seed": 5},
        "return_logprob": True,
        "logprob_start_len": -1,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
    }
    _, raw = ADAPTER.build_request(
        job, model_url="http://x", settings=SETTINGS, provider=PROVIDER, logprobs=False
    )
    assert "return_logprob" not in msgspec.json.decode(raw)


_tuple = st.lists(
    st.one_of(
        st.floats(allow_nan=False), st.integers(-3, 10**6), st.text(max_size=3), st.none(), st.booleans()
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=8), st.booleans())
def test_any_split_of_a_stream_reads_each_token_once(steps: list[tuple[int, bool]], cumulative: bool) -> None:
    """Property: however the tokens are grouped into events, in either mode, with or without
    ``completion_tokens``, each comes out once and in order."""
    tokens: list[list[Any]] = [[-0.5 - i / 8, 100 + i, f"t{i}"] for i in range(sum(n for n, _ in steps))]
    events, at = [], 0
    for n, counted in steps:
        chunk = tokens[: at + n] if cumulative else tokens[at : at + n]
        text = "".join(str(t[2]) for t in chunk)
        events.append(_event(text, chunk, [None] * len(chunk), at + n if counted else None))
        at += n
    records, text, _ = _read(events)
    assert [r[2] for r in records] == [t[1] for t in tokens]
    assert text == "".join(str(t[2]) for t in tokens)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(_tuple, max_size=4), st.one_of(st.none(), st.text(max_size=4)),
                          st.one_of(st.none(), st.integers(-2, 10))), max_size=5))  # fmt: skip
def test_hostile_events_give_records_or_a_known_error(
    events: list[tuple[list[list[Any]], str | None, int | None]],
) -> None:
    parser = ADAPTER.parser(_job())
    for tokens, text, completion in events:
        data = json.dumps(
            {"text": text, "meta_info": {"output_token_logprobs": tokens, "completion_tokens": completion}}
        )
        try:
            parsed = parser.parse(data)
        except UpstreamError as exc:
            assert exc.code in CODES
            return
        assert all(r.special is False for r in parsed.tokens)
