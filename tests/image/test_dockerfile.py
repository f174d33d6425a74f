"""The image lane's parts that need no root and no network: the Dockerfile reader, .dockerignore rules,
the choice of base and mirror, path resolution inside an image, and the runtime lock it installs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tools.image.base import AptSource, BaseError, apt_sources, spec_of
from tools.image.build import in_root
from tools.image.context import Ignore, snapshot
from tools.image.dockerfile import DockerfileError, expand, parse

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def test_the_dockerfile_pulls_nothing_but_its_base_and_the_base_is_an_arg() -> None:
    parsed = parse(DOCKERFILE.read_text())
    assert parsed.global_args["BASE"] == "python:3.11-slim-bookworm"
    assert [(s.base, s.name) for s in parsed.stages] == [("${BASE}", "builder"), ("${BASE}", "runtime")]
    assert spec_of(expand("${BASE}", {"BASE": "python:3.11-slim-bookworm"})).release == "bookworm"


def test_a_syntax_line_is_refused_because_it_pulls_a_frontend_image() -> None:
    with pytest.raises(DockerfileError, match="pull a frontend image"):
        parse("# syntax=docker/dockerfile:1\nFROM x\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nADD a b\n", "line 2: ADD is not implemented"),
        ("FROM --platform=linux/amd64 x\n", "FROM --platform=linux/amd64 is not implemented"),
        ("ENV A=1\nFROM x\n", "line 1: ENV before the first FROM"),
        ("FROM x\nRUN a \\\n", "ends inside a continuation"),
        ("ARG 1X=2\nFROM x\n", "ARG takes NAME"),
    ],
)
def test_what_the_lane_does_not_implement_is_an_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=re.escape(message)):
        parse(text)


def test_continuations_and_comments_inside_them() -> None:
    parsed = parse("ARG B=img\nFROM $B AS one\nRUN a \\\n# a comment\n  && b\n")
    (instr,) = parsed.stages[0].instructions
    assert (instr.keyword, instr.args, instr.line) == ("RUN", "a  && b", 3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/opt/venv/bin:$PATH", "/opt/venv/bin:/usr/bin"),
        ("${PATH}/x", "/usr/bin/x"),
        ("${MISSING:-fallback}", "fallback"),
        ("${PATH:+set}", "set"),
        ("${MISSING:+set}", ""),
        ("$MISSING", ""),
    ],
)
def test_variables_expand_as_docker_expands_them(value: str, expected: str) -> None:
    assert expand(value, {"PATH": "/usr/bin"}) == expected


def test_the_dockerignore_admits_only_what_the_build_reads() -> None:
    ignore = Ignore((ROOT / "deploy" / "Dockerfile.dockerignore").read_text())
    kept = [
        "pyproject.toml",
        "README.md",
        "worker/cli.py",
        "worker/sim/server.py",
        "requirements/runtime.txt",
    ]
    kept += ["requirements/uv.txt", "requirements/demo.txt"]
    dropped = ["worker/__pycache__/cli.cpython-311.pyc", "worker/sim/x.pyc", ".venv/bin/python"]
    dropped += ["requirements/dev.txt", "tests/conftest.py", ".git/HEAD", "deploy/Dockerfile"]
    assert [p for p in kept if ignore.excluded(p)] == []
    assert [p for p in dropped if not ignore.excluded(p)] == []


def test_the_last_matching_rule_wins_and_parents_count() -> None:
    ignore = Ignore("docs\n!docs/keep.md\n**/*.tmp\n")
    assert ignore.excluded("docs/a.md") and not ignore.excluded("docs/keep.md")
    assert ignore.excluded("a/b/c.tmp") and ignore.excluded("c.tmp") and not ignore.excluded("src/a.py")


def test_a_snapshot_holds_the_context_through_its_ignore_file(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    for rel in ("deploy/Dockerfile", "pkg/a.py", "pkg/__pycache__/a.pyc", "secret.env", "big/x"):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text(rel)
    (context / "deploy" / "Dockerfile.dockerignore").write_text("*\n!pkg/\n**/__pycache__\n")
    dockerfile = snapshot(context / "deploy" / "Dockerfile", context, tmp_path / "snap")
    found = sorted(p.relative_to(tmp_path / "snap").as_posix() for p in (tmp_path / "snap").rglob("*"))
    assert found == ["deploy", "deploy/Dockerfile", "deploy/Dockerfile.dockerignore", "pkg", "pkg/a.py"]
    assert dockerfile == tmp_path / "snap" / "deploy" / "Dockerfile"


def test_the_base_is_the_release_and_python_its_tag_names() -> None:
    spec = spec_of("python:3.11-slim-bookworm")
    assert (spec.python, spec.release) == ("3.11", "bookworm")
    assert spec_of("docker.io/library/python:3.12.4-slim-trixie").release == "trixie"
    with pytest.raises(BaseError, match="stands in only for"):
        spec_of("alpine:3.20")


def test_the_mirror_is_the_one_this_machines_apt_uses(tmp_path: Path) -> None:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.invalid/debian bookworm main contrib\n"
        "deb-src http://mirror.invalid/debian bookworm main\n"
    )
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://other.invalid\nSuites: nodistro\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://disabled.invalid\nSuites: bookworm\nComponents: main\n"
    )
    (etc / "sources.list.d" / "cloud.list").write_text("deb http://cloud.invalid cloud-sdk-bookworm main\n")
    assert apt_sources("bookworm", etc) == [
        AptSource("http://mirror.invalid/debian", "bookworm"),
        AptSource("http://mirror.invalid/debian", "bookworm-updates"),
        AptSource("http://security.invalid/debian-security", "bookworm-security"),
    ]
    with pytest.raises(BaseError, match="no apt source for Debian trixie"):
        apt_sources("trixie", etc)


def test_paths_resolve_inside_the_image_even_through_absolute_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("/usr/bin", root / "bin")
    os.symlink("../../..", root / "usr" / "bin" / "up")
    assert in_root(root, "/bin/python") == root / "usr" / "bin" / "python"
    assert in_root(root, "/usr/bin/up/etc") == root / "etc"
    assert in_root(root, "/../../etc/passwd") == root / "etc" / "passwd"


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    return dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M))


def test_the_runtime_lock_is_the_full_locks_runtime_part() -> None:
    runtime, dev = _pins("runtime.txt"), _pins("dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime
    # Runtime only: no build backend, no simulator or development extras.
    assert not {"hatchling", "fakeredis", "pytest", "uv"} & set(runtime)
    assert {"redis", "msgspec", "httpx", "aiohttp", "structlog"} <= set(runtime)
