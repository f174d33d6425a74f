"""The OpenAI-style routes: chat completions and legacy completions, in four dialects.

``POST /v1/openai/chat/completions`` and ``POST /v1/openai/completions`` (DeepInfra's paths; also
served as ``/v1/chat/completions`` and ``/v1/completions``) take OpenAI request bodies::

    {"model": "tokenwire/sim-small;dialect=vllm;per_chunk=3", "stream": true,
     "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64,
     "logprobs": true, "top_logprobs": 5, "stream_options": {"include_usage": true}}

The model string carries the same ``;key=value`` directives as the native route (faults, pacing,
``utf8split``) plus ``dialect=openai|together|vllm|llamacpp``, which picks the wire shape
(:mod:`worker.sim.openai_chunks`). Chat ``logprobs`` is a bool (Together's int form is accepted and
also sets the top-k count); completions ``logprobs`` is the top-k count. ``messages`` become one
prompt string (:func:`render_messages`), so for a given seed, base model, prompt, ``max_tokens`` and
request seed every dialect streams the same tokens, and so does the native route with that string
as ``input``.

With ``nologprobs`` a chat request asking for logprobs is refused as Groq refuses it (400,
``param: "logprobs"``). Refusals (bad body, bad directive, no ``stream: true``) and
``fault=status`` answers use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body;
llama.cpp's has ``code``, ``message`` and ``type``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

import msgspec

from worker.sim.faults import (
    DirectiveError,
    Directives,
    RequestError,
    SimRequest,
    StatusReply,
    resolve,
    status_reply,
)
from worker.sim.generate import estimate_tokens, stream_seed
from worker.sim.openai_chunks import ChunkEncoder, StreamInfo, chat_encoder, completions_encoder

__all__ = ["CHAT", "COMPLETIONS", "ChatCompletions", "Completions", "render_messages"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
TopK = Annotated[int, msgspec.Meta(ge=0, le=20)]

_ENC = msgspec.json.Encoder()


class _Part(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Common(msgspec.Struct, kw_only=True):
    """Fields both routes share; unknown fields are accepted and ignored."""

    model: str
    stream: bool = False
    max_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream_options: _StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1  # choices in one stream (server._generate_choices)
    sim: dict[str, Any] | None = None


class _ChatBody(_Common, kw_only=True):
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | TopK | None = None
    top_logprobs: TopK | None = None


class _CompletionBody(_Common, kw_only=True):
    prompt: str | list[str]
    logprobs: TopK | None = None


def render_messages(messages: Iterable[tuple[str, str]]) -> str:
    """The prompt string a chat becomes: ``<|role|>\\ncontent\\n`` per message, then the cue."""
    return "".join(f"<|{role}|>\n{content}\n" for role, content in messages) + "<|assistant|>\n"


def _content(content: str | list[_Part] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content if part.type == "text")


def _openai_error(status: int, message: str, kind: str, param: str | None = None) -> RequestError:
    return RequestError(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})


_Body = TypeVar("_Body", bound=_Common)


def _decode(body: bytes, kind: type[_Body]) -> _Body:
    try:
        parsed = msgspec.json.decode(body, type=kind)
    except msgspec.MsgspecError as exc:
        raise _openai_error(400, f"invalid request body: {exc}", "invalid_request_error") from None
    if not parsed.stream:
        message = 'tokenwire sim only simulates streaming: send "stream": true'
        raise _openai_error(400, message, "invalid_request_error", "stream")
    return parsed


def _resolve(parsed: _Common, default: str | None) -> tuple[str, Directives]:
    try:
        return resolve(parsed.model, parsed.sim, default)
    except DirectiveError as exc:
        raise _openai_error(400, str(exc), "invalid_request_error", "model") from None


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)


def _info(
    parsed: _Common,
    base: str,
    directives: Directives,
    prompt: str,
    *,
    chat: bool,
    logprobs: bool,
) -> StreamInfo:
    """The per-stream constants: a stable id (same request, same id), the time, the shape."""
    flavor = directives.dialect
    digest = stream_seed(0, parsed.model, prompt, parsed.seed)
    if flavor == "llamacpp":
        fingerprint = "b6000-tokenwire-sim"
    else:
        fingerprint = "fp_" + hashlib.blake2b(base.encode(), digest_size=5).hexdigest()
    options = parsed.stream_options
    return StreamInfo(
        flavor=flavor,
        id=("chatcmpl-" if chat else "cmpl-") + f"{digest:016x}",
        created=int(time.time()),
        model=base,
        fingerprint=fingerprint,
        logprobs=logprobs,
        include_usage=options is not None and options.include_usage,
        prompt_tokens=estimate_tokens(prompt),
        prompt_chars=len(prompt),
        seed=parsed.seed,
        stop=_stops(parsed.stop),
        per_chunk=directives.per_chunk,
        nolp_every=directives.nolp_every,
        sentinel=directives.sentinel,
    )


def _request(
    parsed: _Common, base: str, directives: Directives, prompt: str, max_tokens: int | None, top_n: int
) -> SimRequest:
    return SimRequest(
        model=base,
        key=parsed.model,
        directives=directives,
        prompt=prompt,
        max_new_tokens=max_tokens,
        seed=parsed.seed,
        stop=_stops(parsed.stop),
        top_n=top_n,
    )


_OPENAI_STATUS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    402: ("insufficient_quota", "insufficient_quota", "Insufficient balance"),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist"),
    429: ("requests", "rate_limit_exceeded", "Model busy, retry later"),
    500: ("server_error", None, "The server had an error while processing your request"),
    503: ("server_error", None, "The server is overloaded or not ready yet"),
}

_LLAMA_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def _status_reply(directives: Directives) -> StatusReply:
    """``fault=status``: the native reply's headers and non-JSON bodies, with the dialect's JSON."""
    reply = status_reply(directives)
    if directives.body != "json":
        return reply
    status = reply.status
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    kind, code, message = _OPENAI_STATUS.get(status, (fallback, None, f"HTTP {status}"))
    error: dict[str, Any]
    if directives.dialect == "llamacpp":
        error = {"code": status, "message": message, "type": _LLAMA_TYPES.get(status, fallback)}
    else:
        error = {"message": message, "type": kind, "param": None, "code": code}
    return msgspec.structs.replace(reply, body=_ENC.encode({"error": error}))


def _logprobs_refusal() -> StatusReply:
    """A chat model that gives no logprobs (Groq's answer to ``logprobs``)."""
    error = {
        "message": "`logprobs` is not supported with this model",
        "type": "invalid_request_error",
        "param": "logprobs",
        "code": None,
    }
    return StatusReply(400, "application/json", _ENC.encode({"error": error}), {})


def _with_choices(request: SimRequest, n: int) -> SimRequest:
    """``request`` asking for ``n`` choices: that many in one stream, or one when the model
    ignores ``n`` (the ignore_n directive)."""
    if request.directives.ignore_n:
        return msgspec.structs.replace(request, ignored_n=True)
    return msgspec.structs.replace(request, choices=n)


class ChatCompletions:
    """``POST /v1/openai/chat/completions`` (and ``/v1/chat/completions``)."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, ChunkEncoder]:
        parsed = _decode(body, _ChatBody)
        base, directives = _resolve(parsed, default)
        logprobs = parsed.logprobs
        if parsed.top_logprobs and not logprobs:
            message = "top_logprobs requires logprobs"
            raise _openai_error(400, message, "invalid_request_error", "top_logprobs")
        top_n = parsed.top_logprobs
        if top_n is None:  # Together's ``logprobs: <int>`` is its top-k count
            top_n = 0 if isinstance(logprobs, bool) or logprobs is None else logprobs
        prompt = render_messages((m.role, _content(m.content)) for m in parsed.messages)
        info = _info(parsed, base, directives, prompt, chat=True, logprobs=bool(logprobs))
        max_tokens = parsed.max_completion_tokens or parsed.max_tokens
        request = _request(parsed, base, directives, prompt, max_tokens, top_n if logprobs else 0)
        if directives.nologprobs and logprobs:  # the model refuses logprobs, as Groq's do
            request = msgspec.structs.replace(request, refusal=_logprobs_refusal())
        if parsed.n > 1:  # n choices in one stream, each with its index (or one: ignore_n)
            request = _with_choices(request, parsed.n)
        return request, chat_encoder(info)

    def status_reply(self, directives: Directives) -> StatusReply:
        return _status_reply(directives)


class Completions:
    """``POST /v1/openai/completions`` (and ``/v1/completions``): legacy text completions."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, ChunkEncoder]:
        parsed = _decode(body, _CompletionBody)
        base, directives = _resolve(parsed, default)
        prompt = parsed.prompt if isinstance(parsed.prompt, str) else "".join(parsed.prompt)
        logprobs = parsed.logprobs
        info = _info(parsed, base, directives, prompt, chat=False, logprobs=logprobs is not None)
        request = _request(parsed, base, directives, prompt, parsed.max_tokens, logprobs or 0)
        if parsed.n > 1:  # n choices in one stream, each with its index (or one: ignore_n)
            request = _with_choices(request, parsed.n)
        return request, completions_encoder(info)

    def status_reply(self, directives: Directives) -> StatusReply:
        return _status_reply(directives)


CHAT = ChatCompletions()
COMPLETIONS = Completions()
