"""``python -m tests.fuzz.errors``: fuzz the errors target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("errors"))
