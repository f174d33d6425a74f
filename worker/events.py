"""Events: what a job's event stream (``P:job:{ID}:events``) carries, one JSON object per entry.

Every event has ``type``, ``job_id`` and ``attempt``. A ``start`` with a higher ``attempt`` than the
events before it means the job was retried: subscribers discard the earlier attempt's tokens. Exactly
one terminal event (``done``, ``error`` or ``cancelled``) ends every job.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "TERMINAL_TYPES",
    "Cancelled",
    "Done",
    "Error",
    "Escalation",
    "Event",
    "LowSpan",
    "Start",
    "Summary",
    "Token",
    "TopLogprob",
    "TopkMetrics",
    "Usage",
    "decode_event",
    "encode_event",
    "is_terminal",
]


class _Base(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag=str.lower,
    forbid_unknown_fields=False,
):
    job_id: str
    attempt: int


class Start(_Base, frozen=True, kw_only=True):
    """An attempt begins. ``reason`` says why when it is not the first one."""

    model: str
    provider: str
    api: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    reason: str | None = None


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True, array_like=False):
    token: str
    logprob: float | None


class TopkMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """Per-token metrics from the provider's top alternatives (confidence.md §3.1), with the running
    aggregates after this token. Entropies are in nats; ``entropy_ub`` needs the vocabulary size."""

    margin: float | None
    chosen_rank: int
    tail_mass: float
    entropy_lb: float
    entropy_lump: float
    entropy_ub: float | None = None
    mean_entropy_lb: float | None = None
    max_entropy_lb: float | None = None
    n_not_top1: int = 0


class Token(_Base, frozen=True, kw_only=True):
    """One generated token with its log-probability and the running confidence after it.

    ``logprob`` is the provider's value (null when it gave none or a non-finite one);
    ``confidence`` is ``exp(mean(sanitised logprob))`` over the scored tokens so far, null until the
    first scored token. ``low`` marks a scored token whose probability is under the job's ``low_prob``.
    ``char_start``/``char_end`` are code-point offsets of the token in ``done.text``. ``topk`` holds
    the top-k metrics when the provider sent alternatives. ``channel`` is ``content`` for the answer
    and ``reasoning`` for reasoning tokens, which have their own running confidence and never count
    in the answer's.
    """

    index: int
    text: str
    logprob: float | None
    token_id: int | None = None
    special: bool = False
    top_logprobs: list[TopLogprob] | None = None
    confidence: float | None = None
    ewma_confidence: float | None = None
    min_prob: float | None = None
    low: bool = False
    char_start: int = 0
    char_end: int = 0
    topk: TopkMetrics | None = None
    channel: str = "content"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int | None = None
    output_tokens: int = 0


class LowSpan(msgspec.Struct, frozen=True, kw_only=True):
    """A maximal run of scored tokens with probability under ``low_prob``; ends are exclusive."""

    start_token: int
    end_token: int
    char_start: int
    char_end: int
    byte_start: int
    byte_end: int
    text: str
    min_prob: float
    min_index: int
    n_tokens: int
    mean_logprob: float


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Final confidence metrics of the attempt that produced ``done``."""

    mean_logprob: float | None
    cum_logprob: float
    perplexity: float | None
    min_prob: float | None
    min_index: int | None
    ewma_confidence: float | None
    mean_prob: float | None
    bits_per_byte: float | None
    n_tokens: int
    n_scored: int
    n_missing: int
    n_excluded: int
    n_clamped: int
    logprobs_available: bool
    low_spans: list[LowSpan]
    # top-k running aggregates (confidence.md §3.1); null / 0 when no token came with top-k
    mean_entropy_lb: float | None = None
    max_entropy_lb: float | None = None
    max_entropy_index: int | None = None
    mean_margin: float | None = None
    n_topk: int = 0
    n_not_top1: int = 0


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job moved to a stronger model, with the cheap attempt's own outcome."""

    from_model: str
    from_provider: str
    from_attempt: int
    confidence: float | None
    below: float
    after_tokens: int | None
    tokens: int
    summary: Summary


class Done(_Base, frozen=True, kw_only=True):
    finish_reason: str
    text: str
    usage: Usage
    confidence: float | None
    summary: Summary
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    escalation: Escalation | None = None
    reasoning_text: str | None = None
    reasoning_confidence: float | None = None


class Error(_Base, frozen=True, kw_only=True):
    """The job failed. ``code`` is a stable snake_case word; ``message`` says what went wrong."""

    code: str
    message: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Cancelled(_Base, frozen=True, kw_only=True):
    reason: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


Event = Start | Token | Done | Error | Cancelled
TERMINAL_TYPES: frozenset[str] = frozenset({"done", "error", "cancelled"})

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)


def decode_event(raw: bytes | str) -> Event:
    return _DECODER.decode(raw)


def is_terminal(event: Event | dict[str, Any]) -> bool:
    kind = event.get("type") if isinstance(event, dict) else type(event).__name__.lower()
    return kind in TERMINAL_TYPES
