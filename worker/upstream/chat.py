"""OpenAI-compatible chat completions (``/v1/chat/completions``): OpenAI, vLLM, Together, llama.cpp.

Only choice index 0 is read (``n > 1`` is never requested). One chunk carries 0..n tokens:

* OpenAI/vLLM ``choices[0].logprobs.content[]`` → one record per entry (``bytes`` kept,
  ``top_logprobs`` as candidates, ``[]`` meaning none). These entries say nothing of special tokens
  (``special`` is ``None``): vLLM's final stop token (``""``, ``-9999.0``, ``bytes: []``) has no text
  and no bytes, so the confidence tracker takes it for a control token.
* Together ``choices[0].logprobs`` as a *number* (the sampled token's logprob; text from
  ``delta.content``, id from ``delta.token_id``, alternatives from ``choices[0].top_logprobs``, a
  ``{token: logprob}`` map or a list of such maps; ``special`` is explicit: an empty piece is part of
  a split character, ``False``, unless it finishes the stream, ``True``); its older top-level
  ``token`` object (with ``special``, passed on as sent) wins when present; its list shape
  ``{tokens, token_logprobs, token_ids, top_logprobs}`` is read as in legacy completions.
* Text without any logprob entry (llama.cpp drops them for tokens swallowed by its parsers, vLLM
  for reasoning chunks) → one record with ``logprob=None``, so no text is lost.
* ``delta.reasoning_content`` / ``delta.reasoning`` → records on channel ``reasoning`` (the logprob
  entries of a chunk without ``delta.content`` belong to its reasoning); never in ``Parsed.text``.

``Parsed.text`` is the chunk's ``delta.content``; ``finish_reason`` ends the generation (usage and
``[DONE]`` may follow); usage may come in a ``choices: []`` chunk (OpenAI), on the finish chunk
(DeepInfra) or on every chunk (``continuous_usage_stats``); ``[DONE]`` closes the stream. Logprob
values pass through raw (sentinels, clamps, positives): the confidence tracker sanitises them.
The decoding types and helpers here are shared with :mod:`worker.upstream.completions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.native import model_path

__all__ = ["ChatAdapter"]

SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)
"""Job params sent under their own names (``top_k``/``repetition_penalty``: vLLM, Together, DeepInfra)."""

MAX_TOP_LOGPROBS = 20
"""OpenAI chat allows ``top_logprobs`` 0..20."""

_TopMap = dict[str, float | None]


class _Top(msgspec.Struct, gc=False):
    """One ``top_logprobs`` entry (OpenAI ``{token, logprob, bytes}``; llama.cpp adds ``id``)."""

    token: str | None = None
    logprob: float | None = None
    bytes: list[int] | None = None
    id: int | None = None


class _Entry(msgspec.Struct, gc=False):
    """One ``logprobs.content`` entry: a sampled token."""

    token: str | None = None
    logprob: float | None = None
    bytes: list[int] | None = None
    id: int | None = None
    top_logprobs: list[_Top] | None = None


class _Logprobs(msgspec.Struct, gc=False):
    """A choice's ``logprobs`` object: OpenAI ``content[]`` or the legacy/Together parallel lists."""

    content: list[_Entry] | None = None
    tokens: list[str | None] | None = None
    token_logprobs: list[float | None] | None = None
    token_ids: list[int | None] | None = None
    top_logprobs: list[_TopMap | None] | _TopMap | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    token_id: int | None = None


class Choice(msgspec.Struct, gc=False):
    """One choice of a chat or completions chunk; unknown keys (``stop_reason``, ``seed``) ignored."""

    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    logprobs: float | _Logprobs | None = None
    top_logprobs: _TopMap | list[_TopMap | None] | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class LegacyToken(msgspec.Struct, gc=False):
    """Together's older TGI-style top-level ``token`` object."""

    id: int | None = None
    text: str | None = None
    logprob: float | None = None
    special: bool | None = None  # tri-state: absent means the provider said nothing


class Chunk(msgspec.Struct, gc=False):
    """A chat/completions chunk, an error event, or an older vLLM top-level error object."""

    choices: list[Choice] | None = None
    usage: _Usage | None = None
    token: LegacyToken | None = None
    finish_reason: str | None = None
    generated_text: str | None = None
    error: Any = None
    error_type: Any = None
    error_message: Any = None
    object: str | None = None
    message: Any = None
    type: Any = None
    code: Any = None


_DECODER = msgspec.json.Decoder(Chunk, strict=False)
_ENCODER = msgspec.json.Encoder()

TokensOf = Callable[[Choice, LegacyToken | None], tuple[list[TokenRecord], str | None]]
"""Reads a choice (and the top-level legacy token) into ``(records, Parsed.text)``."""


class ChatAdapter:
    """Build OpenAI-compatible chat requests and parse their chunks."""

    api = "chat"

    def build_request(
        self, job: Job, *, model_url: str, settings: Settings, provider: Provider
    ) -> tuple[str, bytes]:
        """``(url, JSON body)`` of a streaming request with logprobs; only the params the job set."""
        if job.messages is None:
            raise UpstreamError("bad_request", "the chat API needs `messages`")
        messages = [_message(m.role, m.content, m.name) for m in job.messages]
        body: dict[str, Any] = {"model": job.model, "messages": messages, **common_body(job, settings)}
        body["logprobs"] = True
        top = min(job.params.top_logprobs or 0, MAX_TOP_LOGPROBS)
        if top > 0:
            body["top_logprobs"] = top
        body["stream_options"] = {"include_usage": True}
        return model_url_for(model_url, job.model), _ENCODER.encode(body)

    def parse(self, data: str) -> Parsed:
        """One SSE data payload → :class:`Parsed`; raises :class:`UpstreamError` on error events."""
        if data == "[DONE]":
            return Parsed(closed=True)
        chunk = decode_chunk(data)
        if chunk is None:
            return Parsed(closed=True)
        return to_parsed(chunk, _chat_tokens)


def _message(role: str, content: str, name: str | None) -> dict[str, str]:
    if name is None:
        return {"role": role, "content": content}
    return {"role": role, "content": content, "name": name}


# --- shared with the completions adapter ---------------------------------------------------------


def common_body(job: Job, settings: Settings) -> dict[str, Any]:
    """``stream``, the capped ``max_tokens`` and the sampling params the job set."""
    params = job.params
    body: dict[str, Any] = {
        "stream": True,
        "max_tokens": min(params.max_tokens or settings.default_max_tokens, settings.max_tokens_cap),
    }
    for name in SAMPLING:
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    return body


def model_url_for(model_url: str, model: str) -> str:
    """The URL with ``{model}`` replaced (most OpenAI-compatible URLs have none)."""
    if "{model}" not in model_url:
        return model_url
    return model_url.replace("{model}", model_path(model))


def decode_chunk(data: str) -> Chunk | None:
    """The chunk; ``None`` for a padded ``[DONE]``; raises on malformed JSON and error events."""
    try:
        chunk = _DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError; nested too deep
        if data.strip() == "[DONE]":
            return None
        raise malformed_event(data, exc) from None
    if not (chunk.error is None and chunk.error_type is None and chunk.error_message is None):
        raise stream_error(chunk.error, error_type=chunk.error_type, error_message=chunk.error_message)
    if chunk.object == "error":  # older vLLM: the error object is the event
        raise stream_error({"message": chunk.message, "type": chunk.type, "code": chunk.code})
    return chunk


def to_parsed(chunk: Chunk, tokens_of: TokensOf) -> Parsed:
    """Usage, choice 0's tokens and text, and the end when a finish reason is set."""
    parsed = Parsed()
    usage = chunk.usage
    if usage is not None:
        parsed.usage_input_tokens = usage.prompt_tokens
        parsed.usage_output_tokens = usage.completion_tokens
    choice = _choice0(chunk.choices)
    reason = chunk.finish_reason
    if choice is not None:
        parsed.tokens, parsed.text = tokens_of(choice, chunk.token)
        reason = choice.finish_reason or reason
    if reason:
        parsed.end = StreamEnd(
            reason, chunk.generated_text, parsed.usage_input_tokens, parsed.usage_output_tokens
        )
    return parsed


def _choice0(choices: list[Choice] | None) -> Choice | None:
    if not choices:
        return None
    first = choices[0]
    if first.index == 0:
        return first
    return next((c for c in choices if c.index == 0), None)


def sampled(
    choice: Choice, legacy: LegacyToken | None, text: str, channel: str, token_id: int | None
) -> list[TokenRecord]:
    """The records of a choice's logprob data, in whichever shape it came; ``[]`` when none.

    ``text``/``token_id`` name the token of the single-token shapes (Together's number), which
    carry neither themselves.
    """
    logprobs = choice.logprobs
    if legacy is not None:
        return [_legacy_record(legacy, choice, text, channel, token_id)]
    if isinstance(logprobs, float):
        # Together: an empty piece mid-stream is part of a character split across tokens (its text
        # comes with a later token), not a control token; only the finishing one is the stop token
        special = not text and choice.finish_reason is not None
        top = map_candidates(choice.top_logprobs)
        return [record(text, logprobs, token_id, None, top, channel, special=special)]
    if logprobs is None:
        return []
    if logprobs.content:
        return [_entry_record(e, channel) for e in logprobs.content]
    if logprobs.tokens:
        return _list_records(logprobs, logprobs.tokens, channel)
    return []


def record(
    text: str,
    logprob: float | None,
    token_id: int | None,
    raw: bytes | None,
    top: list[Candidate] | None,
    channel: str,
    special: bool | None = None,
) -> TokenRecord:
    """A token record; ``special`` is what the protocol said (``None``: nothing, and the tracker
    takes a token without text and bytes, a stripped stop token, for a control token)."""
    return TokenRecord(
        text=text,
        logprob=logprob,
        token_id=token_id,
        special=special,
        bytes=raw,
        top=top,
        channel=channel,
    )


def map_candidates(top: _TopMap | list[_TopMap | None] | None) -> list[Candidate] | None:
    """``{token: logprob}`` (or a list of such maps, flattened) → candidates; empty → ``None``."""
    if not top:
        return None
    if isinstance(top, dict):
        return [Candidate(token=t, logprob=lp) for t, lp in top.items()]
    found = [Candidate(token=t, logprob=lp) for m in top if m for t, lp in m.items()]
    return found or None


def _legacy_record(
    token: LegacyToken, choice: Choice, text: str, channel: str, token_id: int | None
) -> TokenRecord:
    """Together's top-level token; the choice's number logprob fills a missing ``token.logprob``."""
    logprob = token.logprob
    if logprob is None and isinstance(choice.logprobs, float):
        logprob = choice.logprobs
    return record(
        text if token.text is None else token.text,
        logprob,
        token_id if token.id is None else token.id,
        None,
        map_candidates(choice.top_logprobs),
        channel,
        special=token.special,
    )


def _entry_record(entry: _Entry, channel: str) -> TokenRecord:
    top = None
    if entry.top_logprobs:
        top = [
            Candidate(token=t.token or "", logprob=t.logprob, bytes=_bytes(t.bytes), token_id=t.id)
            for t in entry.top_logprobs
        ]
    return record(entry.token or "", entry.logprob, entry.id, _bytes(entry.bytes), top, channel)


def _bytes(values: list[int] | None) -> bytes | None:
    if values is None:
        return None
    try:
        return bytes(values)
    except ValueError:  # a value outside 0..255: not bytes after all
        return None


def _list_records(logprobs: _Logprobs, tokens: list[str | None], channel: str) -> list[TokenRecord]:
    """Legacy/Together parallel lists → one record per ``tokens`` entry; missing values are ``None``."""
    values = logprobs.token_logprobs or []
    ids = logprobs.token_ids or []
    tops = logprobs.top_logprobs
    if isinstance(tops, dict):  # one map (Together's schema): it can only describe a single token
        tops = [tops] if len(tokens) == 1 else None
    tops = tops or []
    return [
        record(
            token or "",
            values[i] if i < len(values) else None,
            ids[i] if i < len(ids) else None,
            None,
            map_candidates(tops[i]) if i < len(tops) else None,
            channel,
        )
        for i, token in enumerate(tokens)
    ]


# --- chat ----------------------------------------------------------------------------------------

_NO_DELTA = _Delta()


def _chat_tokens(choice: Choice, legacy: LegacyToken | None) -> tuple[list[TokenRecord], str | None]:
    """Choice 0 of a chat chunk → ``(records, delta.content or None)``.

    A chunk with only reasoning text puts its logprob entries on the ``reasoning`` channel; a chunk
    with both puts them on ``content`` and its reasoning text in a record without a logprob.
    """
    delta = choice.delta or _NO_DELTA
    content = delta.content or None
    reasoning = delta.reasoning_content or delta.reasoning or None
    if content is None and reasoning is not None:
        records = sampled(choice, legacy, reasoning, "reasoning", delta.token_id)
        return records or [record(reasoning, None, delta.token_id, None, None, "reasoning")], None
    records = sampled(choice, legacy, content or "", "content", delta.token_id)
    if not records and content is not None:
        records = [record(content, None, delta.token_id, None, None, "content")]
    if reasoning is not None:
        records.insert(0, record(reasoning, None, None, None, None, "reasoning"))
    return records, content
