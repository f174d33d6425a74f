"""Events: what a job's event stream (``P:job:{ID}:events``) carries, one JSON object per entry.

Every event has ``type``, ``job_id`` and ``attempt``. A ``start`` with a higher ``attempt`` than the
events before it means the job was retried: subscribers discard the earlier attempt's tokens. Exactly
one terminal event (``done``, ``error`` or ``cancelled``) ends every job.

:func:`decode_event` returns an :class:`UnknownEvent` for a well-formed event of a type this version does
not know (later versions add types), and raises :class:`MalformedEvent` for anything else it cannot read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "KNOWN_TYPES",
    "TERMINAL_TYPES",
    "AttemptUsage",
    "Band",
    "Cancelled",
    "CandidateDone",
    "CandidateError",
    "CandidateResult",
    "Done",
    "Error",
    "Escalation",
    "Event",
    "LowSpan",
    "MalformedEvent",
    "Segment",
    "Start",
    "Summary",
    "Token",
    "TopLogprob",
    "TopkMetrics",
    "UnknownEvent",
    "Usage",
    "Verdict",
    "bound_done",
    "decode_event",
    "encode_event",
    "encode_token",
    "event_type",
    "is_terminal",
    "winner_of",
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
    # the job's W3C trace context, echoed when the job carries one (worker/tracing.py)
    traceparent: str | msgspec.UnsetType = msgspec.UNSET


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
    in the answer's. ``special`` is true for a control token, which is never scored nor part of
    ``done.text``: the provider flagged it special, or said nothing and the token has neither text
    nor bytes (a stripped stop token). A token the provider marked ``special: false`` is scored even
    when its ``text`` is empty (part of a character a later token completes).
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
    # a job with `candidates`: which one (0-based); index and offsets count within it (absent otherwise)
    candidate: int | msgspec.UnsetType = msgspec.UNSET


class AttemptUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's usage: the provider's counts, or (``counted``) the tokens the worker received
    and no prompt count; ``cost`` from the provider's price table (None: no price for the model);
    ``escalation``: it ran on the job's stronger model."""

    attempt: int
    model: str
    provider: str
    input_tokens: int | None
    output_tokens: int
    counted: bool
    cost: float | None
    escalation: bool = False


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """``input_tokens`` / ``output_tokens``: the answering attempt's (output: the tokens it streamed).
    When the job's provider has a price table, or the job a ``budget``, also ``cost`` (every attempt
    of the delivery that finished the job: retries, an escalation's cheap attempt and its strong one),
    ``escalation_cost`` (the stronger model's share; null without an escalation) and ``attempts``
    (each attempt's own usage); ``cost`` is null when some attempt's model has no price."""

    input_tokens: int | None = None
    output_tokens: int = 0
    cost: float | msgspec.UnsetType | None = msgspec.UNSET
    escalation_cost: float | msgspec.UnsetType | None = msgspec.UNSET
    attempts: list[AttemptUsage] | msgspec.UnsetType = msgspec.UNSET


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
    """Final confidence metrics of the attempt that produced ``done``. ``low_spans_truncated``:
    ``low_spans`` holds only the first spans, as the ``done`` would have exceeded the worker's
    ``max_event_bytes`` (every token event carries its own ``low`` flag).

    Routing signals without length bias (``escalate.signal``), over the scored tokens, null when
    none is scored. ``p10_prob``: the 10th-percentile token probability, nearest rank (the
    ``ceil(0.1·n)``-th smallest ``exp(logprob)`` of the ``n`` scored tokens, exact). ``quantile``:
    the ``quantile_q``-th quantile the same way; ``quantile_q`` is the job's ``escalate.q`` when its
    signal is ``quantile``, else 0.1. ``window_min``: the lowest mean logprob (nats) over any
    ``window`` consecutive scored tokens (the mean of all of them when fewer were scored; the
    signal compares ``exp(window_min)``); ``window`` is the job's ``escalate.window`` when its
    signal is ``window_min``, else 8. The ``margin`` signal is ``mean_margin``. The stronger model's
    attempt of an escalated job routes by nothing: its summary has the defaults (0.1 and 8), and
    ``escalation.summary`` the cheap attempt's with the job's ``q`` and ``window``."""

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
    low_spans_truncated: bool = False
    # routing signals without length bias (issue 13 §4, ``escalate.signal``): see the docstring
    p10_prob: float | None = None
    quantile: float | None = None
    quantile_q: float = 0.1
    window_min: float | None = None
    window: int = 8


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


Band = Literal["high", "medium", "low", "unscored"]


class Segment(_Base, frozen=True, kw_only=True):
    """One segment of the answer (a sentence, line or paragraph: the job's ``review.unit``),
    published once its end is known: right after the token event that shows it (the first token
    holding a character of the next segment), the last one before ``done``. Only jobs with
    ``review`` publish segments (:mod:`worker.segments` has the boundary rules).

    Segments are runs of whole answer tokens (channel ``content``) and tile the answer:
    ``token_start``/``token_end`` are token event indexes (end exclusive); ``char_*`` (code points)
    and ``byte_*`` (UTF-8) locate ``text`` in ``done.text``. ``mean_logprob`` and ``min_prob``
    are over the segment's scored tokens (``n_scored``; null when none). ``band``: ``high`` when
    ``mean_logprob`` is above ``review.publish_above``, ``low`` below ``review.review_below``,
    ``medium`` otherwise, ``unscored`` when no token in it has a logprob."""

    index: int
    text: str
    char_start: int
    char_end: int
    byte_start: int
    byte_end: int
    token_start: int
    token_end: int
    mean_logprob: float | None
    min_prob: float | None
    n_scored: int
    band: Band
    # a job with `candidates`: whose segment (token and offsets within that candidate)
    candidate: int | msgspec.UnsetType = msgspec.UNSET


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What a job with ``review`` should become: ``publish``, or ``review`` (by a person) when any
    segment is ``low``, the confidence is under ``review.min_confidence``, or no answer token has a
    logprob; ``reasons`` says which, in words. Counts are of the attempt's segments by band."""

    decision: Literal["publish", "review"]
    reasons: list[str]
    n_low: int
    n_medium: int
    n_high: int = 0
    n_unscored: int = 0


class CandidateError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a candidate failed: the ``code`` and ``message`` an ``error`` event would carry."""

    code: str
    message: str


class CandidateDone(_Base, frozen=True, kw_only=True, tag="candidate_done"):
    """One candidate of a job with ``candidates`` ended: its own finish reason, text, confidence,
    summary (and verdict with ``review``), or ``error`` when it failed (the others go on). Its
    offsets and ``index`` count within ``candidate``. Not terminal: the job's ``done`` follows."""

    candidate: int
    finish_reason: str | None = None
    text: str = ""
    confidence: float | None = None
    summary: Summary | None = None
    verdict: Verdict | msgspec.UnsetType = msgspec.UNSET
    error: CandidateError | None = None
    text_truncated: bool = False


class CandidateResult(msgspec.Struct, frozen=True, kw_only=True):
    """One candidate in ``done.candidates``: ``rank`` 1 is the winner (null for a failed one),
    ``score`` its value of ``candidates.rank_by`` (null when unknown: it ranks last)."""

    index: int
    rank: int | None
    score: float | None
    finish_reason: str | None
    text: str
    confidence: float | None = None
    summary: Summary | None = None
    verdict: Verdict | msgspec.UnsetType = msgspec.UNSET
    error: CandidateError | None = None
    text_truncated: bool = False


class Done(_Base, frozen=True, kw_only=True):
    """The job finished. No ``done`` exceeds the worker's ``max_event_bytes``: when the answer
    would make it larger, ``text`` (then ``reasoning_text``) holds only its beginning and
    ``text_truncated`` is true; the whole answer is then the concatenation of the ``text`` of the
    attempt's token events (channel ``content``; ``reasoning`` for the reasoning)."""

    finish_reason: str
    text: str
    usage: Usage
    confidence: float | None
    summary: Summary
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    escalation: Escalation | None = None
    reasoning_text: str | None = None
    reasoning_confidence: float | None = None
    text_truncated: bool = False
    # only jobs with `review` carry a verdict: every other done is exactly what it was before
    verdict: Verdict | msgspec.UnsetType = msgspec.UNSET
    # false when the provider or model refused logprobs and the job (policy `preferred`) streamed its
    # tokens without them (each token's logprob null); `logprobs_reason` then says why
    logprobs_available: bool = True
    logprobs_reason: str | None = None
    # a job with `candidates`: every candidate (text, confidence, summary above are the winner's,
    # rank 1) and the share of answered candidates whose normalised answer equals the winner's
    candidates: list[CandidateResult] | msgspec.UnsetType = msgspec.UNSET
    agreement: float | msgspec.UnsetType = msgspec.UNSET


class Error(_Base, frozen=True, kw_only=True):
    """The job failed. ``code`` is a stable snake_case word; ``message`` says what went wrong."""

    code: str
    message: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Cancelled(_Base, frozen=True, kw_only=True):
    reason: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


Event = Start | Token | Segment | CandidateDone | Done | Error | Cancelled
"""The event types this version knows (the published schema)."""

TERMINAL_TYPES: frozenset[str] = frozenset({"done", "error", "cancelled"})
KNOWN_TYPES: frozenset[str] = frozenset(
    {"start", "token", "segment", "candidate_done", "done", "error", "cancelled"}
)

# A type a later version may add: a short snake_case word, as every type is.
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$(?!\n)")]


class UnknownEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event of a type this version does not know, passed on opaque so that a consumer built
    today keeps working when a later version adds event types: skip it, or read :attr:`data`.

    It has the fields every event has (``type``, ``job_id``, ``attempt``) and ``raw``, its JSON
    exactly as stored. It is never terminal.
    """

    type: str
    job_id: str
    attempt: int
    raw: bytes

    @property
    def data(self) -> dict[str, Any]:
        """The event's JSON object, decoded."""
        return dict(msgspec.json.decode(self.raw))


class MalformedEvent(ValueError):
    """An event that cannot be read: not JSON, no ``type``, or a known type with bad fields.

    ``event_id`` is its stream id and ``job_id`` its job, when the reader knows them.
    """

    def __init__(self, reason: str, *, event_id: str | None = None, job_id: str | None = None) -> None:
        where = "" if event_id is None else f" {event_id}"
        of = "" if job_id is None else f" of job {job_id!r}"
        super().__init__(f"malformed event{where}{of}: {reason}")
        self.reason = reason
        self.event_id = event_id
        self.job_id = job_id


class _Typed(msgspec.Struct):
    type: EventType


class _Opaque(msgspec.Struct, kw_only=True):
    type: EventType
    job_id: str
    attempt: int


_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_TYPE_DECODER = msgspec.json.Decoder(_Typed)
_OPAQUE_DECODER = msgspec.json.Decoder(_Opaque)


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)


def _positional_twin(cls: type[msgspec.Struct]) -> Any:
    """A struct with ``cls``'s fields, in its order, with its defaults and its encoding settings
    (tag, rename, omit_defaults), built positionally: an instance encodes to exactly the bytes of
    ``cls`` built with the same values. ``cls`` stays the one definition of the event."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(cls):
        if f.required:
            fields.append((f.name, f.type))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, f.type, f.default))
    config = cls.__struct_config__
    return msgspec.defstruct(
        f"_{cls.__name__}Positional",
        fields,
        tag_field=config.tag_field,
        tag=config.tag,
        rename=dict(zip(cls.__struct_fields__, cls.__struct_encode_fields__, strict=True)),
        omit_defaults=config.omit_defaults,
        array_like=config.array_like,
        frozen=True,
        gc=False,
    )


_TOKEN_POSITIONAL = _positional_twin(Token)


def encode_token(
    job_id: str,
    attempt: int,
    index: int,
    text: str,
    logprob: float | None,
    token_id: int | None,
    special: bool,
    top_logprobs: list[TopLogprob] | None,
    confidence: float | None,
    ewma_confidence: float | None,
    min_prob: float | None,
    low: bool,
    char_start: int,
    char_end: int,
    topk: TopkMetrics | None,
    channel: str,
    candidate: int | msgspec.UnsetType,
) -> bytes:
    """``encode_event(Token(...))`` of these values (every field of :class:`Token`, in its order),
    byte for byte, without building the keyword-only ``Token``: the hot path, once per token
    (a 17-keyword ``Token`` costs ~0.6 µs to build, this ~0.1 µs)."""
    event = _TOKEN_POSITIONAL(
        job_id, attempt, index, text, logprob, token_id, special, top_logprobs, confidence,
        ewma_confidence, min_prob, low, char_start, char_end, topk, channel, candidate,
    )  # fmt: skip
    return _ENCODER.encode(event)


def bound_done(done: Done, max_bytes: int) -> Done:
    """``done`` cut to encode in at most ``max_bytes`` (see :class:`Done`): the summaries'
    ``low_spans`` (the first ones kept) until the rest of the event takes at most half of
    ``max_bytes``, then the texts, each to the prefix that fits (whole code points; the answer
    before the reasoning). A ``done`` whose fixed fields alone exceed ``max_bytes`` is returned
    as small as it can be."""
    if len(encode_event(done)) <= max_bytes:
        return done
    bare = msgspec.structs.replace(
        done, text="", reasoning_text=None if done.reasoning_text is None else "", text_truncated=True
    )
    bare = _bound_spans(bare, max_bytes // 2)  # the answer comes first: the spans get half at most
    room = max_bytes - len(encode_event(bare))
    text, used = _prefix(done.text, room)
    reasoning = done.reasoning_text
    if reasoning is not None:
        reasoning, _ = _prefix(reasoning, room - used)
    return msgspec.structs.replace(bare, text=text, reasoning_text=reasoning)


def _prefix(text: str, room: int) -> tuple[str, int]:
    """The longest prefix of ``text`` whose JSON string adds at most ``room`` bytes to an empty
    one, and the bytes it adds."""

    def cost(n: int) -> int:
        return len(_ENCODER.encode(text[:n])) - 2

    if cost(len(text)) <= room:
        return text, cost(len(text))
    low, high = 0, len(text)  # cost(low) <= room < cost(high)
    while high - low > 1:
        mid = (low + high) // 2
        if cost(mid) <= room:
            low = mid
        else:
            high = mid
    return text[:low], cost(low)


def _bound_spans(done: Done, max_bytes: int) -> Done:
    """``done`` with its summaries' low spans cut until it fits (or none is left)."""
    while len(encode_event(done)) > max_bytes:
        summary, escalation = done.summary, done.escalation
        if escalation is not None and escalation.summary.low_spans:
            cut = _halved(escalation.summary)
            done = msgspec.structs.replace(done, escalation=msgspec.structs.replace(escalation, summary=cut))
        elif summary.low_spans:
            done = msgspec.structs.replace(done, summary=_halved(summary))
        else:
            break
    return done


def _halved(summary: Summary) -> Summary:
    spans = summary.low_spans
    return msgspec.structs.replace(summary, low_spans=spans[: len(spans) // 2], low_spans_truncated=True)


def decode_event(
    raw: bytes | str, *, event_id: str | None = None, job_id: str | None = None
) -> Event | UnknownEvent:
    """The event in ``raw``: a known type, else :class:`UnknownEvent`. Raises
    :class:`MalformedEvent` (naming ``event_id`` and ``job_id`` when given) for what cannot be read."""
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        if not isinstance(exc, msgspec.ValidationError):
            raise MalformedEvent(f"not valid JSON: {exc}", event_id=event_id, job_id=job_id) from None
        invalid = exc
    # Off the hot path: only an event the known types reject gets here.
    try:
        kind = _TYPE_DECODER.decode(raw).type
    except msgspec.DecodeError as exc:
        raise MalformedEvent(f"no valid `type`: {exc}", event_id=event_id, job_id=job_id) from None
    if kind in KNOWN_TYPES:
        raise MalformedEvent(f"bad {kind!r} event: {invalid}", event_id=event_id, job_id=job_id)
    try:
        opaque = _OPAQUE_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedEvent(f"bad {kind!r} event: {exc}", event_id=event_id, job_id=job_id) from None
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    return UnknownEvent(type=kind, job_id=opaque.job_id, attempt=opaque.attempt, raw=data)


def winner_of(done: Done) -> int | msgspec.UnsetType:
    """The ``candidate`` of the winner's events (rank 1) of a ``done`` with ``candidates``; unset
    (what the events of a job without candidates carry) otherwise; -1 when none ranked."""
    if isinstance(done.candidates, list):
        return next((c.index for c in done.candidates if c.rank == 1), -1)
    return msgspec.UNSET


def event_type(event: Event | UnknownEvent) -> str:
    """The event's ``type`` as written on the stream."""
    if isinstance(event, UnknownEvent):
        return event.type
    return "candidate_done" if isinstance(event, CandidateDone) else type(event).__name__.lower()


def is_terminal(event: Event | UnknownEvent | dict[str, Any]) -> bool:
    kind = event.get("type") if isinstance(event, dict) else event_type(event)
    return kind in TERMINAL_TYPES
