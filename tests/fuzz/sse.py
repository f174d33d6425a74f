"""``python -m tests.fuzz.sse``: fuzz the sse target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("sse"))
