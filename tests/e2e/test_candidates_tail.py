"""``tokenwire tail`` shows several candidates live (issue 16 §2), through the real command, a real
worker, Redis and the simulator: on a terminal (a pseudo-terminal of a set size, read through
:class:`~tests.e2e.screenkit.Screen`) a region redrawn in place, side by side when wide and one
after another when narrow; through a pipe each candidate's complete rows, prefixed ``[k]``; both
while the job is still running, which one stalled candidate makes certain: its ``done`` cannot
come before the worker's stall timeout. At the ``done`` the board with the winner marked; ``--json``
prints exactly the stored events."""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.events import Cancelled, Done, Error, decode_event
from worker.keys import Keys
from worker.redisproc import RedisServer

from .clikit import TOKENWIRE, run, wait_until
from .screenkit import Screen

pytestmark = pytest.mark.e2e

STALL_SECONDS = 5  # the worker's stall_timeout_seconds: the stalled candidate holds the done this long


@pytest.fixture
def redis_target(redis_server: RedisServer) -> tuple[str, bool]:
    """One redis-server: what is drawn does not depend on the Redis deployment."""
    return redis_server.url, False


@pytest.fixture
def stall_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "TOKENWIRE_STALL_TIMEOUT_SECONDS": str(STALL_SECONDS)}


@pytest.fixture
def worker(stall_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([TOKENWIRE, "worker"], env=stall_env, stdout=log, stderr=log, text=True)

    def started() -> bool:
        stats = run(stall_env, "stats", "--json")
        return stats.returncode == 0 and json.loads(stats.stdout)["group_exists"]

    wait_until(started, 20, "the worker to create the consumer group")
    yield proc
    proc.kill()
    proc.wait(timeout=10)
    log.close()


def enqueue(env: dict[str, str], job_id: str, model: str) -> None:
    """Three candidates; the first request for ``model`` stalls after 3 tokens (fail_first=1), the
    two others run at full speed."""
    out = run(
        env,
        "enqueue",
        "--id",
        job_id,
        "--model",
        f"{model};tokens=40;fault=stall;after=3;fail_first=1",
        "--input",
        "q",
        "--candidates",
        '{"n":3}',
    )
    assert out.returncode == 0, out.stderr


def terminal_written(env: dict[str, str], job_id: str) -> bool:
    """Whether the job's terminal event is on its stream (read from Redis, not from tail)."""
    return any(isinstance(decode_event(e), Done | Error | Cancelled) for e in stored(env, job_id))


def stored(env: dict[str, str], job_id: str) -> list[bytes]:
    """The job's events as stored on its stream."""
    client = redis.Redis.from_url(env["TOKENWIRE_REDIS_URL"])
    try:
        entries: Any = client.xrange(Keys(env["TOKENWIRE_PREFIX"]).events(job_id))
    finally:
        client.close()
    return [fields[b"event"] for _, fields in entries]


def tail_on_a_terminal(
    env: dict[str, str], job_id: str, width: int, height: int, seen_live: object
) -> tuple[Screen, str | None, bool]:
    """Run ``tokenwire tail`` on a pseudo-terminal of ``width`` x ``height``. Returns the final
    screen, the screen's text at the first moment ``seen_live(screen)`` held, and whether the job's
    terminal event was on its stream then."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    child_env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    child_env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [TOKENWIRE, "tail", job_id, "--timeout", "60"],
        env=child_env,
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    os.close(slave)
    screen = Screen(width, height)
    decoder = codecs.getincrementaldecoder("utf-8")()
    live_text: str | None = None
    terminal_then = False
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen.feed(decoder.decode(chunk))
            if live_text is None and callable(seen_live) and seen_live(screen):
                live_text = screen.text()
                terminal_then = terminal_written(env, job_id)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
        assert proc.stderr is not None
        proc.stderr.close()
    return screen, live_text, terminal_then


def two_done_one_streaming(screen: Screen) -> bool:
    text = screen.text()
    return text.count(": done, conf ") == 2 and "tokens..." in text and "✓ done" not in text


@pytest.mark.parametrize("width", [120, 50])
def test_tail_draws_candidates_live_on_a_terminal(
    stall_env: dict[str, str], worker: subprocess.Popen[str], width: int
) -> None:
    job_id = f"live-{width}"
    enqueue(stall_env, job_id, f"tokenwire/sim-{width}")
    screen, live_text, terminal_then = tail_on_a_terminal(
        stall_env, job_id, width, 30, two_done_one_streaming
    )
    assert live_text is not None, screen.text()
    assert not terminal_then  # shown while the job was still running
    rows = live_text.splitlines()
    region = rows[next(i for i, r in enumerate(rows) if r.startswith("candidate ")) :]
    assert all(len(row) < width for row in region)  # the start line above it may wrap
    heads = [(i, row) for i, row in enumerate(rows) if "candidate " in row and ":" in row]
    if width == 120:  # side by side: one row of headings, the candidates' first rows below it
        (i, row) = next((i, r) for i, r in heads if r.count("candidate ") == 3)
        assert row.index("candidate 0:") < row.index("candidate 1:") < row.index("candidate 2:")
        assert rows[i + 1].count(" │ ") == 2 and len(rows[i + 1].split(" │ ")[0].strip()) > 0
    else:  # one after another: a heading per candidate, its text indented below it
        live_heads = [(i, r) for i, r in heads if r.startswith("candidate ")]
        assert [r.split(":")[0] for _, r in live_heads][-3:] == ["candidate 0", "candidate 1", "candidate 2"]
        assert all(rows[i + 1].startswith("    ") and rows[i + 1].strip() for i, _ in live_heads[-3:])
    streaming = next(r for _, r in heads if "tokens..." in r)
    assert "3 tokens..." in streaming  # the stalled one: 3 tokens, then nothing
    # the end: the region gave way to the board; the stalled candidate failed, the winner marked
    final = screen.text()
    assert "tokens..." not in final and "✓ done (" in final
    assert "★ candidate" in final and "failed [upstream_stalled]" in final
    assert final.count("candidate 0:") == 1  # the board's alone: no live heading left


def test_tail_through_a_pipe_prints_each_candidates_rows_as_they_come(
    stall_env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    job_id = "live-pipe"
    enqueue(stall_env, job_id, "tokenwire/sim-pipe")
    env = {**stall_env, "COLUMNS": "60"}
    proc = subprocess.Popen(
        [TOKENWIRE, "tail", job_id, "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    data = b""
    live_lines: list[str] | None = None
    terminal_then = True
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            lines = data.decode("utf-8", "replace").splitlines()
            if (
                live_lines is None
                and sum(" done (" in line for line in lines) == 2
                and "✓ done" not in data.decode()
            ):
                live_lines = lines
                terminal_then = terminal_written(env, job_id)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert live_lines is not None, data.decode()
    assert not terminal_then  # printed while the job was still running
    assert "\x1b[" not in data.decode()  # no cursor movement on a pipe
    finished = [
        line.split()[1] for line in live_lines if line.startswith("  candidate ") and " done (" in line
    ]
    for k in finished:  # each finished candidate's rows, complete, before its line
        rows = [line for line in live_lines if line.startswith(f"[{k}] ")]
        assert len(rows) >= 2 and all(len(r) < 60 for r in rows)
        close = live_lines.index(next(x for x in live_lines if x.startswith(f"  candidate {k} done (")))
        assert all(live_lines.index(r) < close for r in rows)
    out = data.decode()
    assert "✓ done (" in out and "★ candidate" in out and "failed [upstream_stalled]" in out
    # a narrow terminal: the board one candidate after another
    board = out.split("3 candidates, agreement", 1)[1].splitlines()
    assert sum(1 for line in board if ": rank " in line) == 2 and all(
        line.count("candidate ") <= 1 for line in board
    )
    # --json: exactly the stored events, one object per line
    again = run(env, "tail", job_id, "--json", "--timeout", "10")
    assert again.stdout.encode().splitlines() == stored(env, job_id)
