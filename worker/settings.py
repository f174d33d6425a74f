"""Settings: a TOML file (``TOKENWIRE_CONFIG``) plus ``TOKENWIRE_*`` variables, which win.

Every setting has a snake_case name and the variable ``TOKENWIRE_`` + its name in capitals. An unknown
key or a bad value is a :class:`SettingsError` naming the key, never a silent default.

Kubernetes adds ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_SERVICE_PORT…`` and ``<SERVICE>_PORT…`` variables
to every pod for every Service of its namespace (unless the pod sets ``enableServiceLinks: false``); for a
Service named ``tokenwire`` or ``tokenwire-*`` they start with ``TOKENWIRE_``. A variable that is not a
setting but has both the name and the value of such a link is skipped (and logged at debug level); a real
setting always wins and keeps its validation.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qs, quote, unquote, unquote_plus, urlsplit, urlunsplit

import msgspec

__all__ = ["DEEPINFRA", "Provider", "Settings", "SettingsError", "Tenant", "load_settings"]

ENV_PREFIX = "TOKENWIRE_"
CONFIG_ENV = "TOKENWIRE_CONFIG"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://")]
BindHost = Annotated[
    str, msgspec.Meta(pattern=r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$(?!\n)")
]


PricePerMillion = Annotated[float, msgspec.Meta(ge=0.0, le=1_000_000.0)]
PricedModel = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]  # a model name, or "*"


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a model costs, in the price table's currency (USD in the docs) per million tokens."""

    input: PricePerMillion
    output: PricePerMillion


class Provider(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a provider's endpoints are; ``{model}`` in a URL is replaced by the job's model.
    ``prices``: per model (``"*"`` for any model not named), what ``done.usage.cost`` and a job's
    ``budget`` are computed from (worker/cost.py)."""

    native_url: HttpUrl | None = None
    chat_url: HttpUrl | None = None
    completions_url: HttpUrl | None = None
    responses_url: HttpUrl | None = None  # OpenAI Responses API (`api: "responses"`)
    gemini_url: HttpUrl | None = None  # Gemini streamGenerateContent?alt=sse, holding {model}
    sglang_url: HttpUrl | None = None  # SGLang's native /generate
    api_key_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$(?!\n)")] | None = None
    supports_top_n_tokens: bool = False
    max_top_n_tokens: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    # How a job's candidates (worker/candidates.py) ask chat and completions for their answers:
    # "one_request" (`n` choices in one request), "separate" (one request each, the seed varied),
    # "auto" (one request; a provider that answers fewer choices than asked is remembered as
    # ignoring `n` and the missing candidates are asked for separately)
    n_choices: Literal["auto", "one_request", "separate"] = "auto"
    # Shared budgets, enforced across every worker through Redis (worker.ratelimit); none set: no
    # shared budget (a 429 still waits instead of spending attempts). ``limits_per = "model"`` gives
    # each of the provider's models its own budget of these sizes.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    requests_per_minute: Annotated[float, msgspec.Meta(gt=0, le=10_000_000)] | None = None
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=10_000_000_000)] | None = None
    limits_per: Literal["provider", "model"] = "provider"
    prices: Annotated[dict[PricedModel, Price], msgspec.Meta(max_length=10_000)] = msgspec.field(
        default_factory=dict
    )

    @property
    def limited(self) -> bool:
        """Whether the provider has a shared budget (any of the three limits set)."""
        return not (
            self.max_concurrency is None
            and self.requests_per_minute is None
            and self.tokens_per_minute is None
        )

    def url_for(self, api: str) -> str | None:
        """The ``<api>_url`` setting (every api in ``worker.jobs.API_NAMES`` has one)."""
        url = getattr(self, f"{api}_url", None) if api.isidentifier() else None
        return url if isinstance(url, str) else None

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        if self.api_key_env is None:
            return None
        value = (os.environ if environ is None else environ).get(self.api_key_env)
        return value or None


TenantName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$(?!\n)")]
Origin = Annotated[
    str, msgspec.Meta(max_length=256, pattern=r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?$(?!\n)|^\*$(?!\n)")
]


class Tenant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A gateway tenant (``[tenants.NAME]``): who holds the key whose SHA-256 is ``key_sha256``."""

    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]
    origins: Annotated[list[Origin], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    max_inflight_jobs: PositiveInt = 100
    max_streams: PositiveInt = 1000
    read_unscoped: bool = False


DEEPINFRA = Provider(
    native_url="https://api.deepinfra.com/v1/inference/{model}",
    chat_url="https://api.deepinfra.com/v1/openai/chat/completions",
    completions_url="https://api.deepinfra.com/v1/openai/completions",
    api_key_env="DEEPINFRA_TOKEN",
)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of a worker process. Times are in seconds."""

    redis_url: str = "redis://localhost:6379/0"
    # With a URL that carries no password: the password, kept out of the URL (Kubernetes reads both it and
    # KEDA's from one Secret key). It is folded into ``redis_url``, percent-encoded, when loaded.
    redis_password: str | None = None
    redis_cluster: bool = False
    prefix: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$(?!\n)")] = "tokenwire"
    consumer_name: str | None = None
    concurrency: PositiveInt = 64
    lease_seconds: PositiveFloat = 30.0
    reclaim_interval_seconds: PositiveFloat = 5.0
    max_deliveries: PositiveInt = 3
    max_attempts: PositiveInt = 3
    drain_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 25.0
    stall_timeout_seconds: PositiveFloat = 60.0
    # how long a provider+model's refusal of logprobs is remembered (in Redis, for every worker)
    logprobs_refusal_ttl_seconds: PositiveFloat = 3600.0
    retry_base_seconds: PositiveFloat = 1.0
    retry_max_seconds: PositiveFloat = 30.0
    consumer_reap_idle_seconds: PositiveFloat = 3600.0
    connect_timeout_seconds: PositiveFloat = 10.0
    upstream_transport: Annotated[str, msgspec.Meta(pattern=r"^(httpx|aiohttp)$(?!\n)")] = "aiohttp"
    job_deadline_seconds: PositiveFloat = 900.0
    output_ttl_seconds: PositiveInt = 3600
    running_ttl_seconds: PositiveInt = 86400
    events_maxlen: PositiveInt = 100_000
    # the review stream {P}:review (worker/review.py): about how many entries it keeps, and how long a
    # job's review marker (which makes the entry once per job) lives after the entry was added
    review_maxlen: PositiveInt = 10_000
    review_ttl_seconds: PositiveInt = 30 * 86400
    block_seconds: PositiveFloat = 5.0
    # Where /metrics, /healthz, /readyz listen: loopback unless a probe or scraper must reach them from
    # outside (the Kubernetes manifests set 0.0.0.0).
    metrics_host: BindHost = "127.0.0.1"
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    default_provider: str = "deepinfra"
    max_payload_bytes: PositiveInt = 1_048_576
    max_input_chars: PositiveInt = 200_000
    max_tokens_cap: PositiveInt = 32_768
    default_max_tokens: PositiveInt = 512
    max_event_bytes: PositiveInt = 1_048_576
    max_stream_bytes: PositiveInt = 256 * 1_048_576
    dead_maxlen: PositiveInt = 100_000
    log_level: Annotated[str, msgspec.Meta(pattern=r"^(?i:debug|info|warning|error)$(?!\n)")] = "info"
    log_format: Annotated[str, msgspec.Meta(pattern=r"^(auto|json|console)$(?!\n)")] = "auto"
    providers: dict[str, Provider] = msgspec.field(default_factory=dict)
    # The gateway (`tokenwire gateway`, worker/gateway/): where it listens, its SSE heartbeat, its page,
    # the variable holding the read-token secret, and its tenants (`[tenants.NAME]`).
    gateway_host: BindHost = "127.0.0.1"
    gateway_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8787
    gateway_heartbeat_seconds: PositiveFloat = 15.0
    gateway_ui: bool = False
    # live events buffered per SSE connection; a client further behind is dropped (it resumes by id)
    gateway_buffer_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 1_048_576
    gateway_secret_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$(?!\n)")] = (
        "TOKENWIRE_GATEWAY_SECRET"
    )
    tenants: dict[TenantName, Tenant] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = redis_url_problem(self.redis_url, cluster=self.redis_cluster)
        if problem is not None:
            raise _InvalidSetting("redis_url", problem)
        if self.redis_password:
            if _url_password(self.redis_url) not in (None, self.redis_password):
                raise _InvalidSetting("redis_password", "redis_url carries a password too: give it once")
            msgspec.structs.force_setattr(
                self, "redis_url", _with_password(self.redis_url, self.redis_password)
            )
        if self.default_provider not in self.all_providers():
            raise _InvalidSetting(
                "default_provider", f"{self.default_provider!r} is not a configured provider"
            )
        if self.default_max_tokens > self.max_tokens_cap:
            raise _InvalidSetting("default_max_tokens", "above max_tokens_cap")
        for name, provider in self.providers.items():
            if provider.limited and ("{" in name or "}" in name):
                raise _InvalidSetting(
                    f"providers.{name}",
                    "a provider with limits needs a name without braces (its Redis hash tag)",
                )
        _check_tenants(self.tenants)

    def all_providers(self) -> dict[str, Provider]:
        """Configured providers, with the built-in ``deepinfra`` unless the file redefines it."""
        return {"deepinfra": DEEPINFRA, **self.providers}

    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)

    def __repr__(self) -> str:
        """Every field, with the Redis password hidden (a repr ends up in logs and tracebacks)."""
        shown = {name: getattr(self, name) for name in self.__struct_fields__}
        shown["redis_url"] = self.redacted_redis_url()
        if self.redis_password:
            shown["redis_password"] = "***"
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def _check_tenants(tenants: Mapping[str, Tenant]) -> None:
    seen: dict[str, str] = {}
    for name, tenant in sorted(tenants.items()):
        other = seen.setdefault(tenant.key_sha256, name)
        if other != name:
            problem = f"the same key as tenants.{other}: one key, one tenant"
            raise _InvalidSetting(f"tenants.{name}.key_sha256", problem)


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names the key and where it came from."""


class _InvalidSetting(ValueError):
    """Raised by :meth:`Settings.__post_init__` so that the loader can name the key it came from."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# --------------------------------------------------------------------------------------- Redis URLs

_SCHEME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?://)?")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")
_URL_FORMS = "redis://[[user]:password@]host[:port][/db], rediss://… (TLS) or unix:///path/to/redis.sock"
_ENCODE_HINT = " (a '/', '?' or '#' in the user name or password must be percent-encoded: %2F, %3F, %23)"


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host``, and ``?password=secret`` → ``?password=***``.

    Safe on any text, well-formed or not: everything between the scheme and the *last* ``@`` is taken as
    credentials (so a password holding ``/``, ``#``, ``?`` or ``@`` is hidden whole), and every query
    parameter whose name contains ``password`` (any case, percent-decoded) loses its value.
    """
    match = _SCHEME_PREFIX.match(url)
    head = match.group(0) if match else ""
    rest = url[len(head) :]
    creds, at, tail = rest.rpartition("@")
    if at:
        user, has_password, _ = creds.partition(":")
        rest = f"{user}:***@{tail}" if has_password else f"***@{tail}"
    return head + _redact_query(rest)


def _redact_query(text: str) -> str:
    base, question, query = text.partition("?")
    if not question:
        return text
    query, hash_mark, _ = query.partition("#")
    items = []
    for item in query.split("&"):
        name, equals, _ = item.partition("=")
        items.append(f"{name}=***" if equals and "password" in unquote_plus(name).lower() else item)
    return f"{base}?{'&'.join(items)}{'#***' if hash_mark else ''}"


def redis_url_problem(url: str, *, cluster: bool = False) -> str | None:
    """Why ``url`` is not a Redis URL redis-py reads as written, or None. Never shows a password.

    Accepts what redis-py accepts (``redis://``, ``rediss://``, ``unix://``, credentials, ``/db``, query
    options), and refuses what it would misread silently: no host (redis-py would use localhost), one
    slash, a ``/db`` that is not a number (it would use 0), a ``unix://`` URL whose path starts with a host.
    """
    shown = repr(redact_url(url))
    if not url or url != url.strip() or not url.isprintable():
        return f"{shown} has spaces or control characters around or in it"
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in ("redis", "rediss", "unix"):
        return f"{shown} is not a Redis URL: write {_URL_FORMS}"
    if not rest.startswith("//"):
        fixed = redact_url(f"{scheme}://{rest.lstrip('/')}")
        return f"{shown}: write two slashes after {scheme + ':'!r}, as in {fixed!r}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{shown}: the brackets around the host do not hold an IPv6 address"
    hint = _ENCODE_HINT if "@" in rest and "@" not in parts.netloc else ""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return f"{shown}: the port is not a number from 1 to 65535{hint}"
    problem = _unix_problem(parts, cluster) if parts.scheme == "unix" else _tcp_problem(parts, cluster)
    if problem is not None:
        return f"{shown}: {problem}{hint}"
    refusal = _redis_py_refusal(url, parts, cluster)
    return None if refusal is None else f"{shown}: {refusal}{hint}"


def _unix_problem(parts: SplitResult, cluster: bool) -> str | None:
    if parts.hostname or parts.port is not None:
        return "a unix:// URL names a socket path after three slashes, as in unix:///run/redis/redis.sock"
    if parts.path in ("", "/"):
        return "no socket path: write unix:///path/to/redis.sock"
    if cluster:
        return "a Redis Cluster is not reached through a unix socket (redis_cluster is on)"
    return None


def _tcp_problem(parts: SplitResult, cluster: bool) -> str | None:
    host = parts.hostname
    if not host:
        return f"no host: write {parts.scheme}://host[:port][/db]"
    if not (_is_ip(host) or _HOST_NAME.match(host)):
        return "the host is neither a host name nor an IP address"
    path = parts.path
    if path not in ("", "/") and not re.fullmatch(r"/[0-9]+/?", path):
        return "what follows the host must be a database number, as in /0"
    if cluster and path.strip("/") and int(path.strip("/")) != 0:
        return "a Redis Cluster has only database 0 (redis_cluster is on)"
    return None


def _redis_py_refusal(url: str, parts: SplitResult, cluster: bool) -> str | None:
    """Ask redis-py itself (building a client, which does no I/O) whether it accepts the options."""
    from redis.asyncio import BlockingConnectionPool, RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    try:
        if cluster:
            RedisCluster.from_url(url)
        else:
            pool = BlockingConnectionPool.from_url(url)
            pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, RedisError, RedisClusterException) as exc:
        # name the option redis-py complains about, and only when it is one of the URL's option names
        named = re.search(r"'([A-Za-z0-9_]+)'", str(exc))
        options = parse_qs(parts.query)
        option = named.group(1) if named and named.group(1) in options else None
        if option is None:
            return "redis-py does not accept its options"
        if isinstance(exc, TypeError):
            return f"redis-py has no option {option!r}"
        return f"the option {option!r} has a value redis-py does not accept"
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _url_password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    values = parse_qs(parts.query).get("password")
    return values[0] if values else None


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` (percent-encoded) in its credentials, keeping any user name."""
    parts = urlsplit(url)
    creds, at, hostport = parts.netloc.rpartition("@")
    user = creds.partition(":")[0] if at else ""
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ------------------------------------------------------------------------ Kubernetes service links

_SERVICE = re.escape(ENV_PREFIX.rstrip("_")) + r"(?:_[A-Z0-9_]+)?"
_LINK_PORT = r"_PORT_(?P<port>[0-9]+)_(?P<proto>TCP|UDP|SCTP)"
_LINK_NAMES = (
    (re.compile(_SERVICE + r"_SERVICE_HOST"), "ip"),
    (re.compile(_SERVICE + r"_SERVICE_PORT(?:_[A-Z0-9_]+)?"), "port"),
    (re.compile(_SERVICE + r"_PORT"), "link"),
    (re.compile(_SERVICE + _LINK_PORT), "link"),
    (re.compile(_SERVICE + _LINK_PORT + r"_PROTO"), "proto"),
    (re.compile(_SERVICE + _LINK_PORT + r"_PORT"), "port"),
    (re.compile(_SERVICE + _LINK_PORT + r"_ADDR"), "ip"),
)
_LINK_VALUE = re.compile(
    r"(?P<proto>tcp|udp|sctp)://(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<ip4>[0-9.]+)):(?P<port>[0-9]+)"
)


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is a variable Kubernetes adds for a Service (by its name *and* its value).

    ``TOKENWIRE_WORKER_METRICS_SERVICE_HOST=10.0.0.7``, ``..._SERVICE_PORT[_<PORT NAME>]=9464``,
    ``..._PORT=tcp://10.0.0.7:9464``, ``..._PORT_9464_TCP=tcp://10.0.0.7:9464`` and its ``_PROTO``,
    ``_PORT`` and ``_ADDR`` parts. IPv6 cluster addresses are bracketed in the ``tcp://`` forms.
    """
    for pattern, kind in _LINK_NAMES:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        groups = match.groupdict()
        if kind == "ip" and _is_ip(value):
            return True
        if kind == "port" and _is_port(value) and value == groups.get("port", value):
            return True
        if kind == "proto" and value == groups["proto"].lower():
            return True
        if kind == "link" and _is_link(value, groups.get("port"), groups.get("proto")):
            return True
    return False


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and not text.startswith("0") and int(text) <= 65535


def _is_link(value: str, port: str | None, proto: str | None) -> bool:
    match = _LINK_VALUE.fullmatch(value)
    if match is None or not _is_port(match["port"]):
        return False
    ip = match["ip6"] or match["ip4"]
    if not _is_ip(ip) or (match["ip6"] is not None) != (":" in ip):
        return False
    return (port is None or match["port"] == port) and (proto is None or match["proto"] == proto.lower())


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}
_TABLES = ("providers", "tenants")  # TOML tables of named entries, never a variable


def load_settings(
    environ: Mapping[str, str] | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings from ``TOKENWIRE_CONFIG`` (TOML), ``TOKENWIRE_*`` variables and ``overrides``."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = env.get(CONFIG_ENV)
    if path:
        raw.update(_read_toml(Path(path)))
    # the variable holding the gateway's read-token secret (TOKENWIRE_GATEWAY_SECRET by default) is no setting
    secret_env = str(
        (overrides or {}).get("gateway_secret_env")
        or env.get(ENV_PREFIX + "GATEWAY_SECRET_ENV")
        or raw.get("gateway_secret_env")
        or _FIELDS["gateway_secret_env"].default
    )
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, secret_env):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _FIELDS and key not in _TABLES:
            raw[key] = value
        elif not is_service_link(name, value):
            raise SettingsError(f"{name}: unknown setting (known: {', '.join(sorted(_env_names()))})")
    from_env = {k for k in raw if ENV_PREFIX + k.upper() in env}
    if overrides:
        raw.update(overrides)
        from_env -= set(overrides)
    return _convert(raw, path, from_env, env)


def ignored_service_links(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``TOKENWIRE_*`` variables :func:`load_settings` skips as Kubernetes service links."""
    env = os.environ if environ is None else environ
    return sorted(
        name
        for name, value in env.items()
        if name.startswith(ENV_PREFIX)
        and name != CONFIG_ENV
        and name[len(ENV_PREFIX) :].lower() not in _FIELDS
        and is_service_link(name, value)
    )


def log_ignored_service_links(environ: Mapping[str, str] | None = None) -> None:
    """One debug line per skipped service-link variable, naming it (never its value). The entry point
    calls it once logging is configured (settings decide how to log, so they load first)."""
    import structlog

    log = structlog.get_logger("tokenwire.settings")
    for name in ignored_service_links(environ):
        log.debug("ignored a Kubernetes service-link variable", variable=name)


def _env_names() -> list[str]:
    return [ENV_PREFIX + k.upper() for k in _FIELDS if k not in _TABLES]


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


def _convert(raw: dict[str, Any], path: str | None, from_env: set[str], env: Mapping[str, str]) -> Settings:
    providers = raw.pop("providers", {})
    if not isinstance(providers, dict):
        raise SettingsError(f"providers: expected a table of providers (config {path})")
    converted = {}
    for name, table in providers.items():
        try:
            converted[name] = msgspec.convert(table, Provider)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"setting providers.{name}{_where(exc)}: {exc} (config {path})") from None
    tenants = _convert_tenants(raw.pop("tenants", {}), path)
    try:
        return msgspec.convert({**raw, "providers": converted, "tenants": tenants}, Settings, strict=False)
    except msgspec.ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, _InvalidSetting):
            key, problem = cause.key, cause.problem
        else:
            key, problem = _where(exc).lstrip("."), str(exc)
        origin = "" if key in from_env or path is None else f" (config {path})"
        if not key:
            raise SettingsError(f"invalid settings: {problem}{origin}") from None
        name = f"{ENV_PREFIX}{key.upper()}" if key in from_env else key
        if key in from_env and is_service_link(name, env[name]):
            service = name[len(ENV_PREFIX) :].rpartition("_PORT")[0].lower().replace("_", "-")
            origin += (
                f" (this is the variable Kubernetes adds for a Service named tokenwire-{service}:"
                " set enableServiceLinks: false in the pod spec, or rename the Service)"
            )
        raise SettingsError(f"setting {name}: {problem}{origin}") from None


def _convert_tenants(tenants: Any, path: str | None) -> dict[str, Tenant]:
    """``[tenants.NAME]`` tables, each checked as :class:`Tenant`, the error naming the table and field."""
    if not isinstance(tenants, dict):
        raise SettingsError(f"tenants: expected a table of tenants (config {path})")
    converted = {}
    for name, table in tenants.items():
        try:
            msgspec.convert(name, TenantName)
        except msgspec.ValidationError:
            raise SettingsError(
                f"setting tenants.{name!r}: a tenant name is 1-32 letters, digits, '_' or '-' (config {path})"
            ) from None
        try:
            converted[name] = msgspec.convert(table, Tenant)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"setting tenants.{name}{_where(exc)}: {exc} (config {path})") from None
    return converted


def _where(exc: Exception) -> str:
    """``Expected `int` - at `$.concurrency``` → ``.concurrency``; '' when no path is given."""
    marker = "at `$"
    text = str(exc)
    return text.split(marker, 1)[1].rstrip("`") if marker in text else ""
