"""worker.lease.ClaimGate: after any sign of an outage the reclaim pass claims nothing until Redis
has run a claim again and then ``settle`` seconds have passed (every owner's renewal round)."""

from __future__ import annotations

import pytest

from worker.lease import ClaimGate

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_open_until_trouble_then_closed_until_answered_and_settled() -> None:
    clock = Clock()
    gate = ClaimGate(0.6, clock=clock)
    assert gate.open() and not gate.troubled
    gate.trouble()
    clock.now += 60  # however long the outage lasts
    assert not gate.open() and gate.troubled
    gate.answered()  # Redis ran a claim again
    assert not gate.troubled and not gate.open()
    clock.now += 0.59
    assert not gate.open()
    clock.now += 0.02
    assert gate.open()


def test_trouble_while_settling_waits_for_another_answer() -> None:
    clock = Clock()
    gate = ClaimGate(0.6, clock=clock)
    gate.trouble()
    gate.answered()
    clock.now += 0.3
    gate.trouble()  # the outage came back before the owners could renew
    clock.now += 10
    assert not gate.open()
    gate.answered()
    assert not gate.open()
    clock.now += 0.6
    assert gate.open()


def test_an_answer_without_trouble_changes_nothing() -> None:
    clock = Clock()
    gate = ClaimGate(0.6, clock=clock)
    gate.answered()
    assert gate.open()
