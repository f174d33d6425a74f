from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import quote

import hypothesis
import hypothesis.strategies as st
import pytest
import structlog

from worker.settings import (
    _FIELDS,
    DEEPINFRA,
    Provider,
    Settings,
    SettingsError,
    is_service_link,
    load_settings,
    log_ignored_service_links,
    redact_url,
)


def test_defaults_and_builtin_provider() -> None:
    s = load_settings({})
    assert s.redis_url == "redis://localhost:6379/0" and s.prefix == "tokenwire"
    assert s.lease_seconds == 30 and s.reclaim_interval_seconds == 5 and s.max_deliveries == 3
    assert s.output_ttl_seconds == 3600
    assert s.all_providers()["deepinfra"] == DEEPINFRA
    assert DEEPINFRA.api_key_env == "DEEPINFRA_TOKEN"


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text(
        'concurrency = 8\nprefix = "filep"\n'
        '[providers.local]\nnative_url = "http://127.0.0.1:8080/v1/inference/{model}"\n'
        'api_key_env = "LOCAL_API_KEY"\n'
    )
    s = load_settings({"TOKENWIRE_CONFIG": str(cfg), "TOKENWIRE_CONCURRENCY": "12"})
    assert s.concurrency == 12 and s.prefix == "filep"
    local = s.all_providers()["local"]
    assert local == Provider(
        native_url="http://127.0.0.1:8080/v1/inference/{model}", api_key_env="LOCAL_API_KEY"
    )
    assert local.api_key({"LOCAL_API_KEY": "k"}) == "k" and local.api_key({}) is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TOKENWIRE_CONCURRENCY": "many"}, "TOKENWIRE_CONCURRENCY"),
        ({"TOKENWIRE_CONCURRENCY": "0"}, "TOKENWIRE_CONCURRENCY"),
        ({"TOKENWIRE_LEASE_SECONDS": "-1"}, "TOKENWIRE_LEASE_SECONDS"),
        ({"TOKENWIRE_LEAS_SECONDS": "3"}, "TOKENWIRE_LEAS_SECONDS"),
        ({"TOKENWIRE_DEFAULT_PROVIDER": "nope"}, "TOKENWIRE_DEFAULT_PROVIDER: 'nope' is not a configured"),
        ({"TOKENWIRE_DEFAULT_MAX_TOKENS": "99999999"}, "TOKENWIRE_DEFAULT_MAX_TOKENS: above max_tokens_cap"),
        ({"TOKENWIRE_LOG_FORMAT": "xml"}, "TOKENWIRE_LOG_FORMAT"),
    ],
)
def test_bad_env_values_name_the_key(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load_settings(env)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("concurrancy = 3\n", "concurrancy"),
        ('concurrency = "x"\n', "concurrency"),
        ("[providers.p]\nnative_url = 'ftp://x'\n", "providers.p.native_url"),
        ("[providers.p]\nnative_uri = 'http://x'\n", "native_uri"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    cfg = tmp_path / "tw.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=names):
        load_settings({"TOKENWIRE_CONFIG": str(cfg)})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings({"TOKENWIRE_CONFIG": str(tmp_path / "missing.toml")})


def test_passwords_are_redacted() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:s3cret@h") == "rediss://user:***@h"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    s = load_settings({"TOKENWIRE_REDIS_URL": "redis://:s3cret@h:1/0"})
    assert "s3cret" not in s.redacted_redis_url()


# ------------------------------------------------------------------------ Kubernetes service links

# Exactly what the kubelet adds to a pod for `Service tokenwire-worker-metrics` (ClusterIP 10.96.3.17,
# port 9100 named `metrics`) and for `Service tokenwire` (ClusterIP 10.96.8.2, port 8080 named `http`).
WORKER_METRICS_LINKS = {
    "TOKENWIRE_WORKER_METRICS_SERVICE_HOST": "10.96.3.17",
    "TOKENWIRE_WORKER_METRICS_SERVICE_PORT": "9100",
    "TOKENWIRE_WORKER_METRICS_SERVICE_PORT_METRICS": "9100",
    "TOKENWIRE_WORKER_METRICS_PORT": "tcp://10.96.3.17:9100",
    "TOKENWIRE_WORKER_METRICS_PORT_9100_TCP": "tcp://10.96.3.17:9100",
    "TOKENWIRE_WORKER_METRICS_PORT_9100_TCP_PROTO": "tcp",
    "TOKENWIRE_WORKER_METRICS_PORT_9100_TCP_PORT": "9100",
    "TOKENWIRE_WORKER_METRICS_PORT_9100_TCP_ADDR": "10.96.3.17",
}
TOKENWIRE_LINKS = {
    "TOKENWIRE_SERVICE_HOST": "10.96.8.2",
    "TOKENWIRE_SERVICE_PORT": "8080",
    "TOKENWIRE_SERVICE_PORT_HTTP": "8080",
    "TOKENWIRE_PORT": "tcp://10.96.8.2:8080",
    "TOKENWIRE_PORT_8080_TCP": "tcp://10.96.8.2:8080",
    "TOKENWIRE_PORT_8080_TCP_PROTO": "tcp",
    "TOKENWIRE_PORT_8080_TCP_PORT": "8080",
    "TOKENWIRE_PORT_8080_TCP_ADDR": "10.96.8.2",
}
# An IPv6 cluster, a UDP port as the second port of a Service named tokenwire-edge (not
# tokenwire-gateway: its TOKENWIRE_GATEWAY_PORT would be the gateway_port setting, refused as a clash).
IPV6_UDP_LINKS = {
    "TOKENWIRE_EDGE_SERVICE_HOST": "fd00:10:96::a",
    "TOKENWIRE_EDGE_SERVICE_PORT": "80",
    "TOKENWIRE_EDGE_SERVICE_PORT_DNS": "53",
    "TOKENWIRE_EDGE_PORT": "tcp://[fd00:10:96::a]:80",
    "TOKENWIRE_EDGE_PORT_53_UDP": "udp://[fd00:10:96::a]:53",
    "TOKENWIRE_EDGE_PORT_53_UDP_PROTO": "udp",
    "TOKENWIRE_EDGE_PORT_53_UDP_PORT": "53",
    "TOKENWIRE_EDGE_PORT_53_UDP_ADDR": "fd00:10:96::a",
}


@pytest.mark.parametrize("links", [WORKER_METRICS_LINKS, TOKENWIRE_LINKS, IPV6_UDP_LINKS])
def test_service_link_variables_are_skipped_and_logged_without_their_value(links: dict[str, str]) -> None:
    env = {**links, "TOKENWIRE_CONCURRENCY": "12", "TOKENWIRE_METRICS_PORT": "9464"}
    with structlog.testing.capture_logs() as logs:
        s = load_settings(env)
        assert logs == [], "settings load before logging is configured: they log nothing themselves"
        log_ignored_service_links(env)
    assert s.concurrency == 12 and s.metrics_port == 9464, "the real settings beside them still apply"
    skipped = [e for e in logs if e["event"] == "ignored a Kubernetes service-link variable"]
    assert sorted(e["variable"] for e in skipped) == sorted(links), "one debug line per variable"
    assert all(e["log_level"] == "debug" for e in skipped)
    for entry in skipped:
        assert not any(str(v) in entry.values() for v in links.values()), "no value is logged"


def test_service_links_are_recognised_only_with_a_link_value() -> None:
    for name, value in {**WORKER_METRICS_LINKS, **TOKENWIRE_LINKS, **IPV6_UDP_LINKS}.items():
        assert is_service_link(name, value), name
    not_links = [
        ("TOKENWIRE_FOO_SERVICE_HOST", "redis.example"),  # not an IP
        ("TOKENWIRE_FOO_SERVICE_PORT", "http"),
        ("TOKENWIRE_METRIC_PORT", "9464"),  # a typo of metrics_port, not a tcp:// link
        ("TOKENWIRE_FOO_PORT", "tcp://redis.example:80"),
        ("TOKENWIRE_FOO_PORT", "tcp://[10.0.0.1]:80"),  # brackets around IPv4
        ("TOKENWIRE_FOO_PORT", "tcp://10.0.0.1:0"),
        ("TOKENWIRE_FOO_PORT_9100_TCP", "tcp://10.0.0.1:9200"),  # not the port its name says
        ("TOKENWIRE_FOO_PORT_9100_TCP", "udp://10.0.0.1:9100"),
        ("TOKENWIRE_FOO_PORT_9100_TCP_PROTO", "udp"),
        ("TOKENWIRE_FOO_PORT_9100_TCP_PORT", "9200"),
        ("TOKENWIRE_FOO_PORT_9100_TCP_ADDR", "localhost"),
        ("TOKENWIRE_FOO_PORT_9100_HTTP", "http://10.0.0.1:9100"),
        ("TOKENWIRE_worker_SERVICE_HOST", "10.0.0.1"),  # Kubernetes writes capitals only
    ]
    for name, value in not_links:
        assert not is_service_link(name, value), name
        with pytest.raises(SettingsError, match=f"^{name}: unknown setting"):
            load_settings({name: value})


@pytest.mark.parametrize("key", sorted(k for k in _FIELDS if k != "providers"))
def test_a_real_setting_is_never_skipped_for_looking_like_a_link(key: str) -> None:
    """TOKENWIRE_METRICS_PORT=tcp://… (a Service named tokenwire-metrics) is refused, not dropped; the
    same holds for every setting, present and future (TOKENWIRE_GATEWAY_PORT once a gateway exists)."""
    name = f"TOKENWIRE_{key.upper()}"
    for value in ("tcp://10.96.0.9:9464", "10.96.0.9", "9464"):
        try:
            s = load_settings({name: value})
        except SettingsError as exc:
            assert name in str(exc), "the error names the variable"
            continue
        assert str(getattr(s, key)).lower() != str(getattr(Settings(), key)).lower() or value in (
            str(getattr(Settings(), key)),
        ), f"{name}={value} was dropped instead of applied"


def test_a_setting_clashing_with_a_service_link_says_so() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"TOKENWIRE_METRICS_PORT": "tcp://10.96.0.9:9464", **WORKER_METRICS_LINKS})
    message = str(caught.value)
    assert message.startswith("setting TOKENWIRE_METRICS_PORT: Expected `int`")
    assert "Service named tokenwire-metrics" in message and "enableServiceLinks: false" in message


# ---------------------------------------------------------------------------------- metrics host


def test_metrics_bind_loopback_unless_told() -> None:
    assert load_settings({}).metrics_host == "127.0.0.1"
    for host in ("0.0.0.0", "::", "::1", "10.1.2.3", "localhost", "metrics.internal"):
        assert load_settings({"TOKENWIRE_METRICS_HOST": host}).metrics_host == host
    for bad in ("", "0.0.0.0:9464x", "a b", "http://x"):
        with pytest.raises(SettingsError, match="TOKENWIRE_METRICS_HOST"):
            load_settings({"TOKENWIRE_METRICS_HOST": bad})


# -------------------------------------------------------------------------------------- Redis URL

ACCEPTED_URLS = [
    "redis://localhost:6379/0",
    "redis://h",
    "redis://h/",
    "REDIS://h:1/2",
    "rediss://h:6380/1",
    "rediss://:p%40ss%2Fw@h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem",
    "redis://user:pw@h:6379/3",
    "redis://user@h",
    "redis://:pw@10.0.0.1:1/0",
    "redis://[::1]:6379/0",
    "redis://h/0?db=4&socket_timeout=2.5&client_name=tw&protocol=3&password=pw",
    "redis://redis_1.compose-net:6379",
    "unix:///run/redis/redis.sock",
    "unix://:pw@/run/redis/redis.sock?db=2",
]


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_what_redis_py_accepts_is_accepted(url: str) -> None:
    assert load_settings({"TOKENWIRE_REDIS_URL": url}).redis_url == url


MALFORMED_URLS = {
    # no host: redis-py would connect to localhost:6379
    "redis://": "no host",
    "redis:///0": "no host",
    "redis://:pw@/0": "no host",
    # not a Redis scheme
    "http://x": "is not a Redis URL",
    "localhost:6391": "is not a Redis URL",
    "tcp://10.0.0.1:6379": "is not a Redis URL",
    "redis": "is not a Redis URL",
    # one slash: redis-py used to read it as localhost:6379
    "redis:/localhost:6391": "write two slashes after 'redis:', as in 'redis://localhost:6391'",
    "rediss:h:6380": "write two slashes",
    # bad port
    "redis://h:0": "port is not a number from 1 to 65535",
    "redis://h:65536/0": "port is not a number from 1 to 65535",
    "redis://h:port/0": "port is not a number from 1 to 65535",
    "redis://:ab/S@host": "percent-encoded",  # a '/' in the password cuts the URL short
    # the database is not a number: redis-py would silently use database 0
    "redis://h/zero": "database number",
    "redis://h:6379/0/1": "database number",
    # otherwise malformed
    "redis://h/0?no_such_option=1": "no option 'no_such_option'",
    "redis://h/0?db=x": "the option 'db' has a value",
    "redis://h/0?PASSWORD=pw": "no option 'PASSWORD'",
    "unix://run/redis.sock": "three slashes",
    "unix://": "no socket path",
    "redis://[::1/0": "brackets",
    "redis://h st/0": "neither a host name nor an IP address",
    " redis://h": "spaces or control characters",
    "redis://h\n": "spaces or control characters",
}


@pytest.mark.parametrize(("url", "problem"), sorted(MALFORMED_URLS.items()))
def test_a_malformed_redis_url_is_one_line_naming_the_setting(
    url: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_connections(*args: object, **kwargs: object) -> None:
        raise AssertionError("settings validation must not connect or resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_connections)
    monkeypatch.setattr(socket.socket, "connect", no_connections)
    with pytest.raises(SettingsError) as from_env:
        load_settings({"TOKENWIRE_REDIS_URL": url})
    message = str(from_env.value)
    assert message.startswith("setting TOKENWIRE_REDIS_URL: ") and problem in message
    assert "\n" not in message, "one line"
    cfg = tmp_path / "tw.toml"
    cfg.write_text(f"redis_url = {json.dumps(url)}\n")
    with pytest.raises(SettingsError) as from_file:
        load_settings({"TOKENWIRE_CONFIG": str(cfg)})
    assert str(from_file.value).startswith("setting redis_url: ") and f"(config {cfg})" in str(
        from_file.value
    )
    with pytest.raises(ValueError, match=r"^redis_url: "):
        Settings(redis_url=url)


def test_the_one_slash_url_never_reaches_redis_py() -> None:
    """The issue's case: `redis:/localhost:6391` once connected to localhost:6379 without a word."""
    with pytest.raises(SettingsError, match="two slashes"):
        load_settings({"TOKENWIRE_REDIS_URL": "redis:/localhost:6391"})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:7000/1", "only database 0"),
        ("redis://h:7000/0?db=2", "the option 'db'"),
        ("unix:///run/redis.sock", "not reached through a unix socket"),
    ],
)
def test_cluster_urls_follow_the_cluster_rules(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=f"TOKENWIRE_REDIS_URL: .*{problem}"):
        load_settings({"TOKENWIRE_REDIS_URL": url, "TOKENWIRE_REDIS_CLUSTER": "true"})
    assert load_settings({"TOKENWIRE_REDIS_URL": "rediss://:pw@h:7000/0", "TOKENWIRE_REDIS_CLUSTER": "1"})


def test_a_password_containing_a_slash_neither_raises_nor_leaks() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"TOKENWIRE_REDIS_URL": "redis://:ab/S3cr@host:6379/0"})
    assert "ab" not in str(caught.value) and "S3cr" not in str(caught.value)
    # percent-encoded, it is fine
    s = load_settings({"TOKENWIRE_REDIS_URL": "redis://:ab%2FS3cr@host:6379/0"})
    assert "S3cr" not in s.redacted_redis_url() and "S3cr" not in repr(s)


def test_redact_url_hides_query_passwords_in_any_case() -> None:
    assert redact_url("redis://h/0?password=s3cret&db=1") == "redis://h/0?password=***&db=1"
    assert redact_url("redis://h/0?PassWord=s3cret") == "redis://h/0?PassWord=***"
    assert redact_url("redis://h/0?db=1&pass%77ord=s3cret#x") == "redis://h/0?db=1&pass%77ord=***#***"
    assert redact_url("rediss://h/0?ssl_password=s3cret") == "rediss://h/0?ssl_password=***"
    assert redact_url("redis://:ab/S@host") == "redis://:***@host"
    assert redact_url("redis:/:s3cret@h:1") == "redis:/:***@h:1"
    assert redact_url(":s3cret@h:1") == ":***@h:1"
    assert redact_url("rediss://u:p@ss@h/0") == "rediss://u:***@h/0"
    assert redact_url("unix://:s3cret@/run/redis.sock") == "unix://:***@/run/redis.sock"
    assert redact_url("localhost:6391") == "localhost:6391"


MARK_START, MARK_END = "Qx7", "Zk9"
URL_SHAPES = [
    "redis://:{raw}@redis.example:6379/0",
    "redis://tw:{raw}@h/0",
    "rediss://:{raw}@h:6380/0?ssl_cert_reqs=none",
    "redis:/:{raw}@localhost:6391",
    "redis::{raw}@localhost:6391",
    "http://u:{raw}@x",
    ":{raw}@localhost:6391",
    "unix://:{raw}@/run/redis.sock",
    "redis://:{raw}@/0",
    "redis://:{raw}@h:99999",
    "redis://:{raw}@h/x",
    "redis://:{raw}@h/0?foo=1",
    "redis://h:6379/0?password={quoted}",
    "redis://h/0?db=1&PassWord={quoted}",
    "redis:/h/0?password={quoted}",
    "redis://:{quoted}@h/0",
]


@hypothesis.given(
    core=st.text(
        st.one_of(
            st.sampled_from("/?#@:%&=+[] \t\n"), st.characters(codec="utf-8", exclude_categories=["Cs"])
        ),
        max_size=24,
    ),
    shape=st.sampled_from(URL_SHAPES),
)
@hypothesis.settings(max_examples=400, deadline=None)
def test_the_password_never_appears_in_an_error_or_a_redacted_url(core: str, shape: str) -> None:
    password = MARK_START + core + MARK_END
    url = shape.format(raw=password, quoted=quote(password, safe=""))
    shown = [redact_url(url)]
    try:
        s = load_settings({"TOKENWIRE_REDIS_URL": url})
    except SettingsError as exc:  # nothing else: no ValueError from the URL parser
        shown.append(str(exc))
        assert "\n" not in str(exc)
    else:
        shown += [s.redacted_redis_url(), repr(s)]
    for text in shown:
        assert MARK_START not in text and MARK_END not in text, text


# ------------------------------------------------------------------------------- Redis password


def test_redis_password_is_folded_into_the_url_encoded() -> None:
    env = {"TOKENWIRE_REDIS_URL": "rediss://redis.ns.svc:6380/2", "TOKENWIRE_REDIS_PASSWORD": "a/b@c:d%e"}
    s = load_settings(env)
    assert s.redis_url == "rediss://:a%2Fb%40c%3Ad%25e@redis.ns.svc:6380/2"
    assert "a/b" not in repr(s) and "a%2Fb" not in repr(s) and "redis_password='***'" in repr(s)
    user = load_settings({**env, "TOKENWIRE_REDIS_URL": "redis://tw@h/0"})
    assert user.redis_url == "redis://tw:a%2Fb%40c%3Ad%25e@h/0"
    assert load_settings({**env, "TOKENWIRE_REDIS_PASSWORD": ""}).redis_url == env["TOKENWIRE_REDIS_URL"]
    same = load_settings({**env, "TOKENWIRE_REDIS_URL": "redis://:a%2Fb%40c%3Ad%25e@h/0"})
    assert same.redis_url == "redis://:a%2Fb%40c%3Ad%25e@h/0", "the same password twice is one password"


@pytest.mark.parametrize("url", ["redis://:other@h/0", "redis://h/0?password=other"])
def test_redis_password_and_a_password_in_the_url_conflict(url: str) -> None:
    env = {"TOKENWIRE_REDIS_URL": url, "TOKENWIRE_REDIS_PASSWORD": "s3cret"}
    with pytest.raises(SettingsError, match=r"^setting TOKENWIRE_REDIS_PASSWORD: .*give it once") as caught:
        load_settings(env)
    assert "s3cret" not in str(caught.value) and "other" not in str(caught.value)
