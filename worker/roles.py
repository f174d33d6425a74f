"""The Redis users a deployment gives each part of tokenwire: every key pattern, channel and command a
role needs, each with its reason, rendered as exact Redis ACL rules for a prefix.

This table is the one place the roles live: ``docs/operations.md`` ("Redis users and ACLs") is
rendered from it (a test compares them) and ``tests/integration/test_acl.py`` runs every operation of
each role as a user made from it, and proves each grant needed (drop any one: an operation fails). A
feature that sends a new command or touches a new key adds it here.

``python -m worker.roles worker --prefix tokenwire`` prints a ready ``ACL SETUSER`` line.

Patterns are written with ``P`` for the prefix: ``{P}:jobs`` is ``{tokenwire}:jobs`` (the braces are
the Cluster hash tag, so a rule ``~tokenwire*`` does not cover it). Access: ``rw`` renders ``~``,
``r`` renders ``%R~`` (read only), ``w`` renders ``%W~`` (write only: ``XADD`` needs no read).
Commands inside the Lua scripts (:mod:`worker.scripts`) count: Redis checks each ``redis.call`` of a
script against the caller's ACL, so a script's commands are granted to every role that runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

__all__ = [
    "CLUSTER",
    "ROLES",
    "Channel",
    "Command",
    "KeyPattern",
    "Role",
    "acl_rules",
    "markdown",
    "setuser_line",
]


class KeyPattern(NamedTuple):
    pattern: str  # with P for the prefix
    access: Literal["rw", "r", "w"]
    why: str


class Channel(NamedTuple):
    pattern: str
    why: str


class Command(NamedTuple):
    name: str  # a command, or command|subcommand, as ACL rules write it
    why: str


class Role(NamedTuple):
    name: str
    summary: str
    keys: tuple[KeyPattern, ...]
    channels: tuple[Channel, ...]
    commands: tuple[Command, ...]


_PING = Command("ping", "redis-py's health check of a pooled connection idle 30 s (health_check_interval)")
_EVALSHA = Command("evalsha", "every script call (redis-py runs registered scripts by their sha)")
_SCRIPT_LOAD = Command("script|load", "a script's first call on a Redis that has not cached it (NOSCRIPT)")
_STATE = KeyPattern("P:job:*", "rw", "each job's state hash P:job:{ID} and event stream P:job:{ID}:events")

ROLES: Final[dict[str, Role]] = {
    role.name: role
    for role in (
        Role(
            "worker",
            "tokenwire worker: reads jobs, streams their events, keeps leases, takes over, dead-letters",
            keys=(
                KeyPattern("{P}:jobs", "rw", "the job stream and its consumer group `workers`"),
                KeyPattern("{P}:dead", "rw", "dead letters are added (DEAD script) and counted (metrics)"),
                _STATE,
                KeyPattern("{P}:review*", "rw", "jobs to review go on {P}:review once (REVIEW_ADD, markers)"),
                KeyPattern("P:nolp:*", "rw", "provider+model pairs that refused logprobs (a TTL'd memo)"),
                KeyPattern("P:no_n:*", "rw", "provider+model pairs that ignore chat's `n` (a TTL'd memo)"),
                KeyPattern("P:budget*", "rw", "provider budgets (BUDGET_* scripts), the scopes in use"),
            ),
            channels=(Channel("P:cancel", "the cancel listener subscribes to cancellation requests"),),
            commands=(
                _PING,
                Command("xgroup|create", "creates the consumer group at start-up (and after NOGROUP)"),
                Command("xreadgroup", "reads new job entries"),
                Command("xautoclaim", "takes over entries whose owner stopped renewing their lease"),
                Command("xpending", "delivery counts of taken-over entries; RENEW and REAP check owners"),
                Command("xclaim", "RENEW script: resets a held entry's idle time (JUSTID), the lease"),
                Command("xack", "ACK and DEAD scripts; acknowledges deleted entries found by a takeover"),
                Command("xdel", "ACK and DEAD scripts delete acknowledged entries"),
                Command("xadd", "events (publisher, BEGIN, FINISH, FAIL), dead letters, drain hand-backs"),
                Command("xrange", "after a lost reply, whether an event write had landed"),
                Command("xrevrange", "BEGIN and FAIL scripts read a job's last event id"),
                Command("xlen", "queue and dead-letter lengths for the metrics"),
                Command("xinfo|groups", "pending and lag for the metrics; /readyz checks the group"),
                Command("xinfo|consumers", "finds idle consumers to remove; per-consumer metrics"),
                Command("xgroup|delconsumer", "REAP script removes idle consumers that own nothing"),
                Command("hget", "the scripts read a job's state (BUDGET_ACQUIRE: a waiter's expiry)"),
                Command(
                    "hset",
                    "the scripts write a job's state (HANDBACK: a drain's hand-back token); budget state, "
                    "waiters and the scopes in use (P:budgets)",
                ),
                Command("hsetnx", "BEGIN records `created`, FAIL records `entry`"),
                Command("hdel", "BEGIN clears a drain hand-back's token; budget scripts drop waiters, AIMD"),
                Command("pexpire", "the scripts set each job key's and budget key's TTL"),
                Command("hmget", "budget scripts read a scope's AIMD state and buckets"),
                Command("hincrby", "BUDGET_ACQUIRE numbers waiters and counts grants; THROTTLE counts 429s"),
                Command("zadd", "budget scripts: a request's slot lease, its place in the FIFO queue"),
                Command("zrem", "budget scripts free a slot and leave the queue"),
                Command("zremrangebyscore", "BUDGET_ACQUIRE frees slots whose lease ended (crashed workers)"),
                Command("zscore", "BUDGET_ACQUIRE: is a request waiting already; RENEW: is a slot held"),
                Command("zrange", "BUDGET_ACQUIRE reads the queue's head (to drop waiters gone silent)"),
                Command("zrank", "BUDGET_ACQUIRE: a waiting request's place in the queue"),
                Command("zcard", "budget scripts count slots in use and requests waiting"),
                Command("time", "budget scripts use Redis's clock (workers' clocks may disagree)"),
                _EVALSHA,
                _SCRIPT_LOAD,
                Command("subscribe", "the cancel listener"),
                Command(
                    "get", "whether a provider+model refused logprobs (P:nolp:*), ignores `n` (P:no_n:*)"
                ),
                Command("set", "remembers a provider+model that refused logprobs, ignores `n` (SET ... PX)"),
            ),
        ),
        Role(
            "producer",
            "Client.enqueue and Client.cancel (tokenwire enqueue, tokenwire cancel)",
            keys=(
                KeyPattern("{P}:jobs", "w", "enqueue adds an entry (XADD only: no read)"),
                _STATE,
            ),
            channels=(Channel("P:cancel", "a running job's cancellation is published to its worker"),),
            commands=(
                _PING,
                Command("xadd", "enqueue; CANCEL script writes a queued job's `cancelled` event"),
                Command("hget", "ENQUEUE and CANCEL scripts read the job's state"),
                Command("hset", "ENQUEUE creates the state hash; CANCEL flags or ends the job"),
                Command("hsetnx", "enqueue records the job's entry id"),
                Command("pexpire", "ENQUEUE and CANCEL set the job keys' TTL"),
                _EVALSHA,
                _SCRIPT_LOAD,
                Command("publish", "tells the worker holding a running job to stop it"),
            ),
        ),
        Role(
            "subscriber",
            "Client.subscribe, result and status (tokenwire tail, tokenwire status)",
            keys=(KeyPattern("P:job:*", "r", "reads a job's events and state, writes nothing"),),
            channels=(),
            commands=(
                _PING,
                Command("xread", "reads a job's events live (blocking)"),
                Command("xrevrange", "result() starts from the last event"),
                Command("exists", "when no event arrives: whether the job exists at all"),
                Command("hgetall", "status() reads the state hash"),
            ),
        ),
        Role(
            "feedback",
            "Client.feedback and tokenwire feedback (judge an answer), tokenwire calibrate (read judgements)",
            keys=(
                KeyPattern("{P}:feedback", "rw", "feedback adds a judgement; calibrate reads them all"),
                KeyPattern("P:job:*", "r", "the judged job's done, segments and tokens, or its state"),
                KeyPattern("{P}:review*", "r", "an expired job's review entry keeps its signals"),
            ),
            channels=(),
            commands=(
                _PING,
                Command("xadd", "feedback adds a judgement to {P}:feedback (capped: MAXLEN ~)"),
                Command("xrange", "feedback reads the job's events; calibrate reads {P}:feedback"),
                Command("xrevrange", "feedback reads the job's last event (its terminal)"),
                Command("hgetall", "feedback of a job with no events: whether it is still queued"),
                Command("hget", "feedback of an expired job: its review marker names its review entry"),
            ),
        ),
        Role(
            "gateway",
            "tokenwire gateway: enqueues, follows, reads and cancels jobs for its tenants over HTTP",
            keys=(
                KeyPattern("{P}:jobs", "w", "enqueue adds an entry (XADD only: no read)"),
                _STATE,
                KeyPattern("P:gateway:*", "rw", "jobs in flight, P:gateway:{NAME}:inflight and :sweep"),
            ),
            channels=(Channel("P:cancel", "a running job's cancellation is published to its worker"),),
            commands=(
                _PING,
                Command("xadd", "enqueue; CANCEL script writes a queued job's `cancelled` event"),
                Command("xrange", "a stream's history, replayed to each client from its resume id"),
                Command("xrevrange", "a stream's last id, where a job's shared feed starts"),
                Command("xread", "the hub's reads of many jobs' new events at once"),
                Command("exists", "whether a silent job's keys still exist (else its streams end)"),
                Command("hget", "ENQUEUE and CANCEL scripts; a job's `created` (its read token) and state"),
                Command("hmget", "a job's state and tenant first; GET /v1/jobs/{id}: its public fields"),
                Command("hset", "ENQUEUE creates the state hash (with its tenant); CANCEL flags or ends it"),
                Command("hsetnx", "enqueue records the job's entry id; ADMIT marks a tenant's sweep"),
                Command("pexpire", "ENQUEUE, CANCEL and ADMIT set their keys' TTL"),
                Command("zscore", "ADMIT script: a job already counted in flight"),
                Command("zcard", "ADMIT script: the tenant's jobs in flight"),
                Command("zadd", "ADMIT script: counts a new job in flight; moves the one it checked back"),
                Command("zrange", "ADMIT script: the job a refusal checks; a tenant's sweep of its set"),
                Command("zrem", "ended jobs leave the in-flight count"),
                _EVALSHA,
                _SCRIPT_LOAD,
                Command("publish", "tells the worker holding a running job to stop it"),
            ),
        ),
        Role(
            "reviewer",
            "Client.review_items, take_reviews and resolve (tokenwire review list|take|resolve)",
            keys=(
                KeyPattern("{P}:review*", "rw", "the review stream, its group `reviewers`, the job markers"),
                KeyPattern("{P}:feedback", "w", "resolve records the judgement (XADD only: no read)"),
            ),
            channels=(),
            commands=(
                _PING,
                Command("xrange", "list reads the entries; resolve reads the job's entry"),
                Command("xrevrange", "resolve finds a job's entry by reading the stream (marker expired)"),
                Command("xpending", "list: who took each entry"),
                Command("xgroup|create", "take and resolve create the group `reviewers` on demand"),
                Command("xreadgroup", "take reads new entries through the group"),
                Command("xautoclaim", "take --claim-idle takes over entries a reviewer left unresolved"),
                Command("xack", "take acknowledges entries resolved before they were taken; REVIEW_RESOLVE"),
                Command("hget", "list and take read a job's marker (resolved?); resolve its entry id"),
                Command("exists", "REVIEW_RESOLVE: whether the job's marker expired"),
                Command("hset", "REVIEW_RESOLVE marks the job resolved"),
                Command("pexpire", "REVIEW_RESOLVE gives a marker it makes again its TTL"),
                Command("xadd", "resolve adds the judgement to {P}:feedback (capped: MAXLEN ~)"),
                _EVALSHA,
                _SCRIPT_LOAD,
            ),
        ),
        Role(
            "operator",
            "tokenwire dead list|redrive|purge and tokenwire stats",
            keys=(
                KeyPattern("{P}:jobs", "rw", "redrive adds entries; stats reads the group"),
                KeyPattern("{P}:dead", "rw", "dead letters are listed, removed when re-driven, purged"),
                KeyPattern("P:job:*", "rw", "redrive deletes a job's state and events and creates it anew"),
                KeyPattern("P:budget*", "r", "stats: the provider budget scopes in use and their state"),
            ),
            channels=(),
            commands=(
                _PING,
                Command("xrevrange", "dead list: the newest dead letters"),
                Command("xrange", "dead redrive: the dead letters to put back"),
                Command("xadd", "dead redrive: the job goes back on the job stream"),
                Command("xdel", "dead redrive: the re-driven dead letter is removed"),
                Command("del", "dead redrive resets the job's keys; dead purge deletes {P}:dead"),
                Command("hget", "ENQUEUE script (redrive re-creates the job) reads its state"),
                Command("hset", "ENQUEUE script writes the new state hash"),
                Command("hsetnx", "redrive records the new entry id"),
                Command("pexpire", "ENQUEUE script sets the state hash's TTL"),
                _EVALSHA,
                _SCRIPT_LOAD,
                Command("xlen", "stats: queue and dead-letter lengths; purge counts what it deletes"),
                Command("xinfo|groups", "stats: the group's pending and lag"),
                Command("xinfo|consumers", "stats: each consumer's pending and idle time"),
                Command("hgetall", "stats: the provider budget scopes in use (P:budgets)"),
                Command("hmget", "stats: a budget scope's AIMD limit, factor and counters"),
                Command("zcount", "stats: a budget scope's slots in use (unexpired leases)"),
                Command("zcard", "stats: requests waiting for a budget scope"),
            ),
        ),
    )
}
"""Every role by name."""

CLUSTER: Final = (
    Command("cluster|slots", "the cluster client's slot map, read at connect and after a MOVED reply"),
    Command("command", "the cluster client's command table (which arguments are keys), read at connect"),
    Command("asking", "the cluster client follows an ASK reply while a slot moves between nodes"),
)
"""What every role adds on Redis Cluster (``redis_cluster``): commands redis-py's cluster client sends
itself. Give the user on every node (ACLs are per node)."""

_GLOB: Final = re.compile(r"([*?\[\]\\])")
_ACCESS: Final = {"rw": "~", "r": "%R~", "w": "%W~"}


def _role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise ValueError(f"no role {name!r}: choose one of {', '.join(ROLES)}") from None


def _render(pattern: str, prefix: str) -> str:
    """``pattern`` with ``P`` replaced by ``prefix`` (its glob characters escaped)."""
    if not prefix or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise ValueError(f"prefix {prefix!r}: it must be printable, with no spaces")
    literal = _GLOB.sub(r"\\\1", prefix)
    return re.sub(r"(?<![A-Za-z])P(?=[:}])", lambda _: literal, pattern)


def acl_rules(role: str, *, prefix: str = "tokenwire", cluster: bool = False) -> list[str]:
    """The ACL rules of ``role`` for ``prefix``: key patterns, channels, then ``+command`` each, as
    ``ACL SETUSER`` takes them after ``reset on`` and a password (``reset`` denies everything else).
    ``cluster``: with :data:`CLUSTER`'s commands, for Redis Cluster."""
    spec = _role(role)
    rules = [_ACCESS[k.access] + _render(k.pattern, prefix) for k in spec.keys]
    rules += ["&" + _render(c.pattern, prefix) for c in spec.channels]
    rules += ["+" + c.name for c in (*spec.commands, *(CLUSTER if cluster else ()))]
    return rules


def setuser_line(
    role: str,
    *,
    prefix: str = "tokenwire",
    user: str | None = None,
    password: str | None = None,
    cluster: bool = False,
) -> str:
    """A complete ``ACL SETUSER`` command for ``role``. The password appears only as its SHA-256
    (``#…``); without one the user is created unable to log in until a password is added."""
    name = user or f"tokenwire-{role}"
    if not name or any(c.isspace() for c in name) or not name.isprintable():
        raise ValueError(f"user name {name!r}: it must be printable, with no spaces")
    auth = [f"#{hashlib.sha256(password.encode()).hexdigest()}"] if password else []
    rules = acl_rules(role, prefix=prefix, cluster=cluster)
    return " ".join(["ACL", "SETUSER", name, "reset", "on", *auth, *rules])


def markdown(prefix: str = "tokenwire") -> str:
    """The roles as the tables of ``docs/operations.md`` (its "Redis users and ACLs" section)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a pipe would end the table cell, even in code

    out: list[str] = []
    for spec in ROLES.values():
        out += [f"### `{spec.name}`: {spec.summary}", "", "| grant | rule | why |", "| --- | --- | --- |"]
        for k in spec.keys:
            rule = _ACCESS[k.access] + _render(k.pattern, prefix)
            out.append(f"| key `{k.pattern}` ({k.access}) | `{rule}` | {k.why} |")
        for c in spec.channels:
            out.append(f"| channel `{c.pattern}` | `&{_render(c.pattern, prefix)}` | {c.why} |")
        for cmd in spec.commands:
            out.append(f"| command | `+{cell(cmd.name)}` | {cell(cmd.why)} |")
        out += ["", "```", setuser_line(spec.name, prefix=prefix), "```", ""]
    out += ["### On Redis Cluster, every role adds", "", "| grant | rule | why |", "| --- | --- | --- |"]
    out += [f"| command | `+{cell(cmd.name)}` | {cell(cmd.why)} |" for cmd in CLUSTER]
    out += ["", "(`--cluster` adds them to the printed line.)", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.roles", description="Print the Redis ACL of a tokenwire role."
    )
    parser.add_argument("role", nargs="?", choices=list(ROLES), help="the role (omit with --markdown)")
    parser.add_argument("--prefix", default="tokenwire", help="the key prefix (default: tokenwire)")
    parser.add_argument("--user", help="the Redis user name (default: tokenwire-ROLE)")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (printed hashed)"
    )
    parser.add_argument("--cluster", action="store_true", help="for Redis Cluster (redis_cluster)")
    parser.add_argument("--rules", action="store_true", help="print only the rules, one a line")
    parser.add_argument("--markdown", action="store_true", help="print every role as the docs' tables")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            sys.stdout.write(markdown(args.prefix))
            return 0
        if args.role is None:
            parser.error("name a role, or pass --markdown")
        if args.rules:
            print("\n".join(acl_rules(args.role, prefix=args.prefix, cluster=args.cluster)))
            return 0
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
        if args.password_stdin and not password:
            print("worker.roles: no password on standard input", file=sys.stderr)
            return 2
        print(
            setuser_line(
                args.role, prefix=args.prefix, user=args.user, password=password, cluster=args.cluster
            )
        )
    except ValueError as exc:
        print(f"worker.roles: {exc}", file=sys.stderr)
        return 2
    if password is None:
        print(
            "worker.roles: no password given: add one (ACL SETUSER NAME >PASSWORD) before use",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
