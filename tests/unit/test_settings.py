from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import DEEPINFRA, Provider, SettingsError, load_settings, redact_url


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
        ({"TOKENWIRE_DEFAULT_PROVIDER": "nope"}, "default_provider"),
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
