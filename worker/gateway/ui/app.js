// tokenwire gateway page: enqueue a job (the key stays in this page's memory, sent as a Bearer
// header, never stored) or watch one (/?job=ID&token=READ_TOKEN), its tokens shaded by probability.
//
// Every string from the server is rendered with textContent, never parsed as HTML. The event stream is
// an EventSource; when it fails the page closes it and opens a new one with ?after=<the last id it
// rendered>, so it resumes exactly where it stopped: events at or before that id are dropped (and
// counted, data-duplicates), and a token index that skips one is counted (data-gaps).
"use strict";

(() => {
  const TYPES = ["start", "token", "segment", "candidate_done", "done", "error", "cancelled"];
  const TERMINAL = new Set(["done", "error", "cancelled"]);
  const BANDS = new Set(["high", "medium", "low", "unscored"]);
  const ID_RE = /^(\d{1,20})-(\d{1,20})$/;
  const JOB_RE = /^[A-Za-z0-9._:@/+=-]{1,128}$/; // worker/jobs.py JobId
  const MAX_TEXT = 100000; // characters of one server string shown at most
  const RETRY_FIRST_MS = 250;
  const RETRY_MAX_MS = 5000;

  const $ = (id) => document.getElementById(id);

  // One place for the shading: alpha of the highlight = 0.8 * (1 - p), p = exp(logprob).
  function shade(p) {
    return Math.round(0.8 * (1 - p) * 1000) / 1000;
  }
  function paint(el, p) {
    el.style.backgroundColor = `rgba(230, 80, 40, ${shade(p)})`;
  }

  function text(value) {
    const s = typeof value === "string" ? value : String(value);
    return s.length > MAX_TEXT ? s.slice(0, MAX_TEXT) + "…" : s;
  }

  function parseId(id) {
    const m = ID_RE.exec(id || "");
    return m ? [Number(m[1]), Number(m[2])] : null;
  }
  function after(a, b) {
    // whether stream id a comes after b (both parsed)
    return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
  }

  const view = {
    tokens: $("tokens"),
    reasoning: $("reasoning"),
    status: $("status"),
  };

  const watch = {
    job: null,
    token: null,
    es: null,
    opened: false,
    finished: false,
    lastId: null, // the last event id rendered, as text
    lastParsed: null,
    attempt: -1,
    count: 0,
    duplicates: 0,
    gaps: 0,
    connects: 0,
    retryMs: RETRY_FIRST_MS,
    timer: null,
    // one lane per candidate ("" for a job without candidates): its token elements by index, its
    // content tokens in order with their char offsets, the index it expects next
    lanes: new Map(),
  };

  function lane(ev) {
    const c = num(ev.candidate);
    const name = c === null ? "" : String(c);
    let found = watch.lanes.get(name);
    if (found === undefined) {
      let el = view.tokens;
      if (name !== "") {
        const box = document.createElement("section");
        box.className = "candidate";
        box.dataset.candidate = name;
        const h = document.createElement("h3");
        h.textContent = `Candidate ${c}`;
        el = document.createElement("div");
        el.className = "tokens";
        const note = document.createElement("p");
        note.className = "candidate-done";
        box.append(h, el, note);
        $("candidates").append(box);
        $("candidates").hidden = false;
        if (!view.tokens.hasChildNodes()) view.tokens.classList.add("unused"); // every token is a candidate's
      }
      found = { name, el, byIndex: new Map(), content: [], nextIndex: 0 };
      watch.lanes.set(name, found);
    }
    return found;
  }

  function setStatus(state, message) {
    view.status.dataset.state = state;
    view.status.textContent = message;
  }

  function counters() {
    const d = view.tokens.dataset;
    d.count = String(watch.count);
    d.duplicates = String(watch.duplicates);
    d.gaps = String(watch.gaps);
    d.connects = String(watch.connects);
    d.lastId = watch.lastId || "";
  }

  function resetAttempt() {
    view.tokens.replaceChildren();
    view.reasoning.replaceChildren();
    $("candidates").replaceChildren();
    $("candidates").hidden = true;
    view.tokens.classList.remove("unused");
    $("reasoning-box").hidden = true;
    $("segments").replaceChildren();
    $("segments-box").hidden = true;
    watch.lanes.clear();
    watch.count = 0;
  }

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function onStart(ev) {
    const attempt = num(ev.attempt);
    if (attempt === null) return;
    if (attempt > watch.attempt) {
      if (watch.attempt >= 0) resetAttempt(); // a retry: the earlier attempt's tokens are discarded
      watch.attempt = attempt;
    }
    const el = $("attempt");
    if (attempt > 1 || ev.reason) {
      el.hidden = false;
      el.textContent = `attempt ${attempt}` + (ev.reason ? ` (${text(ev.reason)})` : "");
    }
  }

  function onToken(ev) {
    const index = num(ev.index);
    if (index === null || typeof ev.text !== "string") return;
    const attempt = num(ev.attempt);
    if (attempt !== null && attempt < watch.attempt) return; // a late token of an earlier attempt
    const l = lane(ev);
    if (l.byIndex.has(index)) {
      watch.duplicates += 1;
      return;
    }
    if (index !== l.nextIndex) watch.gaps += 1;
    l.nextIndex = index + 1;
    const el = document.createElement("span");
    el.className = "tok";
    el.textContent = text(ev.text);
    el.dataset.index = String(index);
    const logprob = num(ev.logprob);
    if (logprob !== null) {
      const p = Math.min(1, Math.exp(logprob));
      el.dataset.p = p.toFixed(6);
      el.title = `p = ${p.toFixed(3)}`;
      paint(el, p);
    } else {
      el.classList.add("unscored");
      el.title = "no probability";
    }
    if (ev.special === true) el.classList.add("special");
    if (ev.low === true) el.classList.add("low");
    if (l.name !== "") el.dataset.candidate = l.name;
    l.byIndex.set(index, el);
    watch.count += 1;
    if (ev.channel === "reasoning" && l.name === "") {
      $("reasoning-box").hidden = false;
      view.reasoning.append(el);
    } else {
      if (ev.channel === "reasoning") el.classList.add("reasoning");
      const start = num(ev.char_start);
      const end = num(ev.char_end);
      if (ev.channel !== "reasoning") l.content.push({ el, start: start ?? -1, end: end ?? -1 });
      l.el.append(el);
    }
  }

  // A lane's content tokens overlapping [start, end) (code-point offsets in its answer).
  function tokensIn(l, start, end) {
    return l.content.filter((t) => t.start < end && t.end > start).map((t) => t.el);
  }

  function onCandidateDone(ev) {
    const l = lane(ev);
    if (l.name === "") return;
    const note = l.el.parentElement.querySelector(".candidate-done");
    const c = num(ev.confidence);
    const failed = ev.error && typeof ev.error === "object";
    note.textContent = failed
      ? `failed: ${text(ev.error.code ?? "")} ${text(ev.error.message ?? "")}`
      : `finished: ${text(ev.finish_reason ?? "–")}, confidence ${c === null ? "–" : (100 * c).toFixed(1) + " %"}`;
  }

  function onSegment(ev) {
    const band = BANDS.has(ev.band) ? ev.band : "unknown";
    const start = num(ev.char_start);
    const end = num(ev.char_end);
    const l = lane(ev);
    const first = num(ev.token_start);
    const last = num(ev.token_end); // exclusive
    let marked = [];
    if (first !== null && last !== null && last - first <= 1_000_000) {
      for (let i = first; i < last; i++) if (l.byIndex.has(i)) marked.push(l.byIndex.get(i));
    } else if (start !== null && end !== null) {
      marked = tokensIn(l, start, end);
    }
    for (const el of marked) {
      el.classList.add(`band-${band}`);
      el.dataset.band = band;
    }
    const li = document.createElement("li");
    li.dataset.band = band;
    const b = document.createElement("span");
    b.className = "band";
    b.textContent = band;
    const meta = document.createElement("span");
    meta.className = "seg-meta";
    const mean = num(ev.mean_logprob);
    meta.textContent = mean === null ? " · unscored · " : ` · mean logprob ${mean.toFixed(2)} · `;
    const t = document.createElement("span");
    t.textContent = typeof ev.text === "string" ? text(ev.text) : "";
    if (l.name !== "") {
      const who = document.createElement("span");
      who.className = "seg-meta";
      who.textContent = `candidate ${l.name} · `;
      li.append(who);
    }
    li.append(b, meta, t);
    $("segments").append(li);
    $("segments-box").hidden = false;
  }

  function row(list, term, value, cls) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    if (cls) dd.className = cls;
    list.append(dt, dd);
  }

  function fixed(value, digits) {
    const n = num(value);
    return n === null ? "–" : n.toFixed(digits);
  }

  function onTerminal(type, ev) {
    const list = $("summary-list");
    list.replaceChildren();
    $("summary").hidden = false;
    row(list, "outcome", type);
    if (type === "done") {
      row(list, "finish reason", ev.finish_reason ?? "–");
      const c = num(ev.confidence);
      row(list, "confidence", c === null ? "–" : `${(100 * c).toFixed(1)} %`);
      const s = ev.summary && typeof ev.summary === "object" ? ev.summary : {};
      row(list, "tokens", `${num(s.n_tokens) ?? "–"} (${num(s.n_scored) ?? "–"} scored)`);
      row(list, "mean logprob", fixed(s.mean_logprob, 3));
      row(list, "perplexity", fixed(s.perplexity, 3));
      row(list, "lowest probability", fixed(s.min_prob, 3));
      const spans = Array.isArray(s.low_spans) ? s.low_spans : [];
      const all = Array.isArray(ev.candidates) ? ev.candidates : null;
      const winner = all ? all.find((x) => x && x.rank === 1 && num(x.index) !== null) : undefined;
      // the summary is the winner's: its low spans are in the winner's lane
      const target = watch.lanes.get(winner ? String(winner.index) : "");
      row(list, "low-confidence spans", String(spans.length) + (s.low_spans_truncated ? "+" : ""));
      for (const span of spans) {
        const a = num(span && span.char_start);
        const b = num(span && span.char_end);
        if (a !== null && b !== null && target) for (const el of tokensIn(target, a, b)) el.classList.add("span-low");
      }
      if (all) {
        const agreement = num(ev.agreement);
        row(list, "candidates", `${all.length}` + (winner ? `, best: candidate ${winner.index}` : "") +
          (agreement === null ? "" : `, agreement ${(100 * agreement).toFixed(0)} %`));
      }
      const v = ev.verdict;
      if (v && typeof v === "object" && typeof v.decision === "string") {
        const reasons = Array.isArray(v.reasons) ? v.reasons.filter((r) => typeof r === "string") : [];
        const decision = v.decision === "review" ? "review" : v.decision === "publish" ? "publish" : "";
        row(list, "verdict", v.decision + (reasons.length ? ` (${reasons.join("; ")})` : ""),
          decision ? `verdict-${decision}` : "");
      }
    } else if (type === "error") {
      row(list, "code", ev.code ?? "–");
      row(list, "message", ev.message ?? "–");
    } else {
      row(list, "reason", ev.reason ?? "–");
    }
  }

  function onEvent(e) {
    if (!(e instanceof MessageEvent)) return; // the EventSource's own "error" (network)
    const parsed = parseId(e.lastEventId);
    if (parsed !== null && watch.lastParsed !== null && !after(parsed, watch.lastParsed)) {
      watch.duplicates += 1; // replayed: at or before what was rendered
      counters();
      return;
    }
    let ev;
    try {
      ev = JSON.parse(e.data);
    } catch (_) {
      return; // not JSON: ignored
    }
    if (ev === null || typeof ev !== "object") return;
    if (parsed !== null) {
      watch.lastParsed = parsed;
      watch.lastId = e.lastEventId;
    }
    watch.retryMs = RETRY_FIRST_MS;
    if (e.type === "start") onStart(ev);
    else if (e.type === "token") onToken(ev);
    else if (e.type === "segment") onSegment(ev);
    else if (e.type === "candidate_done") onCandidateDone(ev);
    if (TERMINAL.has(e.type)) {
      onTerminal(e.type, ev);
      finish("done", `finished: ${e.type}`);
    }
    counters();
  }

  function finish(state, message) {
    watch.finished = true;
    if (watch.es) watch.es.close();
    watch.es = null;
    clearTimeout(watch.timer);
    setStatus(state, message);
    counters();
  }

  function eventsUrl() {
    const url = new URL(`/v1/jobs/${encodeURIComponent(watch.job)}/events`, location.origin);
    if (watch.token) url.searchParams.set("token", watch.token);
    if (watch.lastId) url.searchParams.set("after", watch.lastId);
    return url;
  }

  function connect() {
    if (watch.finished) return;
    watch.opened = false;
    watch.connects += 1;
    counters();
    const es = new EventSource(eventsUrl());
    watch.es = es;
    es.onopen = () => {
      watch.opened = true;
      setStatus("live", watch.lastId ? `live (resumed after ${watch.lastId})` : "live");
    };
    for (const type of TYPES) es.addEventListener(type, onEvent);
    es.addEventListener("error", (e) => {
      if (e instanceof MessageEvent || watch.finished || watch.es !== es) return;
      es.close(); // reconnect ourselves, with ?after=<last id rendered>
      watch.es = null;
      if (!watch.opened) probe();
      else retry();
    });
  }

  function retry() {
    const wait = watch.retryMs;
    watch.retryMs = Math.min(RETRY_MAX_MS, watch.retryMs * 2);
    setStatus("reconnecting", `reconnecting in ${(wait / 1000).toFixed(1)} s`);
    clearTimeout(watch.timer);
    watch.timer = setTimeout(connect, wait);
  }

  // The stream never opened: ask for the job's state to tell a refusal from an outage.
  async function probe() {
    const url = new URL(`/v1/jobs/${encodeURIComponent(watch.job)}`, location.origin);
    if (watch.token) url.searchParams.set("token", watch.token);
    let status = 0;
    try {
      const r = await fetch(url, { cache: "no-store", credentials: "omit" });
      status = r.status;
    } catch (_) {
      status = 0;
    }
    if (status === 401 || status === 403) finish("failed", "not allowed: the read token is invalid or expired");
    else if (status === 404) finish("failed", "no such job (or not yours)");
    else retry();
  }

  function startWatching(job, token) {
    if (watch.es) watch.es.close();
    clearTimeout(watch.timer);
    Object.assign(watch, {
      job, token, es: null, finished: false, lastId: null, lastParsed: null, attempt: -1,
      duplicates: 0, gaps: 0, connects: 0, retryMs: RETRY_FIRST_MS,
    });
    resetAttempt();
    $("summary").hidden = true;
    $("attempt").hidden = true;
    $("job-id").textContent = job;
    $("watch").hidden = false;
    setStatus("connecting", "connecting");
    connect();
  }

  function reasonOf(body) {
    if (body && typeof body === "object") {
      for (const k of ["error", "detail", "message", "reason"]) {
        if (typeof body[k] === "string") return body[k];
        if (body[k] && typeof body[k] === "object" && typeof body[k].message === "string") return body[k].message;
      }
    }
    return null;
  }

  async function enqueue(e) {
    e.preventDefault();
    const err = $("form-error");
    err.hidden = true;
    const key = $("key").value.trim();
    const model = $("model").value.trim();
    const prompt = $("prompt").value;
    if (!key || !model || !prompt.trim()) {
      err.textContent = "a key, a model and a prompt are needed";
      err.hidden = false;
      return;
    }
    const button = $("submit");
    button.disabled = true;
    try {
      const r = await fetch("/v1/jobs", {
        method: "POST",
        headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json" },
        body: JSON.stringify({ model, input: prompt }),
        cache: "no-store",
        credentials: "omit",
      });
      const raw = await r.text();
      let body = null;
      try { body = JSON.parse(raw); } catch (_) { body = null; }
      if (r.status !== 200 && r.status !== 201) {
        err.textContent = `${r.status}: ${text(reasonOf(body) ?? raw.slice(0, 500))}`;
        err.hidden = false;
        return;
      }
      if (!body || typeof body.id !== "string" || typeof body.read_token !== "string") {
        err.textContent = "the gateway's answer had no job id or read token";
        err.hidden = false;
        return;
      }
      // the watch URL a product hands its users; the key is not in it
      const watchUrl = new URL("/", location.origin);
      watchUrl.searchParams.set("job", body.id);
      watchUrl.searchParams.set("token", body.read_token);
      history.replaceState(null, "", watchUrl);
      startWatching(body.id, body.read_token);
    } catch (_) {
      err.textContent = "the gateway could not be reached";
      err.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    for (const el of document.querySelectorAll("[data-swatch]")) paint(el, Number(el.dataset.swatch));
    $("job-form").addEventListener("submit", enqueue);
    const params = new URLSearchParams(location.search);
    const job = params.get("job");
    if (job !== null) {
      if (!JOB_RE.test(job)) {
        $("watch").hidden = false;
        setStatus("failed", "the job id in this address is not valid");
        return;
      }
      $("enqueue").hidden = true;
      startWatching(job, params.get("token"));
    }
  }

  init();
})();
