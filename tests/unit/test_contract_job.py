"""``schemas/job.schema.json`` rejects what the worker rejects statically: one table of cases, judged
by both the schema and the worker's admission (:func:`worker.admit.admit`).

The table is built from the code: every constraint of every field of :class:`worker.jobs.Job` (walked
with ``msgspec.inspect``) gives the values at its bound and just past it, a wrong type, null, and for
each struct a missing required field and an unknown one; by hand come the api rules of
``Job.__post_init__``, payloads that are not JSON, and what only the worker can judge: limits that
are settings, provider names, integers written as ``5.0``, lone surrogates. Those are skipped by the
schema side, explicitly, and the schema must accept them (they are the worker's alone, as the
schema's description says).

The worker judges the static cases with settings as loose as the static limits (:data:`WIDE`), so that
only the static rules can reject; the schema side parses the payload as RFC 8259 JSON first.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from worker import admit as admit_module
from worker import jobs as jobs_module
from worker.admit import Admitted, admit
from worker.jobs import Job
from worker.settings import DEEPINFRA, Price, Provider, Settings
from worker.tracing import TRACEPARENT_PATTERN

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "job.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

WIDE = Settings(
    max_payload_bytes=2**31,
    max_input_chars=2**31,
    max_tokens_cap=1_000_000,
    providers={"deepinfra": msgspec.structs.replace(DEEPINFRA, prices={"*": Price(input=1.0, output=2.0)})},
)
"""A worker whose settings are as loose as the job schema's static limits: only static rules reject
(its default provider prices every model, so a job's ``budget`` is judged by the schema's rules)."""

SETTINGS = "a limit that is a setting of the worker"
PROVIDERS = "provider names (and the apis they serve) are the worker's configuration"
INTEGERS = "JSON Schema's data model cannot tell the integer 5 from 5.0 or 5e0"
I_JSON = "RFC 8259 allows a lone surrogate escape; only I-JSON (RFC 7493) forbids it"
NO_FIELD = "an entry without a `job` field holds no JSON to validate"


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes | None
    code: str | None
    """None: the worker admits the job; else the code it dead-letters the entry with."""
    worker_alone: str | None = None
    """Why the schema does not judge this case (it must then accept the payload)."""
    settings: Settings = WIDE


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# ----------------------------------------------------------------------- cases built from the code

NATIVE: dict[str, Any] = {"model": "m", "input": "hi"}
CHAT: dict[str, Any] = {"model": "m", "api": "chat", "messages": [{"role": "user", "content": "hi"}]}
VALID: dict[type, dict[str, Any]] = {
    jobs_module.Params: {},
    jobs_module.Escalate: {"model": "big", "below": 0.5},
    jobs_module.ChatMessage: {"role": "user", "content": "hi"},
    # at the thresholds' extremes, so that either bound alone is valid (Review.__post_init__)
    jobs_module.Review: {"publish_above": 0.0, "review_below": -20.0},
    jobs_module.Candidates: {"n": 2},
}
# The api rules (``Job.__post_init__``) decide null, absence and the api itself for these: by hand.
BY_HAND = {"api", "input", "messages"}
# Escalate's parameters go with their signal (``Escalate.__post_init__``): their cases name it.
ESCALATE_WITH = {"q": {"signal": "quantile"}, "window": {"signal": "window_min"}}
# ``margin`` needs params.top_logprobs (``Job.__post_init__``), which the generated jobs do not set.
# ``agreement`` needs candidates.n >= 2, ``candidates.rank_by: margin`` params.top_logprobs likewise.
LITERAL_CODES: dict[tuple[str, object], str] = {
    ("escalate.signal", "margin"): "invalid_job",
    ("escalate.signal", "agreement"): "invalid_job",
    ("candidates.rank_by", "margin"): "invalid_job",
}

Place = Callable[[Any], Any]
"""Puts an object where the struct being walked sits, and returns the whole job."""


def _code(field: str) -> tuple[str | None, str | None]:
    """The worker's verdict on an otherwise valid value of ``field``: provider names are looked up."""
    return ("unknown_provider", PROVIDERS) if field == "provider" else (None, None)


def _wrong_types(t: msgspec.inspect.Type) -> list[Any]:
    if isinstance(t, msgspec.inspect.StrType | msgspec.inspect.LiteralType):
        return [7]
    if isinstance(t, msgspec.inspect.IntType):
        return ["7", True, 1.5]
    if isinstance(t, msgspec.inspect.FloatType):
        return ["0.5", True]
    if isinstance(t, msgspec.inspect.ListType):
        return ["x", {}]
    if isinstance(t, msgspec.inspect.DictType | msgspec.inspect.StructType):
        return ["x", []]
    raise AssertionError(f"no wrong-type values for {t!r}: extend the table")


_PATTERN_EXAMPLES = {TRACEPARENT_PATTERN: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
"""A value on each pattern that plain words are not on (the rest take ``"a"``)."""


def _string_bounds(t: msgspec.inspect.StrType) -> Iterator[tuple[str, str, bool]]:
    """(what, value, valid) at and past each bound of a string type."""
    if t.min_length:
        yield f"{t.min_length} chars", "a" * t.min_length, True
        yield f"{t.min_length - 1} chars", "a" * (t.min_length - 1), False
    if t.max_length is not None:
        yield f"{t.max_length} chars", "a" * t.max_length, True
        yield f"{t.max_length + 1} chars", "a" * (t.max_length + 1), False
    if t.pattern is not None:
        valid = _PATTERN_EXAMPLES.get(t.pattern, "a")
        assert re.search(t.pattern, valid) and not re.search(t.pattern, "a b")
        yield "off the pattern", "a b", False
        if valid != "a":
            yield "on the pattern", valid, True


def _number_bounds(t: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> Iterator[tuple[Any, bool]]:
    is_int = isinstance(t, msgspec.inspect.IntType)

    def up(x: float) -> float:
        return x + 1 if is_int else math.nextafter(x, math.inf)

    def down(x: float) -> float:
        return x - 1 if is_int else math.nextafter(x, -math.inf)

    for bound, inside, outside in (
        (t.ge, lambda b: b, down),
        (t.gt, up, lambda b: b),
        (t.le, lambda b: b, up),
        (t.lt, down, lambda b: b),
    ):
        if bound is not None:
            yield inside(bound), True
            yield outside(bound), False
    if not is_int and t.le is not None and float(t.le).is_integer():
        yield int(t.le), True  # an integer where a number is asked


def _value_cases(path: str, field: str, t: msgspec.inspect.Type, put: Place) -> Iterator[Case]:
    """The cases of one value of type ``t``, placed in a whole job by ``put``."""
    for wrong in _wrong_types(t):
        yield Case(f"{path}: {wrong!r} (wrong type)", _json(put(wrong)), "invalid_job")
    if isinstance(t, msgspec.inspect.StrType):
        yield from _str_cases(path, field, t, put)
    elif isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        yield from _number_cases(path, t, put)
    elif isinstance(t, msgspec.inspect.LiteralType):
        for value in t.values:
            yield Case(f"{path}: {value!r}", _json(put(value)), LITERAL_CODES.get((path, value)))
        yield Case(f"{path}: 'nope'", _json(put("nope")), "invalid_job")
    elif isinstance(t, msgspec.inspect.ListType):
        yield from _list_cases(path, field, t, put)
    elif isinstance(t, msgspec.inspect.DictType):
        yield from _dict_cases(path, field, t, put)
    elif isinstance(t, msgspec.inspect.StructType):
        yield from _struct_cases(path, t, VALID[t.cls], put)
    else:
        raise AssertionError(f"{path}: no cases for {t!r}: extend the table")


def _str_cases(path: str, field: str, t: msgspec.inspect.StrType, put: Place) -> Iterator[Case]:
    code, alone = _code(field)
    for what, value, valid in _string_bounds(t):
        if valid:
            yield Case(f"{path}: {what}", _json(put(value)), code, alone)
        else:
            yield Case(f"{path}: {what}", _json(put(value)), "invalid_job")


def _number_cases(
    path: str, t: msgspec.inspect.IntType | msgspec.inspect.FloatType, put: Place
) -> Iterator[Case]:
    for value, valid in _number_bounds(t):
        yield Case(f"{path}: {value!r}", _json(put(value)), None if valid else "invalid_job")
    if isinstance(t, msgspec.inspect.IntType):
        lowest = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 0)
        yield Case(f"{path}: {float(lowest)!r}", _json(put(float(lowest))), "invalid_job", INTEGERS)


def _list_cases(path: str, field: str, t: msgspec.inspect.ListType, put: Place) -> Iterator[Case]:
    item = t.item_type
    one = VALID[item.cls] if isinstance(item, msgspec.inspect.StructType) else "a"
    sizes: list[tuple[int, str | None]] = []
    if t.min_length:
        sizes += [(t.min_length, None), (t.min_length - 1, "invalid_job")]
    if t.max_length is not None:
        sizes += [(t.max_length, None), (t.max_length + 1, "invalid_job")]
    for size, code in sizes:
        yield Case(f"{path}: {size} items", _json(put([one] * size)), code)
    if isinstance(item, msgspec.inspect.StructType):
        yield from _struct_cases(f"{path}[]", item, VALID[item.cls], lambda obj: put([obj]))
    else:
        yield from _value_cases(f"{path}[]", field, item, lambda v: put([v]))


def _dict_cases(path: str, field: str, t: msgspec.inspect.DictType, put: Place) -> Iterator[Case]:
    assert t.min_length is None, "extend the table: a minimum size of a map"
    if t.max_length is not None:
        full = {f"k{i}": "v" for i in range(t.max_length)}
        yield Case(f"{path}: {t.max_length} entries", _json(put(full)), None)
        yield Case(
            f"{path}: {t.max_length + 1} entries", _json(put({**full, "one-more": "v"})), "invalid_job"
        )
    assert isinstance(t.key_type, msgspec.inspect.StrType), "JSON keys are strings"
    yield from _str_cases(f"{path} key", field, t.key_type, lambda k: put({k: "v"}))
    yield from _value_cases(f"{path} value", field, t.value_type, lambda v: put({"k": v}))


def _struct_cases(
    path: str, struct: msgspec.inspect.StructType, valid: dict[str, Any], put: Place
) -> Iterator[Case]:
    prefix = f"{path}." if path else ""
    assert struct.forbid_unknown_fields
    yield Case(f"{prefix}surprise: an unknown field", _json(put({**valid, "surprise": 1})), "invalid_job")
    for f in struct.fields:
        t, optional = f.type, False
        if isinstance(t, msgspec.inspect.UnionType):
            members = t.types
            rest = [u for u in members if not isinstance(u, msgspec.inspect.NoneType)]
            assert len(rest) == 1, f"{prefix}{f.name}: extend the table for {t!r}"
            t, optional = rest[0], len(rest) < len(members)
        base = CHAT if struct.cls is Job and f.name == "messages" else valid
        if struct.cls is jobs_module.Escalate and f.name in ESCALATE_WITH:
            base = {**valid, **ESCALATE_WITH[f.name]}

        def put_field(value: Any, name: str = f.name, base: dict[str, Any] = base) -> Any:
            return put({**base, name: value})

        here = f"{prefix}{f.name}"
        if f.required:
            missing = {k: v for k, v in valid.items() if k != f.name}
            yield Case(f"{here}: missing", _json(put(missing)), "invalid_job")
        if not (struct.cls is Job and f.name in BY_HAND):
            yield Case(f"{here}: null", _json(put_field(None)), None if optional else "invalid_job")
            yield from _value_cases(here, f.name, t, put_field)
        elif not isinstance(t, msgspec.inspect.LiteralType):
            yield from _value_cases(here, f.name, t, put_field)


GENERATED = list(_struct_cases("", msgspec.inspect.type_info(Job), NATIVE, lambda job: job))  # type: ignore[arg-type]

# ------------------------------------------------------------------------------- cases by hand

EVERY_FIELD = {
    **CHAT,
    "id": "job-1",
    "provider": "deepinfra",
    "low_prob": 0.3,
    "metadata": {"k": "v"},
    "params": {
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n"],
        "seed": 1,
        "top_logprobs": 5,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    },
    "escalate": {"model": "big", "below": 0.5, "provider": "deepinfra", "after_tokens": 16},
}

STRUCTURAL = [
    Case("native job with input", _json(NATIVE), None),
    Case("explicit native", _json({**NATIVE, "api": "native"}), None),
    Case("completions job with input", _json({**NATIVE, "api": "completions"}), None),
    Case("chat job with messages", _json(CHAT), None),
    Case("native job with messages null", _json({**NATIVE, "messages": None}), None),
    Case("chat job with input null", _json({**CHAT, "input": None}), None),
    Case("neither input nor messages", _json({"model": "m"}), "invalid_job"),
    Case("neither, api completions", _json({"model": "m", "api": "completions"}), "invalid_job"),
    Case("neither, api chat", _json({"model": "m", "api": "chat"}), "invalid_job"),
    Case("native job with input null", _json({"model": "m", "input": None}), "invalid_job"),
    Case("chat job with messages null", _json({**CHAT, "messages": None}), "invalid_job"),
    Case("chat job with input", _json({**CHAT, "input": "hi"}), "invalid_job"),
    Case("chat job with input only", _json({"model": "m", "api": "chat", "input": "hi"}), "invalid_job"),
    Case("native job with messages", _json({**NATIVE, "messages": CHAT["messages"]}), "invalid_job"),
    Case("native job with messages only", _json({"model": "m", "messages": CHAT["messages"]}), "invalid_job"),
    Case(
        "completions job with messages",
        _json({**NATIVE, "api": "completions", "messages": CHAT["messages"]}),
        "invalid_job",
    ),
    Case("api null", _json({**NATIVE, "api": None}), "invalid_job"),
    Case("api 'CHAT'", _json({**CHAT, "api": "CHAT"}), "invalid_job"),
    Case("api 7", _json({**NATIVE, "api": 7}), "invalid_job"),
    Case("every field at once", _json(EVERY_FIELD), None),
]

ESCALATE = {"model": "big", "below": 0.5}
MARGIN_CHAT = {**CHAT, "params": {"top_logprobs": 2}, "escalate": {**ESCALATE, "signal": "margin"}}
STRUCTURAL += [
    Case(
        "escalate.q with signal confidence",
        _json({**NATIVE, "escalate": {**ESCALATE, "q": 0.1}}),
        "invalid_job",
    ),
    Case(
        "escalate.window with signal quantile",
        _json({**NATIVE, "escalate": {**ESCALATE, "signal": "quantile", "window": 8}}),
        "invalid_job",
    ),
    Case(
        "escalate.q with signal quantile, window null",
        _json({**NATIVE, "escalate": {**ESCALATE, "signal": "quantile", "q": 0.25, "window": None}}),
        None,
    ),
    Case(
        "escalate.signal quantile without q",
        _json({**NATIVE, "escalate": {**ESCALATE, "signal": "quantile"}}),
        None,
    ),
    Case("margin with top_logprobs 2 (chat)", _json(MARGIN_CHAT), None),
    Case(
        "agreement with 3 candidates",
        _json({**NATIVE, "candidates": {"n": 3}, "escalate": {**ESCALATE, "signal": "agreement"}}),
        None,
    ),
    Case(
        "agreement with after_tokens",
        _json(
            {
                **NATIVE,
                "candidates": {"n": 3},
                "escalate": {**ESCALATE, "signal": "agreement", "after_tokens": 4},
            }
        ),
        "invalid_job",
    ),
    Case(
        "agreement with after_tokens null",
        _json(
            {
                **NATIVE,
                "candidates": {"n": 3},
                "escalate": {**ESCALATE, "signal": "agreement", "after_tokens": None},
            }
        ),
        None,
    ),
    Case(
        "after_tokens with candidates and a per-token signal",
        _json(
            {
                **NATIVE,
                "candidates": {"n": 3},
                "escalate": {**ESCALATE, "signal": "quantile", "after_tokens": 4},
            }
        ),
        None,
    ),
    Case(
        "agreement with 1 candidate",
        _json({**NATIVE, "candidates": {"n": 1}, "escalate": {**ESCALATE, "signal": "agreement"}}),
        "invalid_job",
    ),
    Case(
        "agreement without candidates",
        _json({**NATIVE, "escalate": {**ESCALATE, "signal": "agreement"}}),
        "invalid_job",
    ),
    Case(
        "candidates ranked by margin without top_logprobs",
        _json({**NATIVE, "candidates": {"n": 2, "rank_by": "margin"}}),
        "invalid_job",
    ),
    Case(
        "candidates ranked by margin with top_logprobs 2",
        _json({**NATIVE, "params": {"top_logprobs": 2}, "candidates": {"n": 2, "rank_by": "margin"}}),
        None,
    ),
    Case("margin with top_logprobs 1", _json({**MARGIN_CHAT, "params": {"top_logprobs": 1}}), "invalid_job"),
    Case(
        "margin with top_logprobs null",
        _json({**MARGIN_CHAT, "params": {"top_logprobs": None}}),
        "invalid_job",
    ),
    Case(
        "margin without params", _json({k: v for k, v in MARGIN_CHAT.items() if k != "params"}), "invalid_job"
    ),
    Case(
        "margin on a native provider with top_n_tokens",
        _json(
            {
                **NATIVE,
                "provider": "tgi",
                "params": {"top_logprobs": 2},
                "escalate": {**ESCALATE, "signal": "margin"},
            }
        ),
        None,
        settings=Settings(
            providers={"tgi": Provider(native_url="http://127.0.0.1:9/{model}", supports_top_n_tokens=True)}
        ),
    ),
    Case(
        "margin on a chat job without escalate",
        _json({**CHAT, "escalate": None, "params": {"top_logprobs": 0}}),
        None,
    ),
]

NOT_JSON = [
    Case("empty payload", b"", "invalid_job"),
    Case("truncated object", b'{"model": "m", "input": "hi"', "invalid_job"),
    Case("trailing data", _json(NATIVE) + b" {}", "invalid_job"),
    Case("byte order mark", b"\xef\xbb\xbf" + _json(NATIVE), "invalid_job"),
    Case("not UTF-8", b'{"model": "m", "input": "h\xffi"}', "invalid_job"),
    Case("NaN", b'{"model": "m", "input": "hi", "low_prob": NaN}', "invalid_job"),
    Case("Infinity", b'{"model": "m", "input": "hi", "low_prob": Infinity}', "invalid_job"),
    Case(
        "number out of range",
        b'{"model": "m", "input": "hi", "params": {"temperature": 1e400}}',
        "invalid_job",
    ),
    Case("an array", b"[]", "invalid_job"),
    Case("a string", b'"hi"', "invalid_job"),
    Case("null", b"null", "invalid_job"),
    Case("a number", b"7", "invalid_job"),
]

LOCAL_NATIVE_ONLY = Settings(
    default_provider="local", providers={"local": Provider(native_url="http://127.0.0.1:9/{model}")}
)

WORKER_ALONE = [
    Case("entry without a job field", None, "invalid_job", NO_FIELD),
    Case(
        "payload over max_payload_bytes",
        _json(NATIVE),
        "payload_too_large",
        SETTINGS,
        Settings(max_payload_bytes=16),
    ),
    Case(
        "input over max_input_chars", _json(NATIVE), "input_too_large", SETTINGS, Settings(max_input_chars=1)
    ),
    Case(
        "messages over max_input_chars", _json(CHAT), "input_too_large", SETTINGS, Settings(max_input_chars=1)
    ),
    Case(
        "max_tokens over max_tokens_cap",
        _json({**NATIVE, "params": {"max_tokens": 32_769}}),
        "max_tokens_above_cap",
        SETTINGS,
        Settings(),
    ),
    Case("unknown provider", _json({**NATIVE, "provider": "nowhere"}), "unknown_provider", PROVIDERS),
    Case(
        "budget without a price for the model",
        _json({**NATIVE, "budget": 1.0}),
        "invalid_job",
        PROVIDERS,
        Settings(),
    ),
    Case(
        "unknown escalate.provider",
        _json({**NATIVE, "escalate": {"model": "big", "below": 0.5, "provider": "nowhere"}}),
        "unknown_provider",
        PROVIDERS,
    ),
    Case("api the provider does not serve", _json(CHAT), "unsupported_api", PROVIDERS, LOCAL_NATIVE_ONLY),
    Case(
        "escalate to a provider that does not serve the api",
        _json(
            {**NATIVE, "api": "completions", "escalate": {"model": "big", "below": 0.5, "provider": "local"}}
        ),
        "unsupported_api",
        PROVIDERS,
        Settings(providers={"local": Provider(native_url="http://127.0.0.1:9/{model}")}),
    ),
    Case(
        "integer written with an exponent",
        b'{"model": "m", "input": "hi", "params": {"seed": 1e2}}',
        "invalid_job",
        INTEGERS,
    ),
    Case("lone surrogate", b'{"model": "m", "input": "\\ud800"}', "invalid_job", I_JSON),
    Case(
        "margin on a native provider without top_n_tokens",
        _json({**NATIVE, "params": {"top_logprobs": 5}, "escalate": {**ESCALATE, "signal": "margin"}}),
        "invalid_job",
        "whether a provider sends top-k alternatives is the worker's configuration",
    ),
]

CASES = GENERATED + STRUCTURAL + NOT_JSON + WORKER_ALONE


def _ids(cases: list[Case]) -> list[str]:
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "two cases share a name"
    return names


# ------------------------------------------------------------------------------------ the sides


def worker_verdict(case: Case) -> tuple[str | None, str]:
    """(None, "") when the worker admits the entry, else its dead-letter code and reason."""
    outcome = admit("1700000000000-0", case.payload, case.settings)
    return (None, "") if isinstance(outcome, Admitted) else (outcome.code, outcome.reason)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def schema_errors(payload: bytes) -> list[str]:
    """Why a producer validating with the schema refuses the payload (nothing: it accepts it). It
    parses the payload as RFC 8259 JSON, then validates it."""
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError) as exc:
        return [f"not JSON: {exc}"]
    return [f"{e.json_path}: {e.message[:160]}" for e in VALIDATOR.iter_errors(value)]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_the_schema_and_the_worker_agree(case: Case) -> None:
    code, reason = worker_verdict(case)
    assert code == case.code, f"the worker said {code}: {reason}"
    if case.worker_alone is not None:
        pytest.skip(f"the worker's alone: {case.worker_alone}")
    assert case.payload is not None
    errors = schema_errors(case.payload)
    if code is None:
        assert errors == [], "the worker admits it; the schema refuses it"
    else:
        assert errors, f"the worker rejects it ({reason}); the schema accepts it"


ALONE = [c for c in CASES if c.worker_alone is not None]


@pytest.mark.parametrize("case", ALONE, ids=_ids(ALONE))
def test_what_the_worker_alone_rejects_the_schema_accepts(case: Case) -> None:
    """The skipped cases are skipped for the reason they give: the schema cannot judge them."""
    assert case.code is not None and worker_verdict(case)[0] == case.code
    if case.payload is not None:
        assert schema_errors(case.payload) == []


def test_the_schema_says_what_it_leaves_to_the_worker() -> None:
    text = " ".join(SCHEMA["description"].split())
    for words in (
        "max_payload_bytes",
        "max_input_chars",
        "max_tokens_cap",
        "configured provider",
        "`5.0`",
        "I-JSON",
    ):
        assert words in text, words


def test_the_table_meets_every_code_the_admission_gives() -> None:
    codes = {
        node.value
        for node in ast.walk(ast.parse(inspect.getsource(admit_module)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"[a-z]+(_[a-z]+)+", node.value)
    }
    assert codes == {"invalid_job", "payload_too_large", "input_too_large", "max_tokens_above_cap",
                     "unknown_provider", "unsupported_api"}  # fmt: skip
    assert codes <= {c.code for c in CASES}


def test_the_table_meets_every_rule_of_the_job() -> None:
    """Each ``raise ValueError`` of ``Job.__post_init__`` is the reason of some rejected case."""
    tree = ast.parse(inspect.getsource(Job.__post_init__).strip().replace("\n    ", "\n"))
    rules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            (arg,) = node.exc.args
            parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
            rules.append(
                "".join(
                    re.escape(p.value) if isinstance(p, ast.Constant) and isinstance(p.value, str) else ".+"
                    for p in parts
                )
            )
    assert len(rules) == 7
    reasons = [worker_verdict(c)[1] for c in STRUCTURAL if c.code is not None]
    for rule in rules:
        assert any(re.search(rule, r) for r in reasons), f"no case meets {rule!r}"
