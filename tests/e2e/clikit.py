"""Helpers for driving the `tokenwire` command as a user does (real processes, bounded waits)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
