"""The gateway's page and a bare ``EventSource`` in a real browser (Debian's headless Chromium).

Real processes: a private redis-server, ``tokenwire sim``, ``tokenwire worker`` and ``tokenwire
gateway`` with ``gateway_ui = true``; the browser reaches the gateway through a proxy that can cut
every connection from the server's side mid-stream (tests/e2e/browserkit.py). What the page shows is
compared with what the gateway replays for the finished job (the events exactly as on the Redis
stream): every token once, in order, none missing, shaded by its probability. Screenshots go to
tests/artifacts/gateway/ (ignored by git).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.browserkit import CutProxy, browser_missing, chromium, screenshot
from tests.e2e.gatewaykit import running_gateway
from worker.redisproc import RedisServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]

if browser_missing() is None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

KEY = "browser-test-key-" + secrets.token_hex(8)
MODEL = "tokenwire/sim;tokens=200;tps=20"  # ten seconds of tokens: a loaded machine's page load (seen
# over four) must leave the page live, ten tokens in, to cut its stream mid-way
WAIT = 40.0

# Reads the page's state: its status, counters and every token it shows, with its computed shade.
PAGE_STATE = """
const t = document.getElementById('tokens');
const tokens = Array.from(document.querySelectorAll('#tokens .tok, #reasoning .tok')).map(el => ({
  index: Number(el.dataset.index), text: el.textContent, p: el.dataset.p ?? null,
  bg: getComputedStyle(el).backgroundColor, low: el.classList.contains('low'),
}));
return {
  state: document.getElementById('status').dataset.state,
  status: document.getElementById('status').textContent,
  count: Number(t.dataset.count), duplicates: Number(t.dataset.duplicates), gaps: Number(t.dataset.gaps),
  connects: Number(t.dataset.connects), lastId: t.dataset.lastId,
  summary: document.getElementById('summary').hidden ? null : document.getElementById('summary').textContent,
  tokens,
};
"""

BARE_PAGE = b"""<!doctype html><meta charset="utf-8"><title>bare EventSource</title>
<pre id="log"></pre>
<script>
  window.seen = []; window.finished = false;
  const es = new EventSource(decodeURIComponent(location.hash.slice(1)));
  for (const type of ["start", "token", "done", "error", "cancelled"]) {
    es.addEventListener(type, (e) => {
      if (!(e instanceof MessageEvent)) return;
      const ev = JSON.parse(e.data);
      window.seen.push({ id: e.lastEventId, type: e.type, index: ev.index ?? null });
      document.getElementById("log").textContent += e.type + " " + e.lastEventId + "\\n";
      if (type === "done" || type === "cancelled" || type === "error") { es.close(); window.finished = true; }
    });
  }
</script>
"""


@dataclass(frozen=True)
class Stack:
    gateway: str  # the gateway's own base URL (tests' HTTP calls)
    port: int
    bare_origin: str


def _bare_server() -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(BARE_PAGE)))
            self.end_headers()
            self.wfile.write(BARE_PAGE)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway-browser")
    bare, bare_thread = _bare_server()
    bare_origin = f"http://127.0.0.1:{bare.server_address[1]}"
    tenants = (
        "[tenants.web]\n"
        f'key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
        f'origins = ["{bare_origin}"]\n'
    )
    try:
        with running_gateway(redis_server.url, tmp, tenants, ui=True) as gateway:
            yield Stack(gateway.url, gateway.port, bare_origin)
    finally:
        bare.shutdown()
        bare.server_close()
        bare_thread.join(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def proxy(stack: Stack) -> Iterator[CutProxy]:
    with CutProxy(stack.port) as cut:
        yield cut


# ------------------------------------------------------------------------------------------ helpers


def _post_job(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{stack.gateway}/v1/jobs",
        data=json.dumps(job).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass(frozen=True)
class Sse:
    id: str
    type: str
    data: dict[str, Any]


def _replay(stack: Stack, job_id: str) -> list[Sse]:
    """Every event of a finished job, as the gateway serves it from the start (it closes after the
    terminal event)."""
    request = urllib.request.Request(
        f"{stack.gateway}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if sep and name:
                fields.setdefault(name, []).append(value.removeprefix(" "))
        if "event" in fields:
            data = json.loads("\n".join(fields["data"]))
            events.append(Sse(fields["id"][0], fields["event"][0], data))
    assert events and events[-1].type == "done", [e.type for e in events[-3:]]
    return events


def _final_tokens(events: list[Sse]) -> list[dict[str, Any]]:
    last = max(e.data["attempt"] for e in events if e.type == "start")
    return [e.data for e in events if e.type == "token" and e.data["attempt"] == last]


def _state(driver: webdriver.Chrome) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(PAGE_STATE)
    return state


def _wait(driver: webdriver.Chrome, what: str, check: Any) -> dict[str, Any]:
    """Wait until ``check(page state)`` holds (polling the page, bounded); the last state."""
    seen: list[dict[str, Any]] = []

    def holds(d: webdriver.Chrome) -> bool:
        seen[:] = [_state(d)]
        return bool(check(seen[0]))

    try:
        WebDriverWait(driver, WAIT, poll_frequency=0.05).until(holds)
    except Exception as exc:
        last = {k: v for k, v in (seen[0] if seen else {}).items() if k != "tokens"}
        raise AssertionError(f"the page never showed {what}; last state {last}") from exc
    return seen[0]


_RGBA = re.compile(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)")


def _alpha(color: str) -> tuple[tuple[int, int, int], float]:
    found = _RGBA.fullmatch(color)
    assert found, color
    rgb = (int(found[1]), int(found[2]), int(found[3]))
    return rgb, float(found[4]) if found[4] is not None else 1.0


def _assert_shows_exactly(page: dict[str, Any], tokens: list[dict[str, Any]]) -> None:
    """The page shows every token of the final attempt once, in order, each shaded by exp(logprob)."""
    shown = page["tokens"]
    assert [t["index"] for t in shown] == [t["index"] for t in tokens], "a gap or a duplicate"
    assert [t["text"] for t in shown] == [t["text"] for t in tokens]
    assert page["duplicates"] == 0 and page["gaps"] == 0
    alphas = []
    for seen, token in zip(shown, tokens, strict=True):
        if token["logprob"] is None:
            assert seen["p"] is None and _alpha(seen["bg"])[1] == 0.0
            continue
        p = math.exp(token["logprob"])
        assert seen["p"] is not None and abs(float(seen["p"]) - min(1.0, p)) < 1e-5, (seen, token)
        rgb, alpha = _alpha(seen["bg"])
        assert rgb == (230, 80, 40) and abs(alpha - 0.8 * (1 - min(1.0, p))) <= 0.01, (seen, token)
        assert seen["low"] == bool(token.get("low")), (seen, token)
        alphas.append(alpha)
    assert alphas and max(alphas) - min(alphas) > 0.05, "the simulated tokens should differ in probability"


def _csp_violations(driver: webdriver.Chrome) -> list[str]:
    logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e["message"] for e in logs if "Content Security Policy" in e["message"]]


# -------------------------------------------------------------------------------------------- tests


def test_the_page_resumes_after_the_server_cuts_the_stream_without_gap_or_duplicate(
    stack: Stack, proxy: CutProxy, browser: webdriver.Chrome
) -> None:
    job = _post_job(stack, {"model": MODEL, "input": "Tell me about rivers."})
    base = f"http://127.0.0.1:{proxy.port}"
    browser.get(f"{base}/?job={job['id']}&token={job['read_token']}")
    before = _wait(browser, "ten tokens, live", lambda s: s["count"] >= 10 and s["state"] == "live")
    assert before["state"] != "done"
    screenshot(browser, "page-live-before-cut")
    assert proxy.cut() >= 1  # the event stream, closed by the "server" mid-job
    after = _wait(browser, "the finished job", lambda s: s["state"] == "done")
    screenshot(browser, "page-done-after-cut")

    _assert_shows_exactly(after, _final_tokens(_replay(stack, job["id"])))
    assert after["connects"] >= 2 and after["count"] > before["count"]
    assert after["summary"] is not None and "done" in after["summary"] and "confidence" in after["summary"]
    streams = [r for r in proxy.requests() if "/events" in r.target]
    assert len(streams) >= 2
    assert "after=" not in streams[0].target  # from the start
    assert all("after=" in r.target for r in streams[1:])  # resumed after the last id it rendered
    assert _csp_violations(browser) == []


def test_the_page_enqueues_with_a_key_it_never_stores_and_watches_by_read_token(
    stack: Stack, proxy: CutProxy, browser: webdriver.Chrome
) -> None:
    browser.get(f"http://127.0.0.1:{proxy.port}/")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "model").send_keys("tokenwire/sim;tokens=30;tps=50")
    browser.find_element(By.ID, "prompt").send_keys("Explain <b>bold</b> & why the sky is blue.")
    browser.find_element(By.ID, "submit").click()
    done = _wait(browser, "the job it enqueued, finished", lambda s: s["state"] == "done")
    screenshot(browser, "page-enqueued-done")
    url = browser.current_url
    assert "job=" in url and "token=" in url and KEY not in url
    job_id = re.search(r"job=([^&]+)", url)
    assert job_id is not None
    _assert_shows_exactly(done, _final_tokens(_replay(stack, job_id[1])))
    stored = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie, "
        "document.documentElement.outerHTML]"
    )
    assert stored[:3] == [0, 0, ""] and KEY not in stored[3]
    sent = proxy.requests()
    with_key = [r for r in sent if KEY in json.dumps(r.headers) or KEY in r.target]
    assert [(r.method, r.target) for r in with_key] == [("POST", "/v1/jobs")]  # the key, once, as Bearer
    assert with_key[0].headers["authorization"] == f"Bearer {KEY}"
    assert all("token=" in r.target for r in sent if "/events" in r.target)  # followed by read token

    browser.get(f"http://127.0.0.1:{proxy.port}/?job={job_id[1]}&token=not-a-token")
    refused = _wait(browser, "a refused token", lambda s: s["state"] == "failed")
    assert "read token" in refused["status"]
    assert _csp_violations(browser) == []
    # and the policy is enforced, not only sent: an injected inline script does not run
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
        "document.body.append(s);"
    )
    assert browser.execute_script("return window.injected === undefined")
    WebDriverWait(browser, WAIT, poll_frequency=0.1).until(lambda d: _csp_violations(d))


def test_a_bare_event_source_resumes_with_last_event_id_after_a_cut(
    stack: Stack, proxy: CutProxy, browser: webdriver.Chrome
) -> None:
    job = _post_job(stack, {"model": MODEL, "input": "Name five rivers."})
    events_url = f"http://127.0.0.1:{proxy.port}/v1/jobs/{job['id']}/events?token={job['read_token']}"
    browser.get(f"{stack.bare_origin}/#{urllib.parse.quote(events_url, safe='')}")  # another origin: CORS
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return window.seen.filter(e => e.type === 'token').length") >= 10
    )
    last_before = browser.execute_script("return window.seen[window.seen.length - 1].id")
    assert proxy.cut() >= 1
    WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
        lambda d: d.execute_script("return window.finished")
    )
    screenshot(browser, "bare-event-source-done")
    seen = browser.execute_script("return window.seen")
    replay = _replay(stack, job["id"])
    assert [e["id"] for e in seen] == [e.id for e in replay]  # every event once, in order
    assert [e["type"] for e in seen] == [e.type for e in replay]
    streams = [r for r in proxy.requests() if "/events" in r.target and r.method == "GET"]
    assert len(streams) >= 2 and "last-event-id" not in streams[0].headers
    resumed = streams[1].headers.get("last-event-id")
    ids = [e.id for e in replay]
    assert resumed is not None and ids.index(resumed) >= ids.index(last_before)  # not from the start


LANES_STATE = """
return Array.from(document.querySelectorAll('#candidates section[data-candidate]')).map(box => ({
  candidate: Number(box.dataset.candidate),
  tokens: Array.from(box.querySelectorAll('.tok')).map(el => ({
    index: Number(el.dataset.index), text: el.textContent, band: el.dataset.band ?? null,
  })),
  note: box.querySelector('.candidate-done').textContent,
}));
"""


def test_the_page_shows_segments_bands_verdict_and_each_candidate(
    stack: Stack, proxy: CutProxy, browser: webdriver.Chrome
) -> None:
    job = _post_job(
        stack,
        {
            "model": "tokenwire/sim;tokens=40;tps=80",
            "input": "Describe two rivers.",
            "review": {"unit": "sentence"},
            "candidates": {"n": 2},
        },
    )
    browser.get(f"http://127.0.0.1:{proxy.port}/?job={job['id']}&token={job['read_token']}")
    done = _wait(browser, "the finished job", lambda s: s["state"] == "done")
    screenshot(browser, "page-segments-candidates")
    events = _replay(stack, job["id"])
    lanes = {lane["candidate"]: lane for lane in browser.execute_script(LANES_STATE)}
    assert sorted(lanes) == [0, 1] and done["tokens"] == []  # every token is in its candidate's lane
    assert done["duplicates"] == 0 and done["gaps"] == 0
    segments = [e.data for e in events if e.type == "segment"]
    assert {s["band"] for s in segments} <= {"high", "medium", "low", "unscored"} and segments
    for candidate, lane in lanes.items():
        tokens = [e.data for e in events if e.type == "token" and e.data.get("candidate") == candidate]
        assert [(t["index"], t["text"]) for t in lane["tokens"]] == [(t["index"], t["text"]) for t in tokens]
        assert lane["note"].startswith("finished: ")
        shown = {t["index"]: t["band"] for t in lane["tokens"]}
        for segment in (s for s in segments if s.get("candidate") == candidate):
            for index in range(segment["token_start"], segment["token_end"]):
                assert shown[index] == segment["band"], (candidate, index, segment)
    listed = browser.execute_script(
        "return Array.from(document.querySelectorAll('#segments li')).map(li => li.dataset.band)"
    )
    assert listed == [s["band"] for s in segments]
    final = next(e.data for e in events if e.type == "done")
    rows = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#summary-list dt'))"
        ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert rows["candidates"].startswith("2, best: candidate "), rows
    assert rows["verdict"].startswith(final["verdict"]["decision"]), rows
