"""Jobs: what producers put on ``{P}:jobs``.

A job entry on the job stream has one field, ``job``, holding a :class:`Job` as JSON. The static limits
below are part of the published JSON Schema; the operator's tighter caps (``max_input_chars``,
``max_tokens_cap``) are checked against the running settings by :func:`worker.admit.admit`.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Literal

import msgspec

from .tracing import TRACEPARENT_PATTERN

__all__ = [
    "API_NAMES",
    "MESSAGE_APIS",
    "Api",
    "Candidates",
    "ChatMessage",
    "Escalate",
    "EscalateSignal",
    "InvalidJob",
    "Job",
    "LogprobsPolicy",
    "Params",
    "RankBy",
    "Review",
    "SegmentUnit",
    "decode_job",
    "encode_job",
    "job_id_of",
    "new_job_id",
]

Api = Literal["native", "chat", "completions", "responses", "gemini", "sglang"]
API_NAMES: tuple[str, ...] = ("native", "chat", "completions", "responses", "gemini", "sglang")
MESSAGE_APIS: frozenset[str] = frozenset({"chat", "responses", "gemini"})
"""The APIs whose jobs take ``messages``; every other one takes ``input``."""
LogprobsPolicy = Literal["required", "preferred"]

# Job ids become part of Redis keys (``P:job:{ID}``): no braces, no whitespace, bounded length.
# ``$(?!\n)``: Python's ``$`` also matches before a final newline (``"abc\n"`` would pass ``^...$``);
# the lookahead refuses it, and means the same in a JSON Schema (ECMA) validator.
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]+$(?!\n)")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ProviderName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$(?!\n)")]
Prompt = Annotated[str, msgspec.Meta(max_length=1_000_000)]
MetaKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
MetaValue = Annotated[str, msgspec.Meta(max_length=4096)]
StopSeq = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One chat message; ``content`` is plain text."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Prompt
    name: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class Params(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Sampling parameters, mapped to each protocol's own names by the adapters."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    stop: Annotated[list[StopSeq], msgspec.Meta(max_length=16)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0, le=5.0)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None


EscalateSignal = Literal["confidence", "quantile", "window_min", "margin", "agreement"]


class Escalate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Route by confidence: run the job's (cheap) model first and, when its ``signal`` after
    ``after_tokens`` answer tokens (or at the end, when not given) is below ``below``, stop it
    and run ``model`` (on ``provider``, default the job's) as a new attempt on the same stream.

    ``signal`` (each a value in [0, 1], also in ``done.summary``): ``confidence`` (default) the
    running geometric-mean token probability, which long answers dilute; ``quantile`` the ``q``-th
    quantile (nearest rank; ``q`` default 0.1) of the token probabilities so far; ``window_min``
    ``exp`` of the lowest mean logprob over any ``window`` (default 8) consecutive scored tokens;
    ``margin`` the mean top-1 minus top-2 probability, which needs ``params.top_logprobs`` of 2 or
    more and a provider that sends alternatives. ``q`` goes only with ``quantile``, ``window`` only
    with ``window_min``. With ``candidates`` each candidate is judged after ``after_tokens`` (or at
    its end, when it ends sooner) and the job escalates at once when every one is under ``below``
    (:mod:`worker.candidates`); ``agreement`` (judged when every candidate has answered) takes no
    ``after_tokens``."""

    model: ModelName
    below: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
    provider: ProviderName | None = None
    after_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    signal: EscalateSignal = "confidence"
    q: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    window: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None

    def __post_init__(self) -> None:
        if self.q is not None and self.signal != "quantile":
            raise ValueError(
                f"escalate.q is the quantile of escalate.signal 'quantile'; this job's signal is "
                f"{self.signal!r}: drop `q` or set signal to 'quantile'"
            )
        if self.window is not None and self.signal != "window_min":
            raise ValueError(
                f"escalate.window is the window of escalate.signal 'window_min'; this job's signal is "
                f"{self.signal!r}: drop `window` or set signal to 'window_min'"
            )
        if self.after_tokens is not None and self.signal == "agreement":
            raise ValueError(
                "escalate.after_tokens does not go with escalate.signal 'agreement': the candidates' "
                "agreement is known only once every one has answered, so it is judged at the end; drop "
                "`after_tokens`, or route on a per-token signal (each candidate is judged after "
                "after_tokens tokens)"
            )


RankBy = Literal["mean_logprob", "cum_logprob", "confidence", "quantile", "window_min", "margin"]


class Candidates(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Several candidate answers on one stream (:mod:`worker.candidates`): ``n`` generations of the
    job, each token event tagged with its ``candidate``, each closed by a ``candidate_done``, and a
    ``done`` with the best by ``rank_by`` (higher wins; ``mean_logprob``, the default, is
    length-normalised; ``quantile``, ``window_min`` and ``margin`` are the routing signals of
    ``done.summary``) and ``agreement``: the share of the answered candidates whose normalised
    answer equals the winner's (whitespace and case folded; ``agree_on: first_line`` compares only
    the first non-empty line, for classification)."""

    n: Annotated[int, msgspec.Meta(ge=1, le=8)]
    rank_by: RankBy = "mean_logprob"
    agree_on: Literal["text", "first_line"] = "text"


SegmentUnit = Literal["sentence", "line", "paragraph"]
SegmentMean = Annotated[float, msgspec.Meta(ge=-20.0, le=0.0)]  # a mean of logprobs floored at -20


class Review(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Segment scores and a publish/review verdict (:mod:`worker.segments`): the answer is cut into
    ``unit`` segments, each published as a ``segment`` event with the mean logprob of its tokens and
    a band: ``high`` above ``publish_above``, ``low`` below ``review_below``, ``medium`` between
    (``unscored`` when no token in it has a logprob). ``done.verdict`` is ``review`` when any
    segment is ``low``, the job's confidence is under ``min_confidence``, or no token has a logprob;
    such jobs are also put on the review stream ``{P}:review``."""

    unit: SegmentUnit = "sentence"
    publish_above: SegmentMean = -0.5
    review_below: SegmentMean = -1.5
    min_confidence: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None

    def __post_init__(self) -> None:
        if self.review_below > self.publish_above:
            raise ValueError(
                f"review.review_below ({self.review_below}) is above review.publish_above "
                f"({self.publish_above}): segments under review_below go to review and those above "
                "publish_above are published, so review_below must be the lower one"
            )


class Job(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """An LLM generation job.

    ``messages`` is required for the ``chat``, ``responses`` and ``gemini`` APIs, ``input`` for the
    others (``native``, ``completions``, ``sglang``).
    ``id`` is optional: the client chooses one when it is absent, and enqueueing the same id twice
    yields one job. A job names a provider; it never carries a URL.
    """

    model: ModelName
    id: JobId | None = None
    api: Api = "native"
    provider: ProviderName | None = None
    input: Prompt | None = None
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    params: Params = msgspec.field(default_factory=Params)
    low_prob: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.2
    metadata: Annotated[dict[MetaKey, MetaValue], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    escalate: Escalate | None = None
    # at most this much spent on the job, in the price tables' currency (worker/cost.py): needs a
    # price for its model (and its escalation's) on the provider; ends `budget_exceeded` otherwise
    budget: Annotated[float, msgspec.Meta(gt=0.0, le=1_000_000.0)] | None = None
    review: Review | None = None
    # several candidate answers, ranked, on one stream (absent or n=1: one answer, today's events)
    candidates: Candidates | None = None
    # what a provider or model that refuses logprobs means: `required` fails the job
    # (`logprobs_unsupported`), `preferred` streams its tokens without logprobs (`done` says so)
    logprobs: LogprobsPolicy = "preferred"
    # the producer's W3C trace context (`Client.enqueue` injects the caller's current span): the
    # worker's `tokenwire.job` span is its child, and `start` events echo it (worker/tracing.py).
    # Transport metadata, not part of what the job asks: left out of the job's digest.
    traceparent: Annotated[str, msgspec.Meta(pattern=TRACEPARENT_PATTERN)] | None = None

    def __post_init__(self) -> None:
        if self.api in MESSAGE_APIS:
            if self.messages is None:
                raise ValueError(f"a job with api '{self.api}' needs `messages`")
            if self.input is not None:
                raise ValueError(f"a job with api '{self.api}' takes `messages`, not `input`")
        else:
            if self.input is None:
                raise ValueError(f"a job with api '{self.api}' needs `input`")
            if self.messages is not None:
                raise ValueError(f"a job with api '{self.api}' takes `input`, not `messages`")
        esc = self.escalate
        if esc is not None and esc.signal == "margin" and (self.params.top_logprobs or 0) < 2:
            raise ValueError(
                "escalate.signal 'margin' (top-1 minus top-2 probability) needs top-k alternatives: "
                f"set params.top_logprobs to 2 or more (it is {self.params.top_logprobs})"
            )
        n = 1 if self.candidates is None else self.candidates.n
        if esc is not None and esc.signal == "agreement" and n < 2:
            raise ValueError(
                "escalate.signal 'agreement' is the share of candidates agreeing with the winner: "
                f"it needs candidates.n of 2 or more (it is {n})"
            )
        ranked = None if self.candidates is None else self.candidates.rank_by
        if ranked == "margin" and (self.params.top_logprobs or 0) < 2:
            raise ValueError(
                "candidates.rank_by 'margin' (top-1 minus top-2 probability) needs top-k alternatives: "
                f"set params.top_logprobs to 2 or more (it is {self.params.top_logprobs})"
            )

    @property
    def prompt_chars(self) -> int:
        if self.input is not None:
            return len(self.input)
        return sum(len(m.content) for m in self.messages or ())


class InvalidJob(ValueError):
    """A job payload that cannot run; ``reason`` is what a producer needs to fix it."""

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Job)


def encode_job(job: Job) -> bytes:
    return _ENCODER.encode(job)


def decode_job(raw: bytes | str) -> Job:
    """Decode and validate a job; raises :class:`InvalidJob` with a reason a producer can act on,
    and nothing else, whatever ``raw`` holds (total: no exception of the decoder escapes)."""
    if not isinstance(raw, bytes | str):
        raise InvalidJob(f"job payload is {type(raw).__name__}, not JSON text")
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidJob(f"invalid job: {exc}", job_id=_salvage_id(raw)) from None
    except msgspec.DecodeError as exc:
        raise InvalidJob(f"job is not valid JSON: {exc}", job_id=_salvage_id(raw)) from None
    except RecursionError:
        # msgspec's depth limit is Python's recursion limit; no valid job nests more than 4 deep
        raise InvalidJob("job is nested too deeply to decode", job_id=_salvage_id(raw)) from None
    except Exception as exc:  # total: whatever else the decoder may raise is the payload's fault
        reason = f"job could not be decoded ({type(exc).__name__}: {exc})"[:_MAX_REASON]
        raise InvalidJob(reason, job_id=_salvage_id(raw)) from None


class _IdOnly(msgspec.Struct):
    id: JobId | None = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)


def _salvage_id(raw: bytes | str) -> str | None:
    """The job id of an otherwise invalid payload, when it can still be read safely; never raises."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        return _ID_DECODER.decode(raw).id
    except RecursionError:  # nested too deep somewhere: the top level may still name the id
        return _scan_top_level_id(raw)
    except Exception:  # not JSON, not an object, an id of the wrong shape: no id to trust
        return None


_MAX_REASON = 500
_SCAN_BYTES = 65_536
# a string (possessive, and to the end when unterminated: linear on any input), a structural
# character, or a run of anything else (numbers, literals, junk)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|[\[\]{}:,]|[^"\[\]{}:,\s]+', re.DOTALL)


def _scan_top_level_id(raw: bytes | str) -> str | None:
    """The last ``"id"`` string of the top-level object within the first :data:`_SCAN_BYTES`
    (the decoder keeps the last of duplicate keys), read without recursion: for a payload that
    nests too deeply for the decoder. None when there is none, or it is no valid job id."""
    data = (raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)[:_SCAN_BYTES]
    depth, found = 0, None
    tokens = [match.group() for match in _TOKEN.finditer(data)]
    if not tokens or tokens[0] != b"{":
        return None
    for i, token in enumerate(tokens):
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                break
        elif (
            depth == 1
            and token[:1] == b'"'
            and tokens[i + 1 : i + 2] == [b":"]
            and tokens[i - 1] in (b"{", b",")
            and _text(token) == "id"
        ):
            value = tokens[i + 2] if i + 2 < len(tokens) else b""
            found = value if value[:1] == b'"' else None
    if found is None:
        return None
    try:
        return msgspec.json.decode(found, type=JobId)
    except Exception:
        return None


def _text(token: bytes) -> str | None:
    try:
        return msgspec.json.decode(token, type=str)
    except Exception:
        return None


def job_id_of(payload: bytes | None, entry_id: str) -> str:
    """The id a job stream entry's job runs under: its own ``id``, else the entry id. Total: any
    payload (not JSON, too deep, not bytes) gives an id, never an exception."""
    return (_salvage_id(payload) if payload else None) or entry_id


def new_job_id() -> str:
    return uuid.uuid4().hex
