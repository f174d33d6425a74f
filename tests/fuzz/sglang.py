"""``python -m tests.fuzz.sglang``: fuzz the sglang target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("sglang"))
