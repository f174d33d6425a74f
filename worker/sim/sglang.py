"""SGLang's native ``POST /generate`` route (``stream: true``).

Request: ``{"text", "stream": true, "sampling_params": {"max_new_tokens", "stop", "sampling_seed",
...}, "return_logprob", "top_logprobs_num", "return_text_in_logprobs", "logprob_start_len"}``; the
model and its ``;key=value`` directives ride in the query (``/generate?model=...``, which a
provider's ``sglang_url`` can hold as ``{model}``: SGLang serves one model and ignores it) or a body
field ``"model"``, else ``tokenwire/sim``. Each event is ``{"text", "output_ids", "meta_info": {"id",
"finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "output_token_logprobs":
[[logprob, id, text|null], ...], "output_top_logprobs": [[[logprob, id, text|null], ...], ...]}}``,
then ``data: [DONE]``.

By default the stream is **cumulative** (older SGLang: every event repeats the whole text, ids and
tuples so far); the ``incremental`` directive sends only the new ones
(``--incremental-streaming-output``). ``per_chunk`` tokens go in one event (``stream_interval``). A
byte piece of a split character has a ``null`` text (the detokenizer gives it none); the EOS token
is the last tuple (text ``null``, as ``skip_special_tokens`` strips it) with ``finish_reason``
``{"type": "stop", "matched": <its id>}``; the token limit ends with ``{"type": "length"}``.
Without ``return_text_in_logprobs`` every tuple's text is ``null``. Errors: ``{"error":
{"message", "code"}}`` (``fault=error``: ``finish_reason`` ``{"type": "abort", "message"}``).
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
from worker.sim.generate import SimToken, estimate_tokens, stream_seed

__all__ = ["SGLANG", "SGLangDialect", "SGLangEncoder"]

_ENC = msgspec.json.Encoder()
_DEFAULT_MODEL = "tokenwire/sim"


class _Sampling(msgspec.Struct):
    max_new_tokens: int | None = None
    stop: str | list[str] | None = None
    sampling_seed: int | None = None
    temperature: float | None = None


class _Body(msgspec.Struct, kw_only=True):
    text: str
    stream: bool = False
    model: str | None = None
    sampling_params: _Sampling | None = None
    return_logprob: bool = False
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    logprob_start_len: int = -1
    sim: dict[str, Any] | None = None


def _error(status: int, message: str) -> RequestError:
    return RequestError(status, {"error": {"message": message, "code": status}})


class SGLangDialect:
    """``POST /generate``."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, SGLangEncoder]:
        try:
            parsed = msgspec.json.decode(body, type=_Body)
        except msgspec.MsgspecError as exc:
            raise _error(400, f"invalid request body: {exc}") from None
        if not parsed.stream:
            raise _error(400, 'tokenwire sim only simulates streaming: send "stream": true')
        name = model or parsed.model or _DEFAULT_MODEL
        try:
            base, directives = resolve(name, parsed.sim, default)
        except DirectiveError as exc:
            raise _error(400, str(exc)) from None
        params = parsed.sampling_params or _Sampling()
        stop = params.stop
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)
        logprobs = parsed.return_logprob
        refusal = None
        if directives.nologprobs and logprobs:
            message = "return_logprob is not supported for this model (logprobs are not available)"
            refusal = StatusReply(
                400, "application/json", _ENC.encode({"error": {"message": message, "code": 400}}), {}
            )
        request = SimRequest(
            model=base,
            key=name,
            directives=directives,
            prompt=parsed.text,
            max_new_tokens=params.max_new_tokens,
            seed=params.sampling_seed,
            stop=stops,
            top_n=max(parsed.top_logprobs_num, 0) if logprobs else 0,
            refusal=refusal,
        )
        encoder = SGLangEncoder(
            rid=f"{stream_seed(0, name, parsed.text, params.sampling_seed):032x}",
            logprobs=logprobs,
            with_text=parsed.return_text_in_logprobs,
            incremental=directives.incremental,
            per_chunk=directives.per_chunk,
            prompt_tokens=estimate_tokens(parsed.text),
        )
        return request, encoder

    def status_reply(self, directives: Directives) -> StatusReply:
        reply = status_reply(directives)
        if directives.body != "json":
            return reply
        body = {"error": {"message": f"HTTP {reply.status} from the simulator", "code": reply.status}}
        return msgspec.structs.replace(reply, body=_ENC.encode(body))


class SGLangEncoder:
    """One SGLang stream, cumulative or incremental."""

    done_by_default = True

    def __init__(
        self,
        *,
        rid: str,
        logprobs: bool,
        with_text: bool,
        incremental: bool,
        per_chunk: int,
        prompt_tokens: int,
    ) -> None:
        self._rid = rid
        self._logprobs = logprobs
        self._with_text = with_text
        self._incremental = incremental
        self._per_chunk = per_chunk
        self._prompt_tokens = prompt_tokens
        self._held: list[tuple[SimToken, Sequence[SimToken] | None]] = []
        self._sent: list[tuple[SimToken, Sequence[SimToken] | None]] = []  # every token sent

    def start(self) -> Sequence[bytes]:
        return ()

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes | None:
        self._held.append((token, top))
        if len(self._held) < self._per_chunk:
            return None
        return self._event(None)

    def flush(self) -> Sequence[bytes]:
        return () if not self._held else (self._event(None),)

    def _tuple(self, token: SimToken) -> list[Any]:
        text = token.text if self._with_text and token.text and not token.special else None
        return [token.logprob, token.id, text]

    def _event(self, finish: dict[str, Any] | None) -> bytes:
        new, self._held = self._held, []
        self._sent += new
        items = new if self._incremental else self._sent
        meta: dict[str, Any] = {
            "id": self._rid,
            "finish_reason": finish,
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": len(self._sent),
            "cached_tokens": 0,
        }
        if self._logprobs:
            meta["output_token_logprobs"] = [self._tuple(t) for t, _ in items]
            meta["output_top_logprobs"] = [[self._tuple(a) for a in top] if top else None for _, top in items]
        text = "".join(t.text for t, _ in items if not t.special)
        return _ENC.encode({"text": text, "output_ids": [t.id for t, _ in items], "meta_info": meta})

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]:
        self._held.append((token, top))
        if token.special:
            finish: dict[str, Any] = {"type": "stop", "matched": token.id}
        elif finish_reason == "length":
            finish = {"type": "length", "length": len(self._sent) + len(self._held)}
        else:
            finish = {"type": "stop", "matched": None}  # a stop string the request gave
        return (self._event(finish),)

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        finish = {"type": "abort", "message": message}
        return (
            _ENC.encode(
                {"text": "", "output_ids": [], "meta_info": {"id": self._rid, "finish_reason": finish}}
            ),
            b"[DONE]",
        )


SGLANG = SGLangDialect()
