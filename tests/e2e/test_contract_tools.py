"""The contract as other languages read it, checked with their own tools (pinned in
``tools/contract/package.json`` and its lock): the official AsyncAPI parser accepts
``schemas/asyncapi.yaml``; ``schemas/tokenwire.d.ts`` is what json-schema-to-typescript makes of the
JSON Schemas; and ``tsc`` accepts real recorded events (a worker, the simulator, ``tokenwire tail
--json``) typed with it, and refuses a wrong one.

The tools are installed with ``npm ci`` when ``tools/contract/node_modules`` is missing or stale.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.clikit import run, wait_until
from worker.client import Client
from worker.redisproc import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "contract"
SCHEMAS = ROOT / "schemas"


def _node(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def _installed() -> bool:
    """Every tool in package.json is in node_modules at its pinned version."""
    pins = json.loads((TOOLS / "package.json").read_text())["devDependencies"]
    for name, version in pins.items():
        manifest = TOOLS / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


@pytest.fixture(scope="session")
def contract_tools() -> Path:
    """tools/contract with its node_modules installed from the lock (once; parallel workers wait)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the contract checks need Node.js 20+ and npm")
    with (TOOLS / "package-lock.json").open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two xdist workers must not run npm ci into one directory
        if not _installed():
            done = subprocess.run(
                ["npm", "ci", "--prefix", str(TOOLS), "--ignore-scripts", "--no-audit", "--no-fund"],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            assert done.returncode == 0, (
                f"npm ci --prefix tools/contract failed:\n{done.stdout}\n{done.stderr}"
            )
            assert _installed(), "npm ci did not install the pinned versions of tools/contract/package.json"
    return TOOLS


# ------------------------------------------------------------------------------------- AsyncAPI


def validate(tools: Path, document: Path) -> subprocess.CompletedProcess[str]:
    return _node(tools / "validate-asyncapi.mjs", document)


def test_asyncapi_document_passes_the_official_parser(contract_tools: Path) -> None:
    result = validate(contract_tools, SCHEMAS / "asyncapi.yaml")
    assert result.returncode == 0, f"@asyncapi/parser rejects schemas/asyncapi.yaml:\n{result.stderr}"
    assert "valid AsyncAPI 3." in result.stdout


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    if how == "openapi-discriminator":  # what msgspec writes, and the document held before
        payload = doc["components"]["messages"]["event"]["payload"]
        payload["discriminator"] = {"propertyName": "type", "mapping": {"start": "#/$defs/Start"}}
    elif how == "undeclared-parameter":  # hash-tag braces written literally
        doc["channels"]["jobs"]["address"] = "{tokenwire}:jobs"
    elif how == "dangling-ref":
        doc["components"]["messages"]["event"]["payload"]["anyOf"][0]["$ref"] = "#/$defs/Start"
    return doc


@pytest.mark.parametrize(
    ("how", "diagnostic"),
    [
        pytest.param(
            "openapi-discriminator",
            '"discriminator" property type must be string',
            id="openapi-discriminator",
        ),
        pytest.param(
            "undeclared-parameter", "Not all channel's parameters are described", id="undeclared-parameter"
        ),
        pytest.param("dangling-ref", "'#/$defs/Start' does not exist", id="dangling-ref"),
    ],
)
def test_the_parser_rejects_a_broken_document(
    contract_tools: Path, tmp_path: Path, how: str, diagnostic: str
) -> None:
    """The check can fail: each of these is refused, with the parser's diagnostic."""
    doc = _broken(yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text()), how)
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=True))
    result = validate(contract_tools, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert diagnostic in result.stderr and "error:" in result.stderr, result.stderr


def test_the_validator_says_when_it_cannot_read_the_file(contract_tools: Path, tmp_path: Path) -> None:
    result = validate(contract_tools, tmp_path / "absent.yaml")
    assert result.returncode == 2 and "cannot read" in result.stderr


# ------------------------------------------------------------------------------------ TypeScript


def test_typescript_declarations_match_the_schemas(contract_tools: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokenwire.d.ts"
    result = _node(contract_tools / "generate-types.mjs", SCHEMAS, out)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == (SCHEMAS / "tokenwire.d.ts").read_text(), (
        "schemas/tokenwire.d.ts drifted from the JSON Schemas: run `npm --prefix tools/contract run types`"
    )


@pytest.fixture
def redis_target(redis_server: RedisServer) -> tuple[str, bool]:
    """One Redis is enough here (test_cli runs the CLI on a Cluster too)."""
    return redis_server.url, False


JOBS: dict[str, dict[str, Any]] = {
    "native": {
        "model": "tokenwire/sim;tokens=12",
        "input": "Recorded for tsc.",
        "params": {"max_tokens": 32},
    },
    "chat-topk": {
        "model": "tokenwire/sim;tokens=8",
        "api": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A colour?"}],
        "params": {"top_logprobs": 5, "temperature": 0.7, "seed": 3},
        "metadata": {"origin": "test_contract_tools"},
    },
    "retried": {"model": "tokenwire/sim;tokens=10;fault=disconnect;after=3;fail_first=1", "input": "again"},
    "escalated": {
        "model": "tokenwire/sim;tokens=6",
        "input": "escalate me",
        "escalate": {"model": "tokenwire/sim-large;tokens=6", "below": 0.999},
    },
    "error": {"model": "tokenwire/sim;fault=status;status=400", "input": "refused upstream"},
    "cancelled": {"model": "tokenwire/sim;tokens=100000;tps=20", "input": "cancel me"},
}


async def _enqueue_all(env: dict[str, str]) -> dict[str, str]:
    client = Client.from_url(env["TOKENWIRE_REDIS_URL"], prefix=env["TOKENWIRE_PREFIX"])
    async with client:
        return {name: await client.enqueue(**job) for name, job in JOBS.items()}


def _tail(env: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    result = run(env, "tail", job_id, "--json", "--timeout", "30")
    assert result.returncode not in (3, 4), result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
async def recorded(
    env: dict[str, str], worker_proc: subprocess.Popen[str]
) -> dict[str, list[dict[str, Any]]]:
    """The events of real jobs run by a worker against the simulator, as `tokenwire tail --json`
    prints them: every event type, top-k, a retry's second `start`, an escalation."""
    ids = await _enqueue_all(env)

    def running() -> bool:
        status = run(env, "status", ids["cancelled"])
        return status.returncode == 0 and json.loads(status.stdout).get("state") == "running"

    wait_until(running, 30, "the job to cancel to start")
    assert run(env, "cancel", ids["cancelled"], "--reason", "recorded for tsc").returncode == 0
    return {name: _tail(env, job_id) for name, job_id in ids.items()}


def _ts(jobs: Any, events: Any, extra: str = "") -> str:
    return (
        'import type { TokenwireEvent, TokenwireJob } from "./tokenwire";\n\n'
        f"export const jobs: TokenwireJob[] = {json.dumps(jobs, indent=2)};\n\n"
        f"export const events: TokenwireEvent[] = {json.dumps(events, indent=2)};\n"
        f"{extra}"
    )


TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "exactOptionalPropertyTypes": True,
        "noEmit": True,
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "types": [],
        "skipLibCheck": False,
    },
    "files": ["check.ts"],
}


def tsc(tools: Path, directory: Path, source: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(SCHEMAS / "tokenwire.d.ts", directory / "tokenwire.d.ts")
    (directory / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (directory / "check.ts").write_text(source)
    return _node(tools / "node_modules" / "typescript" / "bin" / "tsc", "-p", directory / "tsconfig.json")


def test_recorded_events_type_check(
    contract_tools: Path, recorded: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    types = {e["type"] for stream in recorded.values() for e in stream}
    assert types == {"start", "token", "done", "error", "cancelled"}, types
    assert [e["type"] for e in recorded["retried"]].count("start") == 2
    assert any(e.get("topk") for e in recorded["chat-topk"])
    assert recorded["escalated"][-1]["type"] == "done" and recorded["escalated"][-1].get("escalation")
    events = [e for stream in recorded.values() for e in stream]
    result = tsc(contract_tools, tmp_path, _ts(list(JOBS.values()), events))
    assert result.returncode == 0, f"tsc refuses recorded events:\n{result.stdout}{result.stderr}"


Mutation = Callable[[dict[str, Any]], dict[str, Any]]

WRONG: dict[str, tuple[str, Mutation]] = {
    "a token whose logprob is text": ("token", lambda e: {**e, "logprob": "high"}),
    "a start without its job_id": ("start", lambda e: {k: v for k, v in e.items() if k != "job_id"}),
    "a done whose usage counts in text": ("done", lambda e: {**e, "usage": {"output_tokens": "12"}}),
    "an event of a type no one declared": ("cancelled", lambda e: {**e, "type": "canceled"}),
}
"""What is wrong → (the type of the recorded event it starts from, what it changes)."""


def test_tsc_refuses_a_wrong_event(
    contract_tools: Path, recorded: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The check can fail: a recorded event with one field wrong is a type error, each on its line."""
    events = [e for stream in recorded.values() for e in stream]
    lines, extra = {}, "\n"
    for what, (kind, change) in WRONG.items():
        event = change(next(e for e in events if e["type"] == kind))
        extra += f"// {what}\n"
        lines[what] = _ts([], []).count("\n") + extra.count("\n") + 1
        extra += f"export const wrong{len(lines)}: TokenwireEvent = {json.dumps(event)};\n"
    result = tsc(contract_tools, tmp_path, _ts([], [], extra))
    assert result.returncode != 0, "tsc accepted events that break the declarations"
    failing = {int(m) for m in re.findall(r"check\.ts\((\d+),\d+\): error TS", result.stdout)}
    for what, line in lines.items():
        assert line in failing, f"tsc did not refuse {what} (line {line}):\n{result.stdout}"
    assert len(failing) == len(lines), result.stdout
