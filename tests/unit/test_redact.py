"""worker.redact: one Redactor for every string from outside; the choke points that use it."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import fakeredis
import httpx
import msgspec
import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker import redact
from worker.admit import Admitted, admit
from worker.attempt import Attempt, AttemptContext
from worker.events import Error
from worker.jobs import Job, encode_job
from worker.keys import Keys
from worker.logging import configure_logging
from worker.outcome import Finished
from worker.publisher import Publisher
from worker.redact import MIN_SECRET, REDACTED, InvalidSecret, Redactor, check_api_key
from worker.settings import Provider, Settings, SettingsError
from worker.upstream.adapters import default_adapters
from worker.upstream.base import UpstreamError
from worker.upstream.errors import malformed_event, stream_error
from worker.upstream.http import StreamLimits

KEY = "sk-live-4b8e2d9a1c7f0e36"
PLAIN_KEY = "4b8e2d9a1c7f0e36aa"  # no recognisable shape: only knowing it redacts it
PASSWORD = "redis-pw-7f3a9c21e4"


@pytest.fixture
def installed() -> Iterator[Redactor]:
    """The process's Redactor knows PLAIN_KEY for the test, as the worker's entry point installs it."""
    before = redact.installed()
    redactor = Redactor([PLAIN_KEY, KEY])
    redact.install(redactor)
    yield redactor
    redact.install(before)


secrets = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=MIN_SECRET, max_size=40)
texts = st.text(max_size=200)


@settings(max_examples=300, deadline=None)
@given(secret=secrets, before=texts, after=texts, times=st.integers(1, 3))
@example(secret="[redacte", before="", after="", times=1)  # a part of the marker itself
@example(secret="acted][r", before="[red", after="edacted]", times=2)
def test_an_embedded_secret_never_survives(secret: str, before: str, after: str, times: int) -> None:
    text = before + (secret + after) * times
    out = Redactor([secret]).redact(text)
    assert secret not in out


@settings(max_examples=300, deadline=None)
@given(
    secret=secrets, before=texts, cut=st.integers(4, 39), tail=st.sampled_from(["", "…", "'", '"}', "..."])
)
def test_a_secret_cut_short_by_a_clip_leaves_no_prefix(secret: str, before: str, cut: int, tail: str) -> None:
    cut = min(cut, len(secret) - 1)
    out = Redactor([secret]).redact(before + secret[:cut] + tail)
    assert not out.removesuffix(tail).endswith(secret[:cut])


@settings(max_examples=200, deadline=None)
@given(first=secrets, second=secrets, before=texts, between=texts, after=texts)
def test_several_secrets_never_survive(
    first: str, second: str, before: str, between: str, after: str
) -> None:
    out = Redactor([first, second]).redact(before + first + between + second + after)
    assert first not in out and second not in out


@settings(max_examples=200, deadline=None)
@given(secret=secrets, before=texts, after=texts)
def test_encoded_forms_are_redacted(secret: str, before: str, after: str) -> None:
    from urllib.parse import quote

    out = Redactor([secret]).redact(f"{before}{quote(secret, safe='')}|{json.dumps(secret)}{after}")
    assert secret not in out and quote(secret, safe="") not in out
    assert msgspec.json.encode(secret).decode()[1:-1] not in out


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("bad key Bearer abc.def-ghi", "abc.def-ghi"),
        ("authorization: bearer%20zzzzzzzzzzzz", "zzzzzzzzzzzz"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("key sk-proj-AbCdEf0123456789 is wrong", "AbCdEf0123456789"),
        ("sk_live_0123456789abcdef", "0123456789abcdef"),
        ("GET /v1?api_key=hunter2hunter2&x=1", "hunter2hunter2"),
        ("redis://h/0?password=s3cr3tpw", "s3cr3tpw"),
        (
            "the API key AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q is not valid",
            "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        ),
    ],
)
def test_credential_shapes_are_redacted_without_knowing_them(text: str, gone: str) -> None:
    out = Redactor().redact(text)
    assert gone not in out and REDACTED in out


def test_ordinary_text_is_left_alone() -> None:
    text = "HTTP 429 from upstream: too many tokens per minute (disk-usage 5); Basic auth failed"
    assert Redactor([PLAIN_KEY]).redact(text) == text


def test_short_secrets_are_refused_not_redacted_blindly() -> None:
    with pytest.raises(InvalidSecret):
        Redactor(["abc"])


def _settings(**kw: object) -> Settings:
    providers = {"up": Provider(native_url="https://up.test/{model}", api_key_env="UP_KEY")}
    return msgspec.structs.replace(Settings(), providers=providers, default_provider="up", **kw)


def test_from_settings_knows_every_key_and_the_redis_password() -> None:
    settings_ = _settings(redis_url=f"redis://:{PASSWORD}@h:6379/0")
    redactor = Redactor.from_settings(
        settings_, {"UP_KEY": PLAIN_KEY, "DEEPINFRA_TOKEN": "di-token-0123456789"}
    )
    out = redactor.redact(f"{PLAIN_KEY} di-token-0123456789 {PASSWORD}")
    assert out == f"{REDACTED} {REDACTED} {REDACTED}"


def test_a_password_in_the_query_string_is_known_too() -> None:
    redactor = Redactor.from_settings(_settings(redis_url=f"redis://h:6379/0?password={PASSWORD}"), {})
    assert PASSWORD not in redactor.redact(f"AUTH {PASSWORD} failed")


@pytest.mark.parametrize(
    "value", [PLAIN_KEY + "\n", PLAIN_KEY + " ", " " + PLAIN_KEY, "ab\x00cdefghij", "clé-0123456789"]
)
def test_a_key_an_http_header_cannot_carry_is_a_start_up_error_naming_its_variable(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Redactor.from_settings(_settings(), {"UP_KEY": value})
    assert "UP_KEY" in str(info.value) and PLAIN_KEY not in str(info.value)
    assert check_api_key("UP_KEY", value) == str(info.value)


@pytest.mark.parametrize(
    ("env", "named"), [({"UP_KEY": "short"}, "UP_KEY"), ({}, "Redis password in redis_url")]
)
def test_short_secrets_are_start_up_errors(env: dict[str, str], named: str) -> None:
    settings_ = _settings(redis_url="redis://:pw@h:6379/0" if not env else "redis://h:6379/0")
    with pytest.raises(InvalidSecret, match=named) as info:
        Redactor.from_settings(settings_, env)
    assert "short" in str(info.value).lower() and "'pw'" not in str(info.value)


def test_unset_keys_are_not_an_error_here() -> None:
    """An unset key fails its jobs with ``missing_api_key`` (the CLI warns at start); not a start-up error."""
    Redactor.from_settings(_settings(), {})


# --- the choke points -------------------------------------------------------------------------


def test_every_upstream_error_message_is_redacted(installed: Redactor) -> None:
    error = UpstreamError("bad_request", f"echo {PLAIN_KEY}")
    assert PLAIN_KEY not in error.message and PLAIN_KEY not in str(error) and PLAIN_KEY not in repr(error)


@pytest.mark.parametrize(
    "event",
    [
        {"error": f"bad key Bearer {PLAIN_KEY}", "error_type": "validation"},
        {"error": {"message": f"key {PLAIN_KEY} invalid", "type": "invalid_request_error"}},
        {"error_type": "validation", "error_message": f"bare {PLAIN_KEY}"},
        {"error": {"type": "x", "detail": PLAIN_KEY}},
    ],
)
def test_in_stream_errors_are_redacted(installed: Redactor, event: dict[str, object]) -> None:
    error = stream_error(
        event.get("error"), error_type=event.get("error_type"), error_message=event.get("error_message")
    )
    assert PLAIN_KEY not in error.message and REDACTED in error.message


@pytest.mark.parametrize("pad", [0, 190, 195])
def test_malformed_event_excerpts_are_redacted_even_when_clipped(installed: Redactor, pad: int) -> None:
    data = '{"x": "' + "y" * pad + PLAIN_KEY + '", '
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(data)
    error = malformed_event(data, info.value)
    assert PLAIN_KEY[:4] not in error.message


def test_log_fields_are_redacted_nested_and_in_tracebacks(installed: Redactor) -> None:
    for fmt in ("json", "console"):
        out = io.StringIO()
        configure_logging("debug", fmt, stream=out)
        log = structlog.get_logger("t")
        log.warning(
            f"event {PLAIN_KEY}", error=f"Bearer {PLAIN_KEY}", nested={"a": [PLAIN_KEY, (1, PLAIN_KEY)]}
        )
        try:
            raise ValueError(f"boom {PLAIN_KEY}")
        except ValueError:
            log.exception("crashed")
        text = out.getvalue()
        assert PLAIN_KEY not in text and "crashed" in text and "ValueError: boom" in text, fmt
        assert REDACTED in text, fmt
    structlog.reset_defaults()


@pytest.mark.parametrize("bad", [PLAIN_KEY + "\n", PLAIN_KEY + "\r\nX-Injected: 1"])
async def test_a_key_that_went_bad_after_start_fails_its_job_naming_the_variable(bad: str) -> None:
    settings_ = Settings(
        prefix="t",
        default_provider="up",
        providers={"up": Provider(native_url="https://up.test/{model}", api_key_env="UP_KEY")},
    )

    def never(_: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent with a key a header cannot carry")

    redis = fakeredis.FakeAsyncRedis()
    publisher = Publisher(redis, maxlen=100)
    async with httpx.AsyncClient(transport=httpx.MockTransport(never)) as http:
        ctx = AttemptContext(
            settings=settings_,
            http=http,
            adapters=default_adapters(),
            publisher=publisher,
            keys=Keys("t"),
            limits=StreamLimits.from_settings(settings_, max_tokens=settings_.max_tokens_cap),
            environ={"UP_KEY": bad},
        )
        verdict = admit("1-0", encode_job(Job(model="m", input="hi", id="j1")), settings_)
        assert isinstance(verdict, Admitted)
        loop = asyncio.get_running_loop()
        outcome = await Attempt(ctx, verdict, 1, loop.time() + 10).run()
    await redis.aclose()
    assert isinstance(outcome, Finished) and isinstance(outcome.terminal, Error)
    assert outcome.terminal.code == "invalid_api_key" and "UP_KEY" in outcome.terminal.message
    assert PLAIN_KEY not in outcome.terminal.message


def test_stdlib_logging_of_the_libraries_is_redacted(
    installed: Redactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        raise RuntimeError(f"task failed: Bearer {PLAIN_KEY}")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("aiohttp.client").info("below warning: not printed %s", PLAIN_KEY)
    structlog.reset_defaults()
    text = out.getvalue()
    assert "Task exception was never retrieved" in text and "RuntimeError" in text
    assert PLAIN_KEY not in text and "not printed" not in text


def test_a_short_redis_password_setting_names_its_variable() -> None:
    settings_ = msgspec.structs.replace(_settings(), redis_password="pw-6ch")
    with pytest.raises(InvalidSecret, match="TOKENWIRE_REDIS_PASSWORD") as info:
        Redactor.from_settings(settings_, {})
    assert "pw-6ch" not in str(info.value)
