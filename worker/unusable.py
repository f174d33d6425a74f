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

__all__ = ["keys_unusable"]

# A Lua runtime error in a script (Redis 7: "user_script:12: attempt to compare nil with number
# script: <sha>, on @user_script:12."; Redis 6 wraps it as "Error running script (call to f_<sha>):
# @user_script:12: user_script:12: ..."). An error reply of a command the script ran is named after
# "@user_script:N: " instead (Redis 6: "@user_script:2: -OOM ..."): not matched here.
_LUA_RUNTIME = re.compile(r"(?<!@)user_script:\d+: ")


def keys_unusable(error: BaseException) -> bool:
    """Whether ``error`` is a ``WRONGTYPE`` reply or a Lua runtime error of a script. Only a plain
    ``ResponseError``: redis-py gives the passing refusals (OOM, READONLY, NOSCRIPT, LOADING ...)
    classes of their own."""
    if type(error) is not ResponseError:
        return False
    text = str(error)
    return text.startswith("WRONGTYPE") or " WRONGTYPE " in text or _LUA_RUNTIME.search(text) is not None
