"""deploy/Dockerfile built by a real engine (podman), where one can run.

From its default base, the build needs the base image's registry (Docker Hub): where that (or podman
itself) cannot work, the test skips and its message quotes podman's error. From a locally made base (the
lane's debootstrap stand-in, imported with `podman import`), podman builds the Dockerfile with no registry
at all, and the filesystem and config it produces must be the ones the image lane builds.

Podman runs the build's RUN steps with buildah's chroot isolation: it needs no OCI runtime or cgroup
setup (crun refuses this machine's hybrid cgroups). Slow: `make test-image` / `make test-slow`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.image.filesystems import changes, of_overlay, of_tar, of_tree
from tools.image.build import Image

pytestmark = [pytest.mark.slow_lane, pytest.mark.timeout(1200)]

TIMEOUT = 900


@pytest.fixture(scope="module")
def podman() -> str:
    found = shutil.which("podman")
    if found is None:
        pytest.skip("podman is not installed (`make test-image` installs it with apt-get)")
    return found


def engine_error(result: subprocess.CompletedProcess[str]) -> str:
    """podman's own error line (the last ``Error: ...``), else the end of what it printed."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    return errors[-1] if errors else "\n".join(lines[-5:])


def ran_an_instruction(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether podman got past the first FROM: then a failure is the Dockerfile's, not the machine's."""
    return re.search(r"STEP ([2-9]|\d\d+)/", result.stdout + result.stderr) is not None


def build(podman: str, dockerfile: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    context = dockerfile.parents[1]
    cmd = [podman, "build", "--isolation", "chroot", "--network", "host", "--format", "docker"]
    cmd += ["--layers=false", "--ignorefile", str(dockerfile.with_name("Dockerfile.dockerignore"))]
    cmd += ["-f", str(dockerfile), "-t", tag, *extra, str(context)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def remove_image(podman: str, reference: str) -> None:
    subprocess.run([podman, "rmi", "--force", reference], capture_output=True, timeout=120, check=False)


def check_built(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode == 0:
        return
    if not ran_an_instruction(result):
        pytest.skip(f"podman cannot build deploy/Dockerfile here ({what}): {engine_error(result)}")
    pytest.fail(
        f"podman build of deploy/Dockerfile failed ({what}):\n{(result.stdout + result.stderr)[-5000:]}"
    )


def inspect(podman: str, reference: str) -> dict[str, Any]:
    out = subprocess.run(
        [podman, "image", "inspect", reference], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    value = json.loads(out)[0]
    assert isinstance(value, dict)
    return value


def test_podman_builds_the_dockerfile_from_its_default_base(podman: str, build_context: Path) -> None:
    tag = f"localhost/tokenwire-image-lane:{uuid.uuid4().hex[:8]}"
    try:
        result = build(podman, build_context, tag)
        check_built(result, "its default base")
        config = inspect(podman, tag)["Config"]
        assert config["Entrypoint"] == ["tokenwire"] and config["Cmd"] == ["worker"]
        assert config["User"] == "10001:10001"
    finally:
        remove_image(podman, tag)


@pytest.fixture
def local_base(podman: str, lane_image: Image) -> Iterator[str]:
    """The lane's debootstrap stand-in as a podman image: the `locally made base` of the Dockerfile."""
    reference = f"localhost/tokenwire-image-lane-base:{uuid.uuid4().hex[:8]}"
    meta = json.loads((lane_image.base.parent / "base.json").read_text())
    changes_args = [arg for key, value in meta["env"].items() for arg in ("--change", f"ENV {key}={value}")]
    tar = subprocess.Popen(["tar", "-C", str(lane_image.base), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            [podman, "import", *changes_args, "-", reference],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(timeout=60)
    if imported.returncode != 0:
        pytest.skip(f"podman cannot import a base image here: {engine_error(imported)}")
    yield reference
    remove_image(podman, reference)


def test_podman_from_the_local_base_builds_what_the_lane_builds(
    podman: str, build_context: Path, lane_image: Image, local_base: str
) -> None:
    tag = f"localhost/tokenwire-image-lane:{uuid.uuid4().hex[:8]}"
    name = f"tokenwire-image-lane-{uuid.uuid4().hex[:8]}"
    try:
        # The build network the lane gives RUN steps: the host's network and CA store, read-only.
        result = build(
            podman,
            build_context,
            tag,
            "--build-arg",
            f"BASE={local_base}",
            "--volume",
            "/etc/ssl/certs:/etc/ssl/certs:ro",
        )
        check_built(result, "the local base")
        described = inspect(podman, tag)
        config = described["Config"]
        lane = lane_image.config
        assert dict(item.split("=", 1) for item in config["Env"]) == lane.env
        assert config["User"] == lane.user
        assert config["Entrypoint"] == lane.entrypoint and config["Cmd"] == lane.cmd
        assert sorted(config["ExposedPorts"]) == [f"{port}/tcp" for port in lane.exposed]
        assert config["StopSignal"] == lane.stop_signal
        healthcheck = config.get("Healthcheck") or described.get("Healthcheck")
        assert healthcheck is not None, sorted(described)
        assert healthcheck["Test"] == ["CMD", *(lane.healthcheck or [])]

        subprocess.run([podman, "create", "--name", name, tag], capture_output=True, timeout=120, check=True)
        export = subprocess.Popen([podman, "export", name], stdout=subprocess.PIPE)
        assert export.stdout is not None
        try:
            engine_fs = of_tar(export.stdout)
        finally:
            export.stdout.close()
            assert export.wait(timeout=300) == 0
        base = of_tree(lane_image.base)
        engine_changes = changes(base, engine_fs)
        lane_changes = changes(base, of_overlay(base, lane_image.layers))
        assert "/opt/venv/bin/tokenwire" in lane_changes
        only = {"engine": sorted(set(engine_changes) - set(lane_changes))}
        only["lane"] = sorted(set(lane_changes) - set(engine_changes))
        assert only == {"engine": [], "lane": []}
        differ = sorted(k for k in engine_changes if engine_changes[k] != lane_changes[k])
        assert differ == [], [(k, engine_changes[k], lane_changes[k]) for k in differ[:5]]
    finally:
        subprocess.run([podman, "rm", "--force", name], capture_output=True, timeout=120, check=False)
        remove_image(podman, tag)
