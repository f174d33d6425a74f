"""Gemini / Vertex ``models/{model}:streamGenerateContent?alt=sse`` (``api: "gemini"``).

The request sends ``contents`` (``user``/``model`` turns; system messages become
``systemInstruction``) and ``generationConfig`` with ``responseLogprobs: true`` and ``logprobs: k``
(the job's ``top_logprobs``, 1..20, sent only when above 0). The key goes in ``x-goog-api-key``.

Each SSE event is a ``GenerateContentResponse``; only ``candidates[0]`` is read:

* ``logprobsResult.chosenCandidates[] {token, tokenId, logProbability}``: one record per entry
  (``special=False``: Gemini marks no control tokens, and sends no bytes).
* ``logprobsResult.topCandidates[].candidates[]``: the alternatives of the chosen token at the same
  position. They **may arrive on a different chunk** than the chosen tokens they belong to, so
  when alternatives were asked for, a chosen token waits until its alternatives arrive (paired by
  position) or the stream ends; ``logProbabilitySum`` and ``avgLogprobs`` are summaries and are
  not needed.
* ``content.parts[].text`` is the answer's text (``Parsed.text``); a part with ``thought: true`` is
  reasoning (its own channel, no logprob). Text without chosen candidates (logprobs off) is one
  record with no logprob.
* ``finishReason`` ends the generation (``STOP`` → ``stop``, ``MAX_TOKENS`` → ``length``, others in
  lower case); ``usageMetadata {promptTokenCount, candidatesTokenCount}`` gives the usage; no
  ``[DONE]``: EOF after the finish is the end. ``promptFeedback.blockReason`` with no candidate
  ends it with ``finish_reason`` ``blocked_<reason>``.
* ``{"error": {"code", "message", "status"}}`` raises (classified by its HTTP-like ``code``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from worker.jobs import Job
from worker.settings import Provider, Settings
from worker.upstream.base import Candidate, Parsed, StreamEnd, TokenRecord, UpstreamError
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.request import max_tokens, unsupported, with_model

__all__ = ["MAX_LOGPROBS", "GeminiAdapter", "GeminiParser"]

MAX_LOGPROBS = 20
_CONFIG_NAMES = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "stop": "stopSequences",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}


class _Token(msgspec.Struct, gc=False):
    token: str | None = None
    tokenId: int | None = None
    logProbability: float | None = None


class _Top(msgspec.Struct, gc=False):
    candidates: list[_Token] | None = None


class _Logprobs(msgspec.Struct, gc=False):
    chosenCandidates: list[_Token] | None = None
    topCandidates: list[_Top] | None = None


class _Part(msgspec.Struct, gc=False):
    text: str | None = None
    thought: bool = False


class _Content(msgspec.Struct, gc=False):
    parts: list[_Part] | None = None


class _Candidate(msgspec.Struct, gc=False):
    index: int = 0
    content: _Content | None = None
    finishReason: str | None = None
    logprobsResult: _Logprobs | None = None


class _Usage(msgspec.Struct, gc=False):
    promptTokenCount: int | None = None
    candidatesTokenCount: int | None = None


class _Feedback(msgspec.Struct, gc=False):
    blockReason: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    candidates: list[_Candidate] | None = None
    usageMetadata: _Usage | None = None
    promptFeedback: _Feedback | None = None
    error: Any = None


_DECODER = msgspec.json.Decoder(_Chunk, strict=False)
_ENCODER = msgspec.json.Encoder()


class GeminiAdapter:
    """Build ``streamGenerateContent`` requests; :meth:`parser` reads one stream."""

    api = "gemini"
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
        """``(url, JSON body)``; ``logprobs=False`` asks for none (a model that refuses them)."""
        if job.messages is None:
            raise UpstreamError("bad_request", "the gemini API needs `messages`")
        unsupported(job, "gemini", ("repetition_penalty",))
        system: list[dict[str, str]] = []
        contents: list[dict[str, Any]] = []
        for m in job.messages:
            if m.role in ("system", "developer"):
                system.append({"text": m.content})
            elif m.role in ("user", "assistant"):
                role = "model" if m.role == "assistant" else "user"
                contents.append({"role": role, "parts": [{"text": m.content}]})
            else:
                raise UpstreamError("bad_request", f"the gemini API takes no {m.role!r} messages")
        if not contents:
            raise UpstreamError("bad_request", "the gemini API needs a user or assistant message")
        config: dict[str, Any] = {"maxOutputTokens": max_tokens(job, settings)}
        for name, wire in _CONFIG_NAMES.items():
            value = getattr(job.params, name)
            if value is not None:
                config[wire] = value
        if logprobs:
            config["responseLogprobs"] = True
            top = min(job.params.top_logprobs or 0, MAX_LOGPROBS)
            if top > 0:
                config["logprobs"] = top
        body: dict[str, Any] = {"contents": contents, "generationConfig": config}
        if system:
            body["systemInstruction"] = {"parts": system}
        return with_model(model_url, job.model), _ENCODER.encode(body)

    def headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"x-goog-api-key": key}

    def parser(self, job: Job, *, logprobs: bool = True) -> GeminiParser:
        return GeminiParser(pair=logprobs and (job.params.top_logprobs or 0) > 0)

    def parse(self, data: str) -> Parsed:
        """One event with no stream state (alternatives unpaired): tests and fuzzing."""
        return GeminiParser(pair=False).parse(data)


class GeminiParser:
    """One Gemini stream. With ``pair``, chosen tokens wait for their alternatives (by position)."""

    __slots__ = ("_chosen", "_pair", "_tops")

    def __init__(self, *, pair: bool) -> None:
        self._pair = pair
        self._chosen: deque[_Token] = deque()
        self._tops: deque[list[Candidate]] = deque()

    def parse(self, data: str) -> Parsed:
        if data.strip() == "[DONE]":
            return Parsed(self._flush(), closed=True)
        try:
            chunk = _DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise malformed_event(data, exc) from None
        if chunk.error is not None:
            raise stream_error(chunk.error)
        parsed = Parsed()
        usage = chunk.usageMetadata
        if usage is not None:
            parsed.set_usage(usage.promptTokenCount, usage.candidatesTokenCount)
        candidate = _candidate0(chunk.candidates)
        if candidate is None:
            feedback = chunk.promptFeedback
            if feedback is not None and feedback.blockReason:
                reason = f"blocked_{feedback.blockReason.lower()}"
                parsed.end = StreamEnd(reason, None, parsed.usage_input_tokens, parsed.usage_output_tokens)
                parsed.tokens = self._flush()
            return parsed
        reasoning, text = _texts(candidate.content)
        records = [TokenRecord(part, None, special=False, channel="reasoning") for part in reasoning]
        result = candidate.logprobsResult
        chosen = (result.chosenCandidates if result is not None else None) or []
        tops = (result.topCandidates if result is not None else None) or []
        if chosen or tops:
            records += self._paired(chosen, tops)
        elif text:
            records.append(TokenRecord(text, None, special=False))
        if candidate.finishReason:
            records += self._flush()
            reason = _REASONS.get(candidate.finishReason, candidate.finishReason.lower())
            parsed.end = StreamEnd(reason, None, parsed.usage_input_tokens, parsed.usage_output_tokens)
        parsed.tokens = records
        parsed.text = text or None
        return parsed

    def _paired(self, chosen: list[_Token], tops: list[_Top]) -> list[TokenRecord]:
        if not self._pair:  # alternatives not asked for: only those on the same chunk pair up
            found = [[_candidate(c) for c in top.candidates or ()] for top in tops]
            return [_record(t, found[i] if i < len(found) else None) for i, t in enumerate(chosen)]
        self._chosen.extend(chosen)
        self._tops.extend([_candidate(c) for c in top.candidates or ()] for top in tops)
        out = []
        while self._chosen and self._tops:
            out.append(_record(self._chosen.popleft(), self._tops.popleft()))
        return out

    def _flush(self) -> list[TokenRecord]:
        """Chosen tokens still waiting: their alternatives never came."""
        out = [_record(token, None) for token in self._chosen]
        self._chosen.clear()
        self._tops.clear()
        return out


def _candidate0(candidates: list[_Candidate] | None) -> _Candidate | None:
    if not candidates:
        return None
    return next((c for c in candidates if c.index == 0), None)


def _texts(content: _Content | None) -> tuple[list[str], str]:
    """The thought parts, and the answer's text."""
    if content is None or not content.parts:
        return [], ""
    thoughts = [p.text for p in content.parts if p.thought and p.text]
    text = "".join(p.text or "" for p in content.parts if not p.thought)
    return thoughts, text


def _record(token: _Token, top: list[Candidate] | None) -> TokenRecord:
    return TokenRecord(
        token.token or "", token.logProbability, token_id=token.tokenId, special=False, top=top or None
    )


def _candidate(token: _Token) -> Candidate:
    return Candidate(token.token or "", token.logProbability, token_id=token.tokenId)
