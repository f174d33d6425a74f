"""Several candidates through the command line (issue 16 §2): ``tokenwire enqueue --candidates``
to a real worker and the simulator, ``tail --json`` (every event as stored: each token with its
``candidate``, one ``candidate_done`` each, the winner's ``done``) and ``tail`` (the candidates side
by side on a wide terminal, one after another on a narrow one, the winner marked), a failing
candidate, and the refusals' exit codes. Single Redis and Cluster."""

from __future__ import annotations

import json
import subprocess

from .clikit import run


def test_candidates_through_tail(env: dict[str, str], worker_proc: subprocess.Popen[str]) -> None:
    out = run(
        env,
        "enqueue",
        "--id",
        "c1",
        "--model",
        "tokenwire/sim;tokens=6",
        "--input",
        "q",
        "--candidates",
        '{"n":3,"rank_by":"cum_logprob"}',
        "--follow",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()[1:]]
    done = events[-1]
    assert done["type"] == "done" and len(done["candidates"]) == 3 and 0 < done["agreement"] <= 1
    tokens = [e for e in events if e["type"] == "token"]
    assert {t["candidate"] for t in tokens} == {0, 1, 2}
    assert [e["candidate"] for e in events if e["type"] == "candidate_done"] != []
    winner = next(c for c in done["candidates"] if c["rank"] == 1)
    assert done["text"] == winner["text"]
    for k in range(3):
        mine = [t for t in tokens if t["candidate"] == k]
        assert [t["index"] for t in mine] == list(range(len(mine)))
        text = done["candidates"][k]["text"]
        assert "".join(t["text"] for t in mine if not t["special"]) == text
    # the same events, as a person reads them, on a wide terminal: side by side
    wide = run({**env, "COLUMNS": "200"}, "tail", "c1", "--timeout", "10")
    assert wide.returncode == 0 and "skipping" not in wide.stderr, wide.stderr
    assert "3 candidates, agreement" in wide.stdout
    board = wide.stdout.split("3 candidates, agreement", 1)[1].splitlines()
    assert "★ candidate" in board[1] and board[1].count("candidate ") == 3  # one row of headings
    assert f"★ candidate {winner['index']}: rank 1" in wide.stdout
    for k in range(3):
        assert f"candidate {k} done (" in wide.stdout
    # a narrow terminal: one after another
    narrow = run({**env, "COLUMNS": "40"}, "tail", "c1", "--timeout", "10")
    assert narrow.returncode == 0
    headings = [line for line in narrow.stdout.splitlines() if "candidate" in line and ": rank" in line]
    assert len(headings) == 3 and sum("★" in h for h in headings) == 1
    # --json unchanged in shape: exactly the stored events
    again = run(env, "tail", "c1", "--json", "--timeout", "10")
    assert [json.loads(line) for line in again.stdout.splitlines()] == events


def test_a_failing_candidate_and_refusals(env: dict[str, str], worker_proc: subprocess.Popen[str]) -> None:
    out = run(
        env,
        "enqueue",
        "--model",
        "tokenwire/sim;tokens=4;fault=status;status=400;fail_first=1",
        "--input",
        "q",
        "--candidates",
        '{"n":2}',
        "--follow",
    )
    assert out.returncode == 0, out.stderr
    assert "failed [" in out.stdout and "★ candidate" in out.stdout
    bad = run(env, "enqueue", "--model", "m", "--input", "q", "--candidates", '{"n":9}')
    assert bad.returncode == 2 and "n" in bad.stderr
    unknown = run(
        env, "enqueue", "--model", "m", "--input", "q", "--candidates", '{"n":2,"rank_by":"length"}'
    )
    assert unknown.returncode == 2 and "rank_by" in unknown.stderr
