"""SGLang's native ``POST /generate`` stream (``api: "sglang"``).

The request sends ``text`` (the job's ``input``), ``stream: true``, ``sampling_params`` (SGLang's
names: ``max_new_tokens``, ``stop``, ``sampling_seed``, ...), ``return_logprob: true``,
``top_logprobs_num`` (the job's ``top_logprobs``), ``return_text_in_logprobs: true`` and
``logprob_start_len: -1`` (no prompt logprobs).

Each event is ``{"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
"completion_tokens", "output_token_logprobs": [[logprob, token_id, text|null], ...],
"output_top_logprobs": [[[logprob, token_id, text|null], ...] | null, ...]}}``, then
``data: [DONE]``. Two streaming modes exist in the wild:

* **cumulative** (SGLang before ``incremental_streaming_output``): every event repeats the whole
  ``text`` and every logprob tuple so far;
* **incremental** (``--incremental-streaming-output``): each event carries only the new ones.

The parser detects the mode per stream and never counts a token twice: the first event reads the
same in both; from the second on, ``completion_tokens`` decides (a list as long as it is
cumulative, one as long as the new tokens is incremental), else whether the list starts with the
tuples already read. Once known the mode is kept. ``text`` is handled the same way.

A tuple whose text is ``null`` but has an id is a generated token (text ``""``, ``special=False``:
the detokenizer gave it no text of its own), never a control token. SGLang marks no special
tokens; the one exception: when ``finish_reason`` is ``{"type": "stop", "matched": <token id>}``
the stream's last token is that stop token and says ``special=True``. ``finish_reason.type``
(``stop``, ``length``, ``abort``) ends the generation; an ``abort`` carries its ``message`` and is
an error. ``{"error": ...}`` events raise.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import (
    Candidate,
    Parsed,
    StreamEnd,
    TokenRecord,
    UpstreamError,
    finite,
    output_count,
    prompt_count,
    token_id,
)
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.request import bearer, max_tokens, with_model

__all__ = ["SGLangAdapter", "SGLangParser"]

_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop": "stop",
    "seed": "sampling_seed",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

_Tuple = tuple[float | None, int | None, str | None]


class _Meta(msgspec.Struct, gc=False):
    finish_reason: Any = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    output_token_logprobs: list[list[Any]] | None = None
    output_top_logprobs: list[list[list[Any]] | None] | None = None

    def __post_init__(self) -> None:  # usage bounded as it comes in (worker/upstream/base.py)
        self.prompt_tokens = prompt_count(self.prompt_tokens)
        self.completion_tokens = output_count(self.completion_tokens)


class _Event(msgspec.Struct, gc=False):
    text: str | None = None
    output_ids: list[int] | None = None
    meta_info: _Meta | None = None
    error: Any = None
    error_type: Any = None
    error_message: Any = None


_DECODER = msgspec.json.Decoder(_Event, strict=False)
_ENCODER = msgspec.json.Encoder()


class SGLangAdapter:
    """Build SGLang ``/generate`` requests; :meth:`parser` reads one stream."""

    api = "sglang"
    event_prefix = None

    def build_request(
        self,
        job: Job,
        *,
        model_url: str,
        settings: Settings,
        provider: Provider,
        logprobs: bool = True,
    ) -> tuple[str, bytes]:
        """``(url, JSON body)``; ``logprobs=False`` asks for none."""
        if job.input is None:
            raise UpstreamError("bad_request", "the sglang API needs `input`")
        params: dict[str, Any] = {"max_new_tokens": max_tokens(job, settings)}
        for name, wire in _SAMPLING.items():
            value = getattr(job.params, name)
            if value is not None:
                params[wire] = value
        body: dict[str, Any] = {"text": job.input, "stream": True, "sampling_params": params}
        if logprobs:
            body["return_logprob"] = True
            body["logprob_start_len"] = -1
            body["top_logprobs_num"] = job.params.top_logprobs or 0
            body["return_text_in_logprobs"] = True
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer(key)

    def parser(self, job: Job, *, logprobs: bool = True) -> SGLangParser:
        return SGLangParser()

    def parse(self, data: str) -> Parsed:
        """One event with no stream state (as the first event of a stream): tests and fuzzing."""
        return SGLangParser().parse(data)


class SGLangParser:
    """One SGLang stream: detects cumulative or incremental events, reads each token once."""

    __slots__ = ("_cumulative", "_ids", "_seen", "_text")

    def __init__(self) -> None:
        self._cumulative: bool | None = None  # None until an event tells
        self._seen: list[_Tuple] = []  # tuples read so far (cumulative detection)
        self._ids = 0  # output ids read so far, when no logprobs come
        self._text = ""  # the text so far

    def parse(self, data: str) -> Parsed:
        if data.strip() == "[DONE]":
            return Parsed(closed=True)
        try:
            event = _DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed_event(data, exc) from None
        if not (event.error is None and event.error_type is None and event.error_message is None):
            raise stream_error(event.error, error_type=event.error_type, error_message=event.error_message)
        meta = event.meta_info or _Meta()
        entries = [_tuple(item) for item in meta.output_token_logprobs or ()]
        tops = meta.output_top_logprobs or []
        ids = event.output_ids
        if entries:
            start = self._start(entries, meta.completion_tokens)
            new = entries[start:]
            self._seen.extend(new)
            records = [
                _record(entry, tops[start + i] if start + i < len(tops) else None)
                for i, entry in enumerate(new)
            ]
            text = self._new_text(event.text)
        else:
            if ids is not None:
                self._mode_from_count(len(ids), self._ids, meta.completion_tokens)
                self._ids += len(ids) - (self._ids if self._cumulative else 0)
            text = self._new_text(event.text)
            records = [TokenRecord(text, None, special=False)] if text else []
        parsed = Parsed(records, text=text or None)
        parsed.set_usage(meta.prompt_tokens, meta.completion_tokens)
        reason = meta.finish_reason
        if reason is not None:
            parsed.end = self._end(reason, parsed)
        return parsed

    def _start(self, entries: list[_Tuple], completion: int | None) -> int:
        """Where the new tuples of this event begin."""
        read = len(self._seen)
        self._mode_from_count(len(entries), read, completion)
        if self._cumulative is None and read:
            self._cumulative = len(entries) >= read and entries[:read] == self._seen
        return read if self._cumulative and read else 0

    def _mode_from_count(self, n: int, read: int, completion: int | None) -> None:
        """Decide the mode from ``completion_tokens`` once a second event comes (``read`` > 0)."""
        if self._cumulative is not None or not read or completion is None:
            return
        if n == completion:
            self._cumulative = True
        elif n == completion - read:
            self._cumulative = False

    def _new_text(self, text: str | None) -> str:
        if not text:
            return ""
        if self._cumulative is None and self._text:
            self._cumulative = text.startswith(self._text)  # nothing else tells: the text does
        if self._cumulative and text.startswith(self._text):
            new = text[len(self._text) :]
            self._text = text
            return new
        self._text = text if self._cumulative else self._text + text
        return text

    def _end(self, reason: Any, parsed: Parsed) -> StreamEnd:
        kind = reason.get("type") if isinstance(reason, dict) else reason
        kind = kind if isinstance(kind, str) and kind else "unknown"
        if kind == "abort":
            message = reason.get("message") if isinstance(reason, dict) else None
            raise stream_error({"type": "generation", "message": message or "the request was aborted"})
        matched = reason.get("matched") if isinstance(reason, dict) else None
        if (
            kind == "stop"
            and isinstance(matched, int)
            and not isinstance(matched, bool)
            and parsed.tokens
            and parsed.tokens[-1].token_id == matched
        ):
            last = parsed.tokens[-1]
            parsed.tokens[-1] = msgspec.structs.replace(last, special=True)
        return StreamEnd(kind, None, parsed.usage_input_tokens, parsed.usage_output_tokens)


def _tuple(item: list[Any]) -> _Tuple:
    """``[logprob, token_id, text]`` (text optional); other shapes keep what fits: a logprob that
    is no finite float (an int too large for one) or an id outside a vocabulary's range is ``None``."""
    logprob = finite(item[0]) if item else None
    tid = token_id(item[1]) if len(item) > 1 else None
    text = item[2] if len(item) > 2 and isinstance(item[2], str) else None
    return (logprob, tid, text)


def _record(entry: _Tuple, top: list[list[Any]] | None) -> TokenRecord:
    logprob, token_id, text = entry
    candidates = None
    if top:
        candidates = [
            Candidate(t[2] or "", t[0], token_id=t[1]) for t in map(_tuple, top) if t != (None, None, None)
        ] or None
    return TokenRecord(text or "", logprob, token_id=token_id, special=False, top=candidates)
