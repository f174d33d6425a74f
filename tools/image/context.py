"""The build context an engine would send: the files a .dockerignore leaves (Docker's matching rules).

Rules are matched in order against paths relative to the context, and a rule matching a file or any of
its parent directories applies to it; the last rule that matches decides, ``!`` re-includes. Patterns
are Go ``filepath.Match`` patterns plus ``**`` for any number of directories.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Ignore", "ignore_file_for", "snapshot"]


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    exclude: bool


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"unterminated [ in .dockerignore pattern {pattern!r}")
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            out += re.escape(pattern[i + 1])
            i += 1
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


class Ignore:
    def __init__(self, text: str) -> None:
        self.rules: list[_Rule] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            if pattern == ".":
                pattern = ""
            self.rules.append(_Rule(_regex(pattern), exclude))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for rule in self.rules:
            if any(rule.regex.fullmatch(c) for c in candidates):
                verdict = rule.exclude
        return verdict


def ignore_file_for(dockerfile: Path, context: Path) -> Path | None:
    """BuildKit's choice: ``<Dockerfile>.dockerignore`` next to the Dockerfile, else the context's."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            return candidate
    return None


def _exception_prefixes(text: str) -> list[str]:
    """The literal leading part (up to a wildcard) of every ``!`` rule: directories it may reach into."""
    prefixes = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("!"):
            pattern = os.path.normpath(line[1:].strip()).lstrip("/")
            prefixes.append(re.split(r"[*?\[\\]", pattern, maxsplit=1)[0])
    return prefixes


def snapshot(dockerfile: Path, context: Path, dest: Path) -> Path:
    """Copy what the build would see (the context through its .dockerignore, the Dockerfile and its ignore
    file) into ``dest``; returns the Dockerfile's path there. Builds from one snapshot read the same bytes
    even while the working tree changes."""
    context = context.resolve()
    relative = dockerfile.resolve().relative_to(context)
    ignore_path = ignore_file_for(dockerfile, context)
    text = ignore_path.read_text(encoding="utf-8") if ignore_path else ""
    ignore = Ignore(text)
    prefixes = _exception_prefixes(text)
    for dirpath, dirnames, filenames in os.walk(context):
        here = Path(dirpath)
        for name in list(dirnames):
            rel = (here / name).relative_to(context).as_posix()
            reachable = any(p.startswith(rel + "/") or rel.startswith(p) for p in prefixes if p)
            if ignore.excluded(rel) and not reachable:
                dirnames.remove(name)
        for name in filenames:
            rel = (here / name).relative_to(context).as_posix()
            if not ignore.excluded(rel):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(here / name, target)
    extra = [relative, *([ignore_path.resolve().relative_to(context)] if ignore_path else [])]
    for rel_path in extra:
        (dest / rel_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / rel_path, dest / rel_path)
    return dest / relative
