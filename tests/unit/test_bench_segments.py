"""bench.segments runs and reports every variant (what it measures is never asserted: timing is
for `make bench`)."""

from __future__ import annotations

import json

import pytest

from bench.segments import UNITS, main, measure


def test_measure_reports_every_unit_against_off() -> None:
    result = measure(3000, 1)
    assert list(result) == ["off", *UNITS]
    assert result["off"]["segments"] == 0 and all(result[u]["segments"] > 0 for u in UNITS)
    assert result["sentence"]["segments"] >= result["line"]["segments"] >= result["paragraph"]["segments"]
    for unit in UNITS:
        row = result[unit]
        assert row["extra_us_per_token"] == row["us_per_token"] - result["off"]["us_per_token"]


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tokens", "2000", "--repeat", "1", "--json", "--lang", "ja"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["tokens"], report["lang"]) == (2000, "ja") and set(report["result"]) == {"off", *UNITS}
    assert main(["--tokens", "2000", "--repeat", "1"]) == 0
    assert "sentence" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--tokens", "0"])
