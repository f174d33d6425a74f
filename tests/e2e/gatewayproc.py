"""Real `tokenwire gateway` processes for the end-to-end lane: config with tenants, start, stop, kill."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.clikit import TOKENWIRE
from worker.redisproc import free_port

SECRET = "e2e-gateway-secret-5c1f9a7e3b2d4086"
KEYS = {"acme": "acme-e2e-key-9f8e7d6c5b4a3210", "bolt": "bolt-e2e-key-0a1b2c3d4e5f6789"}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def tenant_toml(extra: str = "") -> str:
    out = []
    for name, key in KEYS.items():
        out += [f"[tenants.{name}]", f'key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"', extra, ""]
    return "\n".join(out)


def gateway_env(env: dict[str, str], tmp_path: Path, extra: str = "", settings: str = "") -> dict[str, str]:
    """``env`` (the worker's) with a config that adds the tenants, and the read-token secret."""
    base = Path(env["TOKENWIRE_CONFIG"]).read_text()
    cfg = tmp_path / f"gateway-{len(list(tmp_path.glob('gateway-*.toml')))}.toml"
    cfg.write_text(settings + "\n" + base + "\n" + tenant_toml(extra))
    return {**env, "TOKENWIRE_CONFIG": str(cfg), "TOKENWIRE_GATEWAY_SECRET": SECRET}


@dataclass
class GatewayProc:
    proc: subprocess.Popen[str]
    url: str
    port: int
    output: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self.pump is not None:
            self.pump.join(timeout=10)  # the pipe's end reached: everything it printed is kept
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def log(self) -> str:
        return "".join(self.output)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


def start_gateway(env: dict[str, str], port: int | None = None, timeout: float = 30.0) -> GatewayProc:
    port = port or free_port()
    proc = subprocess.Popen(
        [TOKENWIRE, "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:  # keep reading, so the pipe never fills; remember everything for the checks
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "tokenwire gateway listening on" in line:
                ready.set()
        ready.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    gw = GatewayProc(proc, f"http://127.0.0.1:{port}", port, output, thread)
    if not ready.wait(timeout) or proc.poll() is not None:
        gw.kill()
        raise AssertionError(f"the gateway did not start: {''.join(output)}")
    return gw


def environ_without_tokenwire() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
