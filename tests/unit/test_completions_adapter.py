"""CompletionsAdapter: the legacy completions samples of wire-formats.md §3.4, §4.2, §5.2, and the request."""

from __future__ import annotations

import msgspec
import pytest

from worker.jobs import ChatMessage, Job, Params
from worker.settings import DEEPINFRA, Provider, Settings
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.completions import CompletionsAdapter

ADAPTER = CompletionsAdapter()

# §3.4 legacy completions chunk (literal; the `…` of the id filled in).
OPENAI_CHUNK = (
    '{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct",'
    '"choices":[{"index":0,"text":" the","finish_reason":null,'
    '"logprobs":{"tokens":[" the"],"token_logprobs":[-0.51],"top_logprobs":[{" the":-0.51," a":-1.3}],'
    '"text_offset":[12]}}]}'
)
OPENAI_FINISH = (
    '{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct",'
    '"choices":[{"index":0,"text":"","finish_reason":"length","logprobs":{"tokens":[],"token_logprobs":[],'
    '"top_logprobs":[],"text_offset":[]}}],"usage":null}'
)
OPENAI_USAGE = (
    '{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct","choices":[],'
    '"usage":{"prompt_tokens":4,"completion_tokens":16,"total_tokens":20}}'
)
# §4.2 Together list shape (literal logprobs object), streamed as one chunk.
TOGETHER_CHUNK = (
    '{"id":"t","object":"text_completion","choices":[{"index":0,"text":"New York","finish_reason":null,'
    '"logprobs": {"tokens": ["New", " York"], "token_logprobs": [-0.39648438, -2.026558e-6],\n'
    '             "token_ids": [3648, 4356], '
    '"top_logprobs": [{"New": -0.39648438}, {" York": -2.026558e-6}]}}]}'
)
# §5.2 llama.cpp OAI completions put the chat shape `logprobs.content` (per-token object literal).
LLAMA_CHUNK = (
    '{"choices":[{"text":" Hello","index":0,"logprobs":{"content":[{"id": 15043, "token": " Hello", '
    '"bytes": [32,72,101,108,108,111], "logprob": -0.12, "top_logprobs": [{"id": 15043, "token": " Hello", '
    '"bytes": [32,72,101,108,108,111], "logprob": -0.12}, {"id": 6324, "token": " Hi", "bytes": [32,72,105], '
    '"logprob": -2.3}]}]},"finish_reason":null}],"created":1,"model":"gguf","object":"text_completion",'
    '"id":"cmpl-x"}'
)


def _chunk(choice: str, extra: str = "") -> str:
    return (
        '{"id":"c","object":"text_completion","created":1,"model":"m","choices":['
        + choice
        + "]"
        + extra
        + "}"
    )


def test_openai_legacy_chunk() -> None:
    parsed = ADAPTER.parse(OPENAI_CHUNK)
    assert parsed.tokens == [
        TokenRecord(
            text=" the",
            logprob=-0.51,
            top=[Candidate(token=" the", logprob=-0.51), Candidate(token=" a", logprob=-1.3)],
        )
    ]
    assert (parsed.text, parsed.end, parsed.closed) == (" the", None, False)


def test_finish_usage_done() -> None:
    assert ADAPTER.parse(OPENAI_FINISH) == Parsed(end=StreamEnd("length"))
    assert ADAPTER.parse(OPENAI_USAGE) == Parsed(usage_input_tokens=4, usage_output_tokens=16)
    assert ADAPTER.parse("[DONE]") == Parsed(closed=True)
    assert ADAPTER.parse("[DONE] ") == Parsed(closed=True)


def test_several_tokens_null_logprob_and_null_top() -> None:
    data = _chunk(
        '{"index":0,"text":"Hi there","logprobs":{"tokens":["Hi"," there"],"token_logprobs":[null,-0.25],'
        '"top_logprobs":[null,{}],"text_offset":[0,2]},"finish_reason":null}'
    )
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text="Hi", logprob=None),
        TokenRecord(text=" there", logprob=-0.25),
    ]


def test_shorter_parallel_lists_give_none() -> None:
    data = _chunk('{"index":0,"text":"ab","logprobs":{"tokens":["a","b"],"token_logprobs":[-1.0]}}')
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text="a", logprob=-1.0),
        TokenRecord(text="b", logprob=None),
    ]


def test_together_list_shape_with_single_key_maps() -> None:
    parsed = ADAPTER.parse(TOGETHER_CHUNK)
    assert parsed.tokens == [
        TokenRecord(text="New", logprob=-0.39648438, token_id=3648, top=[Candidate("New", -0.39648438)]),
        TokenRecord(
            text=" York", logprob=-2.026558e-6, token_id=4356, top=[Candidate(" York", -2.026558e-6)]
        ),
    ]
    assert parsed.text == "New York"


def test_together_single_map_top_for_one_token() -> None:
    data = _chunk(
        '{"index":0,"text":"New","logprobs":{"tokens":["New"],"token_logprobs":[-0.4],'
        '"top_logprobs":{"New":-0.4,"The":-1.2}}}'
    )
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text="New", logprob=-0.4, top=[Candidate("New", -0.4), Candidate("The", -1.2)])
    ]


def test_together_number_logprobs_and_eos() -> None:
    data = _chunk('{"index":0,"text":" York","logprobs":-0.2,"finish_reason":null}')
    assert ADAPTER.parse(data).tokens == [TokenRecord(text=" York", logprob=-0.2, special=False)]
    eos = _chunk('{"index":0,"text":"","logprobs":-0.01,"finish_reason":"eos"}')
    parsed = ADAPTER.parse(eos)
    assert parsed.tokens == [TokenRecord(text="", logprob=-0.01, special=True)]
    assert parsed.end == StreamEnd("eos")


def test_llamacpp_content_shape() -> None:
    parsed = ADAPTER.parse(LLAMA_CHUNK)
    assert parsed.tokens == [
        TokenRecord(
            text=" Hello",
            logprob=-0.12,
            token_id=15043,
            bytes=b" Hello",
            top=[
                Candidate(token=" Hello", logprob=-0.12, bytes=b" Hello", token_id=15043),
                Candidate(token=" Hi", logprob=-2.3, bytes=b" Hi", token_id=6324),
            ],
        )
    ]
    assert parsed.text == " Hello"


def test_text_without_logprobs_is_kept() -> None:
    parsed = ADAPTER.parse(_chunk('{"index":0,"text":" dream","logprobs":null,"finish_reason":null}'))
    assert parsed.tokens == [TokenRecord(text=" dream", logprob=None)]
    assert parsed.text == " dream"


def test_usage_on_the_finish_chunk() -> None:
    data = _chunk(
        '{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}',
        ',"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}',
    )
    parsed = ADAPTER.parse(data)
    assert parsed.end == StreamEnd("stop", input_tokens=3, output_tokens=9)
    assert parsed.tokens == [] and parsed.text is None


@pytest.mark.parametrize(
    ("data", "code", "retryable"),
    [
        (
            '{"error":{"message":"oops","type":"server_error","param":null,"code":null}}',
            "upstream_unavailable",
            True,
        ),
        (
            '{"error":{"message":"5 is greater than the maximum of 1","type":"invalid_request_error",'
            '"param":"logprobs","code":null}}',
            "bad_request",
            False,
        ),
        (
            '{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}',
            "bad_request",
            False,
        ),
        ('{"error":"Input validation error","error_type":"validation"}', "bad_request", False),
        ('{"error_type": "validation_error", "error_message": "ConnectionError: ..."}', "bad_request", False),
    ],
)
def test_errors(data: str, code: str, retryable: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    assert (info.value.code, info.value.retryable) == (code, retryable)


def test_malformed_event() -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse('{"choices":[{"text":')
    assert (info.value.code, info.value.retryable) == ("upstream_malformed_event", True)


# --- build_request ---------------------------------------------------------------------------------

SETTINGS = Settings(default_max_tokens=256, max_tokens_cap=1000)


def _build(job: Job, provider: Provider = DEEPINFRA) -> tuple[str, dict[str, object]]:
    assert provider.completions_url is not None
    url, body = ADAPTER.build_request(
        job, model_url=provider.completions_url, settings=SETTINGS, provider=provider
    )
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    return url, decoded


def test_minimal_request() -> None:
    url, body = _build(Job(model="m", api="completions", input="I have this dream"))
    assert url == "https://api.deepinfra.com/v1/openai/completions"
    assert body == {
        "model": "m",
        "prompt": "I have this dream",
        "stream": True,
        "max_tokens": 256,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }


def test_all_params_mapped() -> None:
    params = Params(
        max_tokens=2000,
        temperature=0.0,
        top_p=1.0,
        top_k=5,
        repetition_penalty=1.2,
        stop=["."],
        seed=1,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        top_logprobs=3,
    )
    _, body = _build(Job(model="m", api="completions", input="x", params=params))
    assert body == {
        "model": "m",
        "prompt": "x",
        "stream": True,
        "max_tokens": 1000,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 5,
        "repetition_penalty": 1.2,
        "stop": ["."],
        "seed": 1,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logprobs": 3,
        "stream_options": {"include_usage": True},
    }


def test_logprobs_clamped_to_five() -> None:
    _, body = _build(Job(model="m", api="completions", input="x", params=Params(top_logprobs=20)))
    assert body["logprobs"] == 5


def test_chat_job_rejected() -> None:
    job = Job(model="m", api="chat", messages=[ChatMessage(role="user", content="x")])
    with pytest.raises(UpstreamError) as info:
        ADAPTER.build_request(job, model_url="http://h/v1/completions", settings=SETTINGS, provider=DEEPINFRA)
    assert info.value.code == "bad_request"
