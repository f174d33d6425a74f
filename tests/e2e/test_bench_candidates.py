"""The candidates scenario of ``make bench`` end to end on a few sets: real redis-server, simulator
and worker processes, n=4 candidates against 4 separate jobs for both APIs. Behaviour is checked
(every row measured, one stream against four, the ratios computed), never a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import candidates

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_n4_against_four_jobs_is_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "candidates.json"
    assert candidates.main(["--quick", "--sets", "12", "--inflight", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["api"], r["form"]): r for r in result["rows"]}
    assert set(rows) == {(api, form) for api in ("native", "chat") for form in ("n4", "4x1")}
    for (_, form), row in rows.items():
        assert row.get("error") is None, row
        assert row["cpu_us_per_set"] > 0 and row["sets_per_s"] > 0
        assert row["streams_per_set"] == (1 if form == "n4" else 4)
    for api in ("native", "chat"):  # n=4: one start and one done, plus a candidate_done each
        single, shared = rows[(api, "4x1")]["events_per_set"], rows[(api, "n4")]["events_per_set"]
        assert shared == single - 2
    assert {(r["api"], r["tokens"]) for r in result["ratios"]} == {("native", 5), ("chat", 5)}
    assert "costs" in capsys.readouterr().out
