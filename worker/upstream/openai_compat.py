"""What the OpenAI-compatible dialects share: chunk types, error events, and their token entries.

:mod:`worker.upstream.chat` and :mod:`worker.upstream.completions` read the same chunk
(``{choices, usage, ...}``) and the same logprob shapes (OpenAI/vLLM ``logprobs.content[]``,
Together's number and parallel lists, its legacy top-level ``token``); this module decodes them
once (:func:`decode_chunk`: error events raise) and turns a choice's logprob data into records
(:func:`sampled`); each adapter says only how its choice carries text (:data:`TokensOf`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from worker.upstream.base import (
    Candidate,
    Parsed,
    StreamEnd,
    TokenRecord,
    output_count,
    prompt_count,
)
from worker.upstream.errors import malformed_event, stream_error

__all__ = [
    "NO_DELTA",
    "Choice",
    "Chunk",
    "LegacyToken",
    "TokensOf",
    "decode_chunk",
    "map_candidates",
    "record",
    "sampled",
    "to_parsed",
]

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


NO_DELTA = _Delta()


class Choice(msgspec.Struct, gc=False):
    """One choice of a chat or completions chunk; unknown keys (``stop_reason``, ``seed``) ignored."""

    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    logprobs: float | _Logprobs | None = None
    top_logprobs: _TopMap | list[_TopMap | None] | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    """Usage, bounded as it is decoded (:func:`worker.upstream.base.prompt_count`): every reader of
    the chunk (one choice or ``n``, :mod:`worker.upstream.choices`) sees only plausible counts."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def __post_init__(self) -> None:
        self.prompt_tokens = prompt_count(self.prompt_tokens)
        self.completion_tokens = output_count(self.completion_tokens)


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

TokensOf = Callable[[Choice, LegacyToken | None], tuple[list[TokenRecord], str | None]]
"""Reads a choice (and the top-level legacy token) into ``(records, Parsed.text)``."""


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
        parsed.set_usage(usage.prompt_tokens, usage.completion_tokens)
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
