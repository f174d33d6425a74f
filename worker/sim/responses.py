"""The OpenAI Responses API route (``POST /v1/responses``), as openai-python's ``types/responses`` shape it.

Request: ``{"model", "input": "text" | [{"role", "content"}], "stream": true, "max_output_tokens",
"include": ["message.output_text.logprobs"], "top_logprobs", "stream_options":
{"include_obfuscation": false}}``. Every event is named (``event: <type>``) and carries its
``type`` and a ``sequence_number`` counting from 0: ``response.created``, ``response.in_progress``,
(with ``reasoning=N``: a reasoning item of N ``response.reasoning_summary_text.delta`` pieces),
``response.output_item.added``, ``response.content_part.added``, then one
``response.output_text.delta`` per ``per_chunk`` tokens whose ``logprobs`` list holds each of them
(no ``bytes``, as the SDK's delta type has none) and, unless the request turned it off, an
``obfuscation`` padding string; then ``response.output_text.done`` (every entry again, now with
``bytes``), ``response.content_part.done``, ``response.output_item.done`` and
``response.completed`` with the usage (``response.incomplete`` with ``max_output_tokens`` when
the token limit ended it). The EOS token is never a token entry. ``fault=error`` sends
``response.failed`` (``server_error``; ``error_type=validation`` an ``error`` event instead).

The directive ``nologprobs`` makes the model refuse logprobs as OpenAI's reasoning models do:
``400 {"error": {"code": "unsupported_parameter", "param": "include", ...}}``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Annotated, Any

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
from worker.sim.generate import SimToken, estimate_tokens, stream_seed
from worker.sim.openai_api import render_messages

__all__ = ["RESPONSES", "ResponsesDialect", "ResponsesEncoder", "refusal"]

TopK = Annotated[int, msgspec.Meta(ge=0, le=20)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
INCLUDE = "message.output_text.logprobs"
_ENC = msgspec.json.Encoder()


class _Item(msgspec.Struct):
    role: str = "user"
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(msgspec.Struct):
    include_obfuscation: bool = True


class _Body(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[_Item]
    stream: bool = False
    max_output_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    include: list[str] | None = None
    top_logprobs: TopK | None = None
    stream_options: _StreamOptions | None = None
    sim: dict[str, Any] | None = None


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> RequestError:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return RequestError(status, {"error": error})


def refusal() -> StatusReply:
    """How a reasoning model refuses logprobs."""
    error = {
        "message": "Unsupported parameter: 'include' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "include",
        "code": "unsupported_parameter",
    }
    return StatusReply(400, "application/json", _ENC.encode({"error": error}), {})


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))


class ResponsesDialect:
    """``POST /v1/responses``."""

    __slots__ = ()

    def parse(
        self, body: bytes, model: str | None, default: str | None
    ) -> tuple[SimRequest, ResponsesEncoder]:
        try:
            parsed = msgspec.json.decode(body, type=_Body)
        except msgspec.MsgspecError as exc:
            raise _error(400, f"invalid request body: {exc}") from None
        if not parsed.stream:
            raise _error(400, 'tokenwire sim only simulates streaming: send "stream": true', "stream")
        try:
            base, directives = resolve(parsed.model, parsed.sim, default)
        except DirectiveError as exc:
            raise _error(400, str(exc), "model") from None
        if isinstance(parsed.input, str):
            prompt = render_messages([("user", parsed.input)])
        else:
            prompt = render_messages((i.role, _text(i.content)) for i in parsed.input)
        logprobs = INCLUDE in (parsed.include or ())
        options = parsed.stream_options or _StreamOptions()
        request = SimRequest(
            model=base,
            key=parsed.model,
            directives=directives,
            prompt=prompt,
            max_new_tokens=parsed.max_output_tokens,
            top_n=(parsed.top_logprobs or 0) if logprobs else 0,
            refusal=refusal() if directives.nologprobs and logprobs else None,
        )
        digest = stream_seed(0, parsed.model, prompt, None)
        encoder = ResponsesEncoder(
            response_id=f"resp_{digest:016x}",
            model=base,
            logprobs=logprobs,
            obfuscation=options.include_obfuscation,
            per_chunk=directives.per_chunk,
            prompt_tokens=estimate_tokens(prompt),
            reasoning=directives.reasoning,
        )
        return request, encoder

    def status_reply(self, directives: Directives) -> StatusReply:
        reply = status_reply(directives)
        if directives.body != "json":
            return reply
        kind = "server_error" if reply.status >= 500 else "invalid_request_error"
        code = "rate_limit_exceeded" if reply.status == 429 else None
        error = {
            "message": f"HTTP {reply.status} from the simulator",
            "type": kind,
            "param": None,
            "code": code,
        }
        return msgspec.structs.replace(reply, body=_ENC.encode({"error": error}))


class ResponsesEncoder:
    """One Responses stream's events (each payload led by its ``event:`` line)."""

    done_by_default = False

    def __init__(
        self,
        *,
        response_id: str,
        model: str,
        logprobs: bool,
        obfuscation: bool,
        per_chunk: int,
        prompt_tokens: int,
        reasoning: int = 0,
    ) -> None:
        self._reasoning = reasoning
        self._out = 1 if reasoning else 0  # the message's output_index (after a reasoning item)
        self._id = response_id
        self._item = "msg_" + response_id[5:]
        self._model = model
        self._logprobs = logprobs
        self._obfuscation = obfuscation
        self._per_chunk = per_chunk
        self._prompt_tokens = prompt_tokens
        self._created = int(time.time())
        self._seq = 0
        self._pending: list[tuple[SimToken, Sequence[SimToken] | None]] = []
        self._entries: list[dict[str, Any]] = []  # every entry sent, for output_text.done
        self._text: list[str] = []
        self._count = 0

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\n" + _ENC.encode(payload)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "model": self._model,
            "status": status,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            **extra,
        }

    def _reasoning_item(self) -> list[bytes]:
        """``reasoning`` summary deltas in a reasoning item (output 0), before the message."""
        rid = "rs_" + self._id[5:]
        where = {"item_id": rid, "output_index": 0, "summary_index": 0}
        pieces = [f"Step {i + 1} of my reasoning. " for i in range(self._reasoning)]
        item = {"id": rid, "type": "reasoning", "summary": []}
        done = {
            "id": rid,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "".join(pieces)}],
        }
        return [
            self._event("response.output_item.added", {"output_index": 0, "item": item}),
            self._event(
                "response.reasoning_summary_part.added",
                {**where, "part": {"type": "summary_text", "text": ""}},
            ),
            *(self._event("response.reasoning_summary_text.delta", {**where, "delta": p}) for p in pieces),
            self._event("response.reasoning_summary_text.done", {**where, "text": "".join(pieces)}),
            self._event("response.reasoning_summary_part.done", {**where, "part": done["summary"][0]}),
            self._event("response.output_item.done", {"output_index": 0, "item": done}),
        ]

    def start(self) -> Sequence[bytes]:
        created = self._event("response.created", {"response": self._response("in_progress")})
        progress = self._event("response.in_progress", {"response": self._response("in_progress")})
        reasoning = self._reasoning_item() if self._reasoning else []
        where = {"output_index": self._out}
        item = {
            "id": self._item,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": []}
        return (
            created,
            progress,
            *reasoning,
            self._event("response.output_item.added", {**where, "item": item}),
            self._event(
                "response.content_part.added",
                {**where, "item_id": self._item, "content_index": 0, "part": part},
            ),
        )

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        self._pending.append((token, top))
        if len(self._pending) < self._per_chunk:
            return None
        return self._take()

    def flush(self) -> Sequence[bytes]:
        payload = self._take()
        return () if payload is None else (payload,)

    def _take(self) -> bytes | None:
        if not self._pending:
            return None
        items, self._pending = self._pending, []
        delta = "".join(t.text for t, _ in items)
        self._text.append(delta)
        self._count += len(items)
        entries = []
        if self._logprobs:
            for token, top in items:
                alternatives = [{"token": a.text, "logprob": a.logprob} for a in top or ()]
                entries.append({"token": token.text, "logprob": token.logprob, "top_logprobs": alternatives})
                final_top = [
                    {**alt, "bytes": list(a.raw)} for alt, a in zip(alternatives, top or (), strict=True)
                ]
                self._entries.append({**entries[-1], "bytes": list(token.raw), "top_logprobs": final_top})
        fields: dict[str, Any] = {
            "item_id": self._item,
            "output_index": self._out,
            "content_index": 0,
            "delta": delta,
            "logprobs": entries,
        }
        if self._obfuscation:
            fields["obfuscation"] = hashlib.blake2b(delta.encode(), digest_size=6).hexdigest()[
                : 16 - len(delta) % 16
            ]
        return self._event("response.output_text.delta", fields)

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]:
        out: list[bytes] = []
        if finish_reason == "length" and not token.special:
            self._pending.append((token, top))
        if (last := self._take()) is not None:
            out.append(last)
        text = "".join(self._text)
        where = {"item_id": self._item, "output_index": self._out, "content_index": 0}
        out.append(
            self._event("response.output_text.done", {**where, "text": text, "logprobs": self._entries})
        )
        part = {"type": "output_text", "text": text, "annotations": []}
        out.append(self._event("response.content_part.done", {**where, "part": part}))
        item = {
            "id": self._item,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
        out.append(self._event("response.output_item.done", {"output_index": self._out, "item": item}))
        usage = {
            "input_tokens": self._prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": generated_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self._prompt_tokens + generated_tokens,
        }
        if finish_reason == "length":
            details = {"reason": "max_output_tokens"}
            response = self._response("incomplete", usage=usage, incomplete_details=details)
            out.append(self._event("response.incomplete", {"response": response}))
        else:
            out.append(
                self._event("response.completed", {"response": self._response("completed", usage=usage)})
            )
        return out

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        if error_type == "validation":
            return (
                self._event("error", {"code": "invalid_request_error", "message": message, "param": None}),
            )
        error = {"code": "server_error", "message": message}
        return (self._event("response.failed", {"response": self._response("failed", error=error)}),)


RESPONSES = ResponsesDialect()
