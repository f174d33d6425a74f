"""Every choice of an OpenAI-compatible chat or completions stream asked for ``n`` of them (a
job's ``candidates``).

A chunk's ``choices[]`` entries each carry their ``index``; each is read as its adapter reads
choice 0 (:data:`TOKENS_OF`: the chat and the completions readers), its records tagged with
``choice``. A finish
reason ends its own choice only; usage (one count for the whole request) and ``[DONE]`` belong to
the stream. An index outside ``0..n-1`` is the upstream's error, never a key into the worker's
state. Pure, no I/O.
"""

from __future__ import annotations

import msgspec

from worker.upstream.base import Parsed, StreamEnd, UpstreamError
from worker.upstream.chat import _chat_tokens
from worker.upstream.completions import _completion_tokens
from worker.upstream.openai_compat import TokensOf, decode_chunk

__all__ = ["TOKENS_OF", "ChoicesParsed", "parse_choices"]

TOKENS_OF: dict[str, TokensOf] = {"chat": _chat_tokens, "completions": _completion_tokens}
"""The APIs whose one request carries ``n`` choices, and how each reads a choice."""


class ChoicesParsed(msgspec.Struct):
    """What one SSE payload said of each choice (``by_choice``: only those it mentions), and of
    the request: its usage and whether the stream is closed."""

    by_choice: dict[int, Parsed] = msgspec.field(default_factory=dict)
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    closed: bool = False


def parse_choices(data: str, n: int, api: str = "chat") -> ChoicesParsed:
    """One SSE data payload of an ``n``-choice stream of ``api``; raises :class:`UpstreamError` on error
    events, malformed JSON and a choice index outside ``0..n-1``."""
    if data == "[DONE]":
        return ChoicesParsed(closed=True)
    chunk = decode_chunk(data)
    if chunk is None:
        return ChoicesParsed(closed=True)
    tokens_of = TOKENS_OF[api]
    out = ChoicesParsed()
    usage = chunk.usage
    if usage is not None:
        out.usage_input_tokens = usage.prompt_tokens
        out.usage_output_tokens = usage.completion_tokens
    for choice in chunk.choices or ():
        k = choice.index
        if not 0 <= k < n:
            raise UpstreamError(
                "upstream_malformed_event",
                f"upstream sent choice index {k!r}, outside the {n} choices asked for",
            )
        records, text = tokens_of(choice, chunk.token)
        if k:
            records = [msgspec.structs.replace(r, choice=k) for r in records]
        parsed = out.by_choice.get(k)
        if parsed is None:
            parsed = out.by_choice[k] = Parsed()
        parsed.tokens.extend(records)
        if text is not None:
            parsed.text = text if parsed.text is None else parsed.text + text
        if choice.finish_reason:
            parsed.end = StreamEnd(choice.finish_reason, None, None, None)
    return out
