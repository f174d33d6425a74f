"""Redis error replies that say a job's keys hold what its scripts cannot work with.

A job's state hash or event stream replaced by another type (``WRONGTYPE``), or a state hash field
no worker wrote (an ``attempt`` that is not a number: the script stops with a Lua runtime error),
fails every script call on that job, on every delivery, for as long as the key lives: no retry can
help, unlike the refusals that pass (:mod:`worker.refusals`: out of memory, a script timeout
(``BUSY``), a failed snapshot (``MISCONF``) ...) or a read-only replica, never taken for this.
"""

from __future__ import annotations

import re

from redis.exceptions import ResponseError

__all__ = ["JobKeysUnusable", "keys_unusable", "wrong_type"]

# A Lua runtime error in a script (Redis 7: "user_script:12: attempt to compare nil with number
# script: <sha>, on @user_script:12."; Redis 6 wraps it as "Error running script (call to f_<sha>):
# @user_script:12: user_script:12: ..."). An error reply of a command the script ran is named after
# "@user_script:N: " instead (Redis 6: "@user_script:2: -OOM ..."): not matched here.
_LUA_RUNTIME = re.compile(r"(?<!@)user_script:\d+: ")


class JobKeysUnusable(ResponseError):
    """A job-key script (begin, finish, fail: :class:`worker.store.JobStore`) met a job key of
    another type (``WRONGTYPE``): no delivery can ever run the job; it is dead-lettered at once. A
    Lua runtime error is not raised as this: it may as well be a script's fault as the keys'
    (every job would then be dead-lettered), so its job takes the ordinary path of a crashed
    delivery, and only its dead letter's own terminal write is given up on."""


def wrong_type(error: BaseException) -> bool:
    """Whether ``error`` is a ``WRONGTYPE`` reply (also inside a script's error)."""
    if type(error) is not ResponseError:
        return False
    text = str(error)
    return text.startswith("WRONGTYPE") or " WRONGTYPE " in text


def keys_unusable(error: BaseException) -> bool:
    """Whether ``error`` is a ``WRONGTYPE`` reply or a Lua runtime error of a script. Only a plain
    ``ResponseError``: redis-py gives the passing refusals (OOM, READONLY, NOSCRIPT, LOADING ...)
    classes of their own."""
    if isinstance(error, JobKeysUnusable) or wrong_type(error):
        return True
    return type(error) is ResponseError and _LUA_RUNTIME.search(str(error)) is not None
