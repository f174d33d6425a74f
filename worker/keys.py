"""Redis key names (contract). ``P`` is the configured prefix.

- ``{P}:jobs``: the job stream (the braces are a Redis Cluster hash tag); consumer group ``workers``.
- ``{P}:dead``: the dead-letter stream (same slot as the job stream).
- ``P:job:{ID}``: a job's state hash; ``P:job:{ID}:events``: its event stream (same slot as each other).
"""

from __future__ import annotations

from typing import Final

__all__ = ["GROUP", "Keys", "as_text"]

GROUP: Final = "workers"


class Keys:
    """Key names for one prefix; cheap to build, holds no connection."""

    __slots__ = ("dead", "jobs", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = f"{{{prefix}}}:jobs"
        self.dead = f"{{{prefix}}}:dead"

    def state(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}:events"


def as_text(value: object) -> str:
    """A Redis reply item as text (replies are bytes unless the client decodes them); bytes that are
    not UTF-8 (a dead letter's raw payload) are shown with replacement characters, never raised."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
