"""Summaries of ``py-spy record --format raw`` output (collapsed stacks: ``frame;frame;... count``):
the functions with the most samples on top of the stack (self) and anywhere on it (total).

``python -m bench.profile FILE [--top N]``
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

__all__ = ["summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")
_SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)``, paths shortened."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = _SITE.sub("", match["file"])
    if "/worker/" in path:
        path = "worker/" + path.split("/worker/", 1)[1]
    return f"{match['func']} ({path})"


def _read(path: Path) -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return own, total, samples


def summarize(path: Path, top: int = 20) -> str:
    own, total, samples = _read(path)
    if not samples:
        return f"{path}: no samples"
    lines = [f"profile {path.name}: {samples} samples"]
    for title, counts in (("self", own), ("total", total)):
        lines.append(f"  top {top} by {title}:")
        for frame, n in counts.most_common(top):
            lines.append(f"    {100 * n / samples:5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="summarise a py-spy raw profile")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(summarize(args.file, args.top))


if __name__ == "__main__":
    main()
