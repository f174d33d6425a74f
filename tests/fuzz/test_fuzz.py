"""The fuzz lane, bounded (``make fuzz``): each target of :mod:`tests.fuzz.targets` for a few
seconds, under atheris when it is installed (coverage-guided, from the committed seeds), else under
hypothesis (it says which). Not a lane directory, so marked here: ``slow_lane``, never the gate.
The committed seeds themselves are replayed by the unit lane (``test_upstream_hostile.py``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

pytestmark = [pytest.mark.slow_lane, pytest.mark.slow]

SECONDS = int(os.environ.get("TOKENWIRE_FUZZ_SECONDS", "10"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_target_survives_a_bounded_fuzzing_run(target: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", f"tests.fuzz.{target}", f"-max_total_time={SECONDS}", "-timeout=10"],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=SECONDS * 3 + 60,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    engine = "atheris" if importlib.util.find_spec("atheris") is not None else "hypothesis"
    assert f"{target}: {engine}" in output or f"{target}: atheris is not installed" in output, output[-2000:]
