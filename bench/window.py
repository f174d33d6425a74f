"""What the subscriber saw inside the measured window: how many token events became visible, their
upstream-write → visible latency percentiles, and how many had become visible by a given time."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Seen", "Window", "load_seen", "percentile"]


def percentile(ordered: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Window:
    events: int
    p50_us: int | None
    p99_us: int | None
    max_us: int | None


class Seen:
    """Receive times (µs since the epoch, sorted) and latencies (µs, -1: no stamp) of token events."""

    def __init__(self, recv: array[int], lat: array[int]) -> None:
        pairs = sorted(zip(recv, lat, strict=True))
        self.recv = [r for r, _ in pairs]
        self.lat = [lat for _, lat in pairs]

    def visible_by(self, t_us: int) -> int:
        return bisect_right(self.recv, t_us)

    def window(self, t0_us: int, t1_us: int) -> Window:
        first, last = self.visible_by(t0_us), self.visible_by(t1_us)
        ordered = sorted(lat for lat in self.lat[first:last] if lat >= 0)
        return Window(
            events=last - first,
            p50_us=percentile(ordered, 50),
            p99_us=percentile(ordered, 99),
            max_us=ordered[-1] if ordered else None,
        )


def load_seen(out: Path) -> Seen:
    """Read the arrays the subscriber wrote next to ``out`` (``.recv``, ``.lat``)."""
    recv, lat = array("q"), array("q")
    recv.frombytes(out.with_suffix(".recv").read_bytes())
    lat.frombytes(out.with_suffix(".lat").read_bytes())
    return Seen(recv, lat)
