"""The package installs from a built wheel into a clean environment and runs from there."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, ROOT)
    (wheel,) = dist.glob("tokenwire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "worker/py.typed" in names and "worker/sim/server.py" in names
    assert not any(n.startswith("tests/") for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    # The wheel's own dependency ranges, resolved within the lock (hash-checked): what `make demo` runs.
    uv = Path(sys.executable).parent / "uv"
    sh(uv, "pip", "install", "--quiet", "--python", py, "-c", ROOT / "requirements" / "demo.txt", wheel)
    out = tmp_path / "schemas"
    sh(env_dir / "bin" / "tokenwire", "schema", "--dir", out)
    assert (out / "event.schema.json").read_text() == (ROOT / "schemas" / "event.schema.json").read_text()
    probe = "import worker, worker.sim, worker.demo, worker.cli; print(worker.__version__)"
    assert sh(py, "-c", probe, cwd=tmp_path).strip() == "0.1.0"
