"""``make bench``'s short-job scenario: jobs of 1-5 tokens (classification, routing), where what costs
is the job, not the token: tokenwire, the naive worker and the naive worker's task run by arq, side by
side in one run, each writing the same events to the same per-job streams.

Two loads per variant: ``flat`` keeps ``--inflight`` jobs outstanding (closed loop: as many jobs/s
as the worker finishes) and ``paced`` offers ``--rate`` jobs/s (500) open loop. Each row: jobs/s
finished in the window, worker CPU per job (user + system of the worker process, ``/proc``), jobs per
worker CPU-second, enqueue -> terminal event visible p50/p99 (``bench/shortload.py`` measures both,
in the variant's own environment). Each run gets a fresh ``redis-server`` and simulator on loopback,
one job through first (every process up), then a warm-up, then the window; every child is stopped in
a ``finally``.

arq needs redis<6: its worker and producer run in ``bench/.arq-venv``, built on first use from the
hash-locked ``bench/arq/requirements.txt`` with the project's ``uv`` (``--no-arq`` leaves it out).

``--profile DIR`` samples the tokenwire worker with py-spy over the window (``DIR/short-LOAD-VARIANT.txt``,
raw collapsed stacks, summarised by ``bench/profile.py``).

``python -m bench.shortjobs [--quick] [--variant NAME ...] [--load flat|paced ...] [--profile DIR]
[--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import profile
from bench.cpulimit import CpuQuota, quota_unavailable
from bench.procs import Child, ProcessSet, wait_until
from bench.variants import PREFIX, Setup, _base_env, _bench_module, _tokenwire, _tokenwire_budget
from worker.redisproc import RedisServer, free_port, redis_server_available

__all__ = ["ARQ_VENV", "Load", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
ARQ_VENV = ROOT / "bench" / ".arq-venv"
ARQ_LOCK = ROOT / "bench" / "arq" / "requirements.txt"
DEFAULT_OUT = ROOT / "bench" / "results" / "shortjobs.json"
START_TIMEOUT = 30.0
INFLIGHT = 64
RATE = 500.0


@dataclass(frozen=True, slots=True)
class Load:
    name: str
    rate: float  # jobs/s offered; 0: closed loop with ``inflight`` outstanding
    inflight: int


LOADS = (Load("flat", 0.0, INFLIGHT), Load("paced", RATE, INFLIGHT))


def _arq_python() -> Path:
    return ARQ_VENV / "bin" / "python"


def ensure_arq_venv() -> Path:
    """The arq environment, built from its lock when missing or older than the lock."""
    python = _arq_python()
    stamp = ARQ_VENV / ".lock-stamp"
    lock = ARQ_LOCK.read_bytes()
    if python.exists() and stamp.exists() and stamp.read_bytes() == lock:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(ARQ_VENV)], check=True)
    uv = Path(sys.executable).with_name("uv")
    install = [str(uv), "pip", "install", "--quiet", "--python", str(python)]
    subprocess.run([*install, "--require-hashes", "--no-deps", "-r", str(ARQ_LOCK)], check=True)
    stamp.write_bytes(lock)
    return python


def _arq_command(setup: Setup) -> tuple[list[str], dict[str, str]]:
    env = {
        **_base_env(),
        "PYTHONPATH": str(ROOT),
        "SHORT_REDIS_URL": setup.redis_url,
        "SHORT_SIM_URL": setup.sim_url,
        "SHORT_PREFIX": PREFIX,
        "SHORT_MAX_JOBS": str(max(64, setup.streams)),
    }
    return [str(_arq_python()), "-m", "arq", "bench.arq_task.WorkerSettings"], env


@dataclass(frozen=True, slots=True)
class ShortVariant:
    name: str
    description: str
    command: Callable[[Setup], tuple[list[str], dict[str, str]]]
    mode: str  # how shortload enqueues: "xadd" or "arq"


VARIANTS = (
    ShortVariant(
        "naive",
        "bench.naive: httpx + httpx-sse, one awaited XADD per event",
        _bench_module("bench.naive"),
        "xadd",
    ),
    ShortVariant(
        "floor",
        "bench.floor_short: aiohttp, raw pipelined XADDs and XACK, nothing else (the bound)",
        _bench_module("bench.floor_short"),
        "xadd",
    ),
    ShortVariant("tokenwire", "tokenwire worker, as users run it", _tokenwire, "xadd"),
    ShortVariant(
        "tokenwire-budget",
        "tokenwire with a shared provider budget that never binds (a permit per job)",
        _tokenwire_budget,
        "xadd",
    ),
    ShortVariant("arq", "bench.naive's task run by arq 0.26 (its own environment)", _arq_command, "arq"),
)


def _sim_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _py_spy() -> Path | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return Path(found) if Path(found).exists() else None


def run(
    variant: ShortVariant,
    load: Load,
    work: Path,
    *,
    warmup: float,
    seconds: float,
    worker_cpus: float | None = None,
    model: str = "tokenwire/sim",
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """One variant under one load, from a fresh Redis to its row (``profile_dir``: py-spy the
    tokenwire worker over the window)."""
    procs = ProcessSet(work)
    (work / "redis").mkdir()
    redis = RedisServer(directory=work / "redis")
    quota: CpuQuota | None = None
    row: dict[str, Any] = {"variant": variant.name, "load": load.name}
    try:
        redis.start()
        port = free_port()
        sim_url = f"http://127.0.0.1:{port}"
        tokenwire = Path(sys.executable).with_name("tokenwire")
        procs.start("sim", [str(tokenwire), "sim", "--port", str(port), "--tps", "0", "--seed", "1"])
        budget = START_TIMEOUT + warmup + seconds + 30.0
        argv, env = variant.command(Setup(redis.url, sim_url, load.inflight, budget, work))
        worker: Child = procs.start("worker", argv, env)
        if worker_cpus is not None:
            quota = CpuQuota(f"tokenwire-short-{worker.pid}", worker_cpus)
            quota.create()
            quota.add(worker.pid)
        wait_until(lambda: _sim_ready(sim_url), START_TIMEOUT, "tokenwire sim")
        out = work / "load.json"
        python = _arq_python() if variant.mode == "arq" else Path(sys.executable)
        load_argv = [str(python), str(ROOT / "bench" / "shortload.py"), "--redis-url", redis.url]
        load_argv += ["--mode", variant.mode, "--prefix", PREFIX, "--run", f"{variant.name}-{load.name}"]
        load_argv += ["--rate", f"{load.rate:g}", "--inflight", str(load.inflight)]
        load_argv += ["--warmup", f"{warmup:g}", "--seconds", f"{seconds:g}", "--out", str(out)]
        load_argv += ["--worker-pids", str(worker.pid), "--model", model]
        loader = procs.start("load", load_argv, {**_base_env(), "PYTHONPATH": str(ROOT)}, watched=False)
        deadline = time.monotonic() + budget + 30.0
        spy_at = time.monotonic() + warmup + 1.0  # the loader's start-up, then its warm-up
        spy = _py_spy() if profile_dir is not None and variant.name.startswith("tokenwire") else None
        spy_out = None if profile_dir is None else profile_dir / f"short-{load.name}-{variant.name}.txt"
        spying: Child | None = None
        while loader.alive():
            procs.check_alive()
            if spy is not None and spy_out is not None and time.monotonic() >= spy_at:
                argv = [str(spy), "record", "--pid", str(worker.pid), "--duration", f"{max(1, int(seconds))}"]
                argv += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(spy_out)]
                spying = procs.start("py-spy", argv, watched=False)
                spy = None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the load of {variant.name}/{load.name} did not end in {budget + 30:.0f} s"
                )
            time.sleep(0.2)
        if loader.process.returncode != 0 or not out.exists():
            tail = " | ".join(loader.log_tail(600).strip().splitlines()[-3:])
            raise RuntimeError(f"the load exited {loader.process.returncode}: {tail}")
        row.update(json.loads(out.read_text()))
        if spying is not None:
            spying.process.wait(timeout=seconds + 30.0)
        if spy_out is not None and spy_out.exists():
            print(profile.summarize(spy_out, 30), flush=True)
        cpu_s = row.get("worker_cpu_s") or 0.0
        row["jobs_per_cpu_s"] = row["done_in_window"] / cpu_s if cpu_s > 0 else None
        if row.get("failed") or row.get("unfinished"):
            row["error"] = f"{row.get('failed', 0)} jobs failed, {row.get('unfinished', 0)} unfinished"
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        procs.stop_all()
        if quota is not None:
            quota.remove()
        redis.stop()
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'variant':<10} {'load':<6} {'jobs/s':>8} {'CPU us/job':>10} {'jobs/CPU-s':>10} "
    head += f"{'p50 ms':>7} {'p99 ms':>7}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['variant']:<10} {r['load']:<6} {_fmt(r.get('jobs_per_s'), '8.0f')} "
            f"{_fmt(r.get('cpu_us_per_job'), '10.0f')} {_fmt(r.get('jobs_per_cpu_s'), '10.0f')} "
            f"{_fmt(r.get('p50_ms'), '7.1f')} {_fmt(r.get('p99_ms'), '7.1f')}  {r.get('error') or ''}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """tokenwire's jobs per worker CPU-second over each other variant's, per load."""
    found: dict[str, float] = {}
    by = {(r["variant"], r["load"]): r for r in rows if not r.get("error") and r.get("jobs_per_cpu_s")}
    for (variant, load), row in by.items():
        ours = by.get(("tokenwire", load))
        if variant != "tokenwire" and ours is not None:
            found[f"tokenwire/{variant} {load}"] = ours["jobs_per_cpu_s"] / row["jobs_per_cpu_s"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1.5 s warm-up, 4 s window")
    parser.add_argument("--variant", action="append", choices=[v.name for v in VARIANTS])
    parser.add_argument("--load", action="append", choices=[ld.name for ld in LOADS])
    parser.add_argument("--no-arq", action="store_true", help="leave the arq variant out")
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--window", type=float)
    parser.add_argument("--worker-cpus", type=float, help="hold the worker to this many cores (cgroup quota)")
    parser.add_argument("--model", default="tokenwire/sim", help="the simulated model (directives allowed)")
    parser.add_argument("--profile", type=Path, help="py-spy the tokenwire worker into this directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.profile is not None:
        if _py_spy() is None:
            print("bench: --profile needs py-spy on PATH or beside this Python", file=sys.stderr)
            return 2
        args.profile.mkdir(parents=True, exist_ok=True)
    if not redis_server_available():
        print("bench: redis-server is not installed (make redis-server installs it)", file=sys.stderr)
        return 2
    if args.worker_cpus is not None and (why := quota_unavailable()) is not None:
        print(f"bench: no CPU quota per worker here: {why}", file=sys.stderr)
        return 2
    warmup = args.warmup if args.warmup is not None else (1.5 if args.quick else 3.0)
    window = args.window if args.window is not None else (4.0 if args.quick else 10.0)
    variants = [v for v in VARIANTS if (not args.variant or v.name in args.variant)]
    if args.no_arq:
        variants = [v for v in variants if v.mode != "arq"]
    if any(v.mode == "arq" for v in variants):
        ensure_arq_venv()
    loads = [ld for ld in LOADS if not args.load or ld.name in args.load]
    rows = []
    began = time.monotonic()
    for load in loads:
        for variant in variants:
            print(f"-- short jobs, {load.name}: {variant.name}", flush=True)
            with tempfile.TemporaryDirectory(prefix="tokenwire-short-") as tmp:
                row = run(
                    variant,
                    load,
                    Path(tmp),
                    warmup=warmup,
                    seconds=window,
                    worker_cpus=args.worker_cpus,
                    model=args.model,
                    profile_dir=args.profile,
                )
            if row.get("error"):
                print(f"   FAILED: {row['error']}", flush=True)
            rows.append(row)
    print()
    print(format_table(rows))
    print(
        "jobs of 1-5 tokens; flat: closed loop, 64 outstanding; paced: 500 jobs/s offered; CPU: the worker "
        "process only; p50/p99: enqueue -> terminal event visible"
    )
    found = ratios(rows)
    for name, value in found.items():
        print(f"{name} (jobs per worker CPU-second): {value:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "warmup_s": warmup,
        "window_s": window,
        "worker_cpus": args.worker_cpus,
        "cpu_count": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    args.out.write_text(json.dumps({"rows": rows, "ratios": found, "settings": settings}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
