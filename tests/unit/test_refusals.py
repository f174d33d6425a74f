"""Which Redis replies say "refused for now, wait for it" (worker/refusals.py), on exception objects
as redis-py's parser makes them; the wait loop; one warning per outage. The refusals and the
replies that say a job's keys are unusable (worker/unusable.py) never overlap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.refusals import OUTAGE, REASONS, outlast_refusals, refusal
from worker.unusable import keys_unusable

REFUSED: dict[str, list[RedisError]] = {
    "OOM": [
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'.", status_code="OOM"),
        OutOfMemoryError(
            "command not allowed when used memory > 'maxmemory'. script: ab, on @user_script:1."
        ),
        ResponseError("Error running script (call to f_ab): @user_script:2: -OOM command not allowed when"),
    ],
    "BUSY": [
        ResponseError(
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
        ),
        ResponseError("BUSY Redis is busy running a module command.", status_code="BUSY"),
        # a pipeline's raised error, annotated by redis-py: the code is kept apart
        ResponseError(
            "Command # 1 (XADD k * a b) of pipeline caused error: BUSY Redis is busy", status_code="BUSY"
        ),
    ],
    "LOADING": [BusyLoadingError("Redis is loading the dataset in memory", status_code="LOADING")],
    "MISCONF": [
        ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist."
        ),
        ResponseError(
            "MISCONF Errors writing to the AOF file: No space left on device script: ab, on @user_script:3."
        ),
        ResponseError("Error running script (call to f_ab): @user_script:2: -MISCONF Redis is configured to"),
    ],
    "TRYAGAIN": [TryAgainError("Multiple keys request during rehashing of slot")],
    "CLUSTERDOWN": [ClusterDownError("The cluster is down")],
}

NOT_REFUSED: list[BaseException] = [
    ReadOnlyError("You can't write against a read only replica."),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    NoScriptError("No matching script. Please use EVAL."),
    ResponseError("BUSYGROUP Consumer Group name already exists"),
    ResponseError("BUSYKEY Target key name already exists."),
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("user_script:12: attempt to compare nil with number script: ab, on @user_script:12."),
    ResponseError("Error running script (call to f_ab): @user_script:12: user_script:12: attempt to compare"),
    ResponseError("NOGROUP No such key 'x' or consumer group 'workers'"),
    ResponseError("ERR The ID specified in XADD is equal or smaller than the target stream top item"),
    RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
    ValueError("BUSY is not a Redis reply here"),
    # a reply's own code decides: text that merely quotes a refusal (a pipeline's annotation quoting
    # the command's arguments, a key or a group named so) is not one
    ResponseError(
        "Command # 1 (XADD k * event command not allowed when used memory) of pipeline caused error: "
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        status_code="WRONGTYPE",
    ),
    ResponseError("NOGROUP No such key '@user_script:1: -BUSY ' or consumer group", status_code="NOGROUP"),
    ResponseError("Command # 2 (SET k @user_script:1: -OOM x) of pipeline caused error: ERR syntax error"),
]


@pytest.mark.parametrize("code", list(REFUSED))
def test_each_passing_refusal_is_recognised_with_its_reason(code: str) -> None:
    for error in REFUSED[code]:
        assert refusal(error) == REASONS[code], error
        assert not keys_unusable(error), error  # never both


def test_other_errors_are_not_refusals() -> None:
    for error in NOT_REFUSED:
        assert refusal(error) is None, error
    assert refusal(None) is None and refusal(b"1-1") is None  # a pipeline's replies that are not errors


def test_what_says_the_keys_are_unusable_is_never_a_refusal() -> None:
    unusable = [e for e in NOT_REFUSED if isinstance(e, RedisError) and keys_unusable(e)]
    assert len(unusable) == 4  # the two WRONGTYPEs and the two Lua runtime errors above


async def test_the_wait_retries_a_refusal_and_raises_anything_else() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    replies: list[BaseException | str] = [
        *REFUSED["BUSY"][:1],
        *REFUSED["LOADING"],
        *REFUSED["OOM"][:1],
        "ok",
    ]

    async def op() -> str:
        reply = replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    with structlog.testing.capture_logs() as logs:
        assert await outlast_refusals(op, "a step", sleep=sleep) == "ok"
    assert len(sleeps) == 3 and all(0 < s <= 2.0 for s in sleeps)  # the REDIS backoff
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warned] == [  # once per reason, not per try
        f"Redis refuses for now: {REASONS[code]}; waiting for it" for code in ("BUSY", "LOADING", "OOM")
    ]
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["Redis accepts again"]
    assert OUTAGE.waiting == 0

    async def wrong() -> None:
        raise ReadOnlyError("You can't write against a read only replica.")

    with pytest.raises(ReadOnlyError):
        await outlast_refusals(wrong, "a step", sleep=sleep)


async def test_an_outage_is_logged_once_however_many_steps_wait() -> None:
    released = asyncio.Event()

    async def sleep(_: float) -> None:
        await asyncio.sleep(0)

    def step() -> Callable[[], Awaitable[None]]:
        async def op() -> None:
            if not released.is_set():
                raise REFUSED["BUSY"][0]

        return op

    with structlog.testing.capture_logs() as logs:
        waits = [asyncio.create_task(outlast_refusals(step(), f"step {n}", sleep=sleep)) for n in range(20)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert OUTAGE.waiting == 20
        released.set()
        await asyncio.gather(*waits)
    assert [e["log_level"] for e in logs] == ["warning", "info"], logs
    assert OUTAGE.waiting == 0
