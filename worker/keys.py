"""Redis key names (contract). ``P`` is the configured prefix.

- ``{P}:jobs``: the job stream (the braces are a Redis Cluster hash tag); consumer group ``workers``.
- ``{P}:dead``: the dead-letter stream (same slot as the job stream).
- ``{P}:feedback``: ground truth for calibration, one entry (field ``feedback``, a
  :class:`worker.feedback.Feedback` as JSON) per judgement of a job's answer; capped at about
  ``FEEDBACK_MAXLEN`` entries (:mod:`worker.feedback`).
- ``{P}:review``: the review stream (:mod:`worker.review`), one entry per job whose ``done.verdict``
  is ``review`` (fields ``job_id``, ``model``, ``signals`` and ``item``, a
  :class:`worker.review.ReviewItem` as JSON); consumer group ``reviewers``; capped at about
  ``review_maxlen`` entries (``XADD … MAXLEN ~``, the oldest go first).
- ``{P}:review:job:ID``: a reviewed job's marker (a hash: ``entry``, the review entry's id; then
  ``resolved`` and ``resolved_at``), in the ``{P}`` slot with the stream so that one script adds an
  entry once per job; it expires ``review_ttl_seconds`` after the entry was added.
- ``P:job:{ID}``: a job's state hash; ``P:job:{ID}:events``: its event stream (same slot as each other).
- ``P:nolp:{provider}:{digest}``: a provider+model that refused logprobs, remembered for
  ``logprobs_refusal_ttl_seconds`` so that other jobs (on every worker) skip the failed request.
- ``P:no_n:{provider}:{digest}``: a provider+model seen to ignore chat's or completions' ``n`` (it
  answered fewer choices than asked), remembered as long, so that jobs with candidates ask for
  each on its own request at once (worker/candidates.py).
- ``P:budget:{SCOPE}:state|slots|queue|waiters``: a provider's shared budget (:mod:`worker.ratelimit`;
  ``SCOPE`` is the provider's name, or ``name/model`` with per-model limits), one slot per scope.
- ``P:budgets``: the budget scopes workers have used (a hash: scope -> provider; ``tokenwire stats``).
- ``P:cancel``: the pub/sub channel of cancellation requests (``Client.cancel`` publishes one after it
  flags the job's state hash; the worker holding the job stops it). A message is UTF-8 text: the job
  id, a newline, the reason (``"job-42\\nuser pressed stop"``); :func:`cancel_message` builds it and
  :func:`read_cancel_message` reads it.

``schemas/asyncapi.yaml`` writes these addresses with parameters (``{prefixTag}:jobs``,
``{prefix}:job:{jobIdTag}:events``, ``{prefix}:cancel``): every brace pair there is a parameter, and the
hash-tag braces belong to the values of ``prefixTag`` (``{tokenwire}``) and ``jobIdTag`` (``{ID}``).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["GROUP", "REVIEW_GROUP", "Keys", "as_text", "cancel_message", "read_cancel_message"]

GROUP: Final = "workers"
REVIEW_GROUP: Final = "reviewers"


class Keys:
    """Key names for one prefix; cheap to build, holds no connection."""

    __slots__ = ("cancel", "dead", "feedback", "jobs", "prefix", "review")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = f"{{{prefix}}}:jobs"
        self.dead = f"{{{prefix}}}:dead"
        self.feedback = f"{{{prefix}}}:feedback"
        self.review = f"{{{prefix}}}:review"
        self.cancel = f"{prefix}:cancel"

    def review_marker(self, job_id: str) -> str:
        """``{P}:review:job:ID``: the job's review marker, in the ``{P}`` slot (the first brace pair
        is the hash tag; job ids hold no braces)."""
        return f"{self.review}:job:{job_id}"

    def state(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}:events"

    def no_logprobs(self, provider: str, model: str) -> str:
        """``P:nolp:{provider}:{sha256(model)[:32]}``: a provider+model refused logprobs (a string
        holding the refusal, with a TTL). The digest keeps any model name (``{``, spaces) out of
        the key's hash tag."""
        digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}:nolp:{provider}:{digest}"

    def no_n(self, provider: str, model: str) -> str:
        """``P:no_n:{provider}:{sha256(model)[:32]}``: a provider+model ignores ``n`` (a string
        saying what it answered, with a TTL); digested as :meth:`no_logprobs`."""
        digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}:no_n:{provider}:{digest}"

    def budget(self, scope: str) -> tuple[str, str, str, str]:
        """A budget scope's keys (state, slots, queue, waiters), all in the slot of ``{scope}``."""
        base = f"{self.prefix}:budget:{{{scope}}}"
        return f"{base}:state", f"{base}:slots", f"{base}:queue", f"{base}:waiters"

    def budget_scopes(self) -> str:
        """``P:budgets``: the budget scopes in use (a hash: scope -> provider), for ``tokenwire stats``."""
        return f"{self.prefix}:budgets"


def as_text(value: object) -> str:
    """A Redis reply item as text (replies are bytes unless the client decodes them); bytes that are
    not UTF-8 (a dead letter's raw payload) are shown with replacement characters, never raised."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def cancel_message(job_id: str, reason: str) -> str:
    """The message published on ``P:cancel`` to stop a running job: its id, a newline, the reason."""
    return f"{job_id}\n{reason}"


def read_cancel_message(data: bytes | str) -> tuple[str, str]:
    """``(job_id, reason)`` of a ``P:cancel`` message; the reason may be empty or span lines."""
    job_id, _, reason = as_text(data).partition("\n")
    return job_id, reason
