"""Run one fuzz target of :mod:`tests.fuzz.targets`, coverage-guided by atheris when it is installed.

    python -m tests.fuzz.sse                     # atheris (libFuzzer) for 60 s from the seeds
    python -m tests.fuzz.sse -max_total_time=600 # any libFuzzer flag passes through
    python -m tests.fuzz.sse --replay            # only the committed seeds, then exit

The committed seeds in ``tests/fuzz/corpus/<target>/`` are read, never written: what libFuzzer
finds goes to a fresh working directory (printed), crashes to ``$TOKENWIRE_FUZZ_ARTIFACTS`` (default:
that directory). Without atheris the same target runs under hypothesis for the same time (random
bytes and mutations of the seeds, no coverage guidance) and says so.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["CORPUS", "main", "replay", "seeds"]

CORPUS = Path(__file__).parent / "corpus"
DEFAULT_SECONDS = 60


def seeds(name: str) -> list[bytes]:
    """The committed seed inputs of target ``name``."""
    return [path.read_bytes() for path in sorted((CORPUS / name).iterdir()) if path.is_file()]


def replay(name: str) -> int:
    """Run every seed of ``name`` through its target; the number run."""
    from tests.fuzz.targets import TARGETS

    found = seeds(name)
    for data in found:
        TARGETS[name](data)
    return len(found)


def main(name: str, argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--replay" in args:
        print(f"{name}: {replay(name)} seeds pass")
        return 0
    seconds = next((int(a.split("=", 1)[1]) for a in args if a.startswith("-max_total_time=")), None)
    try:
        import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return _hypothesis(name, DEFAULT_SECONDS if seconds is None else seconds)
    # Coverage for tokenwire's own modules only (instrument_all() over a development environment's
    # ~13,000 functions took minutes before the first run).
    with atheris.instrument_imports(include=["worker"]):
        from tests.fuzz.targets import TARGETS
    work = Path(tempfile.mkdtemp(prefix=f"tokenwire-fuzz-{name}-"))
    flags = [a for a in args if a.startswith("-")]
    if seconds is None:
        flags.append(f"-max_total_time={DEFAULT_SECONDS}")
    if not any(a.startswith("-artifact_prefix=") for a in flags):
        flags.append(f"-artifact_prefix={work}/")
    print(f"{name}: atheris, working corpus {work}", flush=True)
    atheris.Setup([sys.argv[0], *flags, str(work), str(CORPUS / name)], TARGETS[name])
    atheris.Fuzz()
    return 0


def _hypothesis(name: str, seconds: int) -> int:
    """No atheris: random bytes and mutated seeds through the target until ``seconds`` have passed."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.fuzz.targets import TARGETS

    target: Callable[[bytes], None] = TARGETS[name]
    print(f"{name}: atheris is not installed: hypothesis for {seconds}s (no coverage guidance)", flush=True)
    replay(name)
    pool = seeds(name) or [b""]

    def mutate(data: bytes, rng: random.Random) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            where = rng.randint(0, len(out))
            choice = rng.random()
            if choice < 0.4 and out:
                del out[where : where + rng.randint(1, 8)]
            elif choice < 0.8:
                out[where:where] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
            else:
                piece = rng.choice(pool)
                out[where:where] = piece[: rng.randint(0, len(piece))]
        return bytes(out)

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.binary(max_size=4096) | st.builds(mutate, st.sampled_from(pool), st.randoms()))
    def run(data: bytes) -> None:
        target(data)

    deadline, rounds = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        run()
        rounds += 1
    print(f"{name}: {rounds * 500} inputs, no failure")
    return 0
