"""The README's gateway examples run as printed: its `curl` block against a real gateway, worker and
simulator (only the port changed), and its TOML tenant table is one the settings accept."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import msgspec
import pytest

from tests.e2e.gatewaykit import running_gateway
from worker.gateway.models import JobState
from worker.redisproc import RedisServer
from worker.settings import Tenant

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KEY = "readme-tenant-key-0123456789"


def _gateway_section() -> str:
    readme = (ROOT / "README.md").read_text()
    (section,) = re.findall(r"\n## Gateway\n(.*?)\n## ", readme, re.S)
    return str(section)


def _block(after: str, lang: str) -> str:
    (block,) = re.findall(rf"{re.escape(after)}.*?```{lang}\n(.*?)```", _gateway_section(), re.S)
    return str(block)


def test_the_readme_tenant_table_is_a_valid_tenant() -> None:
    text = _block("Run it next to the workers", "toml").replace(
        "<64 lowercase hex digits>", hashlib.sha256(KEY.encode()).hexdigest()
    )
    (table,) = tomllib.loads(text)["tenants"].values()
    tenant = msgspec.convert(table, Tenant)
    assert tenant.key_sha256 == hashlib.sha256(KEY.encode()).hexdigest()


def test_the_readme_curl_examples_run(redis_server: RedisServer, tmp_path: Path) -> None:
    tenants = f'[tenants.acme]\nkey_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
    with running_gateway(redis_server.url, tmp_path, tenants, ui=False) as gateway:
        script = _block("**Any HTTP client**", "sh").replace("127.0.0.1:8787", f"127.0.0.1:{gateway.port}")
        env = {**os.environ, "KEY": KEY}
        result = subprocess.run(
            ["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.match(r'\{"id":"q1","events_url":"/v1/jobs/q1/events","read_token":"[^"]+"\}', out), out[:300]
    # the whole stream from its start event to the terminal done, then the rest after entry 1-5
    assert re.search(r"\nid: 1-0\nevent: start\n", out) and out.count("\nevent: done\n") == 2, out[-2000:]
    first, resumed = out.split("\nevent: done\n", 1)
    assert '"job_id":"acme/q1"' in first and re.search(r"\nid: 1-5\nevent: token\n", first)
    assert re.search(r"retry: \d+\n\nid: 1-6\nevent: token\n", resumed), resumed[:500]
    assert "\nid: 1-5\n" not in resumed and "event: start" not in resumed  # exactly the rest
    assert '"outcome":"terminal"' in out  # the state, then a cancel of a done job
    at = out.index('{"id":"q1","events_url":"/v1/jobs/q1/events","state":')
    state, _ = json.JSONDecoder().raw_decode(out, at)
    assert state["state"] == "done" and set(state) == set(JobState.__struct_fields__), state
