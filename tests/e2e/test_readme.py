"""The README's Python example runs as printed, against a worker and the simulator."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker.redisproc import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")


def python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"### From Python\n\n```python\n(.*?)```", readme, re.S)
    return str(block)


def test_the_python_example_runs(tmp_path: Path) -> None:
    with RedisServer() as redis:
        port = free_port()
        sim = subprocess.Popen(
            [TOKENWIRE, "sim", "--port", str(port), "--tps", "0"], stdout=subprocess.PIPE, text=True
        )
        assert sim.stdout is not None and "listening on" in sim.stdout.readline()
        cfg = tmp_path / "tokenwire.toml"
        cfg.write_text(
            f'default_provider = "local"\n[providers.local]\nnative_url = "http://127.0.0.1:{port}/v1/inference/{{model}}"\n'
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
            "TOKENWIRE_CONFIG": str(cfg),
            "TOKENWIRE_REDIS_URL": redis.url,
        }
        worker = subprocess.Popen([TOKENWIRE, "worker"], env=env, stderr=subprocess.DEVNULL)
        try:
            code = python_example().replace("redis://localhost:6379/0", redis.url)
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
            sim.send_signal(signal.SIGTERM)
            sim.wait(timeout=15)
            sim.stdout.close()
    assert result.returncode == 0, result.stderr
    assert re.search(r"\nconfidence 0\.\d+ \[", result.stdout), result.stdout


def _sh_block_after(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(rf"{re.escape(heading)}\n.*?```sh\n(.*?)```", readme, re.S)
    return str(block)


def test_the_tour_runs_as_printed(tmp_path: Path) -> None:
    """The tour's shell block, run by bash in a fresh directory (only the ports changed), then the
    first command of "From the command line" against the worker it started."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    with RedisServer() as redis:
        port = free_port()
        script = (
            _sh_block_after("## Five-minute tour")
            .replace("8080", str(port))
            .replace("redis://localhost:6379/0", redis.url)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
        env["PATH"] = "/usr/bin:/bin"  # the tour itself must put tokenwire on the PATH
        tour = subprocess.Popen(
            ["bash", "-e", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            first = _sh_block_after("### From the command line").splitlines()[0].split("#")[0]
            follow = f"source .venv/bin/activate && {first} --timeout 30"
            cli_env = {**env, "TOKENWIRE_REDIS_URL": redis.url, "TOKENWIRE_CONFIG": "tokenwire.toml"}
            result = subprocess.run(
                ["bash", "-c", follow], cwd=tmp_path, env=cli_env, capture_output=True, text=True,
                timeout=90, check=False,
            )  # fmt: skip
        finally:
            os.killpg(tour.pid, signal.SIGTERM)
            tour.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "✓ done" in result.stdout
