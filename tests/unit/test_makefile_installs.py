"""The Makefile installs the system packages a fresh machine lacks (redis-server, chromium): its
recipes run as root (no sudo: CI containers) and as a user (through sudo). Each recipe is taken from
``make -n`` and run by /bin/sh on a PATH of fakes that record what apt-get was asked and with which
environment (``$SUDO DEBIAN_FRONTEND=… apt-get`` ran ``DEBIAN_FRONTEND=…`` as a command as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _recipe(target: str) -> str:
    assert MAKE is not None
    # the recipe as a make of its own prints it, whatever make runs the suite (``make -C DIR test``
    # passes --print-directory down: its "make[1]: Entering directory" lines are no shell)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        [MAKE, "-s", "-n", "-B", "--no-print-directory", "-C", str(ROOT), target],
        capture_output=True, text=True, timeout=30, check=True, env=env,
    )  # fmt: skip
    return result.stdout


def _fakes(tmp_path: Path, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    scripts = {
        "id": f"#!/bin/sh\necho {uid}\n",
        "apt-get": f'#!/bin/sh\necho "$DEBIAN_FRONTEND|$*" >> {log}\n',
        "sudo": "#!/bin/sh\necho sudo >> "
        + str(tmp_path / "sudo.log")
        + '\nexec env "$@"\n',  # sudo, too, takes VAR=value first
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    env = shutil.which("env")
    assert env is not None
    (bin_dir / "env").symlink_to(env)
    return bin_dir


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user"])
@pytest.mark.parametrize(
    ("target", "packages"), [("redis-server", "redis-server"), ("chromium", "chromium chromium-driver")]
)
def test_a_missing_package_is_installed_non_interactively(
    tmp_path: Path, uid: int, target: str, packages: str
) -> None:
    bin_dir = _fakes(tmp_path, uid)
    result = subprocess.run(
        ["/bin/sh", "-c", _recipe(target)],
        env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].endswith("|update -qq")
    assert calls[1] == f"noninteractive|install -y -qq {packages}"
    used_sudo = (tmp_path / "sudo.log").exists()
    assert used_sudo == (uid != 0)
