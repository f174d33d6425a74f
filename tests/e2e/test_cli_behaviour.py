"""The CLI behaves like the tools people know: global flags, exit codes by outcome, quiet broken
pipes, NO_COLOR, --version. Real `tokenwire` processes, a private redis-server, the simulator."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.clikit import TOKENWIRE, run, wait_until
from worker.redisproc import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW = "tokenwire/sim;tps=20;tokens=400"


@pytest.fixture(params=["single"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """These behaviours are the CLI's own: one single-node Redis is enough."""
    return str(request.getfixturevalue("redis_server").url), False


def test_version_and_help_for_every_option() -> None:
    version = run({}, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "tokenwire 0.1.0"
    worker_help = run({}, "worker", "--help").stdout
    for flag in ("--redis-url", "--config", "--prefix", "--concurrency", "--metrics-port", "exit codes:"):
        assert flag in worker_help


def test_exit_codes_follow_the_terminal_event(env: dict[str, str], worker_proc: object) -> None:
    done = run(
        env, "enqueue", "--model", "tokenwire/sim;tokens=3", "--input", "x", "--follow", "--timeout", "30"
    )
    assert done.returncode == 0, done.stderr
    failed = run(
        env, "enqueue", "--model", "tokenwire/sim;fault=status;status=400", "--input", "x",
        "--follow", "--json", "--timeout", "30",
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout.splitlines()[-1])["type"] == "error"
    assert run(env, "tail", failed.stdout.splitlines()[0], "--timeout", "10").returncode == 1

    follower = subprocess.Popen(
        [TOKENWIRE, "enqueue", "--model", SLOW, "--input", "x", "--follow", "--json", "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None
    job_id = follower.stdout.readline().strip()
    assert '"type":"start"' in follower.stdout.readline()  # running, so the cancel reaches its worker
    assert run(env, "cancel", job_id).returncode == 0
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 5, err
    assert json.loads(out.splitlines()[-1])["type"] == "cancelled"
    assert run(env, "tail", job_id, "--timeout", "10").returncode == 5


def test_flags_win_over_variables_and_the_file(env: dict[str, str], tmp_path: Path) -> None:
    real_url, real_prefix = env["TOKENWIRE_REDIS_URL"], env["TOKENWIRE_PREFIX"]
    queued = run(env, "enqueue", "--model", "m", "--input", "x")
    job_id = queued.stdout.strip()
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    wrong = {**env, "TOKENWIRE_REDIS_URL": dead_url, "TOKENWIRE_PREFIX": "someone-else"}
    # before or after the command name
    for args in (
        ["--redis-url", real_url, "--prefix", real_prefix, "status", job_id],
        ["status", job_id, "--redis-url", real_url, "--prefix", real_prefix],
    ):
        result = run(wrong, *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "queued"
    unreachable = run({**env, "TOKENWIRE_PREFIX": real_prefix}, "--redis-url", dead_url, "status", job_id)
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1

    config = tmp_path / "other.toml"
    config.write_text(f'redis_url = "{real_url}"\nprefix = "{real_prefix}"\n')
    bare = {k: v for k, v in env.items() if not k.startswith("TOKENWIRE_")}
    from_file = run(bare, "--config", str(config), "status", job_id)
    assert from_file.returncode == 0 and json.loads(from_file.stdout)["state"] == "queued"
    missing = run(bare, "--config", str(tmp_path / "nope.toml"), "status", job_id)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_a_closed_pipe_ends_quietly(env: dict[str, str], worker_proc: object) -> None:
    """`tokenwire tail --json ID | head -1`: no traceback, no 'Broken pipe', exit 141."""
    job_id = run(env, "enqueue", "--model", SLOW, "--input", "x").stdout.strip()
    tail = subprocess.Popen(
        [TOKENWIRE, "tail", job_id, "--json", "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert tail.stdout is not None and tail.stderr is not None
    assert tail.stdout.readline().startswith(b"{")
    tail.stdout.close()  # what `head -1` does after its line
    assert tail.wait(timeout=60) == 141
    with tail.stderr:
        assert tail.stderr.read() == b""
    run(env, "cancel", job_id)


def _tail_on_a_terminal(env: dict[str, str], job_id: str) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [TOKENWIRE, "tail", job_id, "--timeout", "30"], env=env, stdout=follower, stderr=subprocess.PIPE
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    proc.stderr.close()
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_with_no_color(env: dict[str, str], worker_proc: object) -> None:
    job_id = run(env, "enqueue", "--model", "tokenwire/sim;tokens=8", "--input", "x").stdout.strip()
    assert run(env, "tail", job_id, "--timeout", "30").returncode == 0
    assert "\x1b[" in _tail_on_a_terminal(env, job_id)
    assert "\x1b[" not in _tail_on_a_terminal({**env, "NO_COLOR": "1"}, job_id)
    piped = run(env, "tail", job_id, "--timeout", "30").stdout
    assert "\x1b[" not in piped and "✓ done" in piped


def test_tail_skips_event_types_it_does_not_know_and_says_so_once(
    env: dict[str, str], worker_proc: object
) -> None:
    """A stream written by a newer worker (here: `claim` events between the tokens) still tails."""
    import redis as redis_sync

    job_id = run(env, "enqueue", "--model", "tokenwire/sim;tokens=4", "--input", "x").stdout.strip()
    lines = run(env, "tail", job_id, "--json", "--timeout", "30").stdout.splitlines()
    newer = f"{job_id}-newer"
    segment = json.dumps({"type": "claim", "job_id": newer, "attempt": 1, "index": 0, "band": "high"})
    client = redis_sync.Redis.from_url(env["TOKENWIRE_REDIS_URL"])
    prefix = env["TOKENWIRE_PREFIX"]
    with client:
        client.hset(f"{prefix}:job:{{{newer}}}", mapping={"state": "done", "attempt": "1"})
        for n, line in enumerate([*lines[:-1], segment, segment, lines[-1]], start=1):
            client.xadd(f"{prefix}:job:{{{newer}}}:events", {"event": line}, id=f"1-{n}")
    pretty = run(env, "tail", newer, "--timeout", "10")
    assert pretty.returncode == 0, pretty.stderr
    assert "✓ done" in pretty.stdout
    assert pretty.stderr.count("skipping events of type 'claim'") == 1
    as_json = run(env, "tail", newer, "--json", "--timeout", "10")
    assert as_json.returncode == 0 and as_json.stdout.count('"type": "claim"') == 2


def test_a_worker_whose_redis_is_down_keeps_saying_so_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env["TOKENWIRE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    with log.open("w") as out:
        worker = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=out, stderr=out)
        try:

            def retries() -> int:
                return log.read_text().count("could not create the consumer group; retrying")

            wait_until(lambda: retries() >= 6, 60, "six retry warnings")  # not only the first lines
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)
    assert code == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    warned = [r for r in records if r["event"] == "could not create the consumer group; retrying"]
    assert all("Connection refused" in r["error"] and r["retry_in"] <= 2.0 for r in warned)
    assert records[-1]["event"] == "worker stopped"
