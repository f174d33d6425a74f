"""``make bench``'s gateway scenarios end to end on small loads and short windows: a real redis-server,
the producer, ``tokenwire gateway``, the naive gateway and the floor (bench/floor_gateway.py), and the
SSE clients.

What is checked is behaviour (every connection open, events delivered and timed, the ratio computed,
a broken run refused), never a speed: the numbers depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gateway, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHORT = ["--warmup", "0.5", "--window", "1.5"]


def test_the_watch_and_idle_scenarios_run_every_gateway_and_report_the_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latest.json"
    argv = ["--scenario", "gw-watch-small", "--scenario", "gw-idle-small", *SHORT, "--out", str(out)]
    assert run.main(argv) == 0
    data = json.loads(out.read_text())
    rows = {(r["scenario"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {
        (s, v)
        for s in ("gw-watch-small", "gw-idle-small")
        for v in ("gateway", "naive-gateway", "floor-gateway")
    }
    for (scenario, _), row in rows.items():
        expected = gateway.scenario_by_name(scenario)
        assert row["error"] is None
        assert row["streams"] == expected.clients
        assert row["streams_active"] == expected.clients  # every SSE connection held to the end
        assert row["rss_mb"] > 0 and row["worker_cpu_pct"] >= 0
    for variant in ("gateway", "naive-gateway", "floor-gateway"):
        watch = rows[("gw-watch-small", variant)]
        assert isinstance(watch["events"], int) and watch["events"] > 0
        assert watch["p50_ms"] is not None and watch["p99_ms"] is not None
        assert watch["p50_ms"] <= watch["p99_ms"]
        assert watch["cpu_us_per_event"] is not None and watch["cpu_us_per_event"] > 0
        assert rows[("gw-idle-small", variant)]["events"] == 0  # idle: heartbeats only
    ratios = {r["ratio"]: r for r in data["ratios"] if r["scenario"] == "gw-watch-small"}
    assert set(ratios) == {"gateway/naive-gateway", "gateway/floor-gateway", "floor-gateway/naive-gateway"}
    assert all(r["events_per_cpu_s"] is not None and r["events_per_cpu_s"] > 0 for r in ratios.values())
    printed = capsys.readouterr().out
    assert "gateway/naive-gateway" in printed and "Redis-visible" in printed


def test_a_gateway_that_refuses_the_clients_is_a_failed_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # clients without the tenant's key: every connection is refused (401), nothing is measured
    real = gateway._tokenwire_gateway

    def other_key(setup: gateway.GatewaySetup) -> tuple[list[str], dict[str, str]]:
        argv, env = real(setup)
        config = Path(env["TOKENWIRE_CONFIG"])
        text = config.read_text()
        config.write_text(text.replace(text.split('"')[1], "0" * 64))
        return argv, env

    monkeypatch.setattr(
        gateway, "GATEWAY_VARIANTS", (gateway.GatewayVariant("gateway", "", other_key, True),)
    )
    out = tmp_path / "latest.json"
    assert run.main(["--scenario", "gw-watch-small", "--variant", "gateway", *SHORT, "--out", str(out)]) == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["error"].startswith("RuntimeError: no client connected (100 failed)")
