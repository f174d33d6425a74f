"""The gateway as users run it: real `tokenwire gateway` processes next to a real worker, the
simulator and a real Redis (single server and Cluster). A client killed mid-stream resumes with
Last-Event-ID and gets exactly the rest, across a job's retry, a gateway restart and on another
gateway process; `curl -N` follows a job; 10,000 connections opened and dropped leave memory bounded."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.e2e.clikit import TOKENWIRE as TOKENWIRE_BIN
from tests.e2e.gatewayproc import GatewayProc, bearer, gateway_env, start_gateway
from worker.gateway.ids import scoped_id
from worker.keys import Keys

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def gw_env(env: dict[str, str], worker_proc: subprocess.Popen[str], tmp_path: Path) -> dict[str, str]:
    return gateway_env(env, tmp_path, settings="gateway_heartbeat_seconds = 1.0")


@pytest.fixture
def gateways() -> Iterator[list[GatewayProc]]:
    started: list[GatewayProc] = []
    yield started
    for gw in started:
        gw.kill()
    for gw in started:  # clients killed mid-stream, dropped connections: never a traceback
        assert "Traceback" not in gw.log and "Error handling request" not in gw.log, gw.log[-3000:]


def _redis(env: dict[str, str]) -> Any:
    if env["TOKENWIRE_REDIS_CLUSTER"] == "true":
        return redis_sync.RedisCluster.from_url(env["TOKENWIRE_REDIS_URL"])
    return redis_sync.Redis.from_url(env["TOKENWIRE_REDIS_URL"])


def stored_ids(env: dict[str, str], internal: str) -> list[str]:
    client = _redis(env)
    try:
        return [i.decode() for i, _ in client.xrange(Keys(env["TOKENWIRE_PREFIX"]).events(internal))]
    finally:
        client.close()


def read_events(
    url: str, *, headers: dict[str, str] | None = None, stop_after: int | None = None, timeout: float = 60
) -> list[tuple[str, str, str]]:
    """(id, event, data) of an event stream, until it closes or ``stop_after`` events (then the
    connection is dropped, as a killed client's is)."""
    events: list[tuple[str, str, str]] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with (
        httpx.Client(timeout=httpx.Timeout(timeout)) as http,
        http.stream("GET", url, headers=headers) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            assert time.monotonic() < deadline, "the stream did not end in time"
            if line == "":
                if "data" in fields:
                    events.append((fields.get("id", ""), fields.get("event", ""), fields["data"]))
                    if stop_after is not None and len(events) >= stop_after:
                        return events
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


def post(gw: GatewayProc, body: dict[str, Any], tenant: str = "acme") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/jobs", json=body, headers=bearer(tenant), timeout=30)


def test_a_killed_client_resumes_exactly_across_a_retry_a_restart_and_another_gateway(
    gw_env: dict[str, str], gateways: list[GatewayProc]
) -> None:
    one = start_gateway(gw_env)
    two = start_gateway(gw_env)
    gateways += [one, two]
    # the first attempt's upstream drops after 6 tokens; the worker retries on a new attempt
    model = "m;tps=25;tokens=60;fault=disconnect;after=6;fail_first=1"
    created = post(one, {"id": "resume-1", "model": model, "input": "hi", "params": {"max_tokens": 60}})
    assert created.status_code == 201, created.text
    path = "/v1/jobs/resume-1/events"
    got = read_events(one.url + path, headers=bearer("acme"), stop_after=4)  # killed mid-attempt 1
    # on another gateway process, by Last-Event-ID; through the retry's new `start`
    got += read_events(two.url + path, headers={**bearer("acme"), "Last-Event-ID": got[-1][0]}, stop_after=10)
    assert [e[1] for e in got].count("start") == 2, "the client was carried across the retry"
    # the gateway it first used restarts (killed, then started on the same port); it resumes there
    one.kill()
    again = start_gateway(gw_env, port=one.port)
    gateways.append(again)
    token = created.json()["read_token"]
    got += read_events(
        f"{again.url}{path}?token={token}", headers={"Last-Event-ID": got[-1][0]}, stop_after=12
    )
    got += read_events(f"{two.url}{path}?after={got[-1][0]}", headers=bearer("acme"))
    ids = [e[0] for e in got]
    assert ids == stored_ids(gw_env, scoped_id("acme", "resume-1")), "no gap, no duplicate"
    assert got[-1][1] == "done" and json.loads(got[-1][2])["attempt"] == 2


def test_curl_follows_a_job_over_plain_http(gw_env: dict[str, str], gateways: list[GatewayProc]) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is installed (make test installs it)"
    gw = start_gateway(gw_env)
    gateways.append(gw)
    from tests.e2e.gatewayproc import KEYS

    enqueue = subprocess.run(
        [curl, "-sS", "-X", "POST", f"{gw.url}/v1/jobs", "-H", f"Authorization: Bearer {KEYS['acme']}",
         "-H", "Content-Type: application/json", "-d", '{"model": "m;tps=50;tokens=12", "input": "hi"}'],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    job_id = json.loads(enqueue.stdout)["id"]
    follow = subprocess.run(
        [curl, "-sS", "-N", "--max-time", "60", f"{gw.url}/v1/jobs/{job_id}/events",
         "-H", f"Authorization: Bearer {KEYS['acme']}"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert follow.returncode == 0, follow.stderr  # the stream closed by itself after the terminal event
    ids = [line[4:] for line in follow.stdout.splitlines() if line.startswith("id: ")]
    kinds = [line[7:] for line in follow.stdout.splitlines() if line.startswith("event: ")]
    assert ids == stored_ids(gw_env, scoped_id("acme", job_id))
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 12


def test_tenants_are_isolated_by_key_and_token_across_processes(
    gw_env: dict[str, str], gateways: list[GatewayProc]
) -> None:
    one, two = start_gateway(gw_env), start_gateway(gw_env)
    gateways += [one, two]
    a = post(one, {"id": "same", "model": "m;tokens=3", "input": "a"}).json()
    b = post(two, {"id": "same", "model": "m;tokens=5", "input": "b"}, tenant="bolt").json()
    a_events = read_events(f"{two.url}/v1/jobs/same/events?token={a['read_token']}")
    b_events = read_events(f"{one.url}/v1/jobs/same/events", headers=bearer("bolt"))
    assert {json.loads(e[2])["job_id"] for e in a_events} == {"acme/same"}
    assert {json.loads(e[2])["job_id"] for e in b_events} == {"bolt/same"}
    assert a_events[-1][1] == b_events[-1][1] == "done"
    for gw in (one, two):
        assert httpx.get(f"{gw.url}/v1/jobs/never/events", headers=bearer("bolt")).status_code == 404
        forged = a["read_token"].split(".")[0] + "." + b["read_token"].split(".")[1]
        assert httpx.get(f"{gw.url}/v1/jobs/same/events?token={forged}").status_code == 401


def test_ten_thousand_connections_opened_and_dropped_leave_memory_bounded(
    gw_env: dict[str, str], gateways: list[GatewayProc]
) -> None:
    if gw_env["TOKENWIRE_REDIS_CLUSTER"] == "true":
        pytest.skip(
            "connection handling does not depend on the Redis behind it: run once, on the single server"
        )
    gw = start_gateway(gw_env)
    gateways.append(gw)
    created = post(
        gw, {"id": "bystander", "model": "m;tps=20;tokens=60", "input": "hi", "params": {"max_tokens": 60}}
    )
    assert created.status_code == 201
    import threading

    watched: list[list[tuple[str, str, str]]] = []
    watcher = threading.Thread(
        target=lambda: watched.append(
            read_events(f"{gw.url}/v1/jobs/bystander/events", headers=bearer("acme"))
        )
    )
    watcher.start()
    before = gw.rss_bytes()
    heads = [b"", b"GET /v1/jobs/x/events HTTP/1.1\r\nHost: h\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"]
    opened = 0
    for batch in range(20):  # 20 x 500 sockets open at once, then dropped
        socks = []
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            head = heads[(batch + i) % len(heads)]
            if head:
                s.sendall(head)
            socks.append(s)
        opened += len(socks)
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            s.close()
    assert opened == 10_000
    peak = gw.rss_bytes()
    status = httpx.get(f"{gw.url}/v1/jobs/bystander", headers=bearer("acme"), timeout=30)
    assert status.status_code == 200, "the gateway still answers"
    watcher.join(timeout=60)
    assert watched and watched[0][-1][1] == "done", "a client watching meanwhile got its whole stream"
    assert [e[0] for e in watched[0]] == stored_ids(gw_env, scoped_id("acme", "bystander"))
    assert peak - before < 150 * 2**20, f"RSS grew by {(peak - before) / 2**20:.0f} MiB"
    assert gw.stop() == 0


def test_streams_outlive_a_redis_restart_and_a_stopping_gateway_says_where_to_resume(
    sim_port: int, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """Redis is killed and restarted (same port, AOF) while a client follows: the gateway's reader
    retries, the client's connection stays open (heartbeats) and goes on with no gap; then SIGTERM
    ends the open stream with a comment naming the id to resume after, and the process exits 0."""
    from tests.e2e.gatewayproc import environ_without_tokenwire
    from worker.redisproc import RedisServer

    with RedisServer(appendonly=True) as server:
        cfg = tmp_path / "base.toml"
        cfg.write_text(
            'block_seconds = 0.5\ndefault_provider = "local"\n[providers.local]\n'
            f'native_url = "http://127.0.0.1:{sim_port}/v1/inference/{{model}}"\n'
        )
        env = {
            **environ_without_tokenwire(),
            "TOKENWIRE_CONFIG": str(cfg),
            "TOKENWIRE_REDIS_URL": server.url,
            "TOKENWIRE_REDIS_CLUSTER": "false",
            "TOKENWIRE_PREFIX": "restart",
        }
        genv = gateway_env(env, tmp_path, settings="gateway_heartbeat_seconds = 0.5")
        worker = subprocess.Popen(
            [str(Path(TOKENWIRE_BIN)), "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            gw = start_gateway(genv)
            gateways.append(gw)
            body = {"id": "r1", "model": "m;tps=10;tokens=40", "input": "hi", "params": {"max_tokens": 40}}
            assert post(gw, body).status_code == 201
            events: list[tuple[str, str, str]] = []

            def follow() -> None:
                with httpx.Client(timeout=httpx.Timeout(60)) as http:
                    url = f"{gw.url}/v1/jobs/r1/events"
                    with http.stream("GET", url, headers=bearer("acme")) as resp:
                        fields: dict[str, str] = {}
                        for line in resp.iter_lines():
                            if line == "" and "data" in fields:
                                events.append((fields["id"], fields["event"], fields["data"]))
                                fields = {}
                            elif line and not line.startswith(":"):
                                name, _, value = line.partition(": ")
                                fields[name] = value

            import threading

            reader = threading.Thread(target=follow)
            reader.start()
            deadline = time.monotonic() + 30
            while len(events) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(events) >= 5, "the stream began"
            server.kill()
            server.start()
            reader.join(timeout=90)
            assert not reader.is_alive() and events[-1][1] in ("done", "error"), events[-3:]
            ids = [e[0] for e in events]
            assert len(ids) == len(set(ids)) and ids == sorted(
                ids, key=lambda i: tuple(map(int, i.split("-")))
            )
            client = redis_sync.Redis.from_url(server.url)
            rows: Any = client.xrange(Keys("restart").events("acme/r1"))
            stored = [i.decode() for i, _ in rows]
            client.close()
            assert ids == stored, "no gap, no duplicate across the restart"
            # a stream open when the gateway stops ends with where to resume
            assert post(gw, {**body, "id": "r2", "model": "m;tps=2;tokens=40"}).status_code == 201
            lines: list[str] = []

            def hold() -> None:
                url = f"{gw.url}/v1/jobs/r2/events"
                with (
                    httpx.Client(timeout=60) as http,
                    http.stream("GET", url, headers=bearer("acme")) as resp,
                ):
                    lines.extend(resp.iter_lines())

            holder = threading.Thread(target=hold)
            holder.start()
            while not any(line.startswith("id: ") for line in lines) and time.monotonic() < deadline + 60:
                time.sleep(0.05)
            assert gw.stop() == 0
            holder.join(timeout=30)
            last_id = [line[4:] for line in lines if line.startswith("id: ")][-1]
            assert f": gateway stopping; reconnect with Last-Event-ID: {last_id}" in lines
        finally:
            worker.terminate()
            worker.wait(timeout=30)
