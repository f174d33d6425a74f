"""``python -m tests.fuzz.completions``: fuzz the completions target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("completions"))
