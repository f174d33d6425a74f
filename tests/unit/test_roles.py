"""The roles table: its rendering as ACL rules, the printed ACL SETUSER line, the docs drawn from it,
and that it names every command the code sends (scripts included)."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest

from worker import scripts
from worker.roles import ROLES, Channel, Command, KeyPattern, acl_rules, main, markdown, setuser_line

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- roles:begin", "<!-- roles:end -->"


def test_worker_rules_for_a_prefix() -> None:
    rules = acl_rules("worker", prefix="tokenwire")
    assert rules[:3] == ["~{tokenwire}:jobs", "~{tokenwire}:dead", "~tokenwire:job:*"]
    assert "&tokenwire:cancel" in rules and "~tokenwire:nolp:*" in rules
    assert "+xreadgroup" in rules and "+xgroup|create" in rules and "+evalsha" in rules
    assert all(r.startswith(("~", "%R~", "%W~", "&", "+")) for r in rules)
    assert not any(r.startswith(("-", "+@")) or r in ("~*", "&*", "allkeys") for r in rules)  # nothing wide


def test_access_modes_render_as_redis_writes_them() -> None:
    assert acl_rules("producer", prefix="acme")[0] == "%W~{acme}:jobs"  # it adds, never reads
    assert acl_rules("subscriber", prefix="acme")[0] == "%R~acme:job:*"


def test_only_the_prefix_is_replaced_and_glob_characters_are_escaped() -> None:
    assert acl_rules("worker", prefix="Pp")[:3] == ["~{Pp}:jobs", "~{Pp}:dead", "~Pp:job:*"]
    assert acl_rules("subscriber", prefix="a*b")[0] == "%R~a\\*b:job:*"
    for bad in ("", "a b", "a\nb"):
        with pytest.raises(ValueError, match="prefix"):
            acl_rules("worker", prefix=bad)


def test_an_unknown_role_is_named() -> None:
    with pytest.raises(ValueError, match="no role 'admin': choose one of worker, producer"):
        acl_rules("admin")


def test_every_grant_has_a_reason_and_no_duplicates() -> None:
    for role in ROLES.values():
        grants: list[KeyPattern | Channel | Command] = [*role.keys, *role.channels, *role.commands]
        assert all(g.why.strip() for g in grants), role.name
        rules = acl_rules(role.name)
        assert len(rules) == len(set(rules)) == len(grants), role.name


def test_setuser_line_hashes_the_password() -> None:
    line = setuser_line("producer", prefix="p", user="svc", password="s3cret-pw")
    digest = hashlib.sha256(b"s3cret-pw").hexdigest()
    assert line.startswith(f"ACL SETUSER svc reset on #{digest} %W~{{p}}:jobs ")
    assert "s3cret-pw" not in line
    assert setuser_line("worker").startswith("ACL SETUSER tokenwire-worker reset on ~{tokenwire}:jobs ")
    with pytest.raises(ValueError, match="user name"):
        setuser_line("worker", user="a b")


def test_the_command_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["worker", "--prefix", "acme"]) == 0
    out, err = capsys.readouterr()
    assert out == setuser_line("worker", prefix="acme") + "\n" and "no password given" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-from-stdin\n"))
    assert main(["operator", "--password-stdin", "--user", "ops"]) == 0
    out, err = capsys.readouterr()
    assert out == setuser_line("operator", user="ops", password="pw-from-stdin") + "\n" and not err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["operator", "--password-stdin"]) == 2
    assert main(["subscriber", "--rules"]) == 0
    assert capsys.readouterr().out.split() == acl_rules("subscriber")
    assert main(["worker", "--prefix", "a b"]) == 2
    assert "prefix 'a b'" in capsys.readouterr().err
    assert main(["--markdown"]) == 0 and capsys.readouterr().out == markdown()
    assert main(["worker", "--cluster", "--rules"]) == 0
    assert capsys.readouterr().out.split() == acl_rules("worker", cluster=True)
    with pytest.raises(SystemExit):
        main([])


def test_the_docs_are_rendered_from_the_table() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "## Redis users and ACLs" in text
    start = text.index(BEGIN)
    block = text[text.index("\n", start) + 1 : text.index(END)]
    assert block == markdown(), "docs/operations.md is out of date: paste `python -m worker.roles --markdown`"


_SCRIPTS = [name for name in scripts.__all__ if isinstance(getattr(scripts, name), str)]


def _script_commands() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in _SCRIPTS:
        source = getattr(scripts, name)
        cmds = set()
        for match in re.finditer(r"redis\.call\('([A-Z]+)'", source):
            cmds.add(match.group(1).lower())
        if "'XGROUP', 'DELCONSUMER'" in source:
            cmds = (cmds - {"xgroup"}) | {"xgroup|delconsumer"}
        found[name] = cmds
    return found


BUDGET_SCRIPTS = {"BUDGET_ACQUIRE", "BUDGET_RELEASE", "BUDGET_THROTTLE", "BUDGET_RENEW"}  # ratelimit.py
SCRIPTS_OF = {  # which role runs which script (worker/store.py, worker/queue.py, worker/lease.py)
    "worker": {"BEGIN", "FINISH", "FAIL", "ACK", "DEAD", "REAP", "RENEW", "HANDBACK", *BUDGET_SCRIPTS}
    | {"REVIEW_ADD"},
    "reviewer": {"REVIEW_RESOLVE"},
    "producer": {"ENQUEUE", "CANCEL", "RECORD_ENTRY"},
    "operator": {"ENQUEUE", "RECORD_ENTRY", "REDRIVE"},
    "gateway": {"ENQUEUE", "CANCEL", "RECORD_ENTRY"},  # and ADMIT (worker/gateway/limits.py)
    "subscriber": set(),
    "feedback": set(),
}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_command_a_roles_scripts_call_is_granted(role: str) -> None:
    granted = {c.name for c in ROLES[role].commands}
    commands = _script_commands()
    needed = set().union(*(commands.get(s, set()) for s in SCRIPTS_OF[role]))
    assert needed <= granted, needed - granted
    runs_scripts = {"evalsha", "script|load"} <= granted
    assert runs_scripts == bool(SCRIPTS_OF[role])


def test_the_scripts_table_covers_every_script() -> None:
    """A new script must be given to the roles that run it (and its commands granted to them)."""
    assert set(_SCRIPTS) - set().union(*SCRIPTS_OF.values()) == set()


def test_cluster_adds_the_cluster_clients_commands_to_every_role() -> None:
    for role in ROLES:
        plain, cluster = acl_rules(role), acl_rules(role, cluster=True)
        assert cluster == [*plain, "+cluster|slots", "+command", "+asking"]
    assert setuser_line("worker", cluster=True).endswith(" +cluster|slots +command +asking")
