"""What every ``tokenwire`` command module shares: the exit codes, the error a command ends with,
and the Redis client a command uses. Its own module so that command modules (``calibrate_cli``)
and the dispatcher (``cli``) import it without importing each other."""

from __future__ import annotations

from .client import Client
from .connect import redis_client
from .settings import Settings

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "client_for",
]

EXIT_OK = 0  # done (and every command that succeeded)
EXIT_FAILED = 1  # the job ended in `error`, or the command failed (Redis unreachable, ...)
EXIT_USAGE = 2  # bad arguments or settings; nothing was done
EXIT_TIMEOUT = 3  # --timeout passed before the job ended
EXIT_NOT_FOUND = 4  # no such job (never enqueued, or expired)
EXIT_CANCELLED = 5  # the job ended in `cancelled`
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE, as a shell reports it)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped without draining


class CliError(Exception):
    """A command's failure: its message (one line for the user) and exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def client_for(settings: Settings) -> Client:
    """A client whose blocking reads (2 s) stay under its socket timeout; use as ``async with``."""
    return Client(
        redis_client(settings.redis_url, block_seconds=2.0, cluster=settings.redis_cluster),
        prefix=settings.prefix,
    )
