"""Gemini's ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` route.

Request: ``{"contents": [{"role": "user"|"model", "parts": [{"text"}]}], "systemInstruction":
{"parts": [...]}, "generationConfig": {"maxOutputTokens", "seed", "stopSequences",
"responseLogprobs", "logprobs"}}``; the model (with its ``;key=value`` directives) is the path's
``{model}``. Each event is a ``GenerateContentResponse`` with ``candidates[0].content.parts``,
``logprobsResult.chosenCandidates`` ``{token, tokenId, logProbability}`` (no bytes) and
``topCandidates``, ``usageMetadata`` on every chunk, ``finishReason`` (``STOP``, ``MAX_TOKENS``) on
the last; no ``[DONE]``. ``per_chunk`` tokens go in one chunk; with ``split_top`` the alternatives
of a chunk's tokens arrive on the **next** chunk (as Gemini streams sometimes send them). The EOS
token is never a chosen candidate. ``reasoning=N`` sends N chunks of thought parts first. Errors
are ``{"error": {"code", "message", "status"}}``.

The directive ``nologprobs`` refuses logprobs as Gemini does: ``400 "Logprobs is not supported for
the current model."``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from worker.sim.faults import (
    DirectiveError,
    Directives,
    RequestError,
    SimRequest,
    StatusReply,
    resolve,
    status_reply,
)
from worker.sim.generate import SimToken, estimate_tokens
from worker.sim.openai_api import render_messages

__all__ = ["GEMINI", "GeminiDialect", "GeminiEncoder", "refusal"]

_ENC = msgspec.json.Encoder()
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _Part(msgspec.Struct):
    text: str | None = None


class _Content(msgspec.Struct):
    role: str = "user"
    parts: list[_Part] = msgspec.field(default_factory=list)


class _Config(msgspec.Struct):
    maxOutputTokens: int | None = None
    seed: int | None = None
    stopSequences: list[str] | None = None
    responseLogprobs: bool = False
    logprobs: int | None = None
    temperature: float | None = None


class _Body(msgspec.Struct, kw_only=True):
    contents: list[_Content]
    systemInstruction: _Content | None = None
    generationConfig: _Config | None = None
    sim: dict[str, Any] | None = None


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def refusal() -> StatusReply:
    """How a model without logprobs refuses them."""
    body = _ENC.encode(_error(400, "Logprobs is not supported for the current model."))
    return StatusReply(400, "application/json", body, {})


class GeminiDialect:
    """``POST /v1beta/models/{model}:streamGenerateContent``."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, GeminiEncoder]:
        try:
            parsed = msgspec.json.decode(body, type=_Body)
        except msgspec.MsgspecError as exc:
            raise RequestError(400, _error(400, f"Invalid JSON payload received. {exc}")) from None
        name = model or ""
        try:
            base, directives = resolve(name, parsed.sim, default)
        except DirectiveError as exc:
            raise RequestError(400, _error(400, str(exc))) from None
        turns: list[tuple[str, str]] = []
        if parsed.systemInstruction is not None:
            turns.append(("system", "".join(p.text or "" for p in parsed.systemInstruction.parts)))
        for content in parsed.contents:
            role = "assistant" if content.role == "model" else content.role
            turns.append((role, "".join(p.text or "" for p in content.parts)))
        prompt = render_messages(turns)
        config = parsed.generationConfig or _Config()
        logprobs = config.responseLogprobs
        request = SimRequest(
            model=base,
            key=name,
            directives=directives,
            prompt=prompt,
            max_new_tokens=config.maxOutputTokens,
            seed=config.seed,
            stop=tuple(s for s in config.stopSequences or () if s),
            top_n=(config.logprobs or 0) if logprobs else 0,
            refusal=refusal() if directives.nologprobs and logprobs else None,
        )
        encoder = GeminiEncoder(
            model=base,
            logprobs=logprobs,
            per_chunk=directives.per_chunk,
            split_top=directives.split_top,
            prompt_tokens=estimate_tokens(prompt),
            reasoning=directives.reasoning,
        )
        return request, encoder

    def status_reply(self, directives: Directives) -> StatusReply:
        reply = status_reply(directives)
        if directives.body != "json":
            return reply
        return msgspec.structs.replace(
            reply, body=_ENC.encode(_error(reply.status, "The simulator says no."))
        )


def _token(token: SimToken) -> dict[str, Any]:
    return {"token": token.text, "tokenId": token.id, "logProbability": token.logprob}


class GeminiEncoder:
    """One Gemini stream's chunks."""

    done_by_default = False

    def __init__(
        self,
        *,
        model: str,
        logprobs: bool,
        per_chunk: int,
        split_top: bool,
        prompt_tokens: int,
        reasoning: int = 0,
    ) -> None:
        self._reasoning = reasoning
        self._model = model
        self._logprobs = logprobs
        self._per_chunk = per_chunk
        self._split_top = split_top
        self._prompt_tokens = prompt_tokens
        self._pending: list[tuple[SimToken, Sequence[SimToken] | None]] = []
        self._late_tops: list[list[dict[str, Any]]] = []  # split_top: the last chunk's alternatives
        self._count = 0

    def start(self) -> Sequence[bytes]:
        """``reasoning`` chunks of thought parts (``thought: true``, no logprobs) first."""
        chunks = []
        for i in range(self._reasoning):
            part = {"text": f"Step {i + 1} of my reasoning. ", "thought": True}
            candidate = {"content": {"parts": [part], "role": "model"}, "index": 0}
            chunks.append(
                _ENC.encode({"candidates": [candidate], "modelVersion": self._model, "responseId": "sim"})
            )
        return chunks

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        self._pending.append((token, top))
        if len(self._pending) < self._per_chunk:
            return None
        return self._chunk(None)

    def flush(self) -> Sequence[bytes]:
        return () if not self._pending else (self._chunk(None),)

    def _chunk(self, finish: str | None) -> bytes:
        items, self._pending = self._pending, []
        self._count += len(items)
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": "".join(t.text for t, _ in items)}], "role": "model"},
            "index": 0,
        }
        if self._logprobs:
            chosen = [_token(t) for t, _ in items]
            tops = [[_token(a) for a in top or ()] for _, top in items]
            if self._split_top:
                tops, self._late_tops = self._late_tops, tops
                if finish is not None:
                    tops, self._late_tops = tops + self._late_tops, []
            result: dict[str, Any] = {
                "chosenCandidates": chosen,
                "logProbabilitySum": sum(c["logProbability"] for c in chosen),
            }
            result["topCandidates"] = [{"candidates": t} for t in tops]
            candidate["logprobsResult"] = result
            if chosen:
                candidate["avgLogprobs"] = result["logProbabilitySum"] / len(chosen)
        if finish is not None:
            candidate["finishReason"] = finish
        usage = {
            "promptTokenCount": self._prompt_tokens,
            "candidatesTokenCount": self._count,
            "totalTokenCount": self._prompt_tokens + self._count,
        }
        return _ENC.encode(
            {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": self._model,
                "responseId": "sim",
            }
        )

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]:
        if finish_reason == "length" and not token.special:
            self._pending.append((token, top))
        return (self._chunk("MAX_TOKENS" if finish_reason == "length" else "STOP"),)

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        status = 400 if error_type == "validation" else 500
        return (_ENC.encode(_error(status, message)),)


GEMINI = GeminiDialect()
