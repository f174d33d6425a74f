"""``python -m tests.fuzz.chat``: fuzz the chat target (:mod:`tests.fuzz.harness`)."""

from tests.fuzz.harness import main

if __name__ == "__main__":
    raise SystemExit(main("chat"))
