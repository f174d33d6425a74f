"""Secrets never reach logs, events or errors; password-protected Redis and rediss:// work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from worker.redisproc import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")
REDIS_PASSWORD = "redis-pw-7f3a9c21e4"
API_KEY = "sk-live-4b8e2d9a1c7f0e36"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    return d / "cert.pem", d / "key.pem", d / "ca.pem"


@pytest.fixture(params=["password", "tls+password"])
def secure_redis(request: pytest.FixtureRequest, tls_files: tuple[Path, Path, Path]) -> Iterator[RedisServer]:
    tls = tls_files if request.param == "tls+password" else None
    with RedisServer(password=REDIS_PASSWORD, tls=tls) as server:
        yield server


@pytest.fixture
def sim_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [TOKENWIRE, "sim", "--port", str(port), "--tps", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and "listening on" in proc.stdout.readline()
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    proc.stdout.close()


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_secrets_stay_out_of_logs_events_and_errors(
    secure_redis: RedisServer, sim_port: int, tmp_path: Path
) -> None:
    assert secure_redis.url.startswith("rediss://" if secure_redis.tls else "redis://")
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text(
        'default_provider = "keyed"\nblock_seconds = 0.5\n[providers.keyed]\n'
        f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\napi_key_env = "TW_KEY"\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": secure_redis.url,
        "TOKENWIRE_PREFIX": f"sec-{uuid.uuid4().hex[:6]}",
        "TOKENWIRE_LOG_LEVEL": "debug",
        "TW_KEY": API_KEY,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=log)
        try:
            outputs = _run_jobs(env)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0
    # a wrong password: the error names Redis, never the password given
    wrong = run(
        {**env, "TOKENWIRE_REDIS_URL": secure_redis.url.replace(REDIS_PASSWORD, "wrong-pw-0000")}, "stats"
    )
    assert wrong.returncode != 0 and "wrong-pw-0000" not in wrong.stderr and "***" in wrong.stderr

    logs = log_path.read_text()
    assert "job done" in logs and "job failed" in logs
    everything = logs + outputs + wrong.stdout + wrong.stderr
    for secret in (REDIS_PASSWORD, API_KEY):
        assert secret not in everything


def _run_jobs(env: dict[str, str]) -> str:
    """Jobs that succeed, fail at HTTP level and fail in-stream; everything they print and leave."""
    texts = []
    for model, code in (
        ("tokenwire/sim;tokens=5", 0),
        ("tokenwire/sim;fault=status;status=401", 1),  # the job ended in `error`
        ("tokenwire/sim;fault=error;after=2", 1),
    ):
        result = run(
            env, "enqueue", "--model", model, "--input", "x", "--follow", "--json", "--timeout", "30"
        )
        assert result.returncode == code, result.stderr
        texts += [result.stdout, result.stderr]
        job_id = result.stdout.splitlines()[0]
        texts.append(run(env, "status", job_id).stdout)
    stats = run(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    texts += [stats.stdout, run(env, "dead", "--json").stdout]
    _wait_quiet(env)
    return "\n".join(texts)


def _wait_quiet(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats: Any = json.loads(run(env, "stats", "--json").stdout)
        if stats["pending"] == 0:
            return
        time.sleep(0.1)
