"""A bad Redis URL, typed as a user types it: one line on stderr, exit 2, nothing connected, no password."""

from __future__ import annotations

import os

import pytest

from tests.e2e.clikit import run

pytestmark = pytest.mark.e2e

PASSWORD = "Qx7pw/Zk9"


def bare_env(**variables: str) -> dict[str, str]:
    """The test process's environment (already without TOKENWIRE_*), plus ``variables``."""
    return {**os.environ, **variables}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://x", "is not a Redis URL"),
        ("localhost:6391", "is not a Redis URL"),
        ("redis:/localhost:6391", "write two slashes"),
        ("redis://:6391/0", "no host"),
        (f"redis://:{PASSWORD}@redis.example:6379/0", "percent-encoded"),
    ],
)
def test_a_bad_redis_url_is_one_line_and_exit_2(url: str, problem: str) -> None:
    done = run(bare_env(TOKENWIRE_REDIS_URL=url), "stats", timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tokenwire: configuration error: setting TOKENWIRE_REDIS_URL: "), lines[0]
    assert problem in lines[0]
    assert "Qx7" not in done.stderr and "Zk9" not in done.stderr
    assert done.stdout == ""


def test_the_issue_case_http_url() -> None:
    """`TOKENWIRE_REDIS_URL=http://x tokenwire stats` once printed a 25-line traceback."""
    done = run(bare_env(TOKENWIRE_REDIS_URL="http://x"), "stats", timeout=30)
    assert (done.returncode, len(done.stderr.splitlines())) == (2, 1), done.stderr


def test_a_bad_redis_url_flag_is_named_too() -> None:
    done = run(bare_env(), "stats", "--redis-url", "redis:/localhost:6391", timeout=30)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "redis_url" in done.stderr and "two slashes" in done.stderr
