"""The gateway's parsers of outside bytes: stream ids, resume ids, keys, read tokens, SSE frames."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.gateway.auth import MAX_CREDENTIAL, TokenSigner, bearer_key, gateway_secret, tenant_for_key
from worker.gateway.hub import Feed, Watch, streams_of
from worker.gateway.ids import after_stream_id, id_problem, parse_stream_id, scoped_id, scoped_ids
from worker.gateway.sse import Entry, comment, entry_of, frame
from worker.settings import Settings, SettingsError, Tenant

SECRET = b"unit-test-secret-0123456789abcdef0123"


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_every_stream_id_parses_back(ms: int, seq: int) -> None:
    assert parse_stream_id(f"{ms}-{seq}") == (ms, seq)


@given(st.text(max_size=60))
def test_anything_else_is_no_stream_id_and_never_raises(text: str) -> None:
    parsed = parse_stream_id(text)
    if parsed is not None:
        assert text == f"{parsed[0]}-{parsed[1]}", "only the canonical form is accepted"


@pytest.mark.parametrize(
    "text", ["2**64-0", "18446744073709551616-0", "0-18446744073709551616", "01-1", "1-01", "-", "$"]
)
def test_out_of_range_or_non_canonical_ids_are_refused(text: str) -> None:
    assert parse_stream_id(text) is None


@given(st.one_of(st.none(), st.text(max_size=50)), st.one_of(st.none(), st.text(max_size=50)))
def test_after_stream_id_is_total(header: str | None, query: str | None) -> None:
    after, problem = after_stream_id(header, query)
    assert parse_stream_id(after) is not None
    if problem is not None:
        assert "is not a Redis stream id" in problem


def test_last_event_id_wins_and_empty_is_absent() -> None:
    assert after_stream_id("5-1", "3-0") == ("5-1", None)
    assert after_stream_id("", "3-0") == ("3-0", None)
    assert after_stream_id(None, None) == ("0-0", None)
    assert (
        after_stream_id("nope", "3-0")[1]
        == "Last-Event-ID is not a Redis stream id (<ms>-<seq>, as the `id:` lines carry)"
    )


@given(st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True), st.text(max_size=200))
def test_a_scoped_id_is_a_valid_job_id_whenever_the_id_is_accepted(tenant: str, job_id: str) -> None:
    import msgspec

    from worker.jobs import JobId

    if id_problem(tenant, job_id) is None:
        internal = scoped_id(tenant, job_id)
        assert internal.split("/", 1) == [tenant, job_id]
        ids = scoped_ids(tenant, job_id)
        assert ids[0] == internal and len(set(ids)) == len(ids)
        for one in ids:
            assert msgspec.convert(one, JobId) == one


def test_a_slash_or_a_long_id_is_refused_by_name() -> None:
    assert "no '/'" in (id_problem("acme", "a/b") or "")
    assert "at most 121 characters for tenant 'acme'" in (id_problem("acme", "x" * 122) or "")
    assert id_problem("acme", "x" * 121) is None


# -------------------------------------------------------------------------------- keys, tokens


def _tenants() -> dict[str, Tenant]:
    return {
        name: Tenant(key_sha256=hashlib.sha256(key.encode()).hexdigest())
        for name, key in (("a", "key-a-123456789"), ("b", "key-b-123456789"))
    }


def test_keys_find_their_tenant() -> None:
    assert tenant_for_key("key-a-123456789", _tenants()) == "a"
    assert tenant_for_key("key-b-123456789", _tenants()) == "b"
    assert tenant_for_key("key-c-123456789", _tenants()) is None
    assert tenant_for_key("k" * (MAX_CREDENTIAL + 1), _tenants()) is None


@given(st.text(max_size=2000))
def test_bearer_and_key_lookup_are_total(header: str) -> None:
    key = bearer_key(header)
    if key is not None:
        assert tenant_for_key(key, _tenants()) in (None, "a", "b")


def test_bearer_scheme() -> None:
    assert bearer_key("Bearer abc") == "abc"
    assert bearer_key("bearer   abc  ") == "abc"
    assert bearer_key("Basic abc") is None
    assert bearer_key("Bearer") is None
    assert bearer_key(None) is None


def test_tokens_are_bound_to_tenant_job_and_expiry() -> None:
    signer = TokenSigner(SECRET)
    now = time.time()
    token = signer.mint("a", "a/job-1", int(now) + 60)
    grant = signer.check(token, now=now)
    assert grant is not None and (grant.tenant, grant.job) == ("a", "a/job-1")
    assert signer.check(token, now=now + 61) is None, "expired"
    assert TokenSigner(SECRET + b"x").check(token, now=now) is None, "another secret"
    _head, tail = token.split(".")
    import base64

    forged_payload = base64.urlsafe_b64encode(b"b\nb/job-1\n9999999999").rstrip(b"=").decode()
    assert signer.check(f"{forged_payload}.{tail}", now=now) is None, (
        "another tenant or job needs another mac"
    )
    assert signer.mint("a", "a/job-1", int(now) + 60) == token, "deterministic"
    bound = signer.mint("a", "a/job-1", int(now) + 60, "1796591340254")
    grant = signer.check(bound, now=now)
    assert grant is not None and grant.created == "1796591340254", "bound to the job's creation"
    assert SECRET.decode() not in repr(signer)


@given(st.text(max_size=3000))
def test_token_check_is_total(token: str) -> None:
    assert TokenSigner(SECRET).check(token) is None


@given(st.binary(max_size=200), st.binary(max_size=40))
def test_tampered_tokens_fail(payload: bytes, mac: bytes) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    assert TokenSigner(SECRET).check(f"{b64(payload)}.{b64(mac)}") is None


def test_the_secret_is_required_and_long_and_never_shown() -> None:
    settings = Settings()
    with pytest.raises(SettingsError, match="TOKENWIRE_GATEWAY_SECRET is unset"):
        gateway_secret(settings, {})
    with pytest.raises(SettingsError, match="shorter than 32") as caught:
        gateway_secret(settings, {"TOKENWIRE_GATEWAY_SECRET": "short-secret"})
    assert "short-secret" not in str(caught.value)
    assert gateway_secret(settings, {"TOKENWIRE_GATEWAY_SECRET": "s" * 32}) == b"s" * 32


# -------------------------------------------------------------------------------- SSE frames


def _parse(data: bytes) -> list[dict[str, str | None]]:
    """Events as an EventSource dispatches them (the WHATWG algorithm, enough of it)."""
    events: list[dict[str, str | None]] = []
    lines: list[str] = []
    fields: dict[str, str | None] = {"id": None, "event": None}
    text = data.decode("utf-8", "replace")
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if lines:
                events.append({**fields, "data": "\n".join(lines)})
            lines, fields = [], {"id": None, "event": None}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            lines.append(value)
        elif name in ("id", "event"):
            fields[name] = value
    return events


@given(st.binary(max_size=300), st.text(max_size=30))
def test_no_stored_bytes_can_forge_a_field_or_another_event(raw: bytes, kind: str) -> None:
    import msgspec

    data = msgspec.json.encode({"type": kind, "x": raw.decode("latin-1")}) if raw[:1] == b"{" else raw
    entry = entry_of(b"7-3", {b"event": data})
    events = _parse(frame(entry))
    assert len(events) == 1, "one entry, one event"
    assert events[0]["id"] == "7-3"
    assert events[0]["event"] == entry.type and "\n" not in entry.type
    expected = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    assert events[0]["data"] == expected


def test_frames_of_real_events_are_the_stored_json_verbatim() -> None:
    raw = b'{"type":"token","job_id":"a/j","attempt":1,"text":"line\\nbreak"}'
    assert frame(entry_of(b"1-2", {b"event": raw})) == b"id: 1-2\nevent: token\ndata: " + raw + b"\n\n"
    assert entry_of(b"1-2", {b"event": raw}).wire == frame(entry_of(b"1-2", {b"event": raw})), "framed once"
    assert entry_of(b"1-3", {b"event": b'{"type":"done"}'}).terminal
    bare = entry_of(b"1-4", {b"other": b"x"})
    assert (bare.id, bare.type, bare.data) == ("1-4", "unknown", None) and bare.wire == frame(bare)
    assert frame(Entry("1-4", "unknown", None)).startswith(b": ")
    assert entry_of(b"1-5", {b"event": b'{"type":"evil\\nid: 9-9"}'}).type == "unknown"
    assert comment("a\nb\rc") == b": a b c\n\n"


def test_an_entry_reads_the_same_from_hiredis_lists_as_from_redis_pys_dicts() -> None:
    raw = b'{"type":"token","text":"a"}'
    pairs = [
        ([b"event", raw], {b"event": raw}),
        ([b"other", b"x", b"event", b"{}", b"event", raw], {b"other": b"x", b"event": raw}),  # last wins
        ([b"other", b"x"], {b"other": b"x"}),
        ([b"event"], {}),  # an odd list (never from Redis): no event
        ([b"event", 7], {b"event": 7}),
    ]
    for flat, mapping in pairs:
        assert entry_of(b"1-2", flat) == entry_of(b"1-2", mapping), flat
    assert entry_of(b"1-2", [b"event", raw]).type == "token"
    assert entry_of(b"1-2", None).data is None


def test_xread_replies_of_every_shape_give_the_same_streams() -> None:
    entry = [b"1-1", [b"event", b"{}"]]
    expected = [("k", [entry])]
    assert streams_of([[b"k", [entry]]]) == expected  # RESP2 (hiredis and redis-py alike)
    assert streams_of({b"k": [entry]}) == expected  # hiredis, RESP3
    assert streams_of({b"k": [[entry]]}) == expected  # redis-py, RESP3 (entries wrapped once)
    assert streams_of({b"k": [[(b"1-1", {b"event": b"{}"})]]}) == [("k", [(b"1-1", {b"event": b"{}"})])]
    assert streams_of(None) == [] and streams_of([]) == [] and streams_of({}) == []


# -------------------------------------------------------------------------------- watches


def _entry(i: int, size: int = 100) -> Entry:
    return Entry(f"1-{i}", "token", b"x" * size)


def test_a_watch_takes_only_newer_entries_and_is_dropped_when_it_falls_behind() -> None:
    feed = Feed("a/j", "k", "1-0")
    watch = Watch(feed, (1, 0), limit=1000)
    feed.watches.add(watch)
    feed.deliver([_entry(1), _entry(2)])
    feed.deliver([_entry(2), _entry(3)])  # a duplicate of 2 is never handed over twice
    assert [e.id for e in watch.take()] == ["1-1", "1-2", "1-3"]
    feed.deliver([_entry(i) for i in range(4, 20)])  # one big read: not behind yet
    assert not watch.dropped
    dropped: list[bool] = []
    watch.on_drop = lambda: dropped.append(True)
    feed.deliver([_entry(20)])  # still holding the big read: behind
    assert watch.dropped and dropped == [True] and watch.take() == []


def test_a_terminal_entry_ends_the_feed() -> None:
    feed = Feed("a/j", "k", "0-0")
    watch = Watch(feed, (0, 0), limit=10_000)
    feed.watches.add(watch)
    feed.deliver([_entry(1), Entry("1-2", "done", b"{}"), _entry(3)])
    assert feed.done and [e.id for e in watch.take()] == ["1-1", "1-2"]
