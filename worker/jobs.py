"""Jobs: what producers put on ``{P}:jobs``.

A job entry on the job stream has one field, ``job``, holding a :class:`Job` as JSON. The static limits
below are part of the published JSON Schema; the operator's tighter caps (``max_input_chars``,
``max_tokens_cap``) are checked against the running settings by :func:`worker.admit.admit`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec

__all__ = [
    "API_NAMES",
    "Api",
    "ChatMessage",
    "Escalate",
    "InvalidJob",
    "Job",
    "Params",
    "decode_job",
    "encode_job",
    "job_id_of",
    "new_job_id",
]

Api = Literal["native", "chat", "completions"]
API_NAMES: tuple[str, ...] = ("native", "chat", "completions")

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


class Escalate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Route by confidence: run the job's (cheap) model first and, when its running confidence
    after ``after_tokens`` answer tokens (or at the end, when not given) is below ``below``, stop it
    and run ``model`` (on ``provider``, default the job's) as a new attempt on the same stream."""

    model: ModelName
    below: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
    provider: ProviderName | None = None
    after_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class Job(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """An LLM generation job.

    ``input`` is required for the ``native`` and ``completions`` APIs, ``messages`` for ``chat``.
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

    def __post_init__(self) -> None:
        if self.api == "chat":
            if self.messages is None:
                raise ValueError("a job with api 'chat' needs `messages`")
            if self.input is not None:
                raise ValueError("a job with api 'chat' takes `messages`, not `input`")
        else:
            if self.input is None:
                raise ValueError(f"a job with api '{self.api}' needs `input`")
            if self.messages is not None:
                raise ValueError(f"a job with api '{self.api}' takes `input`, not `messages`")

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
    """Decode and validate a job; raises :class:`InvalidJob` with a reason a producer can act on."""
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidJob(f"invalid job: {exc}", job_id=_salvage_id(raw)) from None
    except msgspec.DecodeError as exc:
        raise InvalidJob(f"job is not valid JSON: {exc}", job_id=_salvage_id(raw)) from None


class _IdOnly(msgspec.Struct):
    id: JobId | None = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)


def _salvage_id(raw: bytes | str) -> str | None:
    """The job id of an otherwise invalid payload, when it can still be read safely."""
    try:
        return _ID_DECODER.decode(raw).id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def job_id_of(payload: bytes | None, entry_id: str) -> str:
    """The id a job stream entry's job runs under: its own ``id``, else the entry id."""
    return (_salvage_id(payload) if payload else None) or entry_id


def new_job_id() -> str:
    return uuid.uuid4().hex
