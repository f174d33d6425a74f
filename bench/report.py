"""The results: one :class:`Row` per scenario and variant, printed as a table with the ratios
tokenwire/naive and tokenwire/floor, and written as JSON (``bench/results/latest.json``)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LEGEND", "Row", "format_ratios", "format_table", "noisy", "ratios", "write_json"]

PAIRS = (
    ("tokenwire", "naive"),
    ("tokenwire", "floor"),
    ("tokenwire", "tokenwire-httpx"),
    ("tokenwire-x2", "tokenwire"),
    ("gateway", "naive-gateway"),
    ("gateway", "floor-gateway"),
    ("floor-gateway", "naive-gateway"),
)
NOISY_OTHER_PCT = 25.0

LEGEND = """\
streams: upstream streams open at the window's end / wanted; events/s: token events visible to the
subscribers; CPU us/ev: user+system CPU of the worker process(es) per visible event; worker%, sim%,
redis%, sub%: CPU of each (100 = one core); other%: the rest of the machine; p50/p99: upstream write
-> visible to a subscriber (flat out: mostly time queued in socket buffers); RSS: peak of the worker
process(es); kept up (paced): >= 97% of the offered events visible, backlog not growing, p99 <= 1 s."""


@dataclass(slots=True)
class Row:
    scenario: str
    variant: str
    streams: int
    tps: float
    window_s: float
    offered_per_s: float | None = None  # None: flat out
    events: int = 0  # token events visible to the subscribers in the window
    events_per_s: float = 0.0
    cpu_us_per_event: float | None = None  # worker process(es), user + system
    worker_cpu_pct: float = 0.0  # of one core
    p50_ms: float | None = None  # upstream write -> visible to a subscriber
    p99_ms: float | None = None
    max_ms: float | None = None
    rss_mb: float = 0.0  # peak, worker process(es)
    kept_up: bool | None = None  # None: flat out (not applicable)
    backlog_growth: int | None = None  # upstream-sent minus visible, end minus start of the window
    streams_active: int | None = None  # upstream streams open at the end of the window
    sim_events_per_s: float | None = None  # what the simulator wrote in the window
    sim_cpu_pct: float = 0.0
    redis_cpu_pct: float = 0.0
    subscriber_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0  # the rest of the machine (other processes): high means noisy numbers
    error: str | None = None


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _kept(row: Row) -> str:
    if row.error is not None:
        return "FAILED"
    return "n/a" if row.kept_up is None else ("yes" if row.kept_up else "no")


_COLUMNS: tuple[tuple[str, int], ...] = (
    ("scenario", 9), ("variant", 17), ("streams", 9), ("events/s", 9), ("offered/s", 9), ("CPU us/ev", 9),
    ("worker%", 7), ("p50 ms", 8), ("p99 ms", 9), ("RSS MB", 7), ("kept up", 7), ("sim%", 5),
    ("redis%", 6), ("sub%", 4), ("other%", 6),
)  # fmt: skip


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        row.variant,
        f"{'-' if row.streams_active is None else row.streams_active}/{row.streams}",
        _num(row.events_per_s),
        _num(row.offered_per_s) if row.offered_per_s is not None else "flat",
        _num(row.cpu_us_per_event, 1),
        _num(row.worker_cpu_pct),
        _num(row.p50_ms, 1),
        _num(row.p99_ms, 1),
        _num(row.rss_mb),
        _kept(row),
        _num(row.sim_cpu_pct),
        _num(row.redis_cpu_pct),
        _num(row.subscriber_cpu_pct),
        _num(row.other_cpu_pct),
    ]


def _line(cells: Sequence[str]) -> str:
    """The first two columns (names) left-aligned, the numbers right-aligned."""
    return "  ".join(
        cell.ljust(width) if i < 2 else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS, strict=True))
    )


def format_table(rows: Iterable[Row]) -> str:
    header = _line([name for name, _ in _COLUMNS])
    lines = [header, "-" * len(header)]
    lines += [_line(_cells(row)) for row in rows]
    return "\n".join(lines)


def noisy(rows: Iterable[Row]) -> list[str]:
    """Runs during which other processes used a lot of CPU."""
    return [f"{r.scenario}/{r.variant}" for r in rows if r.other_cpu_pct > NOISY_OTHER_PCT]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per scenario: tokenwire's events/s, CPU per event and p99 over each baseline's."""
    out: list[dict[str, Any]] = []
    found = {(r.scenario, r.variant): r for r in rows if r.error is None}
    for scenario in dict.fromkeys(r.scenario for r in rows):
        for subject_name, base_name in PAIRS:
            subject = found.get((scenario, subject_name))
            base = found.get((scenario, base_name))
            if subject is None or base is None:
                continue
            out.append(
                {
                    "scenario": scenario,
                    "ratio": f"{subject_name}/{base_name}",
                    "events_per_s": _ratio(subject.events_per_s, base.events_per_s),
                    "cpu_us_per_event": _ratio(subject.cpu_us_per_event, base.cpu_us_per_event),
                    "p99_ms": _ratio(subject.p99_ms, base.p99_ms),
                    # events delivered per CPU-second: the ratio of events/s at the same CPU
                    "events_per_cpu_s": _ratio(base.cpu_us_per_event, subject.cpu_us_per_event),
                    "rss_mb": _ratio(subject.rss_mb, base.rss_mb),
                }
            )
    return out


def format_ratios(items: Sequence[dict[str, Any]]) -> str:
    header = f"{'scenario':<9}  {'ratio':<25}  {'events/s':>9}  {'CPU us/ev':>9}  {'p99':>9}  {'ev/CPU-s':>9}"
    lines = [header, "-" * len(header)]
    for item in items:
        keys = ("events_per_s", "cpu_us_per_event", "p99_ms", "events_per_cpu_s")
        cells = [_num(item.get(k), 2) for k in keys]
        lines.append(f"{item['scenario']:<9}  {item['ratio']:<25}  " + "  ".join(c.rjust(9) for c in cells))
    return "\n".join(lines)


def _meta(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **settings,
    }


def _rounded(item: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in item.items()}


def write_json(path: Path, rows: Sequence[Row], settings: dict[str, Any]) -> None:
    data = {
        "meta": _meta(settings),
        "rows": [_rounded(asdict(r)) for r in rows],
        "ratios": [_rounded(item) for item in ratios(rows)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
