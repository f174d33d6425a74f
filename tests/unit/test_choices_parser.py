"""The n-choice chat reader (worker/upstream/choices.py): every choice by its index, its records
tagged, finish reasons per choice, usage and [DONE] for the stream; hostile payloads raise
UpstreamError only."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.upstream.base import UpstreamError
from worker.upstream.choices import parse_choices


def chunk(*choices: dict[str, object], usage: dict[str, int] | None = None) -> str:
    return json.dumps(
        {"id": "c", "object": "chat.completion.chunk", "choices": list(choices), "usage": usage}
    )


def choice(index: int, text: str, logprob: float, finish: str | None = None) -> dict[str, object]:
    entry = {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}
    return {
        "index": index,
        "delta": {"content": text},
        "logprobs": {"content": [entry]},
        "finish_reason": finish,
    }


def test_each_choice_by_its_index() -> None:
    parsed = parse_choices(chunk(choice(1, " b", -0.5), choice(0, " a", -0.1, "stop")), 3)
    assert sorted(parsed.by_choice) == [0, 1]
    zero, one = parsed.by_choice[0], parsed.by_choice[1]
    assert [(r.text, r.logprob, r.choice) for r in zero.tokens] == [(" a", -0.1, 0)]
    assert [(r.text, r.logprob, r.choice) for r in one.tokens] == [(" b", -0.5, 1)]
    assert zero.text == " a" and one.text == " b"
    assert zero.end is not None and zero.end.finish_reason == "stop" and one.end is None
    assert not parsed.closed


def test_usage_and_done_belong_to_the_stream() -> None:
    parsed = parse_choices(chunk(usage={"prompt_tokens": 3, "completion_tokens": 12}), 2)
    assert (parsed.usage_input_tokens, parsed.usage_output_tokens, parsed.by_choice) == (3, 12, {})
    assert parse_choices("[DONE]", 2).closed


@pytest.mark.parametrize("index", [2, -1, 99])
def test_an_index_outside_the_choices_asked_for_is_the_upstreams_error(index: int) -> None:
    with pytest.raises(UpstreamError, match="outside the 2 choices"):
        parse_choices(chunk(choice(index, "x", -0.1)), 2)


def test_error_events_raise() -> None:
    with pytest.raises(UpstreamError):
        parse_choices(json.dumps({"error": {"message": "boom", "type": "server_error"}}), 2)
    with pytest.raises(UpstreamError):
        parse_choices("{not json", 2)


@given(st.text(max_size=200), st.integers(min_value=1, max_value=8))
def test_hostile_payloads_raise_only_upstream_errors(data: str, n: int) -> None:
    try:
        parsed = parse_choices(data, n)
    except UpstreamError:
        return
    assert all(0 <= k < n for k in parsed.by_choice)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "index": st.integers(min_value=-3, max_value=10),
                "delta": st.fixed_dictionaries({"content": st.text(max_size=5)}),
            }
        ),
        max_size=6,
    )
)
def test_hostile_choice_lists(choices: list[dict[str, object]]) -> None:
    try:
        parsed = parse_choices(chunk(*choices), 4)
    except UpstreamError:
        assert any(not 0 <= c["index"] < 4 for c in choices)  # type: ignore[operator]
        return
    assert set(parsed.by_choice) == {c["index"] for c in choices}


def test_completions_choices() -> None:
    legacy = {"tokens": [" b"], "token_logprobs": [-0.3], "top_logprobs": None, "text_offset": [0]}
    data = json.dumps(
        {
            "object": "text_completion",
            "choices": [{"index": 1, "text": " b", "logprobs": legacy, "finish_reason": "length"}],
        }
    )
    parsed = parse_choices(data, 2, "completions")
    (only,) = parsed.by_choice.values()
    assert list(parsed.by_choice) == [1] and only.text == " b"
    assert [(r.text, r.logprob, r.choice) for r in only.tokens] == [(" b", -0.3, 1)]
    assert only.end is not None and only.end.finish_reason == "length"
