"""ChatAdapter: every chat sample of wire-formats.md §3-§6, and the request mapping."""

from __future__ import annotations

import msgspec
import pytest

from worker.confidence import is_control
from worker.jobs import API_NAMES, ChatMessage, Job, Params
from worker.settings import DEEPINFRA, Provider, Settings
from worker.upstream.adapters import default_adapters
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.chat import ChatAdapter
from worker.upstream.completions import CompletionsAdapter
from worker.upstream.native import NativeAdapter

ADAPTER = ChatAdapter()

# §3.2 gpt-4o-mini fixture (literal); the document's `…` placeholders are filled with real values.
GPT_ROLE = (
    '{"id":"1","object":"chat.completion.chunk","created":1729585728,"model":"gpt-4o-mini-2024-07-18",'
    '"system_fingerprint":"fp_d9767fc5b9","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    '"refusal":null},"logprobs":{"content":[],"refusal":null},"finish_reason":null}]}'
)
GPT_HELLO = (
    '{"id":"2","object":"chat.completion.chunk","created":1729585728,"model":"gpt-4o-mini-2024-07-18",'
    '"system_fingerprint":"fp_d9767fc5b9","choices":[{"index":0,"delta":{"content":"Hello"},'
    '"logprobs":{"content":[{"token":"Hello","logprob":-0.000020458236,"bytes":[72,101,108,108,111],'
    '"top_logprobs":[]}],"refusal":null},"finish_reason":null}]}'
)
GPT_FINISH = (
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1729585728,'
    '"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"logprobs":null,'
    '"finish_reason":"stop"}],"usage":null,"obfuscation":"IPio8PDe"}'
)
GPT_USAGE = (
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1729585728,'
    '"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":100,'
    '"total_tokens":112,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,'
    '"rejected_prediction_tokens":0}},"obfuscation":"x7Hq"}'
)
# §5.1 vLLM streaming chunk (literal).
VLLM_CHUNK = (
    '{"id":"chatcmpl-…","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    '"delta":{"content":" Hello"},"logprobs":{"content":[{"token":" Hello","logprob":-0.0123,'
    '"bytes":[32,72,101,108,108,111],"top_logprobs":[{"token":" Hello","logprob":-0.0123,'
    '"bytes":[32,72,101,108,108,111]},{"token":" Hi","logprob":-4.41,"bytes":[32,72,105]}]}]},'
    '"finish_reason":null,"stop_reason":null}]}'
)
# §5.1 vLLM final stop token (literal entry) on the finish chunk.
VLLM_STOP = (
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    '"delta":{"content":""},"logprobs":{"content":[{"token":"","logprob":-9999.0,"bytes":[],'
    '"top_logprobs":[]}]},"finish_reason":"stop","stop_reason":null}]}'
)
# §4.3 Together's older top-level token object (literal).
TOGETHER_LEGACY = (
    '{"choices":[{"index":0,"delta":{"content":" Sure"}}],"id":"85ffbb8a6d2c4340-EWR",'
    '"token":{"id":12875,"text":" Sure","logprob":-0.00724411,"special":false},"finish_reason":null,'
    '"generated_text":null,"stats":null,"usage":null,"created":1709700707,"object":"chat.completion.chunk"}'
)
# §5.2 llama.cpp's first chat chunk.
LLAMA_ROLE = (
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    '"created":1,"id":"chatcmpl-x","model":"gguf","system_fingerprint":"b6000","object":"chat.completion.chunk"}'
)
# §5.2 llama.cpp in-stream error (literal).
LLAMA_ERROR = (
    '{"error": {"code": 400, "message": "the request exceeds the available context size", '
    '"type": "exceed_context_size_error", "n_prompt_tokens": 6009, "n_ctx": 4096}}'
)
# §3.3 OpenAI mid-stream error (literal shape).
OPENAI_ERROR = (
    '{"error": {"message": "The server had an error while processing your request.", '
    '"type": "server_error", "param": null, "code": null}}'
)
# §4.1 Together's invalid_request_error (literal).
TOGETHER_ERROR = (
    '{"error":{"message":"5 is greater than the maximum of 1 - \'logprobs\'",'
    '"type":"invalid_request_error","param":"logprobs","code":null}}'
)


def _chunk(choice: str, extra: str = "") -> str:
    return (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":['
        + choice
        + "]"
        + extra
        + "}"
    )


# --- OpenAI ----------------------------------------------------------------------------------------


def test_gpt4o_mini_stream() -> None:
    role = ADAPTER.parse(GPT_ROLE)
    assert role == Parsed()
    hello = ADAPTER.parse(GPT_HELLO)
    assert hello.tokens == [TokenRecord(text="Hello", logprob=-0.000020458236, bytes=b"Hello")]
    assert (hello.text, hello.end, hello.closed) == ("Hello", None, False)
    finish = ADAPTER.parse(GPT_FINISH)
    assert finish == Parsed(end=StreamEnd("stop"))
    usage = ADAPTER.parse(GPT_USAGE)
    assert usage == Parsed(usage_input_tokens=12, usage_output_tokens=100)
    assert ADAPTER.parse("[DONE]") == Parsed(closed=True)


@pytest.mark.parametrize("data", [" [DONE]", "[DONE] \n"])
def test_padded_done_closes(data: str) -> None:
    assert ADAPTER.parse(data) == Parsed(closed=True)


def test_role_chunk_with_null_logprobs_has_no_tokens() -> None:
    data = _chunk(
        '{"index":0,"delta":{"role":"assistant","content":null},"logprobs":null,"finish_reason":null}'
    )
    assert ADAPTER.parse(data) == Parsed()


def test_sentinel_and_null_bytes_pass_through() -> None:
    entry = (
        '{"token":" x","logprob":-9999.0,"bytes":null,'
        '"top_logprobs":[{"token":" y","logprob":-100.0,"bytes":null}]}'
    )
    parsed = ADAPTER.parse(
        _chunk(f'{{"index":0,"delta":{{"content":" x"}},"logprobs":{{"content":[{entry}]}}}}')
    )
    assert parsed.tokens == [
        TokenRecord(text=" x", logprob=-9999.0, top=[Candidate(token=" y", logprob=-100.0)]),
    ]


def test_several_tokens_per_chunk_with_short_duplicate_top_lists() -> None:
    entries = (
        '{"token":"Hel","logprob":-0.5,"bytes":[72,101,108],"top_logprobs":['
        '{"token":"Hel","logprob":-0.5,"bytes":[72,101,108]},{"token":"Hel","logprob":-0.5,"bytes":[72,101,108]}]},'
        '{"token":"lo","logprob":0.0,"bytes":[108,111],"top_logprobs":[{"token":"lo","logprob":0.0,"bytes":[108,111]}]},'
        '{"token":"\\ufffd","logprob":-3.4028234663852886e+38,"bytes":[239,191,189],"top_logprobs":[]}'
    )
    data = _chunk(f'{{"index":0,"delta":{{"content":"Hello😀"}},"logprobs":{{"content":[{entries}]}}}}')
    parsed = ADAPTER.parse(data)
    hel = Candidate(token="Hel", logprob=-0.5, bytes=b"Hel")
    assert parsed.tokens == [
        TokenRecord(text="Hel", logprob=-0.5, bytes=b"Hel", top=[hel, hel]),
        TokenRecord(
            text="lo", logprob=0.0, bytes=b"lo", top=[Candidate(token="lo", logprob=0.0, bytes=b"lo")]
        ),
        TokenRecord(text="\ufffd", logprob=-3.4028234663852886e38, bytes=b"\xef\xbf\xbd"),
    ]
    assert parsed.text == "Hello😀"


def test_refusal_logprobs_ignored() -> None:
    data = _chunk(
        '{"index":0,"delta":{"refusal":"No"},"logprobs":{"content":null,'
        '"refusal":[{"token":"No","logprob":-0.1,"bytes":[78,111],"top_logprobs":[]}]},"finish_reason":null}'
    )
    assert ADAPTER.parse(data) == Parsed()


def test_other_choices_ignored() -> None:
    other = '{"index":1,"delta":{"content":"B"},"logprobs":null,"finish_reason":"stop"}'
    mine = '{"index":0,"delta":{"content":"A"},"logprobs":null,"finish_reason":null}'
    assert ADAPTER.parse(_chunk(other)) == Parsed()
    parsed = ADAPTER.parse(_chunk(f"{other},{mine}"))
    assert parsed.tokens == [TokenRecord(text="A", logprob=None)]
    assert parsed.end is None


# --- vLLM ------------------------------------------------------------------------------------------


def test_vllm_chunk_with_top_logprobs() -> None:
    parsed = ADAPTER.parse(VLLM_CHUNK)
    assert parsed.tokens == [
        TokenRecord(
            text=" Hello",
            logprob=-0.0123,
            bytes=b" Hello",
            top=[
                Candidate(token=" Hello", logprob=-0.0123, bytes=b" Hello"),
                Candidate(token=" Hi", logprob=-4.41, bytes=b" Hi"),
            ],
        )
    ]
    assert parsed.text == " Hello"


def test_vllm_final_stop_token_says_nothing_of_special() -> None:
    """vLLM's entries carry no special flag: the record says nothing (``None``) and, having no text
    and no bytes, is a control token for the tracker (is_control)."""
    parsed = ADAPTER.parse(VLLM_STOP)
    assert parsed.tokens == [TokenRecord(text="", logprob=-9999.0, special=None, bytes=b"")]
    assert is_control(parsed.tokens[0].special, "", b"")
    assert parsed.text is None
    assert parsed.end == StreamEnd("stop")
    assert not parsed.closed


def test_vllm_continuous_usage_stats() -> None:
    data = _chunk(
        '{"index":0,"delta":{"content":"a"},"logprobs":null,"finish_reason":null}',
        ',"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}',
    )
    parsed = ADAPTER.parse(data)
    assert (parsed.usage_input_tokens, parsed.usage_output_tokens) == (7, 3)
    assert parsed.end is None
    assert parsed.tokens == [TokenRecord(text="a", logprob=None)]


def test_vllm_legacy_top_logprobs_shape_keeps_the_text() -> None:
    data = _chunk(
        '{"index":0,"delta":{"content":"Hello"},"logprobs":{"content":null,"top_logprobs":[{"▁Hello":-0.0001}]}}'
    )
    assert ADAPTER.parse(data).tokens == [TokenRecord(text="Hello", logprob=None)]


# --- DeepInfra -------------------------------------------------------------------------------------


def test_deepinfra_usage_on_the_finish_chunk() -> None:
    data = _chunk(
        '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":"length"}',
        ',"usage":{"prompt_tokens":12,"total_tokens":76,"completion_tokens":64,"estimated_cost":1.2e-05}',
    )
    parsed = ADAPTER.parse(data)
    assert parsed.end == StreamEnd("length", input_tokens=12, output_tokens=64)
    assert (parsed.usage_input_tokens, parsed.usage_output_tokens) == (12, 64)
    assert parsed.tokens == [] and not parsed.closed


# --- Together --------------------------------------------------------------------------------------


def test_together_number_logprobs_with_map_top_and_token_id() -> None:
    data = _chunk(
        '{"index":0,"delta":{"token_id":3648,"role":"assistant","content":"New"},'
        '"logprobs":-0.39648438,"top_logprobs":{"New":-0.39648438,"The":-1.5},"seed":null,"finish_reason":null}'
    )
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [
        TokenRecord(
            text="New",
            logprob=-0.39648438,
            token_id=3648,
            special=False,
            top=[Candidate(token="New", logprob=-0.39648438), Candidate(token="The", logprob=-1.5)],
        )
    ]
    assert parsed.text == "New"


def test_together_top_as_list_of_single_key_maps_and_integer_logprob() -> None:
    data = _chunk(
        '{"index":0,"delta":{"token_id":4356,"content":" York"},"logprobs":0,'
        '"top_logprobs":[{" York":0},{" Jersey":-9.5}],"finish_reason":null}'
    )
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(
            text=" York",
            logprob=0.0,
            token_id=4356,
            special=False,
            top=[Candidate(token=" York", logprob=0.0), Candidate(token=" Jersey", logprob=-9.5)],
        )
    ]


def test_together_eos_finish_with_empty_text_is_special() -> None:
    data = _chunk('{"index":0,"delta":{"token_id":2,"content":""},"logprobs":-0.01,"finish_reason":"eos"}')
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text="", logprob=-0.01, token_id=2, special=True)]
    assert parsed.end == StreamEnd("eos")


def test_together_older_token_object() -> None:
    parsed = ADAPTER.parse(TOGETHER_LEGACY)
    assert parsed.tokens == [TokenRecord(text=" Sure", logprob=-0.00724411, token_id=12875, special=False)]
    assert parsed.text == " Sure"
    assert parsed.end is None


@pytest.mark.parametrize("logprob", [1, 0])
def test_together_older_token_object_positive_and_zero_logprobs_pass_raw(logprob: int) -> None:
    data = TOGETHER_LEGACY.replace('"logprob":-0.00724411', f'"logprob":{logprob}')
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text=" Sure", logprob=float(logprob), token_id=12875, special=False)
    ]


def test_together_older_token_object_special_and_top_level_finish() -> None:
    data = (
        '{"choices":[{"index":0,"delta":{"content":""}}],"id":"x","token":{"id":2,"text":"</s>",'
        '"logprob":-0.02,"special":true},"finish_reason":"eos","generated_text":"Sure thing","usage":'
        '{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8},"object":"chat.completion.chunk"}'
    )
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text="</s>", logprob=-0.02, token_id=2, special=True)]
    assert parsed.end == StreamEnd("eos", generated_text="Sure thing", input_tokens=5, output_tokens=3)


def test_together_token_object_without_logprob_uses_the_number() -> None:
    data = (
        '{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":-0.3}],'
        '"token":{"id":64,"text":"a","logprob":null,"special":false}}'
    )
    assert ADAPTER.parse(data).tokens == [TokenRecord(text="a", logprob=-0.3, token_id=64, special=False)]


def test_together_list_shape() -> None:
    data = _chunk(
        '{"index":0,"delta":{"content":"New York"},"logprobs":{"tokens":["New"," York"],'
        '"token_logprobs":[-0.39648438,-2.026558e-6],"token_ids":[3648,4356],'
        '"top_logprobs":[{"New":-0.39648438},{" York":-2.026558e-6}]}}'
    )
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text="New", logprob=-0.39648438, token_id=3648, top=[Candidate("New", -0.39648438)]),
        TokenRecord(
            text=" York", logprob=-2.026558e-6, token_id=4356, top=[Candidate(" York", -2.026558e-6)]
        ),
    ]


# --- llama.cpp -------------------------------------------------------------------------------------


def test_llamacpp_role_chunk() -> None:
    assert ADAPTER.parse(LLAMA_ROLE) == Parsed()


def test_llamacpp_content_without_logprobs_keeps_the_text() -> None:
    data = _chunk('{"finish_reason":null,"index":0,"delta":{"content":" wor"}}')
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text=" wor", logprob=None)]
    assert parsed.text == " wor"
    empty = _chunk('{"index":0,"delta":{"content":"ld"},"logprobs":{"content":[]}}')
    assert ADAPTER.parse(empty).tokens == [TokenRecord(text="ld", logprob=None)]


def test_llamacpp_entries_with_ids_and_partial_utf8() -> None:
    entry = (
        '{"id":15043,"token":"","bytes":[240,159],"logprob":-0.12,'
        '"top_logprobs":[{"id":15043,"token":"","bytes":[240,159],"logprob":-0.12}]}'
    )
    parsed = ADAPTER.parse(
        _chunk(f'{{"index":0,"delta":{{"content":""}},"logprobs":{{"content":[{entry}]}}}}')
    )
    assert parsed.tokens == [
        TokenRecord(
            text="",
            logprob=-0.12,
            token_id=15043,
            bytes=b"\xf0\x9f",
            top=[Candidate(token="", logprob=-0.12, bytes=b"\xf0\x9f", token_id=15043)],
        )
    ]


# --- reasoning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_text_without_logprobs(field: str) -> None:
    data = _chunk(f'{{"index":0,"delta":{{"{field}":"Let me think"}},"logprobs":null,"finish_reason":null}}')
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text="Let me think", logprob=None, channel="reasoning")]
    assert parsed.text is None


def test_reasoning_entries_belong_to_reasoning() -> None:
    data = _chunk(
        '{"index":0,"delta":{"reasoning_content":"Hmm","content":null},"logprobs":{"content":['
        '{"token":"Hmm","logprob":-0.7,"bytes":[72,109,109],"top_logprobs":[]}]},"finish_reason":null}'
    )
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [TokenRecord(text="Hmm", logprob=-0.7, bytes=b"Hmm", channel="reasoning")]
    assert parsed.text is None


def test_reasoning_and_content_in_one_chunk() -> None:
    data = _chunk(
        '{"index":0,"delta":{"reasoning_content":"ok.","content":"Yes"},"logprobs":{"content":['
        '{"token":"Yes","logprob":-0.2,"bytes":[89,101,115],"top_logprobs":[]}]}}'
    )
    parsed = ADAPTER.parse(data)
    assert parsed.tokens == [
        TokenRecord(text="ok.", logprob=None, channel="reasoning"),
        TokenRecord(text="Yes", logprob=-0.2, bytes=b"Yes"),
    ]
    assert parsed.text == "Yes"


def test_together_reasoning_with_number_logprob() -> None:
    data = _chunk('{"index":0,"delta":{"token_id":9,"reasoning":"So","content":null},"logprobs":-0.4}')
    assert ADAPTER.parse(data).tokens == [
        TokenRecord(text="So", logprob=-0.4, token_id=9, special=False, channel="reasoning")
    ]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "retryable", "message"),
    [
        (OPENAI_ERROR, "upstream_unavailable", True, "The server had an error"),
        (LLAMA_ERROR, "bad_request", False, "exceeds the available context size"),
        (TOGETHER_ERROR, "bad_request", False, "5 is greater than the maximum of 1"),
        (
            '{"error":{"message":"Rate limit reached","type":"requests","param":null,'
            '"code":"rate_limit_exceeded"}}',
            "rate_limited",
            True,
            "Rate limit reached",
        ),
        ('{"error":{"message":"slow down","type":"tokens","code":429}}', "rate_limited", True, "slow down"),
        (
            '{"error":{"object":"error","message":"bad logprobs","type":"BadRequestError",'
            '"param":null,"code":400}}',
            "bad_request",
            False,
            "bad logprobs",
        ),
        (
            '{"object":"error","message":"max_tokens too large","type":"BadRequestError",'
            '"param":null,"code":400}',
            "bad_request",
            False,
            "max_tokens too large",
        ),
        (
            '{"error":{"message":"boom","type":"InternalServerError","code":500}}',
            "upstream_unavailable",
            True,
            "boom",
        ),
        (
            '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
            "upstream_unavailable",
            True,
            "Loading model",
        ),
        ('{"error":{"message":"odd","type":"weird","code":502}}', "upstream_unavailable", True, "odd"),
        ('{"error":"Model busy"}', "upstream_error", False, "Model busy"),
        ('{"error":{"message":"nope","type":"weird","code":null}}', "upstream_error", False, "nope"),
    ],
)
def test_in_stream_errors(data: str, code: str, retryable: bool, message: str) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    err = info.value
    assert (err.code, err.retryable, err.status) == (code, retryable, None)
    assert message in err.message


@pytest.mark.parametrize("data", ['{"choices": [', "not json", '{"choices": [{"index": "x"}]}', "[1, 2]"])
def test_malformed_event(data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        ADAPTER.parse(data)
    assert (info.value.code, info.value.retryable) == ("upstream_malformed_event", True)


def test_unknown_keys_ignored() -> None:
    data = _chunk(
        '{"index":0,"delta":{"content":"a","tool_calls":null,"extra":1},"logprobs":null,'
        '"finish_reason":null,"stop_reason":null,"matched_stop":2}',
        ',"system_fingerprint":"fp","service_tier":"default","obfuscation":"zz","moderation":{"flagged":false},'
        '"error":null',
    )
    assert ADAPTER.parse(data).tokens == [TokenRecord(text="a", logprob=None)]


# --- build_request ---------------------------------------------------------------------------------

SETTINGS = Settings(default_max_tokens=256, max_tokens_cap=1000)
MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Hi", name="ann"),
]


def _build(job: Job, provider: Provider = DEEPINFRA) -> tuple[str, dict[str, object]]:
    assert provider.chat_url is not None
    url, body = ADAPTER.build_request(job, model_url=provider.chat_url, settings=SETTINGS, provider=provider)
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    return url, decoded


def test_minimal_request() -> None:
    url, body = _build(Job(model="meta-llama/Meta-Llama-3-8B-Instruct", api="chat", messages=MESSAGES))
    assert url == "https://api.deepinfra.com/v1/openai/chat/completions"
    assert body == {
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ann"},
        ],
        "stream": True,
        "max_tokens": 256,
        "logprobs": True,
        "stream_options": {"include_usage": True},
    }


def test_all_params_mapped() -> None:
    params = Params(
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
        stop=["\n\n"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        top_logprobs=3,
    )
    _, body = _build(Job(model="gpt-4o-mini", api="chat", messages=MESSAGES, params=params))
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "gpt-4o-mini",
        "stream": True,
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": True,
        "top_logprobs": 3,
        "stream_options": {"include_usage": True},
    }


def test_max_tokens_capped_and_zero_top_logprobs_omitted() -> None:
    _, body = _build(
        Job(model="m", api="chat", messages=MESSAGES, params=Params(max_tokens=50_000, top_logprobs=0))
    )
    assert body["max_tokens"] == 1000
    assert "top_logprobs" not in body and body["logprobs"] is True


def test_model_placeholder_in_url() -> None:
    provider = Provider(chat_url="http://127.0.0.1:8000/{model}/v1/chat/completions")
    url, body = _build(Job(model="org/m x", api="chat", messages=MESSAGES), provider)
    assert url == "http://127.0.0.1:8000/org/m%20x/v1/chat/completions"
    assert body["model"] == "org/m x"


def test_dot_segments_rejected_in_model_placeholder() -> None:
    provider = Provider(chat_url="http://127.0.0.1:8000/{model}/chat")
    with pytest.raises(UpstreamError) as info:
        _build(Job(model="../admin", api="chat", messages=MESSAGES), provider)
    assert info.value.code == "bad_request"


def test_native_job_rejected() -> None:
    job = Job(model="m", input="x")
    with pytest.raises(UpstreamError) as info:
        ADAPTER.build_request(job, model_url="http://h/v1/chat", settings=SETTINGS, provider=DEEPINFRA)
    assert info.value.code == "bad_request"


def test_default_adapters_cover_every_api() -> None:
    adapters = default_adapters()
    assert tuple(adapters) == API_NAMES
    assert isinstance(adapters["native"], NativeAdapter)
    assert isinstance(adapters["chat"], ChatAdapter)
    assert isinstance(adapters["completions"], CompletionsAdapter)


def test_together_partial_character_piece_is_not_a_control_token() -> None:
    piece = (
        '{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"",'
        '"token_id":157},"logprobs":-0.25,"top_logprobs":{"":-0.25},"finish_reason":null}]}'
    )
    (token,) = ChatAdapter().parse(piece).tokens
    assert token.text == "" and token.logprob == -0.25 and token.token_id == 157 and not token.special
    stop = (
        '{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"",'
        '"token_id":2},"logprobs":-0.01,"finish_reason":"eos"}]}'
    )
    parsed = ChatAdapter().parse(stop)
    assert parsed.tokens[0].special and parsed.end is not None and parsed.end.finish_reason == "eos"
