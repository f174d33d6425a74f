"""The simulator's rate limit (worker.sim.limits): the ``limit``, ``limit_rps``, ``limit_scope`` and
``limit_retry_after`` directives, what they admit and refuse, and the counts ``/stats`` serves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.sim.faults import DirectiveError, parse_directives
from worker.sim.limits import LimitCounts, Limiter, refusal_headers

pytestmark = pytest.mark.unit


def test_at_most_n_streams_at_once_per_model() -> None:
    counts: dict[str, LimitCounts] = {}
    limiter = Limiter(counts)
    d = parse_directives("limit=2")
    admitted = [limiter.admit("m", d, now=0.0) for _ in range(3)]
    assert admitted == ["model:m", "model:m", None]
    assert limiter.admit("other", d, now=0.0) == "model:other"  # each base model its own limit
    limiter.release("model:m")
    assert limiter.admit("m", d, now=0.0) == "model:m"
    assert counts["model:m"] == LimitCounts(limit=2, admitted=3, refused=1, active=2, peak=2)


def test_a_server_scope_counts_every_model() -> None:
    limiter = Limiter({})
    d = parse_directives("limit=1;limit_scope=server")
    assert limiter.admit("a", d, now=0.0) == "server"
    assert limiter.admit("b", d, now=0.0) is None


def test_requests_per_second_in_a_sliding_window() -> None:
    limiter = Limiter({})
    d = parse_directives("limit_rps=2")
    assert [limiter.admit("m", d, now=t) is not None for t in (0.0, 0.1, 0.2, 0.9)] == [
        True,
        True,
        False,
        False,
    ]
    assert limiter.admit("m", d, now=1.05) is not None  # the first left the window
    slow = parse_directives("limit_rps=0.5")  # one every two seconds
    assert [limiter.admit("s", slow, now=t) is not None for t in (0.0, 1.5, 2.1)] == [True, False, True]


def test_no_limit_admits_without_counting() -> None:
    counts: dict[str, LimitCounts] = {}
    assert Limiter(counts).admit("m", parse_directives("tokens=3"), now=0.0) == ""
    assert counts == {}


def test_a_refusal_asks_to_wait_in_seconds_and_milliseconds() -> None:
    assert refusal_headers(parse_directives("limit=1;limit_retry_after=0.25")) == {
        "Retry-After": "1",
        "retry-after-ms": "250",
    }


@pytest.mark.parametrize("bad", ["limit=0", "limit_rps=0", "limit_scope=cluster", "limit_retry_after=-1"])
def test_bad_limit_directives_are_named(bad: str) -> None:
    with pytest.raises(DirectiveError, match=bad.split("=")[0]):
        parse_directives(bad)


@given(st.lists(st.sampled_from(["admit", "release"]), max_size=200), st.integers(1, 5))
def test_the_limit_is_never_exceeded(steps: list[str], limit: int) -> None:
    counts: dict[str, LimitCounts] = {}
    limiter = Limiter(counts)
    d = parse_directives(f"limit={limit}")
    held: list[str] = []
    for step in steps:
        if step == "admit":
            scope = limiter.admit("m", d, now=0.0)
            if scope is not None:
                held.append(scope)
        elif held:
            limiter.release(held.pop())
        if "model:m" in counts:
            assert 0 <= counts["model:m"].active == len(held) <= limit
            assert counts["model:m"].peak <= limit
