"""``tokenwire review list | take | resolve``: the command line of the review queue (:mod:`worker.review`).

:func:`add_command` adds ``review`` to the ``tokenwire`` parser; :func:`run` does what it asks on a
:class:`~worker.Client`. ``worker.cli`` wires them in and turns the errors into exit codes
(:class:`~worker.review.ReviewNotFound`: no such review entry; ``ValueError``: bad arguments).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from collections.abc import Callable
from typing import TextIO

import msgspec

from .client import Client
from .review import ReviewEntry

__all__ = ["add_command", "default_consumer", "run"]


def default_consumer() -> str:
    """``USER@HOST``: who takes review entries when ``--consumer`` is not given."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "reviewer"
    return f"{user}@{socket.gethostname()}"


def add_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``review`` with ``command(name, help)`` (``worker.cli``'s helper)."""
    review = command("review", "list, take or resolve the jobs whose verdict sent them to review")
    review.add_argument("action", choices=["list", "take", "resolve"], help="what to do")
    review.add_argument("job_id", nargs="?", help="resolve: the job's id")
    verdict = review.add_mutually_exclusive_group()
    verdict.add_argument(
        "--correct", dest="correct", action="store_true", default=None, help="resolve: it was right"
    )
    verdict.add_argument("--incorrect", dest="correct", action="store_false", help="resolve: it was wrong")
    review.add_argument("--note", help="resolve: a note, recorded as the feedback's label")
    review.add_argument(
        "--count", type=int, default=None, metavar="N", help="list: at most N (100); take: N (1)"
    )
    review.add_argument("--consumer", metavar="NAME", help="take: who takes them (default USER@HOST)")
    review.add_argument("--block", type=float, metavar="S", help="take: wait up to S seconds for one")
    review.add_argument(
        "--claim-idle",
        type=float,
        metavar="S",
        help="take: first take over entries another reviewer took and left unresolved for S seconds",
    )
    review.add_argument("--all", action="store_true", help="list: the resolved ones too")
    review.add_argument("--json", action="store_true", help="list, take: one JSON object per line")


async def run(args: argparse.Namespace, client: Client, out: TextIO = sys.stdout) -> int:
    """Do ``args.action``; raises ``ValueError`` for arguments that do not fit it."""
    count = args.count
    if count is not None and not 1 <= count <= 10_000:
        raise ValueError(f"--count {count}: give 1 to 10000")
    if args.action == "resolve":
        if args.job_id is None or args.correct is None:
            raise ValueError("review resolve needs the job's id and --correct or --incorrect")
        feedback = await client.resolve(args.job_id, args.correct, args.note)
        verdict = "correct" if args.correct else "incorrect"
        print(f"{args.job_id}: resolved as {verdict} (feedback {feedback})", file=out)
        return 0
    if args.claim_idle is not None and args.action != "take":
        raise ValueError("--claim-idle is for review take")
    if args.job_id is not None or args.correct is not None or args.note is not None:
        raise ValueError(f"review {args.action} takes no job id, --correct, --incorrect or --note")
    if args.action == "take":
        block = None if args.block is None else max(1, int(args.block * 1000))
        consumer = args.consumer or default_consumer()
        idle = None if args.claim_idle is None else max(0, int(args.claim_idle * 1000))
        entries = await client.take_reviews(consumer, count or 1, block_ms=block, claim_idle_ms=idle)
        empty = "nothing to review"
    else:
        entries = await client.review_items(count or 100, include_resolved=args.all)
        empty = "no jobs to review"
    for entry in entries:
        print(msgspec.json.encode(entry).decode() if args.json else _line(entry), file=out)
    if not entries and not args.json:
        print(empty, file=out)
    return 0


def _line(entry: ReviewEntry) -> str:
    item = entry.item
    holder = f" taken by {entry.taken_by}" if entry.taken_by else ""
    state = f" [{entry.resolved}]" if entry.resolved else ""
    head = f"{item.job_id}  {item.model}  {entry.id}{holder}{state}"
    lines = [head, *(f"  · {reason}" for reason in item.verdict.reasons)]
    for seg in item.low_segments:
        mean = "unscored" if seg.mean_logprob is None else f"{seg.mean_logprob:.3f}"
        text = seg.text.strip().replace("\n", " ")
        shown = text if len(text) <= 100 else text[:99] + "…"
        lines.append(f"  segment {seg.index} chars [{seg.char_start},{seg.char_end}) mean {mean}: {shown}")
    if item.low_segments_truncated:
        lines.append("  (more low segments: see the job's segment events)")
    return "\n".join(lines)
