"""Child processes of one benchmark run: start them in their own process groups, read their CPU time
and peak RSS from ``/proc``, and always stop them (SIGTERM to the group, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["Child", "ProcessSet", "cpu_seconds", "machine_busy_seconds", "peak_rss_bytes", "wait_until"]

_TICKS = os.sysconf("SC_CLK_TCK")
_STOP_GRACE = 3.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0.0 once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces: cut after it
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def machine_busy_seconds() -> float:
    """CPU time all cores have spent running processes since boot (``/proc/stat``: user, nice,
    system, steal; interrupt time, loopback networking's softirq included, is left out)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0
    ticks = [int(v) for v in first.split()[1:9]]  # user nice system idle iowait irq softirq steal
    user, nice, system, steal = ticks[0], ticks[1], ticks[2], ticks[7]
    return (user + nice + system + steal) / _TICKS


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of ``pid`` (``VmHWM``), 0 when unknown."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


class Child:
    """One child process in its own session (so its whole group can be signalled)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path, watched: bool = True) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.watched = watched  # must run until stopped (a profiler ends on its own)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, size: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-size:]
        return ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = _STOP_GRACE) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; always reaps the process."""
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        self.signal(signal.SIGKILL)  # leftovers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)


class ProcessSet:
    """The children of one run, stopped together (newest first) by :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *, watched: bool = True
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        child = Child(name, process, log, watched)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if child.watched and not child.alive():
                raise RuntimeError(
                    f"{child.name} exited early ({child.process.returncode}):\n{child.log_tail()}"
                )

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
