"""Read a Dockerfile into stages of instructions, the subset deploy/Dockerfile uses.

The image lane executes these instructions itself (tools/image/build.py), so the parser refuses what it
does not implement rather than skipping it: an instruction the lane ignored would make the filesystem it
proves differ from the one an engine builds.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

__all__ = ["Dockerfile", "DockerfileError", "Instruction", "Stage", "expand", "parse"]

# Instructions the lane implements; anything else is an error naming the line.
KNOWN = frozenset(
    {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK"}
    | {"ENTRYPOINT", "CMD", "LABEL"}
)


class DockerfileError(ValueError):
    """The Dockerfile uses something the lane does not implement, or is malformed; names the line."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def where(self) -> str:
        return f"line {self.line} ({self.keyword})"


@dataclass
class Stage:
    base: str  # the FROM reference, unexpanded
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def stage(self, ref: str) -> Stage | None:
        for index, stage in enumerate(self.stages):
            if stage.name == ref or str(index) == ref:
                return stage
        return None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Continuation lines joined; comment and blank lines dropped (also inside a continuation)."""
    result: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        result.append((start, pending + line))
        pending = ""
    if pending:
        raise DockerfileError(f"line {start}: the Dockerfile ends inside a continuation")
    return result


def _directives(text: str) -> dict[str, str]:
    """Parser directives: ``# key=value`` comment lines at the very top, before anything else."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        match = re.fullmatch(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", raw)
        if not match:
            break
        found[match.group(1).lower()] = match.group(2)
    return found


def parse(text: str) -> Dockerfile:
    directives = _directives(text)
    if "syntax" in directives:
        raise DockerfileError(
            f"`# syntax={directives['syntax']}` makes BuildKit pull a frontend image from a registry "
            "before building; the built-in frontend reads this Dockerfile, so the line must go"
        )
    if "escape" in directives and directives["escape"] != "\\":
        raise DockerfileError(f"`# escape={directives['escape']}`: only the default escape is implemented")
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        args = rest.strip()
        if keyword not in KNOWN:
            raise DockerfileError(f"line {number}: {keyword} is not implemented by the image lane")
        if keyword == "FROM":
            stages.append(_from(args, number))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileError(f"line {number}: {keyword} before the first FROM")
            name, value = parse_arg(args, number)
            global_args[name] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    if not stages:
        raise DockerfileError("the Dockerfile has no FROM")
    return Dockerfile(global_args, stages)


def _from(args: str, line: int) -> Stage:
    words = args.split()
    if words and words[0].startswith("--"):
        raise DockerfileError(f"line {line}: FROM {words[0]} is not implemented by the image lane")
    if len(words) == 1:
        return Stage(words[0], None, line)
    if len(words) == 3 and words[1].upper() == "AS":
        return Stage(words[0], words[2], line)
    raise DockerfileError(f"line {line}: FROM takes `IMAGE [AS NAME]`, got {args!r}")


def parse_arg(args: str, line: int) -> tuple[str, str | None]:
    name, sep, value = args.partition("=")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise DockerfileError(f"line {line}: ARG takes NAME[=default], got {args!r}")
    return name, (_unquote(value) if sep else None)


def _unquote(value: str) -> str:
    words = shlex.split(value)
    return words[0] if len(words) == 1 else value


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR = re.compile(rf"\$(?:\{{(?P<braced>{_NAME})(?::(?P<op>[-+])(?P<word>[^}}]*))?\}}|(?P<bare>{_NAME}))")


def expand(value: str, variables: dict[str, str]) -> str:
    """Dockerfile variable substitution: ``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME:+word}``."""

    def one(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        current = variables.get(name, "")
        op = match.group("op")
        if op == "-":
            return current or match.group("word")
        if op == "+":
            return match.group("word") if current else ""
        return current

    return _VAR.sub(one, value)


def key_values(args: str, where: str) -> dict[str, str]:
    """The ``KEY=VALUE ...`` form of ENV and LABEL (the legacy ``ENV KEY VALUE`` form is refused)."""
    result: dict[str, str] = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise DockerfileError(f"{where}: expected KEY=VALUE, got {token!r}")
        result[key] = value
    return result


def exec_form(args: str, where: str) -> list[str] | None:
    """The JSON array of ENTRYPOINT, CMD, RUN or HEALTHCHECK CMD; None for the shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError as exc:
        raise DockerfileError(f"{where}: malformed JSON array: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DockerfileError(f"{where}: expected a JSON array of strings")
    return [str(v) for v in value]


def flags(args: str, allowed: frozenset[str], where: str) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` flags of an instruction, and the rest."""
    found: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        name, sep, value = token[2:].partition("=")
        if name not in allowed or not sep:
            raise DockerfileError(f"{where}: the flag {token!r} is not implemented by the image lane")
        found[name] = value
    return found, rest
