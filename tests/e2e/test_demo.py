"""`tokenwire demo`, as a new user runs it, and its fallback when redis-server is not installed."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import worker.demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")


def test_demo_runs_end_to_end_and_stops_what_it_started() -> None:
    result = subprocess.run(
        [TOKENWIRE, "demo", "--tps", "0", "--prompt", "Why is the sea salty?"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "enqueued job" in out and "Why is the sea salty?" in out
    assert re.search(r"✓ done \((length|eos_token)\): \d+ tokens, confidence 0\.\d+", out), out
    assert "low-confidence span" in out
    assert "stopped the worker, the simulator and Redis" in out
    port = int(re.search(r"redis-server on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the private redis-server is gone


def test_demo_falls_back_to_fakeredis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(worker.demo, "redis_server_available", lambda: False)
    code = asyncio.run(worker.demo.run_demo(prompt="hi", tps=0, seed=3, stop=asyncio.Event()))
    out = capsys.readouterr().out
    assert code == 0
    assert "in-process fakeredis" in out and "✓ done" in out
