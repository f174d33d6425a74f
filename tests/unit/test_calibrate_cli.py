"""tokenwire calibrate's own parts without Redis: --since, the plot (and its missing extra), and the
refusals that come before any connection."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.calibrate import calibrate
from worker.calibrate_cli import parse_since
from worker.calplot import PlotUnavailable, plot_report, require_matplotlib
from worker.cli import main
from worker.feedback import Feedback
from worker.signals import Signals

NOW = 1_800_000_000_000


def test_since_durations_and_dates() -> None:
    assert parse_since("30m", NOW) == NOW - 30 * 60_000
    assert parse_since("12h", NOW) == NOW - 12 * 3_600_000
    assert parse_since("7d", NOW) == NOW - 7 * 86_400_000
    assert parse_since("2w", NOW) == NOW - 14 * 86_400_000
    assert parse_since("90s", NOW) == NOW - 90_000
    assert parse_since("999999999w", NOW) == 0  # before the epoch: everything
    assert parse_since("2026-12-01") == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("2026-12-01T09:30:00+01:00") == int(
        datetime(2026, 12, 1, 8, 30, tzinfo=UTC).timestamp() * 1000
    )
    for bad in ("", "yesterday", "7 d", "-7d", "7y", "x" * 100, "2026-13-01"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, NOW)


@given(st.text(max_size=80))
def test_since_takes_any_text_and_only_raises_value_error(text: str) -> None:
    try:
        value = parse_since(text, NOW)
    except ValueError as exc:
        assert "--since" in str(exc) and len(str(exc)) < 300
    else:
        assert isinstance(value, int) and value >= 0


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "calibration.png"
    report = calibrate(
        [
            Feedback(
                job_id=f"j{i}", correct=i % 3 != 0, model=m, signals=Signals(confidence=(i % 10) / 10 + 0.05)
            )
            for i in range(60)
            for m in ("a", "b")
        ]
    )
    assert plot_report(report, path) == 2
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    empty = tmp_path / "empty.png"
    assert plot_report(calibrate([]), empty) == 0 and empty.read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(PlotUnavailable, match=r"tokenwire\[plot\]"):
        require_matplotlib()
    # the command refuses before it connects anywhere (this Redis URL answers nothing)
    code = main(["calibrate", "--redis-url", "redis://127.0.0.1:1/0", "--plot", str(tmp_path / "x.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "optional extra `plot`" in err and "pip install 'tokenwire[plot]'" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "soon"], "--since 'soon'"),
        (["--catch", "1.5"], "the catch must be between 0 and 1"),
        (["--review-rate", "-0.1"], "the review rate must be between 0 and 1"),
    ],
)
def test_bad_options_are_refused_before_connecting(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", "--redis-url", "redis://127.0.0.1:1/0", *args]) == 2
    assert message in capsys.readouterr().err


def test_catch_and_review_rate_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", "--catch", "0.9", "--review-rate", "0.1"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
