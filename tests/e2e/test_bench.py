"""``make bench`` end to end, on short windows: real redis-server, simulator, workers and subscriber.

What is checked is behaviour (rows measured, ratios computed, a broken measurement refused), never a
speed: the numbers depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run, scenarios
from bench.report import Row

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHORT = ["--warmup", "0.5", "--window", "1.5"]


def _rows(path: Path) -> dict[str, dict[str, object]]:
    return {row["variant"]: row for row in json.loads(path.read_text())["rows"]}


def test_one_scenario_measures_floor_and_tokenwire_and_their_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latest.json"
    argv = ["--scenario", "1-flat", "--variant", "floor", "--variant", "tokenwire", *SHORT, "--out", str(out)]
    assert run.main(argv) == 0
    rows = _rows(out)
    assert set(rows) == {"floor", "tokenwire"}
    for row in rows.values():
        assert row["error"] is None
        assert row["streams_active"] == 1  # the flat-out stream outlasted the window
        assert isinstance(row["events"], int) and row["events"] > 0
        assert isinstance(row["cpu_us_per_event"], float) and row["cpu_us_per_event"] > 0
        assert row["p99_ms"] is not None  # the simulator stamps its writes: latency is measured
    ratios = json.loads(out.read_text())["ratios"]
    assert [(r["scenario"], r["ratio"]) for r in ratios] == [("1-flat", "tokenwire/floor")]
    printed = capsys.readouterr().out
    assert "tokenwire/floor" in printed and f"wrote {out}" in printed


def test_a_stream_that_ends_inside_the_window_is_refused_not_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a flat-out stream this short ends during the warm-up: its rate would be the subscriber
    # draining a backlog, not the worker's
    monkeypatch.setattr(scenarios, "FLAT_OUT_TOKENS", 500)
    out = tmp_path / "latest.json"
    assert run.main(["--scenario", "1-flat", "--variant", "floor", *SHORT, "--out", str(out)]) == 1
    (row,) = _rows(out).values()
    assert row["error"] == "1 of 1 upstream streams ended inside the measured window (they must outlast it)"
    assert json.loads(out.read_text())["ratios"] == []
    assert "FAILED: 1 of 1 upstream streams ended" in capsys.readouterr().out


def test_the_scaling_run_flags_workers_that_did_not_use_their_quota() -> None:
    # one worker using all of its 0.3 core; two using 60 % of their 0.6: something else limited them
    one = Row("200-flat", "tokenwire", 200, 0, 10.0, worker_cpu_pct=30.0)
    two = Row("200-flat", "tokenwire-x2", 200, 0, 10.0, worker_cpu_pct=36.0)
    failed = Row("200-flat", "tokenwire", 200, 0, 10.0, error="RuntimeError: boom")
    assert run._quota_use([one, two, failed], 0.3, 1) == [
        "200-flat tokenwire: the workers used 100% of their 0.3-core quota",
        "200-flat tokenwire-x2: the workers used 60% of their 0.6-core quota "
        "(something else limited this run: see sim%, redis%, sub%)",
    ]
    assert run._quota_use([one], 0.3, 2)[0].endswith(
        "used 50% of their 0.6-core quota (something else limited this run: see sim%, redis%, sub%)"
    )
