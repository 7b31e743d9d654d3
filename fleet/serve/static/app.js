// fleet dashboard: polls /api/dashboard every second and /health every 5 s; no build step.
"use strict";

const POLL_MS = 1000;
const HEALTH_MS = 5000;
const WINDOW_S = 600;
const KEY_ITEM = "fleet-api-key";

const state = { authRequired: false, deadLetters: [], lastOk: 0 };
const $ = (id) => document.getElementById(id);

function storedKey() { return sessionStorage.getItem(KEY_ITEM) || ""; }

async function call(path, options = {}, key = storedKey()) {
  const headers = Object.assign({}, options.headers || {});
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, body };
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmt(n) { return typeof n === "number" ? n.toLocaleString("en-US") : "–"; }

function banner(text) {
  const node = $("banner");
  node.hidden = !text;
  node.textContent = text || "";
}

// -- key dialog ------------------------------------------------------------------------

function askKey({ title, text, needKey, error }) {
  const dialog = $("key-dialog");
  $("key-title").textContent = title;
  $("key-text").textContent = text;
  $("key-error").textContent = error || "";
  const input = $("key-input");
  input.hidden = !needKey;
  input.required = needKey;
  input.value = "";
  return new Promise((resolve) => {
    const done = (value) => {
      $("key-form").onsubmit = null;
      $("key-cancel").onclick = null;
      dialog.close();
      resolve(value);
    };
    $("key-form").onsubmit = (event) => { event.preventDefault(); done(needKey ? input.value.trim() : ""); };
    $("key-cancel").onclick = () => done(null);
    dialog.showModal();
    if (needKey) input.focus();
  });
}

async function setKey() {
  const key = await askKey({
    title: "API key",
    text: "This server needs a key to show its data: FLEET_API_KEY, or FLEET_API_READ_KEY to only look.",
    needKey: true,
  });
  if (key) { sessionStorage.setItem(KEY_ITEM, key); poll(); }
}

// -- rendering ---------------------------------------------------------------------------

function renderLag(status) {
  for (const consumer of ["workers", "indexer"]) {
    const view = (status && status.consumers && status.consumers[consumer]) || {};
    for (const field of ["pending", "ack_pending", "redelivered", "waiting"]) {
      $(`lag-${consumer}-${field}`).textContent = fmt(view[field]);
    }
  }
  const streams = (status && status.streams) || {};
  const parts = Object.entries(streams).map(([name, view]) => `${name} ${fmt(view.messages)}`);
  $("streams").textContent = "stream messages: " + (parts.join(" · ") || "–");
}

function renderChart(rates) {
  const now = Date.now() / 1000;
  const recent = rates.filter((r) => now - r.at <= WINDOW_S);
  const max = Math.max(1, ...recent.map((r) => r.pages_per_s));
  const points = recent.map((r) => {
    const x = 600 - ((now - r.at) / WINDOW_S) * 600;
    const y = 150 - (r.pages_per_s / max) * 132;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  $("chart-line").setAttribute("points", points.join(" "));
  $("chart-max").textContent = `${max.toFixed(max < 10 ? 1 : 0)} pages/s`;
  const last = recent.length ? recent[recent.length - 1].pages_per_s : null;
  $("rate-now").textContent = last === null ? "–" : last.toFixed(1);
}

function renderSupervisor(sup) {
  const box = $("supervisor");
  if (!sup) return; // the static hint stays
  box.replaceChildren();
  if (sup.error) {
    box.append(el("p", `Supervisor at ${sup.url} is not answering: ${sup.error}`, "error"));
    return;
  }
  const health = sup.health || {};
  const decision = health.last_decision || {};
  const policy = health.policy || {};
  const kv = el("dl", null, "kv");
  const add = (k, v) => { kv.append(el("dt", k), el("dd", v)); };
  add("workers running", fmt(decision.current));
  add("target", fmt(decision.desired));
  add("lag (pending + unacked)", fmt(decision.lag));
  add("limits", `min ${fmt(policy.min_replicas)} · max ${fmt(policy.max_replicas)} · ${fmt(policy.target_lag)} URLs per worker`);
  add("last decision", decision.reason || "–");
  add("status", health.status || "–");
  box.append(kv);
  const workers = sup.workers || [];
  if (!workers.length) { box.append(el("p", "no workers", "muted")); return; }
  const table = el("table", null, "list");
  const head = el("tr");
  for (const h of ["worker", "state", "CPU", "memory"]) head.append(el("th", h));
  const thead = el("thead");
  thead.append(head);
  table.append(thead);
  const body = el("tbody");
  for (const w of workers) {
    const row = el("tr");
    row.append(el("td", w.name), el("td", w.state),
      el("td", w.cpu_percent === null ? "–" : `${w.cpu_percent.toFixed(0)} %`),
      el("td", w.memory_bytes === null ? "–" : `${(w.memory_bytes / 1048576).toFixed(0)} MB`));
    body.append(row);
  }
  table.append(body);
  box.append(table);
}

function renderDeadLetters(letters, total) {
  state.deadLetters = letters;
  $("dlq-count").textContent = `${fmt(total)} held`;
  const body = $("dlq").querySelector("tbody");
  body.replaceChildren();
  for (const d of letters) {
    const row = el("tr");
    row.append(el("td", d.seq), el("td", d.stage), el("td", d.reason), el("td", d.attempts),
      el("td", d.url), el("td", d.error));
    body.append(row);
  }
  if (!letters.length) {
    const row = el("tr");
    const cell = el("td", "none: every URL so far was indexed or is still on its way", "muted");
    cell.colSpan = 6;
    row.append(cell);
    body.append(row);
  }
  const select = $("dlq-reason");
  const chosen = select.value;
  const reasons = [...new Set(letters.map((d) => d.reason))].sort();
  select.replaceChildren(el("option", "all reasons"));
  select.firstChild.value = "";
  for (const r of reasons) { const o = el("option", r); o.value = r; select.append(o); }
  select.value = reasons.includes(chosen) ? chosen : "";
  $("replay").disabled = !total;
}

// A crawl's progress: URLs finished (indexed, unchanged, redirected or dead-lettered) out
// of those queued so far; a fetched page counts once indexed. The total grows while links
// are found; only a done crawl is full.
function crawlProgress(c) {
  if (c.state === "done") return 1;
  const finished = c.indexed + c.unchanged + c.redirected + c.dead_lettered;
  const total = c.fetched + c.unchanged + c.redirected + c.dead_lettered + c.queued;
  return total ? Math.min(0.99, finished / total) : 0;
}

function renderCrawls(crawls) {
  const body = $("crawls").querySelector("tbody");
  body.replaceChildren();
  for (const c of crawls) {
    const row = el("tr");
    row.dataset.crawl = c.crawl;
    const share = crawlProgress(c);
    const bar = el("div", null, `bar ${c.state}`);
    const fill = el("span");
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    bar.append(fill, el("em", `${Math.floor(share * 100)} %`));
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(Math.floor(share * 100)));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const cell = el("td");
    cell.append(bar);
    row.append(el("td", c.name ? `${c.name} (${c.crawl})` : c.crawl), el("td", c.state, `state-${c.state}`),
      cell, el("td", fmt(c.fetched), "crawl-fetched"), el("td", fmt(c.queued), "crawl-queued"),
      el("td", fmt(c.discovered)), el("td", fmt(c.dead_lettered)), el("td", (c.seeds || [])[0] || ""));
    body.append(row);
  }
  if (!crawls.length) {
    const row = el("tr");
    const cell = el("td", "no crawls yet: fleet crawl start URL, or POST /api/crawls", "muted");
    cell.colSpan = 8;
    row.append(cell);
    body.append(row);
  }
}

function render(data) {
  state.authRequired = data.auth.required;
  $("key-button").hidden = !state.authRequired;
  if (data.status) {
    renderLag(data.status);
    renderDeadLetters(data.dead_letters || [], data.status.dead_letters);
    renderCrawls(data.crawls || []);
  }
  banner(data.status_error ? `NATS: ${data.status_error}` : "");
  renderChart(data.rates || []);
  renderSupervisor(data.supervisor);
  state.lastOk = Date.now();
}

// -- polling -------------------------------------------------------------------------------

async function poll() {
  try {
    const { status, body } = await call("/api/dashboard");
    if (status === 401 || status === 403) {
      state.authRequired = true;
      $("key-button").hidden = false;
      banner(body && body.detail ? `${body.detail}. Use “Set API key”.` : "This server needs an API key.");
    } else if (status === 200 && body) {
      render(body);
    } else {
      banner(`dashboard: HTTP ${status}${body && body.detail ? ": " + body.detail : ""}`);
    }
  } catch (error) {
    banner(`cannot reach the server: ${error}`);
  }
  const age = state.lastOk ? Math.round((Date.now() - state.lastOk) / 1000) : null;
  $("updated").textContent = age === null ? "no data yet" : `updated ${age < 2 ? "just now" : age + " s ago"}`;
}

async function pollHealth() {
  try {
    const { body } = await call("/health", {}, "");
    const pill = $("health");
    pill.className = "pill " + (body ? body.status : "down");
    pill.textContent = body ? `health: ${body.status}` : "health: ?";
    if (body) {
      pill.title = Object.entries(body.checks).map(([name, c]) => `${name}: ${c.state}${c.detail ? " – " + c.detail : ""}`).join("\n");
    }
  } catch (_) {
    $("health").className = "pill down";
    $("health").textContent = "health: unreachable";
  }
}

function every(ms, fn) {
  const loop = async () => { await fn(); setTimeout(loop, ms); };
  loop();
}

// -- actions ---------------------------------------------------------------------------------

async function replay() {
  const reason = $("dlq-reason").value || null;
  const what = reason ? `the dead letters with reason ${reason}` : "all dead letters";
  let error = "";
  for (;;) {
    const key = await askKey({
      title: "Replay dead letters",
      text: state.authRequired
        ? `Re-publish ${what} to the stage they failed in. Enter FLEET_API_KEY to confirm.`
        : `Re-publish ${what} to the stage they failed in?`,
      needKey: state.authRequired,
      error,
    });
    if (key === null) return;
    const { status, body } = await call("/api/dlq/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reason }),
    }, state.authRequired ? key : "");
    if (status === 200) {
      $("replay-result").textContent = `replayed ${body.replayed}`;
      poll();
      return;
    }
    error = (body && body.detail) || `HTTP ${status}`;
    if (status !== 401 && status !== 403) { $("replay-result").textContent = error; return; }
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) return;
  const list = $("search-hits");
  list.replaceChildren();
  const { status, body } = await call(`/api/search?q=${encodeURIComponent(q)}&limit=10`);
  if (status !== 200) {
    $("search-total").textContent = (body && body.detail) || `HTTP ${status}`;
    return;
  }
  $("search-total").textContent = `${fmt(body.total)} match${body.total === 1 ? "" : "es"}`;
  for (const hit of body.hits) {
    const item = el("li");
    const link = el("a", hit.title || "(untitled)");
    link.href = hit.url;
    link.rel = "noopener noreferrer";
    link.target = "_blank";
    item.append(link, el("div", hit.url, "url"), el("div", hit.snippet));
    list.append(item);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-button").addEventListener("click", setKey);
  $("replay").addEventListener("click", replay);
  $("search-form").addEventListener("submit", search);
  every(POLL_MS, poll);
  every(HEALTH_MS, pollHealth);
});
