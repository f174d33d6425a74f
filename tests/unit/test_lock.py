"""The committed lock (requirements/*.txt) pins every dependency pyproject.toml names, within its range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / name).read_text()
    return {_norm(m[1]): Version(m[2]) for m in PIN.finditer(text)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _requirements(*extras: str) -> list[Requirement]:
    project = _project()
    names: list[str] = list(project["dependencies"])  # type: ignore[call-overload]
    optional: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    for extra in extras:
        names += optional[extra]
    return [r for r in map(Requirement, names) if _norm(r.name) != "tokenwire"]


@pytest.mark.parametrize(
    ("lock", "extras"), [("runtime.txt", ()), ("demo.txt", ("sim",)), ("dev.txt", ("sim", "dev"))]
)
def test_lock_pins_every_dependency_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(lock)
    for req in _requirements(*extras):
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert _norm(req.name) in pins, f"{req.name} is not in requirements/{lock}: run `make lock`"
        assert pins[_norm(req.name)] in req.specifier, (
            f"requirements/{lock} pins {req.name} {pins[_norm(req.name)]}, outside {req.specifier}"
        )


def test_every_line_is_hashed() -> None:
    for lock in ("demo.txt", "dev.txt", "runtime.txt", "uv.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        for block in re.split(r"\n(?=[A-Za-z])", text):
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"


@pytest.mark.parametrize("lock", ["demo.txt", "runtime.txt"])
def test_every_lock_agrees_with_the_dev_lock(lock: str) -> None:
    pins, dev = _pins(lock), _pins("dev.txt")
    assert {name: v for name, v in pins.items() if dev.get(name) != v} == {}


def test_internals_libraries_have_upper_bounds() -> None:
    """The libraries whose internals the fast path reads cannot move a major/minor series under a user."""
    bounded = {"httpx-sse", "httpx-aiohttp", "aiohttp", "redis", "msgspec"}
    for req in _requirements():
        if _norm(req.name) in bounded:
            assert any(spec.operator == "<" for spec in req.specifier), f"{req.name} has no upper bound"


def test_the_demo_installs_no_development_tools() -> None:
    demo = _pins("demo.txt")
    for tool in ("mypy", "ruff", "openai", "huggingface-hub", "kubernetes-validate", "pytest", "hypothesis"):
        assert tool not in demo, f"requirements/demo.txt installs {tool}"
    assert "fakeredis" in demo  # the demo's fallback when redis-server is not installed
