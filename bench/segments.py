"""What ``review`` costs per token: a micro-benchmark of the attempt's per-token scoring with and
without the segmenter (issue 13 §2).

    .venv/bin/python -m bench.segments                 # 200,000 simulated tokens, best of 5
    .venv/bin/python -m bench.segments --tokens 50000 --repeat 3 --json

Each pass feeds the same simulated answer (``worker.sim.generate``: prose with punctuation,
numbers, newlines; ``--lang`` for Chinese or Japanese) token by token, as ``Attempt._publish`` does:

- ``off``: what every job pays today, the confidence tracker's ``add`` (the token event's scores);
- ``sentence`` / ``line`` / ``paragraph``: the same plus ``Segmenter.token`` for that unit, and the
  ``segment`` events it closes, encoded as the publisher would.

It prints microseconds per token (the best pass: the least disturbed by other load) and the extra
cost of each unit over ``off``. A job without ``review`` runs none of the segmenter (one ``is None``
test per token), so ``off`` is also the cost with segments off. The macro benchmark
(``make bench``) measures the worker's whole CPU per event; this isolates the part review adds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from worker.confidence import ConfidenceTracker
from worker.events import encode_event
from worker.jobs import Review
from worker.segments import Segmenter
from worker.sim.generate import SimToken, generate

__all__ = ["main", "measure"]

UNITS = ("sentence", "line", "paragraph")


def _pass(tokens: Sequence[SimToken], unit: str | None) -> tuple[float, int]:
    """One pass: seconds taken, segments closed."""
    tracker = ConfidenceTracker()
    segments = None if unit is None else Segmenter(Review(unit=unit))  # type: ignore[arg-type]
    closed = 0
    started = time.perf_counter()
    for index, tok in enumerate(tokens):
        raw = tok.raw or None
        score = tracker.add(tok.text, tok.logprob, special=tok.special, raw_bytes=raw)
        if segments is not None:
            spans = segments.token(
                index, tok.text, raw, tok.special, tok.logprob, (score.char_start, score.char_end)
            )
            for span in spans:
                encode_event(span.event("bench", 1))
                closed += 1
    if segments is not None:
        for span in segments.close():
            encode_event(span.event("bench", 1))
            closed += 1
    return time.perf_counter() - started, closed


def measure(n_tokens: int, repeat: int, lang: str | None = None) -> dict[str, dict[str, float]]:
    """µs per token (best of ``repeat``) and segments closed, for ``off`` and each unit."""
    tokens = list(
        generate(7, "bench", n_tokens) if lang is None else generate(7, "bench", n_tokens, lang=lang)
    )
    out: dict[str, dict[str, float]] = {}
    for name, unit in (("off", None), *((u, u) for u in UNITS)):
        best, closed = min(_pass(tokens, unit) for _ in range(repeat))
        out[name] = {"us_per_token": best / len(tokens) * 1e6, "segments": closed}
    base = out["off"]["us_per_token"]
    for unit in UNITS:
        out[unit]["extra_us_per_token"] = out[unit]["us_per_token"] - base
        out[unit]["extra_percent"] = 100 * out[unit]["extra_us_per_token"] / base
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.segments", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="simulated tokens per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes per variant (the best counts)")
    parser.add_argument("--lang", help="the simulator's language (e.g. zh, ja); default English prose")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeat < 1:
        parser.error("--tokens and --repeat must be positive")
    result = measure(args.tokens, args.repeat, args.lang)
    if args.json:
        print(json.dumps({"tokens": args.tokens, "repeat": args.repeat, "lang": args.lang, "result": result}))
        return 0
    print(f"{args.tokens:,} tokens, best of {args.repeat} (lang: {args.lang or 'en'})")
    print(f"{'review':<10} {'us/token':>9} {'extra':>8} {'extra %':>8} {'segments':>9}")
    for name, row in result.items():
        extra = row.get("extra_us_per_token")
        shown = "" if extra is None else f"{extra:8.3f} {row['extra_percent']:7.1f}%"
        print(f"{name:<10} {row['us_per_token']:9.3f} {shown:>17} {int(row['segments']):9,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
