"""``python -m tests.fuzz.native``: fuzz the native target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("native"))
