"""The Responses API, Gemini and SGLang as a user runs them: a simulator process, a real Redis and a
worker process, jobs enqueued and followed with the `tokenwire` command, every event valid against
the published schema; and a model refusing logprobs, by the job's policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.e2e.clikit import SCHEMAS, TOKENWIRE, run, wait_until
from worker.redisproc import RedisServer

pytestmark = pytest.mark.e2e

MESSAGES = '[{"role":"system","content":"Be brief."},{"role":"user","content":"Name a river."}]'


@pytest.fixture
def env(redis_server: RedisServer, sim_port: int, tmp_path: Path) -> dict[str, str]:
    sim = f"http://127.0.0.1:{sim_port}"
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text(
        "block_seconds = 0.5\n"
        'default_provider = "local"\n'
        "[providers.local]\n"
        f'responses_url = "{sim}/v1/responses"\n'
        f'gemini_url = "{sim}/v1beta/models/{{model}}:streamGenerateContent?alt=sse"\n'
        f'sglang_url = "{sim}/generate?model={{model}}"\n'
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": redis_server.url,
        "TOKENWIRE_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=log, text=True)

    def started() -> bool:
        stats = run(env, "stats", "--json")
        return stats.returncode == 0 and json.loads(stats.stdout)["group_exists"]

    wait_until(started, 20, "the worker to create the consumer group")
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log.close()


def follow(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = run(env, "enqueue", *args, "--follow", "--json", "--timeout", "30")
    assert result.returncode in (0, 1), result.stderr  # 1: the job ended with an error
    _, *lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "event.schema.json").read_text()))
    for event in events:
        validator.validate(event)
    return events


CASES = [
    ("responses", "tokenwire/sim;tokens=20;per_chunk=3", ["--messages", MESSAGES]),
    ("gemini", "tokenwire/sim;tokens=20;per_chunk=2;split_top=1", ["--messages", MESSAGES]),
    ("sglang", "tokenwire/sim;tokens=20", ["--input", "Name a river."]),
    ("sglang", "tokenwire/sim;tokens=20;incremental=1;per_chunk=3", ["--input", "Name a river."]),
]


@pytest.mark.parametrize(
    ("api", "model", "prompt"), CASES, ids=["responses", "gemini", "sglang", "sglang-inc"]
)
def test_each_dialect_through_the_cli(
    api: str, model: str, prompt: list[str], env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    events = follow(env, "--model", model, "--api", api, *prompt, "--top-logprobs", "2")
    assert events[0]["type"] == "start" and events[0]["api"] == api
    done = events[-1]
    assert done["type"] == "done", done
    answer = [e for e in events if e["type"] == "token" and not e["special"] and e["channel"] == "content"]
    assert len(answer) == 20 and [e["index"] for e in answer] == list(range(20))
    assert all(e["logprob"] is not None and e["logprob"] <= 0 for e in answer)
    assert all(1 <= len(e["top_logprobs"]) <= 2 for e in answer)
    assert done["text"] == "".join(e["text"] for e in answer)
    assert done["logprobs_available"] is True and 0 < done["confidence"] <= 1


def test_a_model_refusing_logprobs_by_policy(env: dict[str, str], worker: subprocess.Popen[str]) -> None:
    model = "tokenwire/sim;tokens=8;nologprobs=1"
    events = follow(env, "--model", model, "--api", "responses", "--messages", MESSAGES)
    done = events[-1]
    assert done["type"] == "done" and done["logprobs_available"] is False
    assert "gives no logprobs" in done["logprobs_reason"]
    answer = [e for e in events if e["type"] == "token"]
    assert len(answer) == 8 and all(e["logprob"] is None for e in answer)
    required = follow(
        env, "--model", model, "--api", "gemini", "--messages", MESSAGES, "--logprobs", "required"
    )
    assert required[-1]["type"] == "error" and required[-1]["code"] == "logprobs_unsupported"
