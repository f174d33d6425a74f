"""What every upstream adapter produces, whatever the provider's wire format.

An adapter turns one SSE ``data`` payload into an :class:`Parsed`: zero or more :class:`TokenRecord`
(per token entry, never per chunk), optionally the :class:`StreamEnd`, or raises
:class:`UpstreamError`. Records are plain values: the confidence tracker and the publisher never see
provider JSON.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from worker.redact import redact

__all__ = [
    "MAX_FINISH_REASON",
    "MAX_OUTPUT_TOKENS",
    "MAX_PROMPT_TOKENS",
    "Candidate",
    "Parsed",
    "StreamEnd",
    "TokenRecord",
    "UpstreamError",
    "finish_reason",
    "finite",
    "output_count",
    "prompt_count",
    "token_id",
]

MAX_PROMPT_TOKENS = 10_000_000
"""The largest prompt count believed from a provider (ten times the longest context any model
has): a count above it, negative, or not an integer is taken as not reported."""

MAX_OUTPUT_TOKENS = 1_000_000
"""The largest output count believed from a provider (``max_tokens_cap`` bounds what is asked for;
the attempt's own cap then bounds the count again, :meth:`worker.attempt.Attempt.usage`)."""

MAX_TOKEN_ID = 2**31 - 1
"""Token ids are vocabulary indices: a value outside ``0..2**31-1`` is not one."""

MAX_FINISH_REASON = 64
"""The longest finish reason kept from a provider (theirs are short identifiers: ``stop``,
``length``, ``content_filter``, ``blocked_SAFETY``); a longer one is cut to this many characters."""

_UNPRINTABLE = {c: "\ufffd" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _count(value: Any, bound: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= bound else None


def prompt_count(value: Any) -> int | None:
    """A provider's prompt (input) token count, or ``None`` (not reported) when it is not a
    non-negative int up to :data:`MAX_PROMPT_TOKENS`. Every usage count of every dialect comes in
    through this function or :func:`output_count` (the structs that carry usage call them)."""
    return _count(value, MAX_PROMPT_TOKENS)


def output_count(value: Any) -> int | None:
    """A provider's output token count, or ``None`` when not a non-negative int up to
    :data:`MAX_OUTPUT_TOKENS`."""
    return _count(value, MAX_OUTPUT_TOKENS)


def finish_reason(value: Any) -> str:
    """A provider's finish reason as kept in ``done``, ``candidate_done``, the state hash and spans:
    at most :data:`MAX_FINISH_REASON` characters, control characters shown as U+FFFD (it reaches
    terminals and logs). Every dialect's reason comes in through :class:`StreamEnd`, which calls it."""
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_FINISH_REASON].translate(_UNPRINTABLE)


def token_id(value: Any) -> int | None:
    """A token id, or ``None`` when the value is not an int in ``0..MAX_TOKEN_ID``."""
    return _count(value, MAX_TOKEN_ID)


def finite(value: Any) -> float | None:
    """A JSON number as a finite float, or ``None`` (a bool, a string, an int too large for a
    float, NaN or an infinity are not numbers a logprob can be)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int of hundreds of digits
        return None
    return number if math.isfinite(number) else None


class Candidate(msgspec.Struct, frozen=True):
    """One top-k alternative as the provider sent it."""

    token: str
    logprob: float | None
    bytes: bytes | None = None
    token_id: int | None = None


class TokenRecord(msgspec.Struct, frozen=True):
    """One generated token.

    ``logprob`` is the provider's raw value (``None`` when absent; never sanitised here).
    ``bytes`` is the token's raw UTF-8 when the provider gave it (OpenAI ``bytes``), else ``None`` and
    consumers use the UTF-8 of ``text``. ``channel`` separates the answer from reasoning content.

    ``special`` is what the provider said, tri-state: ``True`` a special/control token (TGI and
    DeepInfra ``special: true``), ``False`` an ordinary token (``special: false``; an empty ``text``
    is then part of a character a later token completes, and the token is scored), ``None`` the
    provider said nothing. Only for ``None`` does "no text and no bytes" mean a control token
    (:func:`worker.confidence.is_control`, the one place that decides). Adapters never guess.
    """

    text: str
    logprob: float | None
    token_id: int | None = None
    special: bool | None = None
    bytes: bytes | None = None
    top: list[Candidate] | None = None
    channel: str = "content"
    choice: int = 0  # its choice's ``index`` in a request for several (chat ``n``: upstream/choices.py)


class StreamEnd(msgspec.Struct, frozen=True):
    """The provider said the generation is over."""

    finish_reason: str
    generated_text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def __post_init__(self) -> None:  # the bound of every usage count and reason (adapters build it)
        msgspec.structs.force_setattr(self, "finish_reason", finish_reason(self.finish_reason))
        msgspec.structs.force_setattr(self, "input_tokens", prompt_count(self.input_tokens))
        msgspec.structs.force_setattr(self, "output_tokens", output_count(self.output_tokens))


class Parsed(msgspec.Struct):
    """What one SSE data payload said.

    ``end``: the generation finished (its finish reason is known); later events may still carry
    usage. ``closed``: nothing more will come that matters (native final event, ``[DONE]``): the
    reader stops. A stream that hits EOF after an ``end`` succeeded; without one it is incomplete.
    ``text``: the answer text this event carried (chat ``delta.content``, completions ``text``),
    when the protocol sends text apart from its token entries; the final text is their
    concatenation (it is exact where token strings are not: partial UTF-8, dropped logprobs).
    """

    tokens: list[TokenRecord] = msgspec.field(default_factory=list)
    end: StreamEnd | None = None
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    closed: bool = False
    text: str | None = None

    def __post_init__(self) -> None:
        if self.usage_input_tokens is not None:
            self.usage_input_tokens = prompt_count(self.usage_input_tokens)
        if self.usage_output_tokens is not None:
            self.usage_output_tokens = output_count(self.usage_output_tokens)

    def set_usage(self, input_tokens: Any, output_tokens: Any) -> None:
        """Take a provider's usage counts, each bounded (:func:`prompt_count`,
        :func:`output_count`; nonsense is not reported). Adapters set usage only through this."""
        self.usage_input_tokens = prompt_count(input_tokens)
        self.usage_output_tokens = output_count(output_tokens)


class UpstreamError(Exception):
    """The provider failed the request, before or during the stream.

    ``code`` is a stable snake_case word for the terminal ``error`` event; ``message`` carries the
    provider's own message when it gave one; ``status`` is the HTTP status (``None`` for in-stream or
    transport failures); ``retryable`` says whether the same request may succeed later;
    ``retry_after`` is the provider's requested wait in seconds, when it sent one.

    The constructor is the redaction choke point for upstream failures: ``message`` is stored
    redacted (:func:`worker.redact.redact`), so no error event, log line or retry reason built
    from an ``UpstreamError`` can carry a secret the upstream echoed.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"UpstreamError(code={self.code!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, message={self.message!r})"
        )
