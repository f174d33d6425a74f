"""The review queue through the command line, as a user runs it: ``tokenwire enqueue --review`` to a
real worker, ``segment`` events and ``done.verdict`` in ``tail --json``, then ``tokenwire review
list``, ``take`` and ``resolve`` (feedback recorded, the entry gone from the list), with the refusals'
exit codes. Single Redis and Cluster."""

from __future__ import annotations

import json
import subprocess

from .clikit import run, wait_until

MODEL = "tokenwire/sim;tokens=40"
ALL_LOW = json.dumps({"unit": "sentence", "publish_above": 0.0, "review_below": -0.01})


def test_review_list_take_and_resolve(env: dict[str, str], worker_proc: subprocess.Popen[str]) -> None:
    for job_id in ("r1", "r2"):
        out = run(
            env,
            "enqueue",
            "--id",
            job_id,
            "--model",
            MODEL,
            "--input",
            "q",
            "--review",
            ALL_LOW,
            "--follow",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()[1:]]
        segments = [e for e in events if e["type"] == "segment"]
        done = events[-1]
        assert done["type"] == "done" and segments and "".join(s["text"] for s in segments) == done["text"]
        assert done["verdict"]["decision"] == "review" and done["verdict"]["n_low"] >= 1
    # the review entry follows the done (it is written before the job's entry is acknowledged)
    wait_until(lambda: len(run(env, "review", "list", "--json").stdout.splitlines()) == 2, 30, "2 on review")
    pretty = run(env, "tail", "r1", "--timeout", "10")  # segments are known: nothing is "skipped"
    assert pretty.returncode == 0 and "skipping" not in pretty.stderr and "✓ done" in pretty.stdout
    listed = run(env, "review", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["item"]["job_id"] for r in rows] == ["r1", "r2"] and all(r["taken_by"] is None for r in rows)
    assert all(r["item"]["low_segments"] for r in rows)
    taken = run(env, "review", "take", "--consumer", "ana")
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.startswith("r1  tokenwire/sim;tokens=40  ") and "taken by ana" in taken.stdout
    assert "low segment" in taken.stdout and "segment 0 chars [0," in taken.stdout
    shown = run(env, "review", "list")
    assert shown.returncode == 0 and "taken by ana" in shown.stdout.splitlines()[0]
    claimed = run(env, "review", "take", "--consumer", "cy", "--claim-idle", "0")  # ana left it
    assert claimed.returncode == 0 and claimed.stdout.startswith("r1  ") and "taken by cy" in claimed.stdout
    resolved = run(env, "review", "resolve", "r1", "--incorrect", "--note", "wrong year")
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.startswith("r1: resolved as incorrect (feedback ")
    rest = run(env, "review", "list", "--json")
    assert [json.loads(line)["item"]["job_id"] for line in rest.stdout.splitlines()] == ["r2"]
    everything = run(env, "review", "list", "--all", "--json")
    assert [json.loads(line)["resolved"] for line in everything.stdout.splitlines()] == ["incorrect", None]
    assert run(env, "review", "resolve", "r2", "--correct").returncode == 0
    assert run(env, "review", "take", "--consumer", "bo").stdout.strip() == "nothing to review"
    assert run(env, "review", "list").stdout.strip() == "no jobs to review"


def test_review_refusals(env: dict[str, str], worker_proc: subprocess.Popen[str]) -> None:
    unknown = run(env, "review", "resolve", "never-reviewed", "--correct")
    assert unknown.returncode == 4 and "no review entry for job 'never-reviewed'" in unknown.stderr
    no_verdict = run(env, "review", "resolve", "x")
    assert no_verdict.returncode == 2 and "--correct or --incorrect" in no_verdict.stderr
    stray = run(env, "review", "list", "x")
    assert stray.returncode == 2 and "takes no job id" in stray.stderr
    idle = run(env, "review", "list", "--claim-idle", "5")
    assert idle.returncode == 2 and "--claim-idle is for review take" in idle.stderr
    count = run(env, "review", "take", "--count", "0")
    assert count.returncode == 2 and "--count 0" in count.stderr
    bad = run(env, "enqueue", "--model", MODEL, "--input", "q", "--review", '{"review_below": -0.1}')
    assert bad.returncode == 2 and "review_below (-0.1) is above review.publish_above (-0.5)" in bad.stderr
    not_json = run(env, "enqueue", "--model", MODEL, "--input", "q", "--review", "{")
    assert not_json.returncode == 2 and "--review:" in not_json.stderr
