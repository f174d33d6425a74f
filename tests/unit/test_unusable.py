"""Which Redis error replies say a job's keys cannot be used (worker/unusable.py)."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from worker.unusable import keys_unusable


def test_only_wrongtype_and_script_runtime_errors_are_unusable_keys() -> None:
    """The replies that pass (an outage, a failover, a busy script, a failed snapshot) are not."""
    assert keys_unusable(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert keys_unusable(
        ResponseError("user_script:12: attempt to compare nil with number script: ab, on @user_script:12.")
    )
    assert keys_unusable(
        ResponseError(
            "Error running script (call to f_ab): @user_script:12: user_script:12: attempt to compare nil"
        )
    )
    assert keys_unusable(
        ResponseError("Error running script (call to f_ab): @user_script:2: WRONGTYPE Operation")
    )
    for passing in (
        "Error running script (call to f_ab): @user_script:2: -OOM command not allowed when used memory",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist. script: ab",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "NOGROUP No such key 'x' or consumer group 'workers'",
    ):
        assert not keys_unusable(ResponseError(passing)), passing
    assert not keys_unusable(
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'. script: ab")
    )
    assert not keys_unusable(ReadOnlyError("You can't write against a read only replica. script: ab"))
