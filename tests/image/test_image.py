"""The image, built and run without an engine: deploy/Dockerfile executed on a debootstrap root of the
release its base names (tools/image/), then run with chroot in its own namespaces as its user.

Slow (a cold run debootstraps the base): `make test-image` / `make test-slow`, not `make test`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.image.conftest import ROOT, TOKENWIRE
from tools.image import chroot
from tools.image.build import Image
from tools.image.run import Container
from worker.redisproc import RedisServer, free_port

pytestmark = [pytest.mark.slow_lane, pytest.mark.timeout(1200)]

USER = "10001:10001"

# Run inside the image (its venv's python, as root): what it holds, as JSON.
FACTS = r"""
import importlib.metadata, json, os, platform, pwd, stat, sys
def full(info):
    v = f"{info.major}.{info.minor}.{info.micro}"
    return v if info.releaselevel == "final" else v + info.releaselevel[0] + str(info.serial)
markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": full(sys.implementation.version),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}
writable = []
for top, dirs, files in os.walk("/opt/venv"):
    for name in dirs + files:
        st = os.lstat(os.path.join(top, name))
        if not stat.S_ISLNK(st.st_mode) and (st.st_uid != 0 or st.st_mode & 0o022):
            writable.append(os.path.join(top, name))
user = pwd.getpwuid(10001)
print(json.dumps({
    "distributions": sorted([d.metadata["Name"], d.version] for d in importlib.metadata.distributions()),
    "markers": markers,
    "executable": sys.executable,
    "writable": writable,
    "user": [user.pw_name, user.pw_gid, user.pw_dir, user.pw_shell],
    "present": [p for p in ("/src", "/opt/build", "/dist") if os.path.exists(p)],
}))
"""


def locked_runtime(markers: dict[str, str]) -> dict[str, str]:
    """requirements/runtime.txt's pins whose markers hold for the image's python, and the project."""
    pins: dict[str, str] = {}
    text = (ROOT / "requirements" / "runtime.txt").read_text()
    for match in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)[ \t]*(?:;([^\\\n]+))?", text, re.M):
        name, version, marker = match.groups()
        if marker is None or Marker(marker.strip()).evaluate(markers):
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins[canonicalize_name(project["name"])] = project["version"]
    return pins


@pytest.fixture
def container(lane_image: Image, tmp_path: Path) -> Iterator[Container]:
    box = Container(lane_image, tmp_path / "container")
    yield box
    leftover = chroot.mounts_under(box.scratch)
    box.remove()
    assert leftover == [], f"mounts left behind: {leftover}"


def run_in(box: Container, *args: str, entrypoint: list[str], user: str = "0:0") -> str:
    result = subprocess.run(
        box.command(*args, entrypoint=entrypoint, user=user),
        env=box.environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_image_holds_the_locked_runtime_and_nothing_else(lane_image: Image, container: Container) -> None:
    facts = json.loads(run_in(container, "-I", "-c", FACTS, entrypoint=["python"]))
    installed = {canonicalize_name(name): version for name, version in facts["distributions"]}
    # Exactly the lock's runtime pins and the wheel: no build backend, no uv, no simulator extras.
    assert installed == locked_runtime(facts["markers"])
    assert facts["executable"] == "/opt/venv/bin/python"
    assert facts["markers"]["python_version"] == "3.11"
    # The builder's tree, tools and wheel stay in the builder.
    assert facts["present"] == []
    # The runtime user cannot change the code it runs.
    assert facts["writable"] == []
    assert facts["user"] == ["tokenwire", 10001, "/nonexistent", "/usr/sbin/nologin"]
    config = lane_image.config
    assert config.user == USER
    assert lane_image.argv() == ["tokenwire", "worker"]
    assert config.env["PATH"].startswith("/opt/venv/bin:")
    assert config.env["TOKENWIRE_LOG_FORMAT"] == "json"
    assert config.stop_signal == "SIGTERM"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def status_fields(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


def processes_rooted_in(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                root = os.readlink(entry / "root")
            except OSError:
                continue
            if root == str(path) or root.startswith(f"{path}/"):
                found.append(int(entry.name))
    return found


def test_the_worker_in_the_image_is_ready_and_runs_a_job_from_the_simulator(
    lane_image: Image, container: Container, redis_server: RedisServer, sim_port: int, tmp_path: Path
) -> None:
    settings = tmp_path / "tokenwire.toml"
    settings.write_text(
        'default_provider = "local"\nblock_seconds = 0.5\n[providers.local]\n'
        f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n'
    )
    metrics_port = free_port()
    prefix = f"image-{uuid.uuid4().hex[:8]}"
    overrides = {
        "TOKENWIRE_REDIS_URL": redis_server.url,
        "TOKENWIRE_CONFIG": "/etc/tokenwire/tokenwire.toml",
        "TOKENWIRE_METRICS_PORT": str(metrics_port),
        "TOKENWIRE_PREFIX": prefix,
    }
    # docker run --network host -v settings:/etc/tokenwire/tokenwire.toml:ro -e ... IMAGE (its CMD: worker)
    binds = [chroot.Bind(settings, "/etc/tokenwire/tokenwire.toml")]
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            container.command(binds=binds), env=container.environment(overrides), stdout=log, stderr=log
        )
    try:
        readyz = f"http://127.0.0.1:{metrics_port}/readyz"

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited ({proc.returncode}):\n{log_path.read_text()}")
            return http_status(readyz) == 200

        wait_for(ready, 60, f"{readyz} to answer 200")
        pid1 = chroot.pid1(proc.pid)
        assert pid1 is not None
        status = status_fields(pid1)
        assert status["Uid"] == ["10001"] * 4 and status["Gid"] == ["10001"] * 4
        assert status["NSpid"][-1] == "1", "the entry point is PID 1 of the container"
        assert os.readlink(f"/proc/{pid1}/root") == str(container.scratch / "root")
        cmdline = Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")[:-1]
        assert cmdline[-2:] == [b"/opt/venv/bin/tokenwire", b"worker"]

        # The image's HEALTHCHECK, run in the image with the same environment, passes.
        health = lane_image.config.healthcheck
        assert health is not None
        check = Container(lane_image, tmp_path / "healthcheck")
        try:
            result = subprocess.run(
                check.command(*health[1:], entrypoint=health[:1]),
                env=check.environment(overrides),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            check.remove()
        assert result.returncode == 0, result.stderr

        # A job from the host ends with `done` on its event stream.
        host_env = {**os.environ, "TOKENWIRE_REDIS_URL": redis_server.url, "TOKENWIRE_PREFIX": prefix}
        enqueue = [TOKENWIRE, "enqueue", "--model", "tokenwire/sim;tokens=25", "--input", "from the image"]
        enqueue += ["--max-tokens", "64", "--follow", "--json", "--timeout", "60"]
        followed = subprocess.run(
            enqueue, env=host_env, capture_output=True, text=True, timeout=90, check=False
        )
        assert followed.returncode == 0, followed.stderr + log_path.read_text()
        job_id, *lines = followed.stdout.splitlines()
        events = [json.loads(line) for line in lines]
        assert events[0]["type"] == "start" and events[-1]["type"] == "done"
        assert {e["job_id"] for e in events} == {job_id}
        assert sum(e["type"] == "token" for e in events) >= 25

        # docker stop: SIGTERM to PID 1; the worker drains and exits 0.
        os.kill(pid1, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # The image logs JSON (TOKENWIRE_LOG_FORMAT=json): every line.
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    events_logged = [r.get("event") for r in records]
    assert "worker starting" in events_logged and "worker stopped" in events_logged
    assert processes_rooted_in(container.scratch) == []
