"""Fault-injection harness: real ``tokenwire worker`` processes, a private redis-server, the simulator.

Every wait is a bounded poll (:func:`wait_until`); nothing sleeps to synchronise. Workers run as
subprocesses so a test can SIGKILL, SIGSTOP, SIGCONT, SIGTERM them; each has its own consumer name
(``TOKENWIRE_CONSUMER_NAME``) and a log file under the test's ``tmp_path``. The simulator runs as a
``tokenwire sim`` subprocess, so nothing the test does on its own event loop can stall an upstream
stream. Timings are shortened through ``TOKENWIRE_*`` settings (:data:`FAST`).

Typical use (the ``harness`` fixture of ``conftest.py`` builds one per test)::

    a, b = await h.start_workers(2)
    job = await h.enqueue("tokens=200;tps=50", tag="kill")
    await h.wait_tokens(job, 5)
    h.worker(await h.owner_of(job)).kill()
    ...
    await h.check([job])          # the invariant checker
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.faults.invariants import check_invariants
from worker.client import Client
from worker.connect import redis_client
from worker.events import Event, Start, UnknownEvent, decode_event, is_terminal
from worker.keys import GROUP, Keys
from worker.redisproc import RedisServer, free_port

__all__ = [
    "FAST",
    "TOKENWIRE",
    "CliResult",
    "Harness",
    "SimProcess",
    "WaitTimeout",
    "WorkerProc",
    "restart_redis",
    "wait_until",
]

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")

# Shortened timings every worker gets unless a test overrides them (names are settings: each
# becomes TOKENWIRE_<NAME>).
FAST: Mapping[str, str | int | float] = {
    "lease_seconds": 2.0,
    "reclaim_interval_seconds": 0.5,
    "block_seconds": 0.5,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 1.0,
    "stall_timeout_seconds": 3.0,
    "connect_timeout_seconds": 2.0,
    "drain_grace_seconds": 5.0,
    "max_deliveries": 3,
    "max_attempts": 3,
    "job_deadline_seconds": 60.0,
    "output_ttl_seconds": 600,
    "concurrency": 32,
}

POLL = 0.05  # seconds between two looks at Redis or a process
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A bounded wait ran out: the behaviour under test did not happen in time."""


async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,
    what: str,
    *,
    interval: float = POLL,
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass.

    Exceptions in ``tolerate`` (e.g. Redis being down) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = await predicate()
        except tolerate as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last seen: {last!r})")
        await asyncio.sleep(interval)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while (rc := proc.poll()) is None and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    return rc


class WorkerProc:
    """One ``tokenwire worker`` subprocess."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.stopped = False

    def __repr__(self) -> str:
        return f"WorkerProc({self.name!r}, pid={self.pid}, rc={self.proc.poll()})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.stopped = False

    def stop(self) -> None:
        """SIGSTOP: the process freezes; its connections stay open."""
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT after :meth:`stop`."""
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    async def term(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (bounded) for the exit code; a worker that does not exit is killed."""
        return await self._signal_and_wait(signal.SIGTERM, timeout)

    async def interrupt(self, timeout: float = 30.0) -> int:
        """SIGINT, as Ctrl-C would send; same contract as :meth:`term`."""
        return await self._signal_and_wait(signal.SIGINT, timeout)

    async def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> int:
        if self.alive():
            self.proc.send_signal(sig)
        rc = await _wait_exit(self.proc, timeout)
        if rc is None:
            self.kill()
            raise WaitTimeout(f"worker {self.name} did not exit within {timeout}s of {sig.name}")
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines (lines that are not JSON are skipped)."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class SimProcess:
    """``tokenwire sim`` as a subprocess on a free loopback port (``--tps`` is only the default:
    jobs pace themselves with ``tps=`` directives)."""

    def __init__(self, log_path: Path, *, tps: float = 50.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.tps = tps
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> SimProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [TOKENWIRE, "sim", "--port", str(self.port), "--tps", str(self.tps)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tokenwire sim exited at start: {self.log_path.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/health").status_code == 200:
                        return self
                time.sleep(POLL)
        self.stop()
        raise TimeoutError(f"tokenwire sim did not answer within {timeout}s")

    async def stats(self) -> dict[str, Any]:
        """``GET /stats``: ``requests`` per model string, ``active_streams``, ..."""
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
            response = await http.get(f"{self.url}/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def requests_for(self, model: str) -> int:
        return int((await self.stats())["requests"].get(model, 0))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"CliResult(rc={self.returncode}, stdout={self.stdout!r}, stderr={self.stderr[-2000:]!r})"


def restart_redis(server: RedisServer, down_for: float = 0.0) -> RedisServer:
    """SIGKILL ``server`` and start a new redis-server on the same port and directory (so it loads
    the AOF when ``appendonly``). ``down_for`` is the outage length (the fault), not a wait."""
    server.kill()
    if server.process is not None and server.process.stderr is not None:
        server.process.stderr.close()
    if down_for > 0:
        time.sleep(down_for)
    return RedisServer(
        port=server.port,
        password=server.password,
        appendonly=server.appendonly,
        directory=server.directory,
        extra_args=server.extra_args,
    ).start()


class Harness:
    """One test's world: a key prefix on a redis-server, the simulator, worker processes, a client."""

    def __init__(
        self,
        *,
        redis_url: str,
        sim: SimProcess,
        tmp_path: Path,
        settings: Mapping[str, str | int | float] = FAST,
    ) -> None:
        self.redis_url = redis_url
        self.sim = sim
        self.tmp_path = tmp_path
        self.prefix = f"tw-faults-{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        self.settings = dict(settings)
        self.redis: Redis = redis_client(redis_url)
        self.client = Client(redis_client(redis_url, block_seconds=2.0), prefix=self.prefix, block_ms=500)
        self.workers: list[WorkerProc] = []
        self._serial = 0
        self.config_path = tmp_path / "tokenwire.toml"
        dead_port = free_port()  # nothing listens there: connection refused
        self.config_path.write_text(
            'default_provider = "sim"\n'
            "[providers.sim]\n"
            f'native_url = "{sim.url}/v1/inference/{{model}}"\n'
            "[providers.dead]\n"
            f'native_url = "http://127.0.0.1:{dead_port}/v1/inference/{{model}}"\n'
        )

    # ----------------------------------------------------------------------------- processes

    def env(self, **overrides: str | int | float) -> dict[str, str]:
        """The environment of a ``tokenwire`` process of this test (no consumer name)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
        env.update(
            TOKENWIRE_CONFIG=str(self.config_path),
            TOKENWIRE_REDIS_URL=self.redis_url,
            TOKENWIRE_PREFIX=self.prefix,
            TOKENWIRE_LOG_FORMAT="json",
        )
        for name, value in {**self.settings, **overrides}.items():
            env[f"TOKENWIRE_{name.upper()}"] = str(value)
        return env

    def spawn(self, name: str | None = None, /, **overrides: str | int | float) -> WorkerProc:
        """Start a worker process (without waiting for it to be ready)."""
        self._serial += 1
        name = name or f"w{self._serial}"
        if any(w.name == name for w in self.workers):
            raise ValueError(f"worker name {name!r} already used: consumer names are per process")
        env = {**self.env(**overrides), "TOKENWIRE_CONSUMER_NAME": name}
        # Its Redis connections carry the name too (CLIENT LIST shows which worker is reading).
        sep = "&" if "?" in self.redis_url else "?"
        env["TOKENWIRE_REDIS_URL"] = f"{self.redis_url}{sep}client_name={name}"
        log_path = self.tmp_path / f"worker-{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [TOKENWIRE, "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on pytest is not the worker's SIGINT
            )
        worker = WorkerProc(name, proc, log_path)
        self.workers.append(worker)
        return worker

    async def wait_ready(self, workers: Iterable[WorkerProc], timeout: float = 20.0) -> None:
        """Until each worker reads the job stream: it is a consumer of the group, or one of its
        connections (named after it) last ran XREADGROUP. (Redis before 7.2 creates a consumer
        only when it is first delivered an entry.)"""
        pending = list(workers)

        async def ready() -> bool:
            for w in pending:
                if not w.alive():
                    raise AssertionError(f"worker {w.name} exited with {w.proc.poll()}:\n{w.log_tail()}")
            names = await self.consumers() | await self.readers()
            return all(w.name in names for w in pending)

        await wait_until(ready, timeout, f"workers {[w.name for w in pending]} to join the group")

    async def start_worker(self, name: str | None = None, /, **overrides: str | int | float) -> WorkerProc:
        worker = self.spawn(name, **overrides)
        await self.wait_ready([worker])
        return worker

    async def start_workers(self, n: int, **overrides: str | int | float) -> list[WorkerProc]:
        """Start ``n`` workers at once and wait until all are ready."""
        workers = [self.spawn(**overrides) for _ in range(n)]
        await self.wait_ready(workers)
        return workers

    def worker(self, name: str) -> WorkerProc:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(f"no worker named {name!r} in this test (have {[w.name for w in self.workers]})")

    def alive_workers(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive()]

    async def consumers(self) -> set[str]:
        try:
            rows: Any = await self.redis.xinfo_consumers(self.keys.jobs, GROUP)
        except ResponseError:  # no stream or no group yet
            return set()
        return {_s(r["name"]) for r in rows}

    async def readers(self) -> set[str]:
        """Names of the connections whose last command was XREADGROUP."""
        clients: Any = await self.redis.client_list()
        return {str(c.get("name")) for c in clients if c.get("cmd") == "xreadgroup" and c.get("name")}

    async def run_cli(self, *args: str, timeout: float = 30.0) -> CliResult:
        """Run ``tokenwire ARGS`` with this test's settings; bounded in time."""
        proc = await asyncio.create_subprocess_exec(
            TOKENWIRE,
            *args,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.communicate()
            raise WaitTimeout(f"`tokenwire {' '.join(args)}` did not return within {timeout}s") from None
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    # ---------------------------------------------------------------------------------- jobs

    def model(self, directives: str, tag: str = "job") -> str:
        """A model string unique to this test (the simulator counts requests per model string)."""
        base = f"tokenwire/sim-{tag}-{self.prefix[-8:]}"
        return f"{base};{directives}" if directives else base

    async def enqueue(
        self,
        directives: str,
        *,
        tag: str = "job",
        job_id: str | None = None,
        provider: str | None = None,
    ) -> str:
        fields: dict[str, Any] = {"model": self.model(directives, tag), "input": f"fault test {tag}"}
        if job_id is not None:
            fields["id"] = job_id
        if provider is not None:
            fields["provider"] = provider
        return await self.client.enqueue(**fields)

    async def state(self, job_id: str) -> dict[str, str]:
        raw: Any = await self.redis.hgetall(self.keys.state(job_id))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def owner_of(self, job_id: str) -> str | None:
        value: Any = await self.redis.hget(self.keys.state(job_id), "owner")
        return None if value is None else _s(value)

    async def attempt_of(self, job_id: str) -> int:
        value: Any = await self.redis.hget(self.keys.state(job_id), "attempt")
        return 0 if value is None else int(value)

    async def events(self, job_id: str) -> list[tuple[str, Event]]:
        raw: Any = await self.redis.xrange(self.keys.events(job_id), "-", "+")
        return [(_s(entry_id), _known(fields[b"event"])) for entry_id, fields in raw]

    async def event_count(self, job_id: str) -> int:
        return int(await self.redis.xlen(self.keys.events(job_id)))

    async def starts(self, job_id: str) -> list[Start]:
        return [e for _, e in await self.events(job_id) if isinstance(e, Start)]

    async def terminal(self, job_id: str) -> Event | None:
        """The job's terminal event, if it has one (the last entry of its stream)."""
        raw: Any = await self.redis.xrevrange(self.keys.events(job_id), "+", "-", count=1)
        if not raw:
            return None
        event = _known(raw[0][1][b"event"])
        return event if is_terminal(event) else None

    async def wait_tokens(self, job_id: str, n: int, timeout: float = 15.0) -> None:
        """Until the job's stream holds at least ``n`` events after its first start."""

        async def enough() -> bool:
            return await self.event_count(job_id) >= n + 1

        await wait_until(enough, timeout, f"job {job_id} to stream {n} tokens")

    async def wait_terminal(
        self, job_ids: Iterable[str], timeout: float, *, tolerate_redis_down: bool = False
    ) -> dict[str, Event]:
        """Until every job has its terminal event; returns them."""
        ids = list(job_ids)
        ended: dict[str, Event] = {}

        async def all_ended() -> bool:
            for job_id in ids:
                if job_id not in ended:
                    event = await self.terminal(job_id)
                    if event is not None:
                        ended[job_id] = event
            return len(ended) == len(ids)

        tolerate = REDIS_DOWN if tolerate_redis_down else ()
        try:
            await wait_until(all_ended, timeout, f"{len(ids)} jobs to end", tolerate=tolerate)
        except WaitTimeout:
            missing = [j for j in ids if j not in ended]
            states = {j: await self.state(j) for j in missing[:5]}
            raise WaitTimeout(
                f"{len(missing)} of {len(ids)} jobs did not end within {timeout}s; e.g. {states}"
            ) from None
        return ended

    async def cancel(self, job_id: str, reason: str) -> None:
        """``Client.cancel(job_id, reason=...)``, looked up at run time (it lands with the issue)."""
        cancel: Callable[..., Awaitable[object]] | None = getattr(self.client, "cancel", None)
        if cancel is None:
            raise AssertionError("worker.Client has no cancel() method")
        await cancel(job_id, reason=reason)

    async def dead_letters(self) -> list[dict[str, str]]:
        raw: Any = await self.redis.xrange(self.keys.dead, "-", "+")
        return [{_s(k): _s(v) for k, v in fields.items()} for _, fields in raw]

    async def pending_entry(self, entry_id: str) -> tuple[str, int] | None:
        """(consumer, times delivered) of a pending job entry, or None when it is not pending."""
        rows: Any = await self.redis.xpending_range(
            self.keys.jobs, GROUP, min=entry_id, max=entry_id, count=1
        )
        if not rows:
            return None
        return _s(rows[0]["consumer"]), int(rows[0]["times_delivered"])

    async def check(self, job_ids: Iterable[str], *, pending_timeout: float = 10.0) -> None:
        """The invariant checker over ``job_ids`` (see :mod:`tests.faults.invariants`)."""
        await check_invariants(self.redis, self.prefix, job_ids, pending_timeout=pending_timeout)

    async def restart_redis(self, server: RedisServer, down_for: float = 1.0) -> RedisServer:
        """:func:`restart_redis`, then drop this harness's pooled connections to the old server."""
        new = restart_redis(server, down_for)
        for redis in (self.redis, self.client.redis):
            await redis.connection_pool.disconnect()
        return new

    # --------------------------------------------------------------------------- redis faults

    def use_api_key_env(self, variable: str) -> None:
        """Make the default provider (``sim``) send the key in ``variable`` (the workers spawned
        after this call read it from their environment, inherited from the test's)."""
        text = self.config_path.read_text()
        self.config_path.write_text(
            text.replace("[providers.sim]\n", f'[providers.sim]\napi_key_env = "{variable}"\n', 1)
        )

    async def fill_memory(self, *, headroom: int = 2 * 1024 * 1024, chunk: int = 256 * 1024) -> list[str]:
        """Cap Redis at its current use plus ``headroom`` bytes (``maxmemory``, the server's policy
        being ``noeviction``) and write filler keys (outside this test's prefix) until Redis refuses
        one for memory; returns the filler keys, for :meth:`free_memory`. Bounded in count."""
        info: Any = await self.redis.info("memory")
        await self.redis.config_set("maxmemory", int(info["used_memory"]) + headroom)
        fillers: list[str] = []
        value = b"\0" * chunk
        tag = uuid.uuid4().hex[:8]
        try:
            for n in range(4 * headroom // chunk + 64):
                key = f"chaos-filler:{tag}:{n}"
                try:
                    await self.redis.set(key, value)
                except OutOfMemoryError:
                    return fillers
                fillers.append(key)
            raise AssertionError("Redis never refused a write for memory: is maxmemory in force?")
        except BaseException:
            with contextlib.suppress(*REDIS_DOWN, ResponseError):
                await self.free_memory(fillers)
            raise

    async def free_memory(self, fillers: list[str]) -> None:
        """Undo :meth:`fill_memory`: delete the fillers and lift the cap."""
        for start in range(0, len(fillers), 64):
            await self.redis.delete(*fillers[start : start + 64])
        await self.redis.config_set("maxmemory", 0)

    async def kill_clients(self) -> int:
        """``CLIENT KILL TYPE normal``: drop every ordinary connection (the workers', the client's;
        not the one asking); returns how many Redis closed."""
        closed: Any = await self.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")  # type: ignore[no-untyped-call]
        return int(closed)

    # ------------------------------------------------------------------------------- teardown

    def diagnostics(self) -> str:
        parts = [f"prefix {self.prefix}"]
        for w in self.workers:
            parts.append(f"--- worker {w.name} (pid {w.pid}, rc {w.proc.poll()}) log tail:\n{w.log_tail()}")
        return "\n".join(parts)

    async def close(self) -> None:
        for w in self.workers:
            if w.alive():
                if w.stopped:
                    w.cont()
                w.kill()
        print(self.diagnostics())  # shown by pytest for a failed test
        for redis in (self.client.redis, self.redis):
            with contextlib.suppress(*REDIS_DOWN):
                await redis.aclose()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _known(raw: bytes) -> Event:
    """An event the worker wrote: always of a type it knows."""
    event = decode_event(raw)
    assert not isinstance(event, UnknownEvent), f"the worker wrote an unknown event type {event.type!r}"
    return event
