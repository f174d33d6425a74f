"""The workers under test and how each is started: the naive baseline, the floor, and tokenwire as
users run it (``tokenwire worker`` configured by a TOML file and ``TOKENWIRE_*`` variables)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.names import find

__all__ = ["DEFAULT_VARIANTS", "QUICK_VARIANTS", "TOKENS_CAP", "VARIANTS", "Setup", "Variant", "by_name"]

PREFIX = "tokenwire"
TOKENS_CAP = 10_000_000  # tokenwire's max_tokens_cap and default_max_tokens in the benchmark


@dataclass(frozen=True, slots=True)
class Setup:
    """What a worker needs to know about one run."""

    redis_url: str
    sim_url: str
    streams: int
    max_seconds: float
    work_dir: Path
    redis_query: str = ""  # appended to tokenwire's TOKENWIRE_REDIS_URL (e.g. max_connections=2048)


Command = tuple[list[str], dict[str, str]]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    description: str
    command: Callable[[Setup], Command]
    available: Callable[[], bool] = lambda: True
    processes: int = 1  # worker processes started with ``command`` (times ``--workers``)
    scenarios: tuple[str, ...] = ()  # the only scenarios it runs in; empty: all

    def runs_in(self, scenario: str) -> bool:
        return not self.scenarios or scenario in self.scenarios


def _base_env() -> dict[str, str]:
    """The environment without any ``TOKENWIRE_*`` setting of the caller's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}


def _bench_module(module: str) -> Callable[[Setup], Command]:
    def command(setup: Setup) -> Command:
        argv = [sys.executable, "-m", module, "--redis-url", setup.redis_url, "--sim-url", setup.sim_url]
        argv += ["--prefix", PREFIX, "--max-seconds", f"{setup.max_seconds:.0f}"]
        return argv, _base_env()

    return command


def _tokenwire_env(setup: Setup) -> dict[str, str]:
    config = setup.work_dir / "tokenwire.toml"
    config.write_text(
        'default_provider = "sim"\n\n[providers.sim]\n'
        f'native_url = "{setup.sim_url}/v1/inference/{{model}}"\n'
    )
    return {
        **_base_env(),
        "TOKENWIRE_CONFIG": str(config),
        "TOKENWIRE_REDIS_URL": f"{setup.redis_url}?{setup.redis_query}"
        if setup.redis_query
        else setup.redis_url,
        "TOKENWIRE_PREFIX": PREFIX,
        "TOKENWIRE_CONCURRENCY": str(max(64, setup.streams)),
        # flat-out streams run far past the default caps: the window ends them, not a limit; bench
        # jobs set no max_tokens, so the default is what is asked of the simulator
        "TOKENWIRE_MAX_TOKENS_CAP": str(TOKENS_CAP),
        "TOKENWIRE_DEFAULT_MAX_TOKENS": str(TOKENS_CAP),
        "TOKENWIRE_MAX_STREAM_BYTES": str(1 << 40),
        "TOKENWIRE_DRAIN_GRACE_SECONDS": "0",
    }


def _tokenwire_argv() -> list[str]:
    script = Path(sys.executable).with_name("tokenwire")
    return [str(script), "worker"] if script.exists() else [sys.executable, "-m", "worker", "worker"]


def _tokenwire(setup: Setup) -> Command:
    return _tokenwire_argv(), _tokenwire_env(setup)


BENCH_KEY = "sk-bench-7f3a9c21e4b8d0a6e5c2"
"""tokenwire-secret's provider API key (a dummy: the simulator accepts any)."""


def _tokenwire_secret(setup: Setup) -> Command:
    """tokenwire with its provider's API key configured: every token passes worker/holdback.py."""
    argv, env = _tokenwire(setup)
    config = Path(env["TOKENWIRE_CONFIG"])
    config.write_text(config.read_text() + 'api_key_env = "BENCH_SIM_KEY"\n')
    return argv, {**env, "BENCH_SIM_KEY": BENCH_KEY}


def _tokenwire_budget(setup: Setup) -> Command:
    """tokenwire with a shared provider budget (worker/ratelimit.py) that never binds: every
    request takes and settles a permit in Redis (two script calls a request, none a token)."""
    argv, env = _tokenwire(setup)
    config = Path(env["TOKENWIRE_CONFIG"])
    limits = "max_concurrency = 100000\nrequests_per_minute = 10000000\ntokens_per_minute = 10000000000\n"
    config.write_text(config.read_text() + limits)
    return argv, env


def _tokenwire_httpx(setup: Setup) -> Command:
    argv, env = _tokenwire(setup)
    return argv, {**env, "TOKENWIRE_UPSTREAM_TRANSPORT": "httpx"}


def _has_transport_setting() -> bool:
    from worker.settings import Settings

    return "upstream_transport" in Settings.__struct_fields__


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "naive", "httpx + httpx-sse + json.loads + one awaited XADD per token", _bench_module("bench.naive")
    ),
    Variant(
        "floor", "aiohttp bytes in, raw pipelined XADDs of the payloads out", _bench_module("bench.floor")
    ),
    Variant("tokenwire", "tokenwire worker, as users run it", _tokenwire),
    Variant(
        "tokenwire-httpx",
        "tokenwire worker with upstream_transport = httpx (httpx's default transport)",
        _tokenwire_httpx,
        _has_transport_setting,
    ),
    Variant(
        "tokenwire-secret",
        "tokenwire worker with a provider API key (its generated text scanned for the key)",
        _tokenwire_secret,
    ),
    Variant(
        "tokenwire-budget",
        "tokenwire worker with a shared provider budget that never binds (a permit per request)",
        _tokenwire_budget,
    ),
    Variant(
        "tokenwire-x2",
        "two tokenwire worker processes on the same jobs (the ceiling scenario only)",
        _tokenwire,
        processes=2,
        scenarios=("200-flat",),
    ),
)

DEFAULT_VARIANTS: tuple[str, ...] = ("naive", "floor", "tokenwire", "tokenwire-httpx", "tokenwire-x2")
QUICK_VARIANTS: tuple[str, ...] = ("naive", "floor", "tokenwire")


def by_name(name: str) -> Variant:
    return find(VARIANTS, name, "variant")
