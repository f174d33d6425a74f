"""``make bench``'s gateway scenarios: ``tokenwire gateway`` against the naive gateway
(bench/naive_gateway.py: one blocking ``XREAD`` per client) and the gateway's floor
(bench/floor_gateway.py: its reads and frames alone, one write per client per read), side by side in
one run.

Each run (one scenario, one variant) gets a fresh ``redis-server``, the producer (bench/gwproducer.py:
jobs enqueued as ``Client.enqueue`` does, then paced token events as a worker writes them), the
gateway under test and the clients (bench/sseload.py: the SSE connections split between
:data:`CLIENT_PROCESSES` processes, the same for both variants), all on
127.0.0.1. Once every client has its response headers, a warm-up passes, then a window is measured:
token events delivered to the clients per second, Redis-visible → client-received p50/p99 (the
entry id's clock against the arrival), the gateway's CPU (``/proc``) and peak RSS. Every wait is
bounded and every child is stopped in a ``finally``.

- ``gw-watch``: 2,000 SSE clients watching 200 jobs × 20 tokens/s (10 watchers each);
- ``gw-idle``: 10,000 idle connections (1,000 jobs with no token, 10 watchers each): memory.

The rows use the worker table's columns: ``worker%`` / ``RSS`` / ``CPU us/ev`` are the gateway's,
``sim%`` the producer's, ``sub%`` the clients', ``streams`` the connections open at the end / wanted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpulimit import CpuQuota
from bench.names import find
from bench.procs import Child, ProcessSet, cpu_seconds, machine_busy_seconds, peak_rss_bytes, wait_until
from bench.report import Row
from bench.scenarios import Timing
from bench.window import Seen
from worker.redisproc import RedisClusterServers, RedisServer, free_port

__all__ = [
    "DEFAULT_GATEWAY_VARIANTS",
    "GATEWAY_SCENARIOS",
    "GATEWAY_VARIANTS",
    "LEGEND",
    "QUICK_GATEWAY",
    "SCENARIO_NAMES",
    "VARIANT_NAMES",
    "GatewayScenario",
    "GatewayVariant",
    "plan",
    "run_gateways",
]

PREFIX = "tokenwire"
START_TIMEOUT = 30.0
OPEN_TIMEOUT = 120.0  # every client connected (10,000 at a time take a while on two cores)
STOP_TIMEOUT = 15.0
SLACK_SECONDS = 30.0
KEPT_UP_SHARE = 0.97
P99_BOUND_MS = 1000.0
BENCH_KEY = "bench-tenant-key"  # the tenant key the clients send (a private, throwaway Redis)
CLIENT_PROCESSES = 2  # the SSE clients are split between this many processes (both variants alike)
REDIS_MAXCLIENTS = 16_000  # the naive gateway holds one Redis connection per client


@dataclass(frozen=True, slots=True)
class GatewayScenario:
    name: str
    jobs: int
    watchers: int  # SSE clients per job
    tps: float  # tokens per second per job; 0: idle
    description: str

    @property
    def clients(self) -> int:
        return self.jobs * self.watchers

    @property
    def offered(self) -> float | None:
        """Token events per second the clients should receive (None: idle)."""
        return self.clients * self.tps if self.tps > 0 else None


GATEWAY_SCENARIOS: tuple[GatewayScenario, ...] = (
    GatewayScenario(
        "gw-watch", 200, 10, 20, "2,000 SSE clients on 200 jobs x 20 tokens/s (10 watchers each)"
    ),
    GatewayScenario("gw-idle", 1000, 10, 0, "10,000 idle SSE connections (1,000 jobs, no tokens)"),
    GatewayScenario("gw-watch-small", 20, 5, 20, "100 SSE clients on 20 jobs x 20 tokens/s (the tests)"),
    GatewayScenario("gw-idle-small", 100, 5, 0, "500 idle SSE connections (the tests)"),
)
QUICK_GATEWAY: tuple[str, ...] = ("gw-watch",)
FULL_GATEWAY: tuple[str, ...] = ("gw-watch", "gw-idle")


@dataclass(frozen=True, slots=True)
class GatewaySetup:
    redis_url: str
    port: int
    max_seconds: float
    work_dir: Path


Command = tuple[list[str], dict[str, str]]


@dataclass(frozen=True, slots=True)
class GatewayVariant:
    name: str
    description: str
    command: Callable[[GatewaySetup], Command]
    bearer: bool  # the clients send the tenant key
    baseline: bool = False  # the naive one: connections it cannot hold are a result, not a failed run
    cluster: bool = False  # on a 3-node Redis Cluster instead of a single server


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}


def _tokenwire_gateway(setup: GatewaySetup) -> Command:
    config = setup.work_dir / "gateway.toml"
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    config.write_text(
        "[tenants.bench]\n"
        f'key_sha256 = "{digest}"\n'
        "read_unscoped = true\n"  # the producer's jobs belong to no tenant
        "max_streams = 100000\n"
        "max_inflight_jobs = 100000\n"
    )
    script = Path(sys.executable).with_name("tokenwire")
    argv = [str(script), "gateway"] if script.exists() else [sys.executable, "-m", "worker", "gateway"]
    env = {
        **_base_env(),
        "TOKENWIRE_CONFIG": str(config),
        "TOKENWIRE_REDIS_URL": setup.redis_url,
        "TOKENWIRE_PREFIX": PREFIX,
        "TOKENWIRE_GATEWAY_HOST": "127.0.0.1",
        "TOKENWIRE_GATEWAY_PORT": str(setup.port),
        "TOKENWIRE_GATEWAY_SECRET": secrets.token_urlsafe(32),
        "TOKENWIRE_LOG_LEVEL": "warning",
    }
    return argv, env


def _tokenwire_gateway_cluster(setup: GatewaySetup) -> Command:
    argv, env = _tokenwire_gateway(setup)
    return argv, {**env, "TOKENWIRE_REDIS_CLUSTER": "true"}


def _floor_gateway(setup: GatewaySetup) -> Command:
    argv = [sys.executable, "-m", "bench.floor_gateway", "--port", str(setup.port)]
    argv += ["--redis-url", setup.redis_url, "--prefix", PREFIX, "--max-seconds", f"{setup.max_seconds:.0f}"]
    return argv, _base_env()


def _naive_gateway(setup: GatewaySetup) -> Command:
    argv = [sys.executable, "-m", "bench.naive_gateway", "--port", str(setup.port)]
    argv += ["--redis-url", setup.redis_url, "--prefix", PREFIX, "--max-seconds", f"{setup.max_seconds:.0f}"]
    return argv, _base_env()


GATEWAY_VARIANTS: tuple[GatewayVariant, ...] = (
    GatewayVariant(
        "naive-gateway", "aiohttp, one blocking XREAD per client", _naive_gateway, False, baseline=True
    ),
    GatewayVariant("gateway", "tokenwire gateway, as users run it", _tokenwire_gateway, True),
    GatewayVariant(
        "floor-gateway",
        "the gateway's reads and frames alone: one write per client per read, nothing else",
        _floor_gateway,
        False,
    ),
    GatewayVariant(
        "gateway-cluster",
        "tokenwire gateway on a 3-node Redis Cluster (reads pipelined per node)",
        _tokenwire_gateway_cluster,
        True,
        cluster=True,
    ),
)
DEFAULT_GATEWAY_VARIANTS: tuple[str, ...] = ("naive-gateway", "gateway", "floor-gateway")


LEGEND = """\
gateway rows (gw-*): streams = SSE connections open at the end / wanted; events/s = token events the
clients received; worker%, CPU us/ev, RSS = the gateway process; sim% = the producer; sub% = the clients;
p50/p99 = Redis-visible (the entry id's clock) -> received by a client, +-0.5 ms; ev/CPU-s ratio =
events delivered per CPU-second of the gateway over the naive gateway's (events/s at the same CPU);
floor-gateway = the gateway's reads and frames alone (bench/floor_gateway.py), what the design costs here."""

SCENARIO_NAMES = frozenset(s.name for s in GATEWAY_SCENARIOS)
VARIANT_NAMES = frozenset(v.name for v in GATEWAY_VARIANTS)


def plan(
    scenarios: list[str] | None, variants: list[str] | None, quick: bool
) -> tuple[list[GatewayScenario], list[GatewayVariant]]:
    """The gateway scenarios and variants among the names asked for (``--scenario``,
    ``--variant``), or the defaults: ``gw-watch`` quick, ``gw-watch`` and ``gw-idle`` in full."""
    names = scenarios if scenarios else list(QUICK_GATEWAY if quick else FULL_GATEWAY)
    chosen = [scenario_by_name(n) for n in names if n in SCENARIO_NAMES]
    wanted = [n for n in variants or () if n in VARIANT_NAMES] or (
        [] if variants and not scenarios else list(DEFAULT_GATEWAY_VARIANTS)
    )
    return chosen, [variant_by_name(n) for n in wanted]


def scenario_by_name(name: str) -> GatewayScenario:
    return find(GATEWAY_SCENARIOS, name, "gateway scenario")


def variant_by_name(name: str) -> GatewayVariant:
    return find(GATEWAY_VARIANTS, name, "gateway variant")


def _answers(url: str, headers: dict[str, str]) -> bool:
    """The gateway answers a job's state (any HTTP status below 500 means it is serving)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


class GatewayRun:
    """One gateway scenario with one variant, from a fresh Redis to the row of results."""

    def __init__(
        self,
        scenario: GatewayScenario,
        variant: GatewayVariant,
        timing: Timing,
        work: Path,
        cpus: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.variant = variant
        self.timing = timing
        self.work = work
        self.cpus = cpus
        self.procs = ProcessSet(work)
        (work / "redis").mkdir()
        self.redis: RedisServer | RedisClusterServers = (
            RedisClusterServers()
            if variant.cluster
            else RedisServer(directory=work / "redis", extra_args=["--maxclients", str(REDIS_MAXCLIENTS)])
        )
        self.gateway: Child | None = None
        self.producer: Child | None = None
        self.clients: list[Child] = []
        self.quota: CpuQuota | None = None
        self.roles: dict[str, list[int]] = {}
        self.out = work / "clients"

    @property
    def budget(self) -> float:
        return START_TIMEOUT + OPEN_TIMEOUT + self.timing.warmup + self.timing.window + SLACK_SECONDS

    def execute(self) -> Row:
        s = self.scenario
        row = Row(s.name, self.variant.name, s.clients, s.tps, self.timing.window)
        row.offered_per_s = 0.0 if s.offered is None else s.offered  # idle: none offered
        try:
            self._start()
            self._sleep(self.timing.warmup)
            self._measure(row)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            self._stop()
        return row

    def _start(self) -> None:
        self.redis.start()
        port = free_port()
        setup = GatewaySetup(self.redis.url, port, self.budget, self.work)
        argv, env = self.variant.command(setup)
        ready = self.work / "producer.ready"
        argv_p = [sys.executable, "-m", "bench.gwproducer", "--url", self.redis.url, "--prefix", PREFIX]
        argv_p += ["--jobs", str(self.scenario.jobs), "--tps", f"{self.scenario.tps:g}"]
        argv_p += ["--cluster"] if self.variant.cluster else []
        argv_p += [
            "--ready-file",
            str(ready),
            "--wait-go",
            "--max-seconds",
            f"{self.budget:.0f}",
        ]
        self.producer = self.procs.start("producer", argv_p)
        self.gateway = self.procs.start(self.variant.name, argv, env)
        if self.cpus is not None:
            self.quota = CpuQuota(f"tokenwire-bench-gw-{self.gateway.pid}", self.cpus)
            self.quota.create()
            self.quota.add(self.gateway.pid)
        wait_until(ready.exists, START_TIMEOUT, "the producer")
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {BENCH_KEY}"} if self.variant.bearer else {}
        probe = f"{base}/v1/jobs/gw-0" if self.variant.bearer else f"{base}/v1/jobs/gw-0/events?after=$"
        if self.variant.bearer:
            wait_until(lambda: _answers(probe, headers), START_TIMEOUT, self.variant.name)
        else:
            wait_until(lambda: _port_open(port), START_TIMEOUT, self.variant.name)
        self.procs.check_alive()
        self._start_clients(base)
        assert self.producer is not None
        self.producer.signal(signal.SIGUSR1)  # its tokens start once every client is connected
        self.roles = {
            "gateway": [self.gateway.pid],
            "producer": [self.producer.pid],
            "redis": _redis_pids(self.redis),
            "clients": [clients.pid for clients in self.clients],
        }

    def _start_clients(self, base: str) -> None:
        """:data:`CLIENT_PROCESSES` client processes, the jobs dealt out between them (one process
        holding 2,000 busy connections was what limited the run: its loop's lag was the latency)."""
        readies = []
        for n in range(CLIENT_PROCESSES):
            jobs = self.work / f"jobs-{n}.txt"
            mine = range(n, self.scenario.jobs, CLIENT_PROCESSES)
            jobs.write_text("".join(f"gw-{i}\n" for i in mine))
            ready = self.work / f"clients-{n}.ready"
            argv = [sys.executable, "-m", "bench.sseload", "--base", base, "--jobs-file", str(jobs)]
            argv += ["--watchers", str(self.scenario.watchers), "--out", str(self._out(n))]
            argv += ["--ready-file", str(ready), "--max-seconds", f"{self.budget:.0f}"]
            if self.variant.bearer:
                key = self.work / "bearer"
                key.write_text(BENCH_KEY)
                argv += ["--bearer-file", str(key)]
            self.clients.append(self.procs.start(f"clients-{n}", argv))
            readies.append(ready)
        for ready in readies:
            wait_until(ready.exists, OPEN_TIMEOUT, "the clients' connections", interval=0.2)
        opened = [json.loads(ready.read_text()) for ready in readies]
        if sum(o["opened"] for o in opened) == 0:
            failed = sum(o["failed"] for o in opened)
            raise RuntimeError(f"no client connected ({failed} failed): see {self.variant.name}'s log")

    def _out(self, n: int) -> Path:
        return self.out.with_name(f"{self.out.name}-{n}")

    def _seen(self) -> tuple[dict[str, Any], Seen]:
        """Every client process's counters (summed) and events (together)."""
        counters: dict[str, Any] = {"open_at_stop": 0, "statuses": {}}
        recv, lat = array("q"), array("q")
        for n in range(CLIENT_PROCESSES):
            out = self._out(n)
            part = json.loads(out.with_suffix(".json").read_text())
            counters["open_at_stop"] += int(part["open_at_stop"])
            for status, count in part["statuses"].items():
                counters["statuses"][status] = counters["statuses"].get(status, 0) + count
            recv.frombytes(out.with_suffix(".recv").read_bytes())
            lat.frombytes(out.with_suffix(".lat").read_bytes())
        return counters, Seen(recv, lat)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            self.procs.check_alive()

    def _cpu(self) -> dict[str, float]:
        cpu = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}
        cpu["machine"] = machine_busy_seconds()
        return cpu

    def _measure(self, row: Row) -> None:
        t0, cpu0 = time.time_ns() // 1000, self._cpu()
        self._sleep(self.timing.window)
        t1, cpu1 = time.time_ns() // 1000, self._cpu()
        assert self.gateway is not None and self.clients
        row.rss_mb = peak_rss_bytes(self.gateway.pid) / 2**20
        for clients in self.clients:
            clients.signal(2)  # SIGINT: write what was seen, then exit
        for clients in self.clients:
            clients.process.wait(timeout=STOP_TIMEOUT)
        counters, seen = self._seen()
        seconds = (t1 - t0) / 1e6
        row.window_s = round(seconds, 3)
        window = seen.window(t0, t1)
        row.events = window.events
        row.events_per_s = window.events / seconds
        row.p50_ms, row.p99_ms, row.max_ms = (
            None if v is None else v / 1000 for v in (window.p50_us, window.p99_us, window.max_us)
        )
        cpu = {role: cpu1[role] - cpu0[role] for role in cpu1}
        row.worker_cpu_pct = 100 * cpu["gateway"] / seconds
        row.cpu_us_per_event = 1e6 * cpu["gateway"] / row.events if row.events else None
        row.sim_cpu_pct = 100 * cpu["producer"] / seconds
        row.redis_cpu_pct = 100 * cpu["redis"] / seconds
        row.subscriber_cpu_pct = 100 * cpu["clients"] / seconds
        ours = sum(v for role, v in cpu.items() if role != "machine")
        row.other_cpu_pct = max(0.0, 100 * (cpu["machine"] - ours) / seconds)
        row.streams_active = int(counters["open_at_stop"])
        lost = self.scenario.clients - row.streams_active
        if lost > 0 and self.variant.baseline:
            # the baseline failing to hold every connection is a result (its design: a Redis
            # connection and a file descriptor pair per client), shown as not kept up
            print(f"   {self.variant.name}: {lost} connections lost ({counters['statuses']})", flush=True)
        elif lost > 0:
            row.error = (
                f"{lost} of {self.scenario.clients} connections were not open at the end "
                f"(statuses {counters['statuses']})"
            )
        offered = self.scenario.offered
        if offered is not None:
            row.kept_up = (
                lost <= 0
                and row.events >= KEPT_UP_SHARE * offered * seconds
                and row.p99_ms is not None
                and row.p99_ms <= P99_BOUND_MS
            )
        elif lost > 0:
            row.kept_up = False

    def _stop(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            if self.quota is not None:
                self.quota.remove()
            self.redis.stop()


def _redis_pids(redis: RedisServer | RedisClusterServers) -> list[int]:
    nodes = redis.nodes if isinstance(redis, RedisClusterServers) else [redis]
    return [node.process.pid for node in nodes if node.process is not None]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_gateways(
    scenarios: list[GatewayScenario],
    variants: list[GatewayVariant],
    timing: Timing,
    cpus: float | None = None,
) -> list[Row]:
    rows: list[Row] = []
    for scenario in scenarios:
        for variant in variants:
            print(f"-- {scenario.name} ({scenario.description}): {variant.name}", flush=True)
            with tempfile.TemporaryDirectory(prefix="tokenwire-bench-gw-") as tmp:
                row = GatewayRun(scenario, variant, timing, Path(tmp), cpus).execute()
            if row.error:
                print(f"   FAILED: {row.error}", flush=True)
            rows.append(row)
    return rows
