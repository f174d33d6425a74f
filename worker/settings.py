"""Settings: a TOML file (``TOKENWIRE_CONFIG``) plus ``TOKENWIRE_*`` variables, which win.

Every setting has a snake_case name and the variable ``TOKENWIRE_`` + its name in capitals. An unknown
key or a bad value is a :class:`SettingsError` naming the key, never a silent default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

__all__ = ["DEEPINFRA", "Provider", "Settings", "SettingsError", "load_settings"]

ENV_PREFIX = "TOKENWIRE_"
CONFIG_ENV = "TOKENWIRE_CONFIG"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://")]


class Provider(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a provider's endpoints are; ``{model}`` in a URL is replaced by the job's model."""

    native_url: HttpUrl | None = None
    chat_url: HttpUrl | None = None
    completions_url: HttpUrl | None = None
    api_key_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    supports_top_n_tokens: bool = False
    max_top_n_tokens: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5

    def url_for(self, api: str) -> str | None:
        url: str | None = {
            "native": self.native_url,
            "chat": self.chat_url,
            "completions": self.completions_url,
        }.get(api)
        return url

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        if self.api_key_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.api_key_env)
        return value or None


DEEPINFRA = Provider(
    native_url="https://api.deepinfra.com/v1/inference/{model}",
    chat_url="https://api.deepinfra.com/v1/openai/chat/completions",
    completions_url="https://api.deepinfra.com/v1/openai/completions",
    api_key_env="DEEPINFRA_TOKEN",
)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of a worker process. Times are in seconds."""

    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    prefix: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")] = "tokenwire"
    consumer_name: str | None = None
    concurrency: PositiveInt = 64
    lease_seconds: PositiveFloat = 30.0
    reclaim_interval_seconds: PositiveFloat = 5.0
    max_deliveries: PositiveInt = 3
    max_attempts: PositiveInt = 3
    drain_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 25.0
    stall_timeout_seconds: PositiveFloat = 60.0
    retry_base_seconds: PositiveFloat = 1.0
    retry_max_seconds: PositiveFloat = 30.0
    consumer_reap_idle_seconds: PositiveFloat = 3600.0
    connect_timeout_seconds: PositiveFloat = 10.0
    upstream_transport: Annotated[str, msgspec.Meta(pattern=r"^(httpx|aiohttp)$")] = "aiohttp"
    job_deadline_seconds: PositiveFloat = 900.0
    output_ttl_seconds: PositiveInt = 3600
    running_ttl_seconds: PositiveInt = 86400
    events_maxlen: PositiveInt = 100_000
    block_seconds: PositiveFloat = 5.0
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    default_provider: str = "deepinfra"
    max_payload_bytes: PositiveInt = 1_048_576
    max_input_chars: PositiveInt = 200_000
    max_tokens_cap: PositiveInt = 32_768
    default_max_tokens: PositiveInt = 512
    max_event_bytes: PositiveInt = 1_048_576
    max_stream_bytes: PositiveInt = 256 * 1_048_576
    dead_maxlen: PositiveInt = 100_000
    log_level: Annotated[str, msgspec.Meta(pattern=r"^(?i:debug|info|warning|error)$")] = "info"
    log_format: Annotated[str, msgspec.Meta(pattern=r"^(auto|json|console)$")] = "auto"
    providers: dict[str, Provider] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_provider not in self.all_providers():
            raise ValueError(f"default_provider {self.default_provider!r} is not a configured provider")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens is above max_tokens_cap")

    def all_providers(self) -> dict[str, Provider]:
        """Configured providers, with the built-in ``deepinfra`` unless the file redefines it."""
        return {"deepinfra": DEEPINFRA, **self.providers}

    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names the key and where it came from."""


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host``: passwords never reach logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, has_pw, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if has_pw else ''}@{host}" if has_pw else f"{scheme}://***@{host}"


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def load_settings(
    environ: Mapping[str, str] | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings from ``TOKENWIRE_CONFIG`` (TOML), ``TOKENWIRE_*`` variables and ``overrides``."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = env.get(CONFIG_ENV)
    if path:
        raw.update(_read_toml(Path(path)))
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _FIELDS or key == "providers":
            raise SettingsError(f"{name}: unknown setting (known: {', '.join(sorted(_env_names()))})")
        raw[key] = value
    from_env = {k for k in raw if ENV_PREFIX + k.upper() in env}
    if overrides:
        raw.update(overrides)
        from_env -= set(overrides)
    return _convert(raw, path, from_env)


def _env_names() -> list[str]:
    return [ENV_PREFIX + k.upper() for k in _FIELDS if k != "providers"]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{CONFIG_ENV}: no such file {str(path)!r}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"{path}: unknown setting {unknown[0]!r}")
    return data


def _convert(raw: dict[str, Any], path: str | None, from_env: set[str]) -> Settings:
    providers = raw.pop("providers", {})
    if not isinstance(providers, dict):
        raise SettingsError(f"providers: expected a table of providers (config {path})")
    converted = {}
    for name, table in providers.items():
        try:
            converted[name] = msgspec.convert(table, Provider)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"setting providers.{name}{_where(exc)}: {exc} (config {path})") from None
    try:
        return msgspec.convert({**raw, "providers": converted}, Settings, strict=False)
    except msgspec.ValidationError as exc:
        key = _where(exc).lstrip(".")
        origin = "" if key in from_env or path is None else f" (config {path})"
        if not key:
            raise SettingsError(f"invalid settings: {exc}{origin}") from None
        name = f"{ENV_PREFIX}{key.upper()}" if key in from_env else key
        raise SettingsError(f"setting {name}: {exc}{origin}") from None


def _where(exc: Exception) -> str:
    """``Expected `int` - at `$.concurrency``` → ``.concurrency``; '' when no path is given."""
    marker = "at `$"
    text = str(exc)
    return text.split(marker, 1)[1].rstrip("`") if marker in text else ""
