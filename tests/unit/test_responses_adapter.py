"""ResponsesAdapter: the OpenAI Responses API's stream events (shapes of openai-python's
``types/responses/``, validated against the SDK's own types here), and the request mapping."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseStreamEvent

from worker.jobs import ChatMessage, Job, Params
from worker.settings import Provider, Settings
from worker.upstream.base import TokenRecord, UpstreamError
from worker.upstream.errors import CODES
from worker.upstream.responses import INCLUDE_LOGPROBS, ResponsesAdapter

pytestmark = pytest.mark.unit

ADAPTER = ResponsesAdapter()
SETTINGS = Settings()
PROVIDER = Provider(responses_url="https://api.openai.test/v1/responses")
SDK = pydantic.TypeAdapter(ResponseStreamEvent)

# Wire samples in the shapes of openai-python's types/responses (ResponseTextDeltaEvent,
# ResponseTextDoneEvent, ResponseCompletedEvent, ResponseFailedEvent, ResponseErrorEvent, ...).
_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1741290958,
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "status": "in_progress",
}
CREATED = {"type": "response.created", "sequence_number": 0, "response": _RESPONSE}
DELTA_TWO = {
    "type": "response.output_text.delta",
    "sequence_number": 4,
    "item_id": "msg_1",
    "output_index": 1,
    "content_index": 0,
    "delta": "Hello world",
    "obfuscation": "f3Kq",
    "logprobs": [
        {"token": "Hello", "logprob": -0.25, "top_logprobs": [{"token": "Hello", "logprob": -0.25},
                                                              {"token": "Hi", "logprob": -1.75}]},
        {"token": " world", "logprob": -0.5, "top_logprobs": []},
    ],
}  # fmt: skip
DELTA_NO_LP = {**DELTA_TWO, "sequence_number": 5, "delta": "!", "logprobs": []}
DONE_TEXT = {
    "type": "response.output_text.done",
    "sequence_number": 6,
    "item_id": "msg_1",
    "output_index": 1,
    "content_index": 0,
    "text": "Hello world!",
    "logprobs": [
        {"token": "Hello", "logprob": -0.25, "bytes": [72, 101, 108, 108, 111], "top_logprobs": []},
        {"token": " world", "logprob": -0.5, "bytes": [32, 119, 111, 114, 108, 100], "top_logprobs": []},
    ],
}
REASONING = {
    "type": "response.reasoning_summary_text.delta",
    "sequence_number": 2,
    "item_id": "rs_1",
    "output_index": 0,
    "summary_index": 0,
    "delta": "Thinking about greetings",
}
COMPLETED = {
    "type": "response.completed",
    "sequence_number": 7,
    "response": {
        **_RESPONSE,
        "status": "completed",
        "usage": {
            "input_tokens": 37,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 40,
        },
    },
}
INCOMPLETE = {
    "type": "response.incomplete",
    "sequence_number": 7,
    "response": {**_RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
}
FAILED = {
    "type": "response.failed",
    "sequence_number": 3,
    "response": {
        **_RESPONSE,
        "status": "failed",
        "error": {"code": "server_error", "message": "The model crashed"},
    },
}
ERROR = {
    "type": "error",
    "sequence_number": 1,
    "code": "rate_limit_exceeded",
    "message": "Slow down",
    "param": None,
}


def _data(event: dict[str, Any]) -> str:
    return json.dumps(event)


@pytest.mark.parametrize(
    "event", [CREATED, DELTA_TWO, DELTA_NO_LP, DONE_TEXT, REASONING, COMPLETED, INCOMPLETE, FAILED, ERROR]
)
def test_the_samples_are_the_sdk_types(event: dict[str, Any]) -> None:
    """The oracle: every sample validates as openai-python's own ResponseStreamEvent."""
    parsed = SDK.validate_python(event)
    assert parsed.type == event["type"]


def test_one_delta_holds_several_tokens_each_a_record() -> None:
    parsed = ADAPTER.parser(_job()).parse(_data(DELTA_TWO))
    sdk = SDK.validate_python(DELTA_TWO)
    assert [(r.text, r.logprob) for r in parsed.tokens] == [(e.token, e.logprob) for e in sdk.logprobs]  # type: ignore[union-attr]
    first = parsed.tokens[0]
    assert first.top is not None and [(c.token, c.logprob) for c in first.top] == [
        ("Hello", -0.25),
        ("Hi", -1.75),
    ]
    assert parsed.tokens[1].top is None  # [] means none
    assert all(r.special is False and r.channel == "content" for r in parsed.tokens)
    assert parsed.text == "Hello world" and parsed.end is None


def test_a_delta_without_logprobs_keeps_its_text() -> None:
    parsed = ADAPTER.parse(_data(DELTA_NO_LP))
    assert parsed.tokens == [TokenRecord("!", None, special=False)] and parsed.text == "!"


def test_the_done_text_repeats_the_tokens_and_adds_none() -> None:
    parser = ADAPTER.parser(_job())
    streamed = parser.parse(_data(DELTA_TWO)).tokens
    done = parser.parse(_data(DONE_TEXT))
    assert len(streamed) == 2 and done.tokens == [] and done.text is None


def test_reasoning_is_its_own_channel() -> None:
    parsed = ADAPTER.parse(_data(REASONING))
    assert [(r.text, r.channel, r.logprob, r.special) for r in parsed.tokens] == [
        ("Thinking about greetings", "reasoning", None, False)
    ]
    assert parsed.text is None


def test_completed_ends_with_usage_and_closes() -> None:
    parsed = ADAPTER.parse(_data(COMPLETED))
    assert parsed.end is not None and parsed.end.finish_reason == "stop" and parsed.closed
    assert (parsed.usage_input_tokens, parsed.usage_output_tokens) == (37, 3)


def test_incomplete_at_the_token_limit_is_length() -> None:
    parsed = ADAPTER.parse(_data(INCOMPLETE))
    assert parsed.end is not None and parsed.end.finish_reason == "length" and parsed.closed


def test_failed_and_error_events_raise_classified() -> None:
    with pytest.raises(UpstreamError) as failed:
        ADAPTER.parse(_data(FAILED))
    assert failed.value.code == "upstream_unavailable" and failed.value.retryable
    assert "The model crashed" in failed.value.message
    with pytest.raises(UpstreamError) as error:
        ADAPTER.parse(_data(ERROR))
    assert error.value.code == "rate_limited" and "Slow down" in error.value.message


def test_a_repeated_sequence_number_is_dropped() -> None:
    parser = ADAPTER.parser(_job())
    assert len(parser.parse(_data(DELTA_TWO)).tokens) == 2
    assert parser.parse(_data(DELTA_TWO)).tokens == []  # the same event again
    assert parser.parse(_data({**DELTA_NO_LP, "sequence_number": 3})).tokens == []  # older
    assert len(parser.parse(_data(DELTA_NO_LP)).tokens) == 1


def test_malformed_events_are_upstream_errors() -> None:
    with pytest.raises(UpstreamError) as caught:
        ADAPTER.parse('{"type": "response.output_text.delta", "logprobs": 3}')
    assert caught.value.code == "upstream_malformed_event"


def _job(**kw: Any) -> Job:
    fields: dict[str, Any] = {
        "model": "gpt-4.1",
        "api": "responses",
        "messages": [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")],
    }
    fields.update(kw)
    return Job(**fields)


def test_the_request_asks_for_logprobs_without_obfuscation() -> None:
    job = _job(params=Params(max_tokens=100, top_logprobs=5, temperature=0.5))
    url, raw = ADAPTER.build_request(
        job, model_url=PROVIDER.responses_url or "", settings=SETTINGS, provider=PROVIDER
    )
    body = msgspec.json.decode(raw)
    assert url == "https://api.openai.test/v1/responses"
    assert body == {
        "model": "gpt-4.1",
        "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "store": False,
        "max_output_tokens": 100,
        "temperature": 0.5,
        "stream_options": {"include_obfuscation": False},
        "include": [INCLUDE_LOGPROBS],
        "top_logprobs": 5,
    }
    _, raw = ADAPTER.build_request(
        job, model_url="http://x/v1/responses", settings=SETTINGS, provider=PROVIDER, logprobs=False
    )
    assert not {"include", "top_logprobs"} & msgspec.json.decode(raw).keys()
    assert ADAPTER.headers("sk-1") == {"Authorization": "Bearer sk-1"} and ADAPTER.headers(None) == {}


def test_params_the_api_lacks_are_refused_not_dropped() -> None:
    with pytest.raises(UpstreamError) as caught:
        ADAPTER.build_request(
            _job(params=Params(stop=["\n"])), model_url="http://x", settings=SETTINGS, provider=PROVIDER
        )
    assert caught.value.code == "bad_request" and "`params.stop`" in caught.value.message
    with pytest.raises(UpstreamError):
        ADAPTER.build_request(
            _job(messages=[ChatMessage(role="tool", content="x")]),
            model_url="http://x",
            settings=SETTINGS,
            provider=PROVIDER,
        )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["type", "delta", "logprobs", "sequence_number", "response", "code", "message", "error"]
)
_types = st.sampled_from(
    ["response.output_text.delta", "response.completed", "response.incomplete", "response.failed", "error",
     "response.reasoning_text.delta", "response.refusal.delta", "response.output_text.done"]
)  # fmt: skip


_events = st.fixed_dictionaries({"type": _types}, optional={"x": _json}).flatmap(
    lambda base: st.dictionaries(_keys, _json, max_size=4).map(lambda extra: {**extra, **base})
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_events, max_size=6))
def test_any_events_give_records_or_a_known_error(events: list[dict[str, Any]]) -> None:
    """Property: whatever the events hold, only records or an UpstreamError with a known code."""
    parser = ADAPTER.parser(_job())
    for event in events:
        try:
            parsed = parser.parse(json.dumps(event))
        except UpstreamError as exc:
            assert exc.code in CODES
            return
        assert all(isinstance(r.text, str) and r.special is False for r in parsed.tokens)


async def test_the_reader_passes_response_events_and_error_and_skips_other_names() -> None:
    import httpx

    from worker.upstream.http import StreamLimits, open_sse

    body = (
        b"event: response.output_text.delta\ndata: " + json.dumps(DELTA_TWO).encode() + b"\n\n"
        b"event: ping\ndata: " + json.dumps({**DELTA_NO_LP, "sequence_number": 9}).encode() + b"\n\n"
        b"event: error\ndata: " + json.dumps({**ERROR, "sequence_number": 10}).encode() + b"\n\n"
    )

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    limits = StreamLimits(max_event_bytes=65536, max_stream_bytes=1 << 20, max_tokens=64, stall_seconds=5.0)
    parser, seen = ADAPTER.parser(_job()), []
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
        with pytest.raises(UpstreamError) as caught:
            async with open_sse(
                http, "https://x.test/v1/responses", b"{}", {}, limits, event_prefix="response."
            ) as events:
                async for data in events:
                    seen += [r.text for r in parser.parse(data).tokens]
    assert seen == ["Hello", " world"]  # the ping was skipped
    assert caught.value.code == "rate_limited"  # the error event, read by the adapter
