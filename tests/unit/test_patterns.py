"""Every anchored pattern of a job or a setting refuses a trailing newline (Python's ``$`` alone
matches before one: ``"abc\\n"`` passed ``^[A-Za-z0-9]+$``, became part of Redis keys, and a cancel
message for it was read as ``abc``)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from worker.jobs import InvalidJob, Job
from worker.settings import SettingsError, load_settings

WORKER = Path(__file__).resolve().parents[2] / "worker"


def test_every_pattern_that_ends_in_dollar_refuses_a_final_newline() -> None:
    for path in WORKER.rglob("*.py"):
        for pattern in re.findall(r'pattern=r"([^"]*)"', path.read_text()):
            if pattern.endswith("$"):
                pytest.fail(f"{path.name}: pattern {pattern!r} ends in a bare $ (use $(?!\\n))")


@pytest.mark.parametrize(
    "fields",
    [{"id": "abc\n"}, {"provider": "local\n"}, {"escalate": {"below": 0.5, "model": "m", "provider": "p\n"}}],
)
def test_a_job_field_with_a_trailing_newline_is_refused(fields: dict[str, object]) -> None:
    payload = msgspec.json.encode({"model": "m", "input": "x", **fields})
    with pytest.raises((msgspec.ValidationError, InvalidJob)):
        msgspec.json.decode(payload, type=Job)
    assert msgspec.json.decode(msgspec.json.encode({"model": "m", "input": "x"}), type=Job).id is None


@pytest.mark.parametrize("name", ["TOKENWIRE_PREFIX", "TOKENWIRE_LOG_FORMAT", "TOKENWIRE_UPSTREAM_TRANSPORT"])
def test_a_setting_with_a_trailing_newline_is_refused(name: str) -> None:
    good = {"TOKENWIRE_PREFIX": "tw", "TOKENWIRE_LOG_FORMAT": "json", "TOKENWIRE_UPSTREAM_TRANSPORT": "httpx"}
    load_settings({name: good[name]})
    with pytest.raises(SettingsError, match=name):
        load_settings({name: good[name] + "\n"})
