"""NativeAdapter: every native/TGI sample of wire-formats.md §1-§2, and the request mapping."""

from __future__ import annotations

import msgspec
import pytest

from worker.jobs import Job, Params
from worker.settings import DEEPINFRA, Provider, Settings
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.native import NativeAdapter

ADAPTER = NativeAdapter()

# §1.3 documented DeepInfra token events (literal).
DI_TOKEN_1 = (
    '{"token": {"id": 29892, "text": ",", "logprob": -2.65625, "special": false}, '
    '"generated_text": null, "details": null}'
)
DI_TOKEN_2 = (
    '{"token": {"id": 988, "text": " where", "logprob": -0.39575195, "special": false}, '
    '"generated_text": null, "details": null}'
)
# §1.3 plausible DeepInfra final event (DeepInfra fork's `input_tokens`).
DI_FINAL = (
    '{"token": {"id": 2, "text": "</s>", "logprob": -0.0123, "special": true},\n'
    ' "generated_text": ", where every time I ...",\n'
    ' "details": {"finish_reason": "eos_token", "generated_tokens": 25, "input_tokens": 12, '
    '"seed": null}}'
)
# §2.2 TGI intermediate event (literal, `data:` without space in the wire line).
TGI_TOKEN = (
    '{"index":1,"token":{"id":89554,"text":" Deep","logprob":-0.97209036,"special":false},'
    '"top_tokens":[{"id":89554,"text":" Deep","logprob":-0.97209036,"special":false},'
    '{"id":578,"text":" The","logprob":-1.5,"special":false}],"generated_text":null,"details":null}'
)
# §2.2 TGI final event; the document's `[...]` placeholder is filled with one real entry.
TGI_FINAL = (
    '{"index":20,"token":{"id":2,"text":"</s>","logprob":-0.01,"special":true},'
    '"top_tokens":[{"id":2,"text":"</s>","logprob":-0.01,"special":true}],'
    '"generated_text":" Deep Learning is ...","details":{"finish_reason":"eos_token",'
    '"generated_tokens":20,"seed":null,"input_length":7}}'
)
# §2.3 TGI in-stream error (literal).
TGI_ERROR = (
    '{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. '
    'Given: 12 `inputs` tokens and 5000 `max_new_tokens`","error_type":"validation"}'
)
# §1.4 LangChain's documented DeepInfra in-stream error (literal).
LANGCHAIN_ERROR = '{"error_type": "validation_error", "error_message": "ConnectionError: ..."}'
# §1.4 OpenAI-style error body observed on DeepInfra (literal).
OPENAI_ERROR = '{"error":{"message":"Model busy, retry later"}}'


def test_documented_deepinfra_token_events() -> None:
    assert ADAPTER.parse(DI_TOKEN_1) == Parsed(
        [TokenRecord(text=",", logprob=-2.65625, token_id=29892, special=False)]
    )
    parsed = ADAPTER.parse(DI_TOKEN_2)
    assert parsed.end is None
    assert parsed.tokens == [TokenRecord(text=" where", logprob=-0.39575195, token_id=988, special=False)]


def test_deepinfra_final_event_keeps_its_token_and_reads_input_tokens() -> None:
    parsed = ADAPTER.parse(DI_FINAL)
    assert parsed.tokens == [TokenRecord(text="</s>", logprob=-0.0123, token_id=2, special=True)]
    assert parsed.end == StreamEnd(
        finish_reason="eos_token",
        generated_text=", where every time I ...",
        input_tokens=12,
        output_tokens=25,
    )
    assert (parsed.usage_input_tokens, parsed.usage_output_tokens) == (12, 25)


def test_tgi_token_event_with_index_and_top_tokens() -> None:
    parsed = ADAPTER.parse(TGI_TOKEN)
    assert parsed.end is None
    assert parsed.tokens == [
        TokenRecord(
            text=" Deep",
            logprob=-0.97209036,
            token_id=89554,
            special=False,
            top=[
                Candidate(token=" Deep", logprob=-0.97209036, token_id=89554),
                Candidate(token=" The", logprob=-1.5, token_id=578),
            ],
        )
    ]


def test_tgi_final_event_reads_input_length() -> None:
    parsed = ADAPTER.parse(TGI_FINAL)
    [token] = parsed.tokens
    assert token.special and token.text == "</s>" and token.token_id == 2
    assert token.top == [Candidate(token="</s>", logprob=-0.01, token_id=2)]
    assert parsed.end == StreamEnd("eos_token", " Deep Learning is ...", 7, 20)


def test_top_level_usage_keys_and_null_details() -> None:
    data = (
        '{"token": {"id": 13, "text": ".", "logprob": -0.5, "special": false}, '
        '"generated_text": "Hi.", "details": null, "num_input_tokens": 12, "num_tokens": 25, '
        '"estimated_cost": 0.0001}'
    )
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text=".", logprob=-0.5, token_id=13, special=False)]
    # No details: finish_reason is unknown unless the final token is special.
    assert parsed.end == StreamEnd("unknown", "Hi.", 12, 25)


def test_null_details_with_special_final_token_is_eos() -> None:
    data = (
        '{"token":{"id":128009,"text":"<|eot_id|>","logprob":-0.001,"special":true},'
        '"generated_text":"Hello!","details":null}'
    )
    end = ADAPTER.parse(data).end
    assert end == StreamEnd("eos_token", "Hello!", None, None)


def test_details_without_generated_text_ends_the_stream() -> None:
    data = (
        '{"token":{"id":5,"text":" x","logprob":-1.0,"special":false},"generated_text":null,'
        '"details":{"finish_reason":"length","generated_tokens":3,"prompt_tokens":4}}'
    )
    parsed = ADAPTER.parse(data)
    assert len(parsed.tokens) == 1
    assert parsed.end == StreamEnd("length", None, 4, 3)


def test_open_finish_reason_vocabulary() -> None:
    data = '{"token":{"id":1,"text":"a","logprob":-1.0,"special":false},"generated_text":"a","details":{"finish_reason":"stop"}}'  # noqa: E501
    end = ADAPTER.parse(data).end
    assert end is not None and end.finish_reason == "stop"


def test_empty_text_and_null_logprob_tokens_are_kept() -> None:
    empty = '{"index":3,"token":{"id":239,"text":"","logprob":-0.2,"special":false},"generated_text":null,"details":null}'  # noqa: E501
    null = '{"token":{"id":7,"text":"é","logprob":null,"special":false},"generated_text":null,"details":null}'
    assert ADAPTER.parse(empty).tokens == [TokenRecord(text="", logprob=-0.2, token_id=239, special=False)]
    assert ADAPTER.parse(null).tokens == [TokenRecord(text="é", logprob=None, token_id=7, special=False)]


def test_special_is_tri_state() -> None:
    """``special: false`` and ``true`` pass on as sent; an absent or null flag is ``None`` (the
    provider said nothing), never a guess."""
    base = '{{"token":{{"id":239,"text":"","logprob":-0.2{}}},"generated_text":null,"details":null}}'
    assert ADAPTER.parse(base.format(', "special": false')).tokens[0].special is False
    assert ADAPTER.parse(base.format(', "special": true')).tokens[0].special is True
    assert ADAPTER.parse(base.format(', "special": null')).tokens[0].special is None
    assert ADAPTER.parse(base.format("")).tokens[0].special is None


def test_tgi_validation_error_is_not_retryable() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(TGI_ERROR)
    err = info.value
    assert (err.code, err.retryable) == ("bad_request", False)
    assert "must be <= 4096" in err.message and "validation" in err.message


@pytest.mark.parametrize(
    ("error_type", "code", "retryable"),
    [
        ("overloaded", "rate_limited", True),
        ("generation", "upstream_generation_error", True),
        ("incomplete_generation", "upstream_generation_error", True),
        ("incomplete_generation_stream", "upstream_generation_error", True),
        ("template_error", "upstream_error", False),
    ],
)
def test_tgi_error_types(error_type: str, code: str, retryable: bool) -> None:
    data = f'{{"error":"Model is overloaded","error_type":"{error_type}"}}'
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    assert (info.value.code, info.value.retryable) == (code, retryable)
    assert "Model is overloaded" in info.value.message


def test_langchain_error_line() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(LANGCHAIN_ERROR)
    assert info.value.code == "bad_request"
    assert not info.value.retryable
    assert "ConnectionError: ..." in info.value.message


def test_openai_style_error_object() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(OPENAI_ERROR)
    assert info.value.code == "upstream_error"
    assert "Model busy, retry later" in info.value.message


def test_openai_style_error_with_status_code() -> None:
    data = '{"error":{"message":"Rate limited","type":"requests","code":429}}'
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    assert (info.value.code, info.value.retryable) == ("rate_limited", True)
    assert "Rate limited" in info.value.message


def test_error_object_without_message_is_shown_as_json() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse('{"error":{"reason":"gpu fell over"}}')
    assert "gpu fell over" in info.value.message


@pytest.mark.parametrize("data", ["[DONE]", " [DONE] "])
def test_done_is_a_no_op(data: str) -> None:
    assert ADAPTER.parse(data) == Parsed()


def test_status_only_event_is_ignored() -> None:
    assert ADAPTER.parse('{"inference_status": {"status": "running"}}') == Parsed()


@pytest.mark.parametrize(
    "data",
    [
        '{"token": {"id": 1, "text": "a", "logprob": -1.0',
        "not json at all",
        '{"token": {"id": "x1", "text": "a"}}',
        "[1, 2]",
    ],
)
def test_malformed_event(data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    assert (info.value.code, info.value.retryable) == ("upstream_malformed_event", True)
    assert data[:20] in info.value.message


def test_malformed_preview_is_bounded() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse("{" + "x" * 10_000)
    assert len(info.value.message) < 400


# --- build_request -------------------------------------------------------------------------------

SETTINGS = Settings(default_max_tokens=256, max_tokens_cap=1000)
TGI_LIKE = Provider(
    native_url="http://127.0.0.1:8080/v1/inference/{model}",
    supports_top_n_tokens=True,
    max_top_n_tokens=5,
)


def _build(job: Job, provider: Provider = DEEPINFRA) -> tuple[str, dict[str, object]]:
    assert provider.native_url is not None
    url, body = ADAPTER.build_request(
        job, model_url=provider.native_url, settings=SETTINGS, provider=provider
    )
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    return url, decoded


def test_minimal_request() -> None:
    url, body = _build(Job(model="meta-llama/Meta-Llama-3-8B-Instruct", input="Hello"))
    assert url == "https://api.deepinfra.com/v1/inference/meta-llama/Meta-Llama-3-8B-Instruct"
    assert body == {"input": "Hello", "stream": True, "max_new_tokens": 256}


def test_all_params_mapped() -> None:
    params = Params(
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
        stop=["</s>"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        top_logprobs=3,
    )
    _, body = _build(Job(model="m", input="I have this dream", params=params))
    assert body == {
        "input": "I have this dream",
        "stream": True,
        "max_new_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["</s>"],
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }


def test_max_tokens_capped() -> None:
    _, body = _build(Job(model="m", input="x", params=Params(max_tokens=50_000)))
    assert body["max_new_tokens"] == 1000


def test_top_n_tokens_when_supported() -> None:
    _, body = _build(Job(model="m", input="x", params=Params(top_logprobs=20)), TGI_LIKE)
    assert body["top_n_tokens"] == 5
    assert body["details"] is True
    _, body = _build(Job(model="m", input="x", params=Params(top_logprobs=2)), TGI_LIKE)
    assert body["top_n_tokens"] == 2
    _, body = _build(Job(model="m", input="x", params=Params(top_logprobs=0)), TGI_LIKE)
    assert "top_n_tokens" not in body and "details" not in body


def test_model_name_is_percent_encoded_but_keeps_slashes() -> None:
    url, _ = _build(Job(model="org/model name?v=1#x", input="x"))
    assert url == "https://api.deepinfra.com/v1/inference/org/model%20name%3Fv%3D1%23x"


@pytest.mark.parametrize("model", ["../admin", "org/./m", "org/.."])
def test_dot_segments_rejected(model: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _build(Job(model=model, input="x"))
    assert info.value.code == "bad_request" and not info.value.retryable
