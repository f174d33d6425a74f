"""The DeepInfra native and TGI ``/generate_stream`` dialects: request parsing and event shaping.

Both stream one token per event in TGI's ``StreamResponse`` shape. DeepInfra's native API
(``POST /v1/inference/{model}``, body ``{"input", "stream": true, ...}``) sends::

    {"token": {"id": 29892, "text": ",", "logprob": -2.65625, "special": false},
     "generated_text": null, "details": null}

and ends with an event whose ``generated_text`` and ``details`` (``finish_reason``,
``generated_tokens``, ``input_tokens``, ``seed``) are set. TGI (``POST /generate_stream``, body
``{"inputs", "parameters": {...}}``) adds ``index``, reports ``input_length`` and sends ``details``
only when ``parameters.details`` is true. ``top_tokens`` appears when ``top_n_tokens`` > 0.
"""

from __future__ import annotations

import re
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
from worker.sim.generate import SimToken, estimate_tokens

__all__ = ["DEEPINFRA", "TGI", "DeepInfraNative", "NativeEncoder", "TgiGenerate"]

_ENCODER = msgspec.json.Encoder()

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _NativeBody(msgspec.Struct, kw_only=True):
    """DeepInfra's text-generation request; unknown fields are accepted and ignored."""

    input: str
    stream: bool = False
    max_new_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    top_n_tokens: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    sim: dict[str, Any] | None = None


class _TgiParameters(msgspec.Struct, kw_only=True):
    max_new_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool = False
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    top_n_tokens: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    details: bool = False


class _TgiBody(msgspec.Struct, kw_only=True):
    inputs: str
    parameters: _TgiParameters = msgspec.field(default_factory=_TgiParameters)
    stream: bool = True  # /generate_stream always streams
    model: str | None = None  # not TGI's: lets a job choose directives on this route too
    sim: dict[str, Any] | None = None


def _wire(token: SimToken) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


class NativeEncoder:
    """Shapes tokens as DeepInfra native (``tgi=False``) or TGI (``tgi=True``) events."""

    __slots__ = ("_details", "_index", "_input_tokens", "_seed", "_tgi")

    done_by_default = False

    def __init__(self, *, tgi: bool, details: bool, input_tokens: int, seed: int | None) -> None:
        self._tgi = tgi
        self._details = details
        self._input_tokens = input_tokens
        self._seed = seed
        self._index = 0

    def start(self) -> Sequence[bytes]:
        return ()

    def _event(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        generated_text: str | None,
        details: dict[str, Any] | None,
    ) -> bytes:
        event: dict[str, Any] = {}
        if self._tgi:
            self._index += 1
            event["index"] = self._index
        event["token"] = _wire(token)
        if top is not None:
            event["top_tokens"] = [_wire(t) for t in top]
        event["generated_text"] = generated_text
        event["details"] = details
        return _ENCODER.encode(event)

    def token(self, token: SimToken, top: Sequence[SimToken] | None) -> bytes:
        return self._event(token, top, None, None)

    def final(
        self,
        token: SimToken,
        top: Sequence[SimToken] | None,
        *,
        finish_reason: str,
        generated_text: str,
        generated_tokens: int,
    ) -> Sequence[bytes]:
        details: dict[str, Any] | None = None
        if self._tgi and self._details:
            details = {
                "finish_reason": finish_reason,
                "generated_tokens": generated_tokens,
                "seed": self._seed,
                "input_length": self._input_tokens,
            }
        elif not self._tgi:
            details = {
                "finish_reason": finish_reason,
                "generated_tokens": generated_tokens,
                "input_tokens": self._input_tokens,
                "seed": self._seed,
            }
        return (self._event(token, top, generated_text, details),)

    def flush(self) -> Sequence[bytes]:
        return ()

    def error(self, message: str, error_type: str) -> Sequence[bytes]:
        return (_ENCODER.encode({"error": message, "error_type": error_type}),)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def _loc(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", path) if p]


def _fastapi_error(exc: msgspec.MsgspecError) -> RequestError:
    """A 422 in FastAPI's shape, as DeepInfra answers a malformed body."""
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        item: dict[str, Any] = {"loc": ["body", 0], "msg": str(exc)}
        item["type"] = "value_error.jsondecode"
        return RequestError(422, {"detail": [item]})
    match = _AT.match(str(exc))
    msg, path = (match["msg"], match["path"] or "") if match else (str(exc), "")
    loc: list[str | int] = ["body", *_loc(path)]
    missing = _MISSING.search(msg)
    if missing:
        item = {"loc": [*loc, missing["field"]], "msg": "field required"}
        item["type"] = "value_error.missing"
    else:
        item = {"loc": loc, "msg": msg, "type": "value_error"}
    return RequestError(422, {"detail": [item]})


def _stops(stop: list[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)


class DeepInfraNative:
    """``POST /v1/inference/{model}``; directives ride in the model path segment."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, NativeEncoder]:
        try:
            parsed = msgspec.json.decode(body, type=_NativeBody)
        except msgspec.MsgspecError as exc:
            raise _fastapi_error(exc) from None
        key = model or ""
        try:
            base, directives = resolve(key, parsed.sim, default)
        except DirectiveError as exc:
            raise RequestError(400, {"error": str(exc)}) from None
        if not parsed.stream:
            message = 'tokenwire sim only simulates streaming: send "stream": true'
            raise RequestError(400, {"error": message})
        request = SimRequest(
            model=base,
            key=key,
            directives=directives,
            prompt=parsed.input,
            max_new_tokens=parsed.max_new_tokens,
            seed=parsed.seed,
            stop=_stops(parsed.stop),
            top_n=parsed.top_n_tokens or 0,
        )
        encoder = NativeEncoder(
            tgi=False, details=True, input_tokens=estimate_tokens(parsed.input), seed=parsed.seed
        )
        return request, encoder

    def status_reply(self, directives: Directives) -> StatusReply:
        return status_reply(directives)


class TgiGenerate:
    """``POST /generate_stream``; directives come from the body's ``model`` or ``sim`` fields."""

    __slots__ = ()

    def parse(self, body: bytes, model: str | None, default: str | None) -> tuple[SimRequest, NativeEncoder]:
        try:
            parsed = msgspec.json.decode(body, type=_TgiBody)
        except msgspec.MsgspecError as exc:
            raise RequestError(422, {"error": str(exc), "error_type": "validation"}) from None
        key = parsed.model or model or "tgi"
        try:
            base, directives = resolve(key, parsed.sim, default)
        except DirectiveError as exc:
            raise RequestError(400, {"error": str(exc), "error_type": "validation"}) from None
        params = parsed.parameters
        request = SimRequest(
            model=base,
            key=key,
            directives=directives,
            prompt=parsed.inputs,
            max_new_tokens=params.max_new_tokens,
            seed=params.seed,
            stop=_stops(params.stop),
            top_n=params.top_n_tokens or 0,
        )
        encoder = NativeEncoder(
            tgi=True,
            details=params.details,
            input_tokens=estimate_tokens(parsed.inputs),
            seed=params.seed,
        )
        return request, encoder

    def status_reply(self, directives: Directives) -> StatusReply:
        return status_reply(directives)


DEEPINFRA = DeepInfraNative()
TGI = TgiGenerate()
