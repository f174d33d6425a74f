"""The workloads: how many streams, how fast each one is paced, and how long a run lasts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.names import find

__all__ = ["QUICK", "SCENARIOS", "Scenario", "Timing", "by_name"]

FLAT_OUT_TOKENS = 9_000_000  # a flat-out stream outlasts the run (over 60 s even at 100,000 events/s)
"""Bench jobs set no ``max_tokens``: the length is the simulated model's (``tokens=``), under the
workers' own default and cap (``FLAT_OUT_TOKENS`` < ``bench.variants.TOKENS_CAP``)."""
_TAIL_SECONDS = 15.0  # paced streams outlast the window by this much


@dataclass(frozen=True, slots=True)
class Timing:
    """One run's schedule, in seconds: jobs are enqueued over ``ramp`` (paced scenarios), the
    first ``warmup`` seconds after that are not measured, then ``window`` seconds are."""

    warmup: float
    window: float
    ramp: float = 1.0


FULL_TIMING = Timing(warmup=3.0, window=10.0)
QUICK_TIMING = Timing(warmup=1.5, window=4.0)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    streams: int
    tps: float  # tokens per second per stream; 0 = flat out
    description: str

    @property
    def paced(self) -> bool:
        return self.tps > 0

    @property
    def offered(self) -> float | None:
        """Events per second the upstream offers (None when flat out: as fast as it goes)."""
        return self.streams * self.tps if self.paced else None

    def tokens(self, timing: Timing) -> int:
        """Content tokens per stream: enough to outlast the whole run."""
        if not self.paced:
            return FLAT_OUT_TOKENS
        return math.ceil(self.tps * (timing.ramp + timing.warmup + timing.window + _TAIL_SECONDS))

    def model(self, timing: Timing, stamp: bool) -> str:
        tps = f"{self.tps:g}"
        stamped = ";stamp=1" if stamp else ""
        return f"tokenwire/sim;tokens={self.tokens(timing)};tps={tps}{stamped}"

    def ramp(self, timing: Timing) -> float:
        """Seconds over which jobs are enqueued: spread so paced streams do not tick in lockstep."""
        return timing.ramp if self.paced and self.streams > 1 else 0.0


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("1-flat", 1, 0, "one stream flat out"),
    Scenario("1x1000", 1, 1000, "one stream paced at 1,000 tokens/s"),
    Scenario("200x50", 200, 50, "200 streams x 50 tokens/s (10,000 events/s offered)"),
    Scenario("1000x10", 1000, 10, "1,000 streams x 10 tokens/s (10,000 events/s offered)"),
    Scenario("200-flat", 200, 0, "200 streams flat out (the ceiling)"),
)

QUICK: tuple[str, ...] = ("1-flat", "200x50", "200-flat")


def by_name(name: str) -> Scenario:
    return find(SCENARIOS, name, "scenario")
