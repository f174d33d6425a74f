"""The OpenAI Responses API (``POST /v1/responses``, ``api: "responses"``).

The request streams (``stream: true``) with ``include: ["message.output_text.logprobs"]`` and
``top_logprobs`` (0..20), and ``stream_options.include_obfuscation: false`` (the ``obfuscation``
padding field is ignored when a server sends it anyway). Every event is named (``event:
response.output_text.delta``) and its JSON repeats the name as ``type``; shapes are the
openai-python SDK's ``types/responses/``:

* ``response.output_text.delta``: ``delta`` (the text) and ``logprobs``, a list that may hold
  **several tokens** (one delta is not one token): one record per entry (``token``, ``logprob``,
  ``bytes`` when sent, ``top_logprobs``); a delta without entries is one record of its text with
  no logprob. ``Parsed.text`` is the delta.
* ``response.output_text.done``: the same entries again (only these carry ``bytes`` on the final
  output): nothing new, so no record (never counted twice).
* ``response.reasoning_text.delta`` / ``response.reasoning_summary_text.delta``: reasoning items,
  records on the ``reasoning`` channel, never in the answer or its confidence.
* ``response.refusal.delta``: the model's refusal is its answer: content text, no logprob.
* ``response.completed`` (``finish_reason`` ``stop``) or ``response.incomplete``
  (``incomplete_details.reason``: ``max_output_tokens`` → ``length``): the end, with
  ``response.usage`` ``{input_tokens, output_tokens}``; nothing follows.
* ``response.failed`` (``response.error {code, message}``) and ``error`` (``{code, message,
  param}``) raise, classified like every in-stream error (:mod:`worker.upstream.errors`).
* ``sequence_number`` increases by one per event: an event whose number is not above the last one
  seen is a repeat and is dropped.

Every record says ``special=False``: the Responses API sends no control tokens.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.request import bearer, max_tokens, sampling, unsupported, with_model

__all__ = ["INCLUDE_LOGPROBS", "MAX_TOP_LOGPROBS", "ResponsesAdapter", "ResponsesParser"]

INCLUDE_LOGPROBS = "message.output_text.logprobs"
MAX_TOP_LOGPROBS = 20
_SENT = ("temperature", "top_p")
_NOT_SENT = ("top_k", "repetition_penalty", "stop", "seed", "presence_penalty", "frequency_penalty")
_ROLES = frozenset({"system", "developer", "user", "assistant"})
_REASONS = {"max_output_tokens": "length"}
_REASONING_DELTAS = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})


class _Top(msgspec.Struct, gc=False):
    token: str | None = None
    logprob: float | None = None
    bytes: list[int] | None = None


class _Logprob(msgspec.Struct, gc=False):
    token: str | None = None
    logprob: float | None = None
    bytes: list[int] | None = None
    top_logprobs: list[_Top] | None = None


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Incomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class _Response(msgspec.Struct, gc=False):
    status: str | None = None
    usage: _Usage | None = None
    error: Any = None
    incomplete_details: _Incomplete | None = None


class _Event(msgspec.Struct, gc=False):
    """Any Responses stream event; unknown keys (``item_id``, ``obfuscation``, ...) are ignored."""

    type: str | None = None
    sequence_number: int | None = None
    delta: str | None = None
    logprobs: list[_Logprob] | None = None
    response: _Response | None = None
    code: Any = None
    message: Any = None
    param: Any = None
    error: Any = None


_DECODER = msgspec.json.Decoder(_Event, strict=False)
_ENCODER = msgspec.json.Encoder()


class ResponsesAdapter:
    """Build Responses API requests; :meth:`parser` reads one stream."""

    api = "responses"
    event_prefix = "response."  # every event is named `response.*` (or `error`): pass them on

    def build_request(
        self,
        job: Job,
        *,
        model_url: str,
        settings: Settings,
        provider: Provider,
        logprobs: bool = True,
    ) -> tuple[str, bytes]:
        """``(url, JSON body)``; ``logprobs=False`` asks for none (a model that refuses them)."""
        if job.messages is None:
            raise UpstreamError("bad_request", "the responses API needs `messages`")
        unsupported(job, "responses", _NOT_SENT)
        items = []
        for m in job.messages:
            if m.role not in _ROLES:
                raise UpstreamError("bad_request", f"the responses API takes no {m.role!r} messages")
            items.append({"role": m.role, "content": m.content})
        body: dict[str, Any] = {
            "model": job.model,
            "input": items,
            "stream": True,
            "store": False,
            "max_output_tokens": max_tokens(job, settings),
            **sampling(job, _SENT),
            "stream_options": {"include_obfuscation": False},
        }
        if logprobs:
            body["include"] = [INCLUDE_LOGPROBS]
            body["top_logprobs"] = min(job.params.top_logprobs or 0, MAX_TOP_LOGPROBS)
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer(key)

    def parser(self, job: Job, *, logprobs: bool = True) -> ResponsesParser:
        return ResponsesParser()

    def parse(self, data: str) -> Parsed:
        """One event with no stream state (a repeat is not recognised): tests and fuzzing."""
        return ResponsesParser().parse(data)


class ResponsesParser:
    """One Responses stream: events in order, repeats (by ``sequence_number``) dropped."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def parse(self, data: str) -> Parsed:
        if data.strip() == "[DONE]":  # not sent by OpenAI; a proxy may add it
            return Parsed(closed=True)
        try:
            event = _DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed_event(data, exc) from None
        number = event.sequence_number
        if number is not None:
            if self._last is not None and number <= self._last:
                return Parsed()  # a repeat of an event already read
            self._last = number
        return _read(event)


def _read(event: _Event) -> Parsed:
    """What one (new) event says."""
    kind = event.type
    if kind == "response.output_text.delta":
        return _text_delta(event)
    if kind in _REASONING_DELTAS or kind == "response.refusal.delta":
        if not event.delta:
            return Parsed()
        if kind == "response.refusal.delta":  # the model's refusal is its answer
            return Parsed([TokenRecord(event.delta, None, special=False)], text=event.delta)
        return Parsed([TokenRecord(event.delta, None, special=False, channel="reasoning")])
    if kind in ("response.completed", "response.incomplete"):
        return _end(event)
    if kind == "response.failed":
        response = event.response or _Response()
        raise stream_error(response.error if response.error is not None else {"message": kind})
    if kind == "error":
        raise stream_error({"code": event.code, "message": event.message, "param": event.param})
    if event.error is not None:  # an error object without a type (a proxy's)
        raise stream_error(event.error)
    return Parsed()  # created, in_progress, output_item.*, content_part.*, *.done, ...


def _text_delta(event: _Event) -> Parsed:
    delta = event.delta or ""
    entries = event.logprobs or []
    records = [_record(e) for e in entries]
    if not records and delta:
        records = [TokenRecord(delta, None, special=False)]
    return Parsed(records, text=delta or None)


def _record(entry: _Logprob) -> TokenRecord:
    top = None
    if entry.top_logprobs:
        top = [Candidate(t.token or "", t.logprob, _bytes(t.bytes)) for t in entry.top_logprobs]
    return TokenRecord(entry.token or "", entry.logprob, special=False, bytes=_bytes(entry.bytes), top=top)


def _bytes(values: list[int] | None) -> bytes | None:
    if values is None:
        return None
    try:
        return bytes(values)
    except ValueError:  # a value outside 0..255
        return None


def _end(event: _Event) -> Parsed:
    response = event.response or _Response()
    usage = response.usage or _Usage()
    if event.type == "response.completed":
        reason = "stop"
    else:
        raw = (response.incomplete_details or _Incomplete()).reason or "incomplete"
        reason = _REASONS.get(raw, raw)
    end = StreamEnd(reason, None, usage.input_tokens, usage.output_tokens)
    return Parsed([], end, usage.input_tokens, usage.output_tokens, closed=True)
