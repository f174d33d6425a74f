"""Routing without length bias through the command line (issue 13 §4): ``tokenwire enqueue
--escalate`` to a real worker process and the simulator, single Redis and Cluster. The same long
confident answer with one low window stays on the cheap model by ``confidence`` and moves to the
stronger one by ``window_min``; a signal the job cannot use is refused before anything is enqueued."""

from __future__ import annotations

import json
import math
import subprocess
from typing import Any

from .clikit import run

LONG = "tokenwire/sim-cheap;tokens=200;lp=-0.01;low_at=100;low_run=8;low_lp=-2.0"
STRONG = "tokenwire/sim-strong;tokens=12"


def follow(env: dict[str, str], escalate: dict[str, Any]) -> list[dict[str, Any]]:
    out = run(
        env,
        "enqueue",
        "--model",
        LONG,
        "--input",
        "q",
        "--escalate",
        json.dumps(escalate),
        "--follow",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()[1:]]


def test_window_min_escalates_where_confidence_does_not(
    env: dict[str, str], worker_proc: subprocess.Popen[str]
) -> None:
    plain = follow(env, {"model": STRONG, "below": 0.5})
    done = plain[-1]
    assert [e["model"] for e in plain if e["type"] == "start"] == [LONG]
    assert done["type"] == "done" and done["escalation"] is None and done["confidence"] > 0.9
    assert math.isclose(done["summary"]["window_min"], -2.0) and done["summary"]["window"] == 8

    routed = follow(env, {"model": STRONG, "below": 0.5, "signal": "window_min", "window": 8})
    starts = [e for e in routed if e["type"] == "start"]
    assert [s["model"] for s in starts] == [LONG, STRONG]
    assert starts[1]["reason"].startswith(f"window_min {math.exp(-2.0):.4f} < 0.5 at the end (201 tokens)")
    done = routed[-1]
    assert done["type"] == "done" and done["attempt"] == 2
    assert math.isclose(done["escalation"]["summary"]["window_min"], -2.0)


def test_bad_escalate_options_are_refused(env: dict[str, str]) -> None:
    def enqueue(escalate: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(env, "enqueue", "--model", LONG, "--input", "q", "--escalate", escalate, *extra)

    margin = enqueue('{"model": "b", "below": 0.5, "signal": "margin"}')
    assert margin.returncode == 2 and "needs top-k alternatives: set params.top_logprobs" in margin.stderr
    q = enqueue('{"model": "b", "below": 0.5, "q": 0.2}')
    assert q.returncode == 2 and "escalate.q is the quantile of escalate.signal 'quantile'" in q.stderr
    unknown = enqueue('{"model": "b", "below": 0.5, "signal": "median"}')
    assert unknown.returncode == 2 and "Invalid enum value 'median'" in unknown.stderr
    not_json = enqueue("{")
    assert not_json.returncode == 2 and "--escalate:" in not_json.stderr
    ok = enqueue(
        '{"model": "b", "below": 0.5, "signal": "margin"}', "--top-logprobs", "2", "--api", "completions"
    )
    assert ok.returncode == 0, ok.stderr  # enqueued: the worker is not running, nothing follows
