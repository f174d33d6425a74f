"""A running gateway for end-to-end tests: ``tokenwire sim``, ``tokenwire worker`` and ``tokenwire
gateway`` as real processes on a private Redis, configured by one TOML file (the providers and the
tenants the caller gives), all stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.clikit import TOKENWIRE, run, wait_until
from worker.redisproc import free_port

__all__ = ["GatewayStack", "answers", "running_gateway"]


@dataclass(frozen=True)
class GatewayStack:
    url: str  # the gateway's base URL
    port: int
    env: dict[str, str]  # the processes' environment (TOKENWIRE_* settings)


def answers(url: str) -> bool:
    """``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_gateway(redis_url: str, tmp: Path, tenants: str, *, ui: bool = True) -> Iterator[GatewayStack]:
    """``tenants``: the TOML of the ``[tenants.NAME]`` tables. Jobs go to the simulator (provider
    ``local``, the default). Logs are in ``tmp``."""
    sim_port, port = free_port(), free_port()
    config = tmp / "tokenwire.toml"
    config.write_text(
        "block_seconds = 0.5\n"
        'default_provider = "local"\n'
        "[providers.local]\n"
        f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n' + tenants
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(config),
        "TOKENWIRE_REDIS_URL": redis_url,
        "TOKENWIRE_PREFIX": f"gw-{uuid.uuid4().hex[:8]}",
        "TOKENWIRE_CONSUMER_NAME": "gateway-e2e-worker",
        "TOKENWIRE_GATEWAY_UI": "true" if ui else "false",
        "TOKENWIRE_GATEWAY_SECRET": secrets.token_urlsafe(32),
    }
    commands = {
        "sim": [TOKENWIRE, "sim", "--port", str(sim_port), "--tps", "0"],
        "worker": [TOKENWIRE, "worker"],
        "gateway": [TOKENWIRE, "gateway", "--port", str(port)],
    }
    procs: list[subprocess.Popen[str]] = []
    with contextlib.ExitStack() as stack:
        for name, argv in commands.items():
            log = stack.enter_context((tmp / f"{name}.log").open("w"))
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        try:

            def worker_ready() -> bool:
                stats = run(env, "stats", "--json")
                return stats.returncode == 0 and json.loads(stats.stdout)["group_exists"]

            wait_until(lambda: answers(f"http://127.0.0.1:{sim_port}/health"), 20, "the simulator")
            wait_until(worker_ready, 20, "the worker to create the consumer group")
            wait_until(lambda: _listening(port), 20, "the gateway")
            yield GatewayStack(f"http://127.0.0.1:{port}", port, env)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
