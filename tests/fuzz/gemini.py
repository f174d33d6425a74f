"""``python -m tests.fuzz.gemini``: fuzz the gemini target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("gemini"))
