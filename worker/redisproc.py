"""Start and stop private ``redis-server`` processes on free loopback ports.

Used by ``tokenwire demo`` and by the test suite: they never touch a Redis they did not start.
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["RedisClusterServers", "RedisServer", "free_port", "redis_server_available"]


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def free_port(*, below: int | None = None) -> int:
    """A free loopback port; ``below``: also free at port + 10000 (a cluster node's bus port)."""
    if below is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(20000, below)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PortTaken(RuntimeError):
    """The port was free when picked and taken when redis-server bound it."""


class RedisServer:
    """One ``redis-server`` on 127.0.0.1. ``start()`` waits until it answers; ``stop()`` kills it."""

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        directory: Path | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        """``tls``: (certificate, key, CA certificate) files; the server then speaks only TLS.
        Without ``port``, one from ``pick_port``; another is picked if that one is taken by the time
        the server binds it (parallel test processes pick ports at the same time)."""
        self.tls = tls
        self._pick_port = pick_port if port is None else None
        self.port = port or pick_port()
        self.password = password
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self._own_dir = directory is None
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert self.directory is not None
        cmd = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.directory),
            "--maxmemory-policy", "noeviction",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.tls is not None:
            cert, key, ca = self.tls
            cmd[cmd.index("--port") + 1] = "0"
            cmd += ["--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            cmd += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        return cmd + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="tokenwire-redis-"))
        try:
            for _ in range(5):
                try:
                    return self._start_once(timeout)
                except PortTaken:
                    if self._pick_port is None:
                        raise
                    self.port = self._pick_port()
            raise RuntimeError("redis-server found no free port in 5 tries")
        except BaseException:
            self.stop()  # its data directory too
            raise

    def _start_once(self, timeout: float) -> RedisServer:
        # Its own session: a Ctrl-C at the terminal reaches the program that started it, which stops it
        # in order, instead of killing Redis first under a worker still using it.
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                err = err or self._log_tail()
                if self.process.stderr is not None:
                    self.process.stderr.close()
                if "Address already in use" in err:
                    raise PortTaken(err)
                raise RuntimeError(f"redis-server exited at start: {err}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return self._ping_on(raw)
                context = ssl.create_default_context(cafile=str(self.tls[2]))
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    return self._ping_on(sock)
        except OSError:
            return False

    def _ping_on(self, sock: socket.socket) -> bool:
        if self.password:
            sock.sendall(f"AUTH {self.password}\r\n".encode())
            if not sock.recv(64).startswith(b"+OK"):
                return False
        # INFO's process_id, not a PONG: a server of another test process may hold the port.
        sock.sendall(b"INFO server\r\n")
        reply = b""
        while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return False
            reply += chunk
        return self.process is not None and f"process_id:{self.process.pid}\r\n".encode() in reply

    def _log_tail(self) -> str:
        if self.directory is None:
            return ""
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, keeping the data directory (a restart on the same port sees the AOF)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        if self._own_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """A real Redis Cluster of ``masters`` nodes on loopback (no replicas), for tests and demos."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                pick_port=lambda: free_port(below=55535),
                extra_args=["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(n) for n in self.nodes):
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=5
        )
        return "cluster_state:ok" in out.stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
