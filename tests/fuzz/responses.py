"""``python -m tests.fuzz.responses``: fuzz the responses target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("responses"))
