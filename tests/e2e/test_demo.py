"""`tokenwire demo`, as a new user runs it, and its fallback when redis-server is not installed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
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


def test_demo_without_redis_server_or_fakeredis_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(worker.demo, "redis_server_available", lambda: False)
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # an environment without the sim extra
    with pytest.raises(worker.demo.DemoUnavailable, match=r"redis-server.*tokenwire\[sim\]"):
        asyncio.run(worker.demo.run_demo(prompt="hi", tps=0, seed=3, stop=asyncio.Event()))


def _demo_in_its_own_group(*extra: str) -> tuple[subprocess.Popen[str], int]:
    """The demo as a terminal runs it: its own process group, which a Ctrl-C signals as a whole.
    Returns the process once its first token line is out, and the private Redis's port."""
    proc = subprocess.Popen(
        [TOKENWIRE, "demo", "--tps", "5", "--prompt", "Tell me a long story.", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = 0
    for _ in range(20):  # the demo's few status lines, then the tokens
        line = proc.stdout.readline()
        if match := re.search(r"redis-server on 127\.0\.0\.1:(\d+)", line):
            port = int(match.group(1))
        if "tokens as they arrive" in line:
            break
    else:
        proc.kill()
        raise AssertionError("the demo did not start streaming")
    assert port
    return proc, port


def _gone(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_ctrl_c_stops_the_demo_cleanly() -> None:
    """Ctrl-C reaches the demo, not its Redis: the worker drains, Redis stops last, exit 0."""
    proc, port = _demo_in_its_own_group()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped the worker, the simulator and Redis" in out
    assert "Traceback" not in err and "Error" not in err and "retry" not in err.lower(), err
    assert _gone(port)


def test_a_second_ctrl_c_forces_the_stop() -> None:
    """The graceful stop would wait 60 s for the job: only the forced stop ends it in time. The
    second Ctrl-C follows the first at once, so it lands while the demo is still acting on the
    first (it used to be swallowed there, and the stop then waited for the whole job)."""
    proc, port = _demo_in_its_own_group("--grace", "60")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stderr is not None
    seen = [proc.stderr.readline()]
    while "Ctrl-C again to force" not in seen[-1] and seen[-1] and len(seen) < 50:
        seen.append(proc.stderr.readline())  # a warning logged before it is not the test's business
    assert "Ctrl-C again to force" in seen[-1], seen
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=15)  # the job alone takes 24 s: 120 tokens at 5/s
    assert proc.returncode == 130, err
    assert "✓ done" not in out, "the forced stop waited for the job to finish"
    assert "Traceback" not in err, err
    assert _gone(port)
