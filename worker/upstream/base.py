"""What every upstream adapter produces, whatever the provider's wire format.

An adapter turns one SSE ``data`` payload into an :class:`Parsed`: zero or more :class:`TokenRecord`
(per token entry, never per chunk), optionally the :class:`StreamEnd`, or raises
:class:`UpstreamError`. Records are plain values: the confidence tracker and the publisher never see
provider JSON.
"""

from __future__ import annotations

import msgspec

from worker.redact import redact

__all__ = ["Candidate", "Parsed", "StreamEnd", "TokenRecord", "UpstreamError"]


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
