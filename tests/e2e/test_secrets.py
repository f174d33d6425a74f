"""Secrets never reach logs, events or errors; password-protected Redis and rediss:// work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from worker.keys import Keys
from worker.redisproc import RedisServer, free_port
from worker.sim.faults import echo_key_pieces

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKENWIRE = str(Path(sys.executable).parent / "tokenwire")
REDIS_PASSWORD = "redis-pw-7f3a9c21e4"
API_KEY = "sk-live-4b8e2d9a1c7f0e36"
PLAIN_KEY = "4b8e2d9a1c7f0e36a5d2"  # no recognisable shape: only the Redactor's knowing it hides it
SECRETS = (REDIS_PASSWORD, API_KEY, PLAIN_KEY)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    return d / "cert.pem", d / "key.pem", d / "ca.pem"


@pytest.fixture(params=["password", "tls+password"])
def secure_redis(request: pytest.FixtureRequest, tls_files: tuple[Path, Path, Path]) -> Iterator[RedisServer]:
    tls = tls_files if request.param == "tls+password" else None
    with RedisServer(password=REDIS_PASSWORD, tls=tls) as server:
        yield server


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(360)  # several phases of real processes, each bounded: past 120 s when busy
def test_secrets_stay_out_of_logs_events_and_errors(
    secure_redis: RedisServer, sim_port: int, tmp_path: Path
) -> None:
    """Over a password-protected Redis, plain (the password in the URL's query string) and TLS: jobs
    that succeed and fail, a dead letter quoting the key, a wrong password. The upstreams echoing the
    key in every place they can run over the plain one only: what the worker makes of an echo does
    not depend on how it reaches Redis (the TLS round added only its minute)."""
    assert secure_redis.url.startswith("rediss://" if secure_redis.tls else "redis://")
    cfg = tmp_path / "tokenwire.toml"
    native = f"http://127.0.0.1:{sim_port}/v1/inference/{{model}}"
    chat = f"http://127.0.0.1:{sim_port}/v1/openai/chat/completions"
    urls = f'native_url = "{native}"\nchat_url = "{chat}"\n'
    cfg.write_text(
        'default_provider = "keyed"\nblock_seconds = 0.5\nretry_base_seconds = 0.05\n'
        f'retry_max_seconds = 0.1\n[providers.keyed]\n{urls}api_key_env = "TW_KEY"\n'
        f'[providers.plain]\n{urls}api_key_env = "TW_PLAIN_KEY"\n'
    )
    # the password in the query string (item 8): the worker's start-up line must hide it too
    url = secure_redis.url
    if not secure_redis.tls:
        url = f"redis://127.0.0.1:{secure_redis.port}/0?password={REDIS_PASSWORD}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": url,
        "TOKENWIRE_PREFIX": f"sec-{uuid.uuid4().hex[:6]}",
        "TOKENWIRE_LOG_LEVEL": "debug",
        "TW_KEY": API_KEY,
        "TW_PLAIN_KEY": PLAIN_KEY,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen([TOKENWIRE, "worker"], env=env, stdout=log, stderr=log)
        try:
            outputs = _run_jobs(env) + _dead_letter_quoting(env, secure_redis)
            if not secure_redis.tls:
                outputs += _echoing_upstreams(env) + _echoed_as_tokens(env)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0
    # a wrong password: the error names Redis, never the password given
    wrong = run(
        {**env, "TOKENWIRE_REDIS_URL": secure_redis.url.replace(REDIS_PASSWORD, "wrong-pw-0000")}, "stats"
    )
    assert wrong.returncode != 0 and "wrong-pw-0000" not in wrong.stderr and "***" in wrong.stderr

    logs = log_path.read_text()
    assert "job done" in logs and "job failed" in logs and "worker starting" in logs
    assert "upstream failed, retrying" in logs and "job dead-lettered" in logs
    everything = logs + outputs + wrong.stdout + wrong.stderr
    for secret in SECRETS:
        assert secret not in everything
        assert secret[:8] not in everything, "not even a clipped part of it"
    assert "[redacted]" in outputs and "[redacted]" in logs


ECHOES = {  # where the upstream echoes the key → the code of the job's error event
    "error": "bad_request",  # in-stream `{"error": ..., "error_type": "validation"}` at HTTP 200
    "malformed": "upstream_malformed_event",  # retried, then ends the job
    "status": "unauthorized",  # HTTP 401: the body and WWW-Authenticate
    "header": "bad_content_type",  # a 200's content type and another header
}


def _echoing_upstreams(env: dict[str, str]) -> str:
    """An upstream that echoes the request's key (Bearer form and bare) in each place it can."""
    texts = []
    for provider in ("keyed", "plain"):
        for echo, code in ECHOES.items():
            model = f"tokenwire/sim;fault=echo_key;echo={echo};after=2"
            result, job_id, events = _enqueue_followed(
                env, "--provider", provider, "--model", model, "--input", "x"
            )
            assert result.returncode == 1, result.stderr
            assert events[-1]["type"] == "error" and events[-1]["code"] == code, (echo, events[-1])
            assert "[redacted]" in events[-1]["message"], events[-1]
            texts += [result.stdout, result.stderr, run(env, "status", job_id).stdout]
    return "\n".join(texts)


ECHO_TOKENS = "tokenwire/sim;fault=echo_key;echo=tokens;after=3;tokens=12"
"""An upstream that generates the request's key (Bearer form and bare) as text in small tokens."""


def _echoed_as_tokens(env: dict[str, str]) -> str:
    """Jobs whose upstream echoes the key as generated tokens, in the native and chat dialects:
    each ends ``done`` with every token (as many as without the echo plus its pieces), the key
    redacted in its token events and ``done.text``, which the tokens' texts still spell."""
    texts, ids = [], []
    for provider, key in (("keyed", API_KEY), ("plain", PLAIN_KEY)):
        for api in ("native", "chat"):
            prompt = ["--messages", '[{"role":"user","content":"x"}]'] if api == "chat" else ["--input", "x"]
            counts = []
            for model in ("tokenwire/sim;tokens=12", ECHO_TOKENS):
                result, job_id, events = _enqueue_followed(
                    env, "--provider", provider, "--api", api, "--model", model, *prompt
                )
                assert result.returncode == 0, (provider, api, model, result.stdout, result.stderr)
                done = events[-1]
                assert done["type"] == "done", (provider, api, done)
                tokens = [e for e in events if e["type"] == "token"]
                assert len(tokens) == done["usage"]["output_tokens"]
                answer = "".join(t["text"] for t in tokens if t["channel"] == "content" and not t["special"])
                assert answer == done["text"], (answer, done["text"])
                counts.append(len(tokens))
                texts += [result.stdout, result.stderr, run(env, "status", job_id).stdout]
                ids.append(job_id)
            assert counts[1] == counts[0] + len(echo_key_pieces(f"Bearer {key}")), counts
            assert done["text"].count("[redacted]") == 2, done["text"]  # the Bearer form and the bare key
    letters = [json.loads(line) for line in run(env, "dead", "--json").stdout.splitlines()]
    assert not [d for d in letters if d.get("job_id") in ids], "a done job has no dead letter"
    return "\n".join(texts)


def _dead_letter_quoting(env: dict[str, str], server: RedisServer) -> str:
    """A raw entry the worker dead-letters with a reason that quotes the payload (the key in it)."""
    client = redis.Redis.from_url(env["TOKENWIRE_REDIS_URL"])
    try:
        payload = json.dumps({"id": "dead-1", "model": "m", "input": "x", "api": f"Bearer {PLAIN_KEY}"})
        client.xadd(Keys(env["TOKENWIRE_PREFIX"]).jobs, {"job": payload})
    finally:
        client.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        dead = run(env, "dead", "--json")
        if "dead-1" in dead.stdout:
            (letter,) = [d for d in map(json.loads, dead.stdout.splitlines()) if d.get("job_id") == "dead-1"]
            # the job stays as its producer sent it (a re-drive runs it unchanged); the reason the
            # worker wrote, its error event and its status are redacted
            assert letter.pop("job") == payload
            assert letter["code"] == "invalid_job" and "[redacted]" in letter["reason"], letter
            return json.dumps(letter) + run(env, "status", "dead-1").stdout
        time.sleep(0.1)
    raise AssertionError("the invalid entry was not dead-lettered")


@pytest.mark.parametrize("bad", [API_KEY + "\n", " " + API_KEY, API_KEY[:4] + "\x07" + API_KEY[4:], "k3y-7Q"])
def test_a_key_the_worker_cannot_send_stops_it_at_start_naming_the_variable(tmp_path: Path, bad: str) -> None:
    """A key with a trailing newline (a Secret from a file) once crashed three deliveries per job."""
    cfg = tmp_path / "tokenwire.toml"
    cfg.write_text('default_provider = "keyed"\n[providers.keyed]\nnative_url = "http://127.0.0.1:1/{model}"\n'
                   'api_key_env = "TW_KEY"\n')  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
        "TOKENWIRE_CONFIG": str(cfg),
        "TOKENWIRE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "TW_KEY": bad,
    }
    result = subprocess.run(
        [TOKENWIRE, "worker"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "TW_KEY" in result.stderr and "configuration error" in result.stderr
    assert bad.strip() not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:ab12cd34/S3cr3tpart9@127.0.0.1:{port}/0",  # an unencoded '/' in the password
        "redis://127.0.0.1:{port}/0?password=ab12cd34S3cr3tpart9&db=x",  # a bad URL, password in the query
    ],
)
def test_a_bad_redis_url_never_shows_its_password(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env["TOKENWIRE_REDIS_URL"] = url.format(port=free_port())
    result = run(env, "worker")
    assert result.returncode == 2, result.stderr
    for part in ("ab12cd34", "S3cr3tpart9"):
        assert part not in result.stdout + result.stderr


def _enqueue_followed(
    env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], str, list[dict[str, Any]]]:
    """``tokenwire enqueue ARGS --follow --json``: the run, the job's id (its first line) and its
    events (the lines after it, printed by the code that prints ``tail --json``: see _run_jobs)."""
    result = run(env, "enqueue", *args, "--follow", "--json", "--timeout", "30")
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    return result, lines[0], [json.loads(line) for line in lines[1:]]


def _run_jobs(env: dict[str, str]) -> str:
    """Jobs that succeed, fail at HTTP level and fail in-stream; everything they print and leave.
    A failed job's ``tail --json`` prints what its ``enqueue --follow --json`` did (the other jobs'
    events are read from their ``--follow``)."""
    texts = []
    for model, code in (
        ("tokenwire/sim;tokens=5", 0),
        ("tokenwire/sim;fault=status;status=401", 1),  # the job ended in `error`
        ("tokenwire/sim;fault=error;after=2", 1),
    ):
        result, job_id, events = _enqueue_followed(env, "--model", model, "--input", "x")
        assert result.returncode == code, result.stderr
        texts += [result.stdout, result.stderr, run(env, "status", job_id).stdout]
    tail = run(env, "tail", "--json", job_id)
    assert tail.returncode == 1 and [json.loads(line) for line in tail.stdout.splitlines()] == events, tail
    texts += [tail.stdout, tail.stderr]
    stats = run(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    texts += [stats.stdout, run(env, "dead", "--json").stdout]
    _wait_quiet(env)
    return "\n".join(texts)


def _wait_quiet(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats: Any = json.loads(run(env, "stats", "--json").stdout)
        if stats["pending"] == 0:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------- gateway

GATEWAY_SECRET = "gw-secret-0d9c8b7a6f5e4d3c2b1a0918"
TENANT_KEY = "tenant-key-5e6f7a8b9c0d1e2f3a4b"


def test_the_gateway_keeps_keys_tokens_and_its_secret_out_of_logs_and_errors(
    sim_port: int, tmp_path: Path
) -> None:
    """A gateway at debug level, behind a password-protected Redis: good and bad keys, read
    tokens (good, forged, for another job), bad resume ids, Redis going away. No tenant key, read
    token, token secret or Redis password appears in its output or in any answer."""
    import hashlib

    import httpx

    from tests.e2e.gatewayproc import start_gateway

    with RedisServer(password=REDIS_PASSWORD) as server:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            'default_provider = "local"\n'
            "[providers.local]\n"
            f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n'
            "[tenants.acme]\n"
            f'key_sha256 = "{hashlib.sha256(TENANT_KEY.encode()).hexdigest()}"\n'
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")},
            "TOKENWIRE_CONFIG": str(cfg),
            "TOKENWIRE_REDIS_URL": server.url,
            "TOKENWIRE_PREFIX": f"sec-{uuid.uuid4().hex[:8]}",
            "TOKENWIRE_LOG_LEVEL": "debug",
            "TOKENWIRE_GATEWAY_SECRET": GATEWAY_SECRET,
        }
        worker = subprocess.Popen(
            [TOKENWIRE, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        gw = start_gateway(env)
        answers: list[str] = []
        try:
            key = {"Authorization": f"Bearer {TENANT_KEY}"}
            with httpx.Client(base_url=gw.url, timeout=30) as http:
                created = http.post(
                    "/v1/jobs", json={"id": "s1", "model": "m;tokens=3", "input": "x"}, headers=key
                )
                assert created.status_code == 201
                token = created.json()["read_token"]
                with http.stream("GET", "/v1/jobs/s1/events", params={"token": token}) as resp:
                    answers.append(resp.read().decode())
                near = TENANT_KEY[:-1] + "X"  # a near miss of the real key
                forged = token[:-3] + "abc"
                for method, url, kwargs in (
                    (
                        "POST",
                        "/v1/jobs",
                        {"json": {"model": "m"}, "headers": {"Authorization": f"Bearer {near}"}},
                    ),
                    ("GET", "/v1/jobs/s1", {"headers": {"Authorization": f"Bearer {near}"}}),
                    ("GET", "/v1/jobs/s1/events", {"params": {"token": forged}}),
                    ("GET", "/v1/jobs/other/events", {"params": {"token": token}}),
                    ("GET", "/v1/jobs/s1/events", {"params": {"token": token, "after": TENANT_KEY}}),
                    ("POST", "/v1/jobs", {"content": TENANT_KEY.encode(), "headers": key}),
                ):
                    answers.append(http.request(method, url, **kwargs).text)
                server.stop()  # Redis goes away: a clear 503, and a log line
                gone = http.get("/v1/jobs/s1", headers=key)
                assert gone.status_code == 503 and gone.headers["Retry-After"] == "1", gone.text
                answers.append(gone.text)
        finally:
            gw.stop()
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=30)
    text = "\n".join([*answers, gw.log, out])
    assert "gateway listening" in gw.log
    for secret in (TENANT_KEY, TENANT_KEY[:-1] + "X", GATEWAY_SECRET, REDIS_PASSWORD, token, forged):
        hidden = [a for a in answers if secret in a]
        assert not hidden, f"an answer shows a secret: {hidden}"
        assert secret not in gw.log, "the gateway's output shows a secret"
    assert GATEWAY_SECRET not in text and REDIS_PASSWORD not in text
