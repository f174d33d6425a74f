"""Fixtures of the image lane: a snapshot of the build context, the image built from it, a simulator."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.image.build import Image, load
from tools.image.context import snapshot
from worker.redisproc import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")
BUILD_TIMEOUT = 900  # a cold run debootstraps the base first (about 1.5 min here), then builds


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What `docker build -f deploy/Dockerfile .` would send, copied once: every build here reads it."""
    dest = tmp_path_factory.mktemp("context")
    dockerfile = snapshot(ROOT / "deploy" / "Dockerfile", ROOT, dest)
    yield dockerfile
    shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(scope="session")
def lane_image(build_context: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """deploy/Dockerfile built by the lane (``python -m tools.image build``), as `make test-image` does."""
    out = tmp_path_factory.mktemp("image")
    cmd = [sys.executable, "-m", "tools.image", "build", "--dockerfile", str(build_context)]
    cmd += ["--context", str(build_context.parents[1]), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        pytest.fail(f"the image lane could not build deploy/Dockerfile:\n{result.stderr[-6000:]}")
    yield load(out)
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def sim_port() -> Iterator[int]:
    """`tokenwire sim` on the host, on a free loopback port, flat out."""
    port = free_port()
    proc = subprocess.Popen(
        [TOKENWIRE, "sim", "--host", "127.0.0.1", "--port", str(port), "--tps", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
