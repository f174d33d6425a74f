"""The short-job scenario of ``make bench`` end to end on short windows: real redis-server, simulator,
the three workers (tokenwire, the naive worker, the naive task on arq in its own locked environment)
and the load generator. Behaviour is checked (every row measured, the ratios computed, a failing job
refused), never a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import shortjobs, shortload

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHORT = ["--warmup", "0.5", "--window", "1.5"]
PACED_RATE = 100.0
"""The paced load's offered rate here: one every variant keeps up with on a loaded machine (at the
scenario's 500 jobs/s the naive worker and arq fall behind, and drain for up to 10 s or fail the row)."""


def test_every_variant_and_load_is_measured_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flat, paced_load = shortjobs.LOADS
    monkeypatch.setattr(
        shortjobs, "LOADS", (flat, shortjobs.Load(paced_load.name, PACED_RATE, paced_load.inflight))
    )
    out = tmp_path / "short.json"
    variants = ["--variant", "naive", "--variant", "tokenwire", "--variant", "arq"]
    assert shortjobs.main([*SHORT, *variants, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["variant"], r["load"]): r for r in result["rows"]}
    assert set(rows) == {(v, ld) for v in ("naive", "tokenwire", "arq") for ld in ("flat", "paced")}
    for row in rows.values():
        assert row.get("error") is None, row
        assert row["done_in_window"] > 0 and row["failed"] == 0 and row["unfinished"] == 0
        assert row["cpu_us_per_job"] > 0 and row["jobs_per_cpu_s"] > 0
        assert row["p99_ms"] >= row["p50_ms"] > 0
    paced = rows[("tokenwire", "paced")]
    # open loop at the offered rate (how many the producer got out depends on the machine's load:
    # not asserted); closed loop keeps its 64 outstanding
    assert paced["rate"] == PACED_RATE and paced["enqueued"] > 0
    assert rows[("tokenwire", "flat")]["inflight"] == 64
    assert set(result["ratios"]) == {
        f"tokenwire/{v} {ld}" for v in ("naive", "arq") for ld in ("flat", "paced")
    }
    printed = capsys.readouterr().out
    assert "tokenwire/arq flat" in printed and f"wrote {out}" in printed


def test_a_job_that_ends_in_error_fails_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an upstream that refuses every request (400): every job ends in `error`, never counted as done
    monkeypatch.setattr(shortjobs, "LOADS", (shortjobs.Load("flat", 0.0, 4),))
    model = "tokenwire/sim;fault=status;status=400"
    argv = [*SHORT, "--variant", "tokenwire", "--model", model, "--out", str(tmp_path / "short.json")]
    assert shortjobs.main(argv) == 1
    (row,) = json.loads((tmp_path / "short.json").read_text())["rows"]
    assert "jobs failed" in row["error"]


def test_job_lengths_are_one_to_five_tokens_the_same_for_every_variant() -> None:
    lengths = [shortload.tokens_of(i) for i in range(1000)]
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert shortload.job_of(7, "a")["model"] == shortload.job_of(7, "b")["model"]


def test_profile_samples_the_tokenwire_worker_over_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shortjobs._py_spy() is None:
        pytest.skip("py-spy is not installed here")
    profiles = tmp_path / "prof"
    argv = [*SHORT, "--variant", "tokenwire", "--load", "flat", "--profile", str(profiles)]
    assert shortjobs.main([*argv, "--out", str(tmp_path / "short.json")]) == 0
    raw = (profiles / "short-flat-tokenwire.txt").read_text()
    assert "Runner.handle" in raw  # the worker's job path was sampled
    assert "profile short-flat-tokenwire.txt:" in capsys.readouterr().out  # and summarised


def test_profile_without_py_spy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shortjobs, "_py_spy", lambda: None)
    argv = [*SHORT, "--variant", "tokenwire", "--profile", str(tmp_path / "p"), "--out", str(tmp_path / "o")]
    assert shortjobs.main(argv) == 2
    assert not (tmp_path / "o").exists()
