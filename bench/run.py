"""``make bench``: tokenwire against a naive worker and against the floor, side by side, per scenario.

Each run (one scenario, one variant) gets a fresh ``redis-server``, a fresh ``tokenwire sim``, the
worker(s) under test and a subscriber, all on loopback; jobs are enqueued on ``{P}:jobs``, a warm-up
is let pass, then a window of fixed length is measured: events visible to the subscriber, the
workers' CPU time per event (``/proc``), latency from the upstream's write to visibility, peak RSS.
Every wait is bounded and every child is stopped in a ``finally``.

``python -m bench.run [--quick] [--scenario NAME ...] [--variant NAME ...] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync
from redis.exceptions import RedisError

from bench import gateway as gw
from bench import profile
from bench.cpulimit import CpuQuota, quota_unavailable
from bench.procs import Child, ProcessSet, cpu_seconds, machine_busy_seconds, peak_rss_bytes, wait_until
from bench.report import LEGEND, Row, format_ratios, format_table, noisy, ratios, write_json
from bench.scenarios import FULL_TIMING, QUICK, QUICK_TIMING, SCENARIOS, Scenario, Timing, by_name
from bench.variants import DEFAULT_VARIANTS, PREFIX, QUICK_VARIANTS, Setup, Variant
from bench.variants import by_name as variant_by_name
from bench.window import Seen, load_seen
from worker.redisproc import RedisServer, free_port, redis_server_available

__all__ = ["main"]

START_TIMEOUT = 30.0  # seconds for every process of a run to be ready
STOP_TIMEOUT = 10.0
STATS_TIMEOUT = 15.0  # the simulator's /stats, when 200 flat-out streams keep it busy
SLACK_SECONDS = 30.0  # children exit on their own this long after a run should have ended
P99_BOUND_MS = 1000.0  # a paced scenario with a worse p99 did not keep up
KEPT_UP_SHARE = 0.97  # of the offered events, visible in the window
DEFAULT_OUT = Path("bench/results/latest.json")
SCALING_OUT = Path("bench/results/scaling.json")
SCALING_CPUS = 0.3
"""Cores per worker in ``--scaling``: low enough that two workers, not the simulator (one process
whose CPU per event grows when its readers lag) or Redis, are the limit on a 2-core machine."""
QUOTA_USED_SHARE = 0.9  # workers held to a quota that used less of it were not what limited a run


@dataclass(frozen=True, slots=True)
class Options:
    timing: Timing
    workers: int
    stamp: bool
    keys_per_call: int
    min_interval_ms: float
    profile_dir: Path | None
    redis_query: str = ""
    worker_cpus: float | None = None  # a CPU quota per worker process (cores), or none


@dataclass(frozen=True, slots=True)
class Snapshot:
    t_us: int
    cpu: dict[str, float]  # role -> CPU seconds so far
    sim_sent: int | None
    sim_active: int | None


# ------------------------------------------------------------------------------------- helpers


def _http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _sim_ready(sim_url: str) -> bool:
    try:
        return bool(_http_json(f"{sim_url}/health", timeout=1.0))
    except (OSError, ValueError):
        return False


def sim_supports_stamp(sim_url: str) -> bool:
    """Whether this simulator knows the ``stamp`` directive (a one-token request)."""
    body = json.dumps({"input": "x", "stream": True, "max_new_tokens": 1}).encode()
    url = f"{sim_url}/v1/inference/tokenwire/sim;tokens=1;stamp=1"
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return response.status == 200 and b'"id":' in response.read()
    except (OSError, urllib.error.HTTPError):
        return False


def _group_readers(client: redis_sync.Redis) -> int:
    """Clients whose last command is XREADGROUP: workers reading (or waiting on) the job stream.
    (``XINFO CONSUMERS`` lists a consumer only once a read served it, on Redis 7.0.)"""
    try:
        return sum(1 for c in client.client_list() if c.get("cmd") == "xreadgroup")
    except RedisError:
        return 0


def _job(i: int, model: str) -> str:
    """A job as users enqueue it; no ``max_tokens``: the simulated model's ``tokens=`` is its length."""
    job = {
        "id": f"bench-{i}",
        "model": model,
        "input": f"Benchmark prompt {i}: tell me about rivers and the cities on them.",
    }
    return json.dumps(job)


def events_key(i: int) -> str:
    return f"{PREFIX}:job:{{bench-{i}}}:events"


def _kept_up(row: Row, scenario: Scenario) -> bool | None:
    offered = scenario.offered
    if offered is None:
        return None
    expected = offered * row.window_s
    rate_ok = row.events >= KEPT_UP_SHARE * expected
    backlog_ok = row.backlog_growth is None or row.backlog_growth <= (1 - KEPT_UP_SHARE) * expected
    latency_ok = row.p99_ms is None or row.p99_ms <= P99_BOUND_MS
    return rate_ok and backlog_ok and latency_ok


def _fill_cpu(row: Row, before: Snapshot, after: Snapshot, seconds: float) -> None:
    cpu = {role: after.cpu[role] - before.cpu[role] for role in after.cpu}
    row.worker_cpu_pct = 100 * cpu["worker"] / seconds
    row.cpu_us_per_event = 1e6 * cpu["worker"] / row.events if row.events else None
    row.sim_cpu_pct = 100 * cpu["sim"] / seconds
    row.redis_cpu_pct = 100 * cpu["redis"] / seconds
    row.subscriber_cpu_pct = 100 * cpu["subscriber"] / seconds
    ours = sum(v for role, v in cpu.items() if role != "machine")
    row.other_cpu_pct = max(0.0, 100 * (cpu["machine"] - ours) / seconds)


# ----------------------------------------------------------------------------------------- a run


class Run:
    """One scenario with one variant, from a fresh Redis to the row of results."""

    def __init__(self, scenario: Scenario, variant: Variant, options: Options, work: Path) -> None:
        self.scenario = scenario
        self.variant = variant
        self.options = options
        self.work = work
        self.procs = ProcessSet(work)
        (work / "redis").mkdir()
        self.redis = RedisServer(directory=work / "redis")
        self.sim_url = ""
        self.client: redis_sync.Redis | None = None
        self.workers: list[Child] = []
        self.quotas: list[CpuQuota] = []
        self.roles: dict[str, list[int]] = {}
        self.subscriber: Child | None = None
        self.sub_out = work / "sub"

    @property
    def budget(self) -> float:
        t = self.options.timing
        return START_TIMEOUT + t.ramp + t.warmup + t.window + SLACK_SECONDS

    def execute(self) -> Row:
        scenario, timing = self.scenario, self.options.timing
        row = Row(scenario.name, self.variant.name, scenario.streams, scenario.tps, timing.window)
        row.offered_per_s = scenario.offered
        try:
            self._start()
            self._enqueue()
            self._sleep(timing.warmup)
            self._measure(row)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            self._stop()
        return row

    # -- start ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self.redis.start()
        self.client = redis_sync.Redis.from_url(self.redis.url, socket_timeout=10.0)
        port = free_port()
        self.sim_url = f"http://127.0.0.1:{port}"
        tokenwire = Path(sys.executable).with_name("tokenwire")
        sim = self.procs.start(
            "sim", [str(tokenwire), "sim", "--port", str(port), "--tps", "0", "--seed", "1"]
        )
        self._start_subscriber()
        self._start_workers()
        wait_until(lambda: _sim_ready(self.sim_url), START_TIMEOUT, "tokenwire sim")
        ready = self.work / "sub.ready"
        wait_until(ready.exists, START_TIMEOUT, "subscriber")
        client = self.client
        wait_until(lambda: _group_readers(client) >= len(self.workers), START_TIMEOUT, self.variant.name)
        self.procs.check_alive()
        self.roles = {
            "worker": [w.pid for w in self.workers],
            "sim": [sim.pid],
            "redis": [self.redis.process.pid] if self.redis.process else [],
            "subscriber": [self.subscriber.pid] if self.subscriber else [],
        }

    def _start_subscriber(self) -> None:
        keys = self.work / "keys.txt"
        keys.write_text("".join(f"{events_key(i)}\n" for i in range(self.scenario.streams)))
        argv = [sys.executable, "-m", "bench.subscriber", "--port", str(self.redis.port)]
        argv += [
            "--keys-file",
            str(keys),
            "--out",
            str(self.sub_out),
            "--ready-file",
            str(self.work / "sub.ready"),
        ]
        argv += ["--keys-per-call", str(self.options.keys_per_call)]
        argv += [
            "--min-interval-ms",
            str(self.options.min_interval_ms),
            "--max-seconds",
            f"{self.budget:.0f}",
        ]
        self.subscriber = self.procs.start("subscriber", argv)

    def _start_workers(self) -> None:
        setup = Setup(
            self.redis.url,
            self.sim_url,
            self.scenario.streams,
            self.budget,
            self.work,
            self.options.redis_query,
        )
        argv, env = self.variant.command(setup)
        for n in range(self.options.workers * self.variant.processes):
            worker = self.procs.start(f"worker-{n}", argv, env)
            self.workers.append(worker)
            if self.options.worker_cpus is not None:
                quota = CpuQuota(f"tokenwire-bench-{worker.pid}", self.options.worker_cpus)
                self.quotas.append(quota)
                quota.create()
                quota.add(worker.pid)

    # -- drive ------------------------------------------------------------------------------------

    def _enqueue(self) -> None:
        assert self.client is not None
        scenario, timing = self.scenario, self.options.timing
        model = scenario.model(timing, self.options.stamp)
        spacing = scenario.ramp(timing) / scenario.streams
        began = time.monotonic()
        for i in range(scenario.streams):
            delay = began + i * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.client.xadd(f"{{{PREFIX}}}:jobs", {"job": _job(i, model)})

    def _sleep(self, seconds: float) -> None:
        """Sleep, checking every half second that every child still runs."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            self.procs.check_alive()

    def _snapshot(self) -> Snapshot:
        """CPU times and the time first; then the simulator's counters, which a saturated simulator
        may be slow to report (None when it does not answer in time)."""
        cpu = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}
        cpu["machine"] = machine_busy_seconds()
        t_us = time.time_ns() // 1000
        try:
            stats = _http_json(f"{self.sim_url}/stats", timeout=STATS_TIMEOUT)
        except (OSError, ValueError):
            return Snapshot(t_us, cpu, None, None)
        return Snapshot(t_us, cpu, int(stats["events_sent"]), int(stats["active_streams"]))

    def _measure(self, row: Row) -> None:
        spy = self._start_profiler()
        before = self._snapshot()
        self._sleep(self.options.timing.window)
        after = self._snapshot()
        row.rss_mb = sum(peak_rss_bytes(w.pid) for w in self.workers) / 2**20
        seen = self._stop_subscriber()
        self._fill(row, before, after, seen)
        if spy is not None:
            self._finish_profiler(spy)

    def _fill(self, row: Row, before: Snapshot, after: Snapshot, seen: Seen) -> None:
        seconds = (after.t_us - before.t_us) / 1e6
        row.window_s = round(seconds, 3)
        window = seen.window(before.t_us, after.t_us)
        row.events = window.events
        row.events_per_s = window.events / seconds
        row.p50_ms, row.p99_ms, row.max_ms = (
            None if v is None else v / 1000 for v in (window.p50_us, window.p99_us, window.max_us)
        )
        _fill_cpu(row, before, after, seconds)
        row.streams_active = after.sim_active
        if after.sim_active is not None and after.sim_active < self.scenario.streams:
            # a stream that ended inside the window makes its rate and its backlog meaningless
            row.error = (
                f"{self.scenario.streams - after.sim_active} of {self.scenario.streams} upstream "
                "streams ended inside the measured window (they must outlast it)"
            )
        if before.sim_sent is not None and after.sim_sent is not None:
            row.sim_events_per_s = (after.sim_sent - before.sim_sent) / seconds
            backlog_before = before.sim_sent - seen.visible_by(before.t_us)
            backlog_after = after.sim_sent - seen.visible_by(after.t_us)
            row.backlog_growth = backlog_after - backlog_before
        row.kept_up = _kept_up(row, self.scenario)

    def _stop_subscriber(self) -> Seen:
        assert self.subscriber is not None
        self.subscriber.signal(signal.SIGINT)  # SIGINT: write what was seen, then exit
        self.subscriber.process.wait(timeout=STOP_TIMEOUT)
        return load_seen(self.sub_out)

    # -- profile (optional) --------------------------------------------------------------------

    def _start_profiler(self) -> Child | None:
        directory = self.options.profile_dir
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if directory is None or not self.variant.name.startswith("tokenwire") or not Path(spy).exists():
            return None
        out = directory / f"{self.scenario.name}-{self.variant.name}.txt"
        seconds = max(1, int(self.options.timing.window))
        argv = [spy, "record", "--pid", str(self.workers[0].pid), "--duration", str(seconds)]
        argv += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out)]
        return self.procs.start("py-spy", argv, watched=False)

    def _finish_profiler(self, spy: Child) -> None:
        spy.process.wait(timeout=STOP_TIMEOUT)
        assert self.options.profile_dir is not None
        out = self.options.profile_dir / f"{self.scenario.name}-{self.variant.name}.txt"
        if out.exists():
            print(profile.summarize(out), flush=True)

    # -- stop -------------------------------------------------------------------------------------

    def _stop(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            for quota in self.quotas:
                quota.remove()
            if self.client is not None:
                self.client.close()
            self.redis.stop()


# ------------------------------------------------------------------------------------------ main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, short windows")
    parser.add_argument("--scenario", action="append", help="run only these (repeatable, or comma-separated)")
    parser.add_argument(
        "--variant",
        action="append",
        help=f"repeatable, or comma-separated; default: {', '.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--window", type=float, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before the window")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per run")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help=f"one worker against two at the ceiling, each held to {SCALING_CPUS} core "
        f"(--worker-cpus): writes {SCALING_OUT}; skipped with a note where quotas cannot be set",
    )
    parser.add_argument(
        "--worker-cpus",
        type=float,
        help="hold each worker process to this many cores with a cgroup quota (Linux, root): "
        "scaling across worker processes on a machine with too few cores to give each its own",
    )
    parser.add_argument("--keys-per-call", type=int, default=1000, help="streams per XREAD call")
    parser.add_argument("--min-interval-ms", type=float, default=2.0, help="subscriber: ms between calls")
    parser.add_argument("--profile", type=Path, help="py-spy the tokenwire worker into this directory")
    parser.add_argument(
        "--redis-query", default="", help="query appended to tokenwire's Redis URL (max_connections=2048)"
    )
    args = parser.parse_args(argv)
    for name in ("scenario", "variant"):  # --variant floor,tokenwire is --variant floor --variant tokenwire
        given = getattr(args, name)
        if given:
            setattr(args, name, [part for value in given for part in value.split(",") if part])
    return args


def _variants(args: argparse.Namespace) -> list[Variant]:
    """The variants asked for (each must be available), else the default ones available here."""
    if args.variant:
        chosen = [variant_by_name(n) for n in args.variant if n not in gw.VARIANT_NAMES]
        for variant in chosen:
            if not variant.available():
                raise SystemExit(f"variant {variant.name} is not available here ({variant.description})")
        return chosen
    defaults = [variant_by_name(n) for n in (QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)]
    return [v for v in defaults if v.available()]


def _plan(args: argparse.Namespace) -> tuple[list[Scenario], list[Variant], Timing]:
    names = args.scenario or (list(QUICK) if args.quick else [s.name for s in SCENARIOS])
    scenarios = [by_name(n) for n in names if n not in gw.SCENARIO_NAMES]
    base = QUICK_TIMING if args.quick else FULL_TIMING
    timing = Timing(
        warmup=base.warmup if args.warmup is None else args.warmup,
        window=base.window if args.window is None else args.window,
        ramp=base.ramp,
    )
    return scenarios, _variants(args), timing


def _probe_stamp() -> bool:
    """Start a simulator once to learn whether it stamps tokens (latencies need it)."""
    with tempfile.TemporaryDirectory(prefix="tokenwire-bench-") as tmp:
        procs = ProcessSet(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        tokenwire = str(Path(sys.executable).with_name("tokenwire"))
        try:
            procs.start("sim", [tokenwire, "sim", "--port", str(port), "--tps", "0"])
            wait_until(lambda: _sim_ready(url), START_TIMEOUT, "tokenwire sim")
            return sim_supports_stamp(url)
        finally:
            procs.stop_all()


def run_all(scenarios: list[Scenario], variants: list[Variant], options: Options) -> list[Row]:
    rows: list[Row] = []
    for scenario in scenarios:
        for variant in variants:
            if not variant.runs_in(scenario.name):
                continue
            print(f"-- {scenario.name} ({scenario.description}): {variant.name}", flush=True)
            with tempfile.TemporaryDirectory(prefix="tokenwire-bench-") as tmp:
                row = Run(scenario, variant, options, Path(tmp)).execute()
            if row.error:
                print(f"   FAILED: {row.error}", flush=True)
            rows.append(row)
    return rows


def _quota_use(rows: list[Row], cores_each: float, workers: int) -> list[str]:
    """How much of their CPU quota each variant's workers used: a ratio between runs measures the
    workers only where they used (nearly) all of it."""
    lines = []
    for row in rows:
        if row.error is not None:
            continue
        quota = cores_each * workers * variant_by_name(row.variant).processes
        used = row.worker_cpu_pct / (100 * quota)
        line = f"{row.scenario} {row.variant}: the workers used {used:.0%} of their {quota:g}-core quota"
        if used < QUOTA_USED_SHARE:
            line += " (something else limited this run: see sim%, redis%, sub%)"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.scaling:
        args.scenario = args.scenario or ["200-flat"]
        args.variant = args.variant or ["tokenwire", "tokenwire-x2"]
        args.worker_cpus = args.worker_cpus or SCALING_CPUS
        args.out = SCALING_OUT if args.out == DEFAULT_OUT else args.out
    if args.worker_cpus is not None and (why := quota_unavailable()) is not None:
        print(f"bench: skipped, no CPU quota per worker here: {why}", file=sys.stderr)
        return 0 if args.scaling else 2
    if not redis_server_available():
        print("bench: redis-server is not installed (make redis-server installs it)", file=sys.stderr)
        return 2
    try:
        scenarios, variants, timing = _plan(args)
    except KeyError as exc:  # a name mistyped: say which, and the known ones
        print(f"bench: {exc.args[0]}", file=sys.stderr)
        return 2
    stamp = _probe_stamp()
    if not stamp:
        print("bench: this simulator has no stamp directive: latencies are not measured", flush=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    options = Options(
        timing,
        args.workers,
        stamp,
        args.keys_per_call,
        args.min_interval_ms,
        args.profile,
        args.redis_query,
        args.worker_cpus,
    )
    began = time.monotonic()
    rows = run_all(scenarios, variants, options)
    rows += gw.run_gateways(*gw.plan(args.scenario, args.variant, args.quick), timing, args.worker_cpus)
    print()
    print(format_table(rows))
    print(LEGEND)
    if any(r.variant in gw.VARIANT_NAMES for r in rows):
        print(gw.LEGEND)
    if args.worker_cpus is not None:
        print(f"each worker process was held to {args.worker_cpus:g} core by a cgroup CPU quota")
        for line in _quota_use(rows, args.worker_cpus, args.workers):
            print(line)
    busy = noisy(rows)
    if busy:
        print(f"warning: other processes were busy during {', '.join(busy)}: those numbers are noisy")
    print()
    print(format_ratios(ratios(rows)))
    settings = {
        "quick": args.quick,
        "warmup_s": timing.warmup,
        "window_s": timing.window,
        "workers": args.workers,
        "worker_cpus": args.worker_cpus,
        "stamped": stamp,
        "tokenwire_redis_query": args.redis_query,
        "p99_bound_ms": P99_BOUND_MS,
        "kept_up_share": KEPT_UP_SHARE,
        "subscriber": {"keys_per_call": args.keys_per_call, "min_interval_ms": args.min_interval_ms},
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    write_json(args.out, rows, settings)
    print(f"\nwrote {args.out} ({settings['elapsed_s']} s)")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
