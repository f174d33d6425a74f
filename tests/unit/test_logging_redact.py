"""worker.logging.RedactFields: log_processor's redaction with the short strings' results remembered
answers exactly as log_processor does, forgets them when another Redactor is installed, and stays
bounded."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import redact
from worker.logging import RedactFields, configure_logging
from worker.redact import Redactor, log_processor

SECRET = "s3cr3t-value-0123456789"


@pytest.fixture
def installed() -> Iterator[None]:
    before = redact.installed()
    redact.install(Redactor([SECRET]))
    try:
        yield
    finally:
        redact.install(before)


fragments = st.sampled_from(
    [SECRET, "Bearer abcdefghijk", "sk-abcdefghijkl", "token=xyz", "job done", " ", "é"]
)
texts = st.lists(st.one_of(fragments, st.text(max_size=12)), max_size=6).map("".join)
values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(texts, st.integers(), st.none()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.dictionaries(st.sampled_from(["event", "job_id", "model", "detail", "n"]), values, max_size=5)
)
def test_same_answer_as_log_processor_twice(fields: dict[str, Any]) -> None:
    before = redact.installed()
    redact.install(Redactor([SECRET]))
    try:
        processor = RedactFields()
        expected = log_processor(None, "info", dict(fields))
        assert processor(None, "info", dict(fields)) == expected
        assert processor(None, "info", dict(fields)) == expected  # from the memo
    finally:
        redact.install(before)


def test_a_newly_installed_redactor_is_used_at_once(installed: None) -> None:
    processor = RedactFields()
    other = "another-secret-987654321"
    assert processor(None, "info", {"event": f"x {other}"}) == {"event": f"x {other}"}
    redact.install(Redactor([SECRET, other]))
    assert processor(None, "info", {"event": f"x {other}"}) == {"event": "x [redacted]"}


def test_the_memo_is_bounded(installed: None) -> None:
    processor = RedactFields()
    for i in range(RedactFields.MAX_ENTRIES + 10):
        processor(None, "info", {"event": f"e{i}"})
    assert len(processor._memo) <= RedactFields.MAX_ENTRIES
    long = "y" * (RedactFields.MAX_LENGTH + 1)
    processor(None, "info", {"event": long})
    assert long not in processor._memo


def test_configured_json_lines_carry_no_secret(installed: None) -> None:
    out = io.StringIO()
    handlers = list(logging.getLogger().handlers)
    configure_logging("info", "json", stream=out)
    try:
        log = structlog.get_logger("t")
        for _ in range(3):  # the second and third from the memo
            log.info(f"job done {SECRET}", model="m", reason=f"Bearer {SECRET}")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert len(lines) == 3
        for line in lines:
            assert SECRET not in json.dumps(line)
            assert line["event"] == "job done [redacted]" and line["reason"] == "Bearer [redacted]"
            assert line["level"] == "info" and line["timestamp"].endswith("Z")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = handlers


class _Writes(io.StringIO):
    """A stream that records each write it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_line_is_one_write_with_its_newline(installed: None) -> None:
    out = _Writes()
    handlers = list(logging.getLogger().handlers)
    configure_logging("info", "json", stream=out)
    try:
        log = structlog.get_logger("t")
        log.info("attempt started", attempt=1)
        log.info("job done", tokens=3)
        assert len(out.writes) == 2  # an unbuffered stderr: one syscall a line, not two
        assert all(w.endswith("}\n") and w.count("\n") == 1 for w in out.writes)
        assert [json.loads(w)["event"] for w in out.writes] == ["attempt started", "job done"]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = handlers
