"""``tokenwire feedback`` and ``tokenwire calibrate``: the command-line side of issue 13 §3.

:func:`add_commands` adds both to the ``tokenwire`` parser and :data:`COMMANDS` maps them to their
handlers (``worker.cli`` wires them in).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from .settings import Settings

__all__ = ["COMMANDS", "add_commands", "parse_since"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE: Final = re.compile(r"(\d{1,9})([smhdw])")
_MAX_TEXT: Final = 64


def parse_since(text: str, now_ms: int | None = None) -> int:
    """``--since`` as Unix milliseconds: a duration back from now (``30m``, ``12h``, ``7d``, ``2w``)
    or an ISO 8601 date or time (``2026-12-01``, ``2026-12-01T09:30:00+01:00``; UTC without a zone).
    ``ValueError`` naming the value otherwise."""
    shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if len(text) > _MAX_TEXT:
        raise ValueError(f"--since {shown!r}: too long")
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        return max(0, now - int(relative[1]) * _UNITS[relative[2]] * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {shown!r}: give a duration (30m, 12h, 7d, 2w) or an ISO date or time (2026-12-01)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return max(0, int(when.timestamp() * 1000))
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"--since {shown!r}: out of range") from None


def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``feedback`` and ``calibrate`` with ``command(name, help)`` (``worker.cli``'s helper)."""
    fb = command("feedback", "record whether a job's answer was correct (ground truth for calibrate)")
    fb.add_argument("job_id", help="the job's id")
    verdict = fb.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--correct", dest="correct", action="store_true", default=None, help="it was right")
    verdict.add_argument("--incorrect", dest="correct", action="store_false", help="it was wrong")
    fb.add_argument(
        "--label", metavar="L", help="a label or note kept with the judgement (≤ 1,000 characters)"
    )

    cal = command(
        "calibrate",
        "per model and signal: AUROC, Brier score, calibration error, and the threshold that meets a target",
    )
    cal.add_argument("--model", metavar="M", help="only this model (as the judgements name it)")
    cal.add_argument("--since", metavar="WHEN", help="only judgements since then: 7d, 12h, 2026-12-01, …")
    target = cal.add_mutually_exclusive_group()
    target.add_argument(
        "--catch", type=float, metavar="C", help="flag the fewest answers catching C of the wrong ones (0.9)"
    )
    target.add_argument(
        "--review-rate", type=float, metavar="R", help="catch the most wrong ones flagging ≤ R"
    )
    cal.add_argument("--json", action="store_true", help="the whole report as one JSON object")
    cal.add_argument(
        "--plot", metavar="FILE.png", help="draw the reliability diagram and catch-vs-flagged curve"
    )


def _cli_error(message: str, code: int) -> Exception:
    from .clibase import CliError

    return CliError(message, code)


async def _feedback(args: argparse.Namespace, settings: Settings) -> int:
    from .clibase import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE
    from .clibase import client_for as _client
    from .feedback import FeedbackError

    codes = {"unknown_job": EXIT_NOT_FOUND, "invalid": EXIT_USAGE}
    async with _client(settings) as client:
        try:
            entry = await client.feedback(args.job_id, args.correct, args.label)
        except FeedbackError as exc:
            raise _cli_error(str(exc), codes.get(exc.code, EXIT_FAILED)) from None
    judged = "correct" if args.correct else "incorrect"
    print(f"{args.job_id}: recorded as {judged} (feedback entry {entry})")
    return 0


async def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from .calibrate import calibrate, format_report
    from .clibase import EXIT_USAGE
    from .connect import redis_client
    from .feedback import latest_per_job, read_feedback
    from .keys import Keys

    plot = None
    if args.plot is not None:
        from .calplot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()  # before any work: say what is missing first
        except PlotUnavailable as exc:
            raise _cli_error(str(exc), EXIT_USAGE) from None
        plot = Path(args.plot)
    try:
        since = None if args.since is None else parse_since(args.since)
        calibrate([], catch=args.catch, review_rate=args.review_rate)  # checks the targets
    except ValueError as exc:
        raise _cli_error(str(exc), EXIT_USAGE) from None
    redis = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    bad: list[str] = []
    try:
        entries = [e async for e in read_feedback(redis, Keys(settings.prefix), since_ms=since, bad=bad)]
    finally:
        await redis.aclose()
    report = calibrate(
        latest_per_job(entries),
        model=args.model,
        catch=args.catch,
        review_rate=args.review_rate,
        unreadable=len(bad),
    )
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        sys.stdout.write(format_report(report))
    if plot is not None:
        from .calplot import plot_report

        plot_report(report, plot)
        print(f"tokenwire: plot written to {plot}", file=sys.stderr)
    return 0


COMMANDS: Final[dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]]] = {
    "feedback": _feedback,
    "calibrate": _calibrate,
}
