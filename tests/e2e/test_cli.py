"""The CLI as a user types it: real `tokenwire` processes, a private redis-server, the simulator."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.e2e.clikit import SCHEMAS, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


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
