"""The CLI as a user types it: real `tokenwire` processes, a private redis-server, the simulator."""

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

import jsonschema
import pytest

from worker.redisproc import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture
def sim_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [TOKENWIRE, "sim", "--port", str(port), "--tps", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    proc.stdout.close()


@pytest.fixture(params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """The CLI runs against a single redis-server and a real three-master Redis Cluster."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url), True
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url, False


@pytest.fixture
def env(redis_target: tuple[str, bool], sim_port: int, tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text(
        "block_seconds = 0.5\n"
        'default_provider = "local"\n'
        "[providers.local]\n"
        f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n'
        f'chat_url = "http://127.0.0.1:{sim_port}/v1/openai/chat/completions"\n'
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": redis_target[0],
        "TOKENWIRE_REDIS_CLUSTER": "true" if redis_target[1] else "false",
        "TOKENWIRE_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "TOKENWIRE_CONSUMER_NAME": "e2e-worker-1",
    }


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def worker_proc(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=log, text=True)

    def started() -> bool:  # the worker creates the group first thing
        stats = run(env, "stats", "--json")
        return stats.returncode == 0 and json.loads(stats.stdout)["group_exists"]

    wait_until(started, 20, "the worker to create the consumer group")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    log.close()


def test_worker_enqueue_follow_tail_stats(
    env: dict[str, str], worker_proc: subprocess.Popen[str], tmp_path: Path
) -> None:
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "event.schema.json").read_text()))

    followed = run(
        env, "enqueue", "--model", "tokenwire/sim;tokens=25", "--input", "hello from the CLI",
        "--max-tokens", "64", "--follow", "--json", "--timeout", "30",
    )  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    job_id, *lines = followed.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    for event in events:
        validator.validate(event)
    assert [e["type"] for e in events] == ["start"] + ["token"] * 26 + ["done"]
    assert {e["job_id"] for e in events} == {job_id}
    done = events[-1]
    assert done["text"] == "".join(e["text"] for e in events if e["type"] == "token" and not e["special"])

    tailed = run(env, "tail", job_id, "--json", "--timeout", "10")
    assert tailed.returncode == 0 and tailed.stdout.splitlines() == lines

    pretty = run(env, "tail", job_id, "--timeout", "10")
    assert pretty.returncode == 0
    assert "done (eos_token): 26 tokens, confidence" in pretty.stdout
    assert done["text"] in pretty.stdout  # not a terminal: plain text, no colour codes

    status = run(env, "status", job_id)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "done"

    stats = json.loads(run(env, "stats", "--json").stdout)
    assert stats["length"] == 0 and stats["pending"] == 0 and stats["group_exists"]
    assert [c["name"] for c in stats["consumers"]] == ["e2e-worker-1"]
    assert "consumers     1" in run(env, "stats").stdout

    worker_proc.send_signal(signal.SIGTERM)
    assert worker_proc.wait(timeout=20) == 0
    log_lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    job_lines = [rec for rec in log_lines if rec.get("job_id") == job_id]
    assert {"attempt started", "job done"} <= {rec["event"] for rec in job_lines}
    assert any(rec["event"] == "worker stopped" for rec in log_lines)


def test_chat_job_with_top_logprobs_as_a_user_types_it(
    env: dict[str, str], worker_proc: subprocess.Popen[str]
) -> None:
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "event.schema.json").read_text()))
    messages = '[{"role":"system","content":"Be brief."},{"role":"user","content":"Name a colour."}]'
    result = run(
        env, "enqueue", "--model", "tokenwire/sim;tokens=12", "--api", "chat", "--messages", messages,
        "--top-logprobs", "5", "--follow", "--json", "--timeout", "30",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, *lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    for event in events:
        validator.validate(event)
    assert events[0]["type"] == "start" and events[0]["api"] == "chat" and events[-1]["type"] == "done"
    toks = [e for e in events if e["type"] == "token" and not e["special"]]
    assert toks and all(1 <= len(t["top_logprobs"]) <= 5 for t in toks)
    assert all(t["topk"]["chosen_rank"] >= 1 for t in toks)
    assert events[-1]["summary"]["n_topk"] == len(toks)


def test_tail_times_out_and_unknown_jobs_fail(env: dict[str, str]) -> None:
    queued = run(env, "enqueue", "--model", "m", "--input", "nobody runs me")
    assert queued.returncode == 0
    job_id = queued.stdout.strip()
    timed_out = run(env, "tail", job_id, "--timeout", "1")
    assert timed_out.returncode == 3 and "did not end in time" in timed_out.stderr
    missing = run(env, "status", "no-such-job")
    assert missing.returncode == 4 and "no job" in missing.stderr


def test_bad_settings_fail_fast_naming_the_key(env: dict[str, str]) -> None:
    result = run({**env, "TOKENWIRE_CONCURRENCY": "lots"}, "worker", timeout=20)
    assert result.returncode == 2
    assert "TOKENWIRE_CONCURRENCY" in result.stderr


def test_enqueue_rejects_invalid_jobs_before_sending(env: dict[str, str]) -> None:
    result = run(env, "enqueue", "--model", "m", "--input", "x", "--top-logprobs", "99")
    assert result.returncode == 2 and "top_logprobs" in result.stderr
