// changefeed dashboard: polls the JSON API and follows /api/stream (server-sent events).
// Everything is rendered with textContent: stub fields and error messages are untrusted.
"use strict";

const MAX_LIVE_ROWS = 200;
let refreshMs = 2000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) { const td = el("td"); td.appendChild(cell); tr.appendChild(td); }
    else tr.appendChild(el("td", cell));
  }
  return tr;
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toLocaleTimeString();
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 120) return seconds.toFixed(0) + "s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + "m";
  return (seconds / 3600).toFixed(1) + "h";
}

async function getJSON(url) {
  const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
  return resp.json();
}

// -- pillows, lag per partition, throughput ------------------------------------------

function drawThroughput(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  if (series.length < 2) {
    ctx.fillStyle = "#6b7385"; ctx.font = "12px sans-serif";
    ctx.fillText("collecting samples…", 8, h / 2);
    return;
  }
  const max = Math.max(1, ...series.map(p => Math.max(p.processed, p.published)));
  const t0 = series[0].t, t1 = series[series.length - 1].t, span = Math.max(1, t1 - t0);
  for (const [key, color] of [["published", "#d69e2e"], ["processed", "#2b6cb0"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    series.forEach((p, i) => {
      const x = 4 + (w - 8) * (p.t - t0) / span, y = h - 14 - (h - 24) * p[key] / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#6b7385"; ctx.font = "11px sans-serif";
  ctx.fillText(max.toFixed(max < 10 ? 1 : 0) + "/s", 6, 12);
  ctx.fillText(Math.round(span) + "s", w - 30, h - 2);
}

function renderPillows(data) {
  const root = document.getElementById("pillows");
  const select = document.getElementById("error-pillow");
  const known = new Set(Array.from(select.options).map(o => o.value));
  root.replaceChildren();
  if (!data.pillows.length) root.appendChild(el("p", "no pillows defined", "muted"));
  for (const p of data.pillows) {
    if (!known.has(p.pillow)) select.appendChild(new Option(p.pillow, p.pillow));
    const box = el("div", null, "pillow");
    box.dataset.pillow = p.pillow;
    const left = el("div");
    const title = el("h3", p.pillow + " ");
    const lag = el("span", "lag " + (p.lag ?? "?"), p.lag > 0 ? "lag-total lag-bad" : "lag-total muted");
    title.appendChild(lag);
    left.appendChild(title);
    const summary = el("div", `errors: ${p.errors_pending ?? 0} pending, ${p.errors_parked ?? 0} parked`, "muted");
    left.appendChild(summary);
    if (p.error) left.appendChild(el("div", "status unavailable: " + p.error, "lag-bad"));
    const table = el("table", null, "partitions");
    const head = row(["topic", "partition", "checkpoint", "head", "lag", "checkpoint age"]);
    head.querySelectorAll("td").forEach(td => { const th = el("th", td.textContent); td.replaceWith(th); });
    table.appendChild(head);
    for (const part of p.partitions) {
      const tr = row([part.topic, part.partition, part.checkpoint ?? "–", part.head, part.lag, fmtAge(part.checkpoint_age)]);
      tr.dataset.partition = part.topic + "[" + part.partition + "]";
      if (part.lag > 0) tr.children[4].className = "lag-bad";
      table.appendChild(tr);
    }
    for (const note of p.notes || []) left.appendChild(el("div", "note: " + note, "muted"));
    left.appendChild(table);
    const right = el("div");
    const canvas = el("canvas");
    right.appendChild(canvas);
    const legend = el("div", null, "legend");
    const last = p.throughput.length ? p.throughput[p.throughput.length - 1] : null;
    legend.appendChild(el("span", "processed/s " + (last ? last.processed.toFixed(1) : "–"), "processed"));
    legend.appendChild(el("span", "published/s " + (last ? last.published.toFixed(1) : "–"), "published"));
    right.appendChild(legend);
    box.append(left, right);
    root.appendChild(box);
    drawThroughput(canvas, p.throughput);
  }
}

// -- error queue ---------------------------------------------------------------------

async function showDetail(id) {
  const d = await getJSON("/api/errors/" + id);
  document.getElementById("error-detail-id").textContent = "#" + d.id + " (" + d.error_type + ")";
  document.getElementById("error-detail-stub").textContent = d.stub;
  document.getElementById("error-detail-trace").textContent = d.traceback;
  document.getElementById("error-detail").hidden = false;
}

async function retry(ids, button) {
  const out = document.getElementById("retry-result");
  if (button) button.disabled = true;
  try {
    const resp = await fetch("/api/errors/retry", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids }),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || "HTTP " + resp.status);
    out.textContent = `retried ${ids.length}: ${data.resolved.length} resolved, ${data.open.length} still failing`;
  } catch (err) {
    out.textContent = "retry failed: " + err.message;
  } finally {
    if (button) button.disabled = false;
    refreshErrors();
  }
}

function renderErrors(data) {
  const body = document.querySelector("#errors tbody");
  body.replaceChildren();
  for (const e of data.errors) {
    const actions = el("span");
    const details = el("button", "details", "details");
    details.addEventListener("click", () => showDetail(e.id));
    const again = el("button", "retry", "retry");
    again.addEventListener("click", () => retry([e.id], again));
    actions.append(details, " ", again);
    const tr = row([
      e.id, e.pillow, e.processor, e.document_id, `${e.topic}[${e.partition}]@${e.offset}`,
      e.error_type.split(".").pop() + ": " + e.message, e.attempts, e.status,
      e.status === "parked" ? "parked" : fmtTime(e.next_attempt_at), actions,
    ]);
    tr.dataset.errorId = e.id;
    tr.dataset.documentId = e.document_id;
    body.appendChild(tr);
  }
  document.getElementById("errors-empty").hidden = data.errors.length > 0;
}

async function refreshErrors() {
  const params = new URLSearchParams();
  const pillow = document.getElementById("error-pillow").value;
  const status = document.getElementById("error-status").value;
  if (pillow) params.set("pillow", pillow);
  if (status) params.set("status", status);
  renderErrors(await getJSON("/api/errors?" + params));
}

// -- report data sources -----------------------------------------------------------------

const REPORT_STATES = ["live", "back-filling", "quarantined", "removed"];
const MAX_REPORT_ROWS = 100;
const TOP_ROWS = 10;

function table(headers, rows) {
  const t = el("table");
  const head = document.createElement("tr");
  for (const h of headers) head.appendChild(el("th", h));
  t.appendChild(head);
  for (const r of rows) t.appendChild(r);
  return t;
}

async function enableSource(pillow, name, button) {
  const out = document.getElementById("enable-result");
  button.disabled = true;
  try {
    const resp = await fetch("/api/reports/enable", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pillow, data_source: name }),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || "HTTP " + resp.status);
    out.textContent = `enabled ${name}: it is back-filled, then written again`;
  } catch (err) {
    out.textContent = "enable failed: " + err.message;
    button.disabled = false;
  }
  refreshReports();
}

function renderReport(r) {
  const box = el("div", null, "report");
  box.dataset.pillow = r.pillow;
  const title = el("h3", `${r.pillow} / ${r.processor} `);
  const total = REPORT_STATES.reduce((n, s) => n + (r.counts[s] || 0), 0);
  title.appendChild(el("span", `${total} data sources`, "muted"));
  box.appendChild(title);
  const counts = el("div");
  for (const state of REPORT_STATES) {
    const n = r.counts[state] || 0;
    counts.appendChild(el("span", `${n} ${state}  `, n && state !== "live" ? "state-" + state : "muted"));
  }
  box.appendChild(counts);

  const notLive = r.data_sources.filter(d => d.state !== "live");
  const order = { quarantined: 0, "back-filling": 1, removed: 2 };  // what needs a look first
  notLive.sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3) || a.name.localeCompare(b.name));
  if (notLive.length) {
    const rows = notLive.slice(0, MAX_REPORT_ROWS).map(d => {
      let detail = "";
      const action = el("span");
      if (d.state === "quarantined") {
        detail = d.reason || "failed";
        const button = el("button", "enable", "enable");
        button.addEventListener("click", () => enableSource(r.pillow, d.name, button));
        action.append(button, " or ", el("code", "changefeed reports enable " + d.name));
      } else if (d.state === "back-filling") {
        detail = `${d.progress} documents done`;
      } else {
        detail = "table kept, no longer written";
      }
      const tr = row([el("span", d.state.toUpperCase(), "state-" + d.state), d.name, d.table, detail, action]);
      tr.dataset.dataSource = d.name;
      tr.dataset.state = d.state;
      return tr;
    });
    box.appendChild(table(["state", "data source", "table", "detail", ""], rows));
    if (notLive.length > MAX_REPORT_ROWS) {
      box.appendChild(el("p", `… and ${notLive.length - MAX_REPORT_ROWS} more (changefeed reports list)`, "muted"));
    }
  }

  const slowest = r.data_sources.filter(d => d.seconds > 0).sort((a, b) => b.seconds - a.seconds).slice(0, TOP_ROWS);
  const sourceRows = slowest.map(d => row([d.name, d.seconds.toFixed(3), d.rows_written, d.rows_deleted, d.failures]));
  const domainRows = r.slowest_domains.slice(0, TOP_ROWS).map(d => row([d.domain || "(none)", d.seconds.toFixed(3)]));
  const tables = el("div", null, "tables");
  const left = el("div"), right = el("div");
  left.append(el("h4", "slowest data sources"), table(["data source", "seconds", "written", "deleted", "failures"], sourceRows));
  right.append(el("h4", `slowest domains (of ${r.domains})`), table(["domain", "seconds"], domainRows));
  tables.append(left, right);
  box.appendChild(tables);
  return box;
}

async function refreshReports() {
  const data = await getJSON("/api/reports");
  const root = document.getElementById("reports");
  root.replaceChildren();
  for (const r of data.reports) root.appendChild(renderReport(r));
  for (const [pillow, error] of Object.entries(data.errors || {})) {
    root.appendChild(el("div", `${pillow}: report data sources unavailable: ${error}`, "lag-bad"));
  }
  document.getElementById("reports-section").hidden = !data.reports.length && !Object.keys(data.errors || {}).length;
}

async function refreshReportsLoop() {
  try { await refreshReports(); } catch (err) { /* shown by the main refresh */ }
  setTimeout(refreshReportsLoop, 10000);
}

// -- checkpoint history ----------------------------------------------------------------

async function refreshHistory() {
  const data = await getJSON("/api/checkpoints/history?limit=50");
  const body = document.querySelector("#history tbody");
  body.replaceChildren();
  for (const h of data.history) {
    body.appendChild(row([
      new Date(h.changed_at * 1000).toLocaleString(), h.pillow, `${h.topic}[${h.partition}]`,
      h.old_offset ?? "–", h.new_offset ?? "–", h.changed_by, h.reason,
    ]));
  }
  document.getElementById("history-empty").hidden = data.history.length > 0;
}

// -- live changes ------------------------------------------------------------------------

let liveCount = 0;

function addLive(change) {
  if (document.getElementById("live-pause").checked) return;
  const stub = change.stub || {};
  const tr = row([
    fmtTime(change.received_at), `${change.topic}[${change.partition}]@${change.offset}`,
    change.document_id, change.error ? "invalid stub: " + change.error : (stub.document_type ?? "–"),
    stub.domain ?? "–", stub.data_source_type ? stub.data_source_type + "/" + stub.data_source_name : "–",
    stub.is_deletion ? "yes" : "",
  ]);
  tr.className = "fresh";
  tr.dataset.documentId = change.document_id;
  const body = document.querySelector("#live tbody");
  body.insertBefore(tr, body.firstChild);
  while (body.children.length > MAX_LIVE_ROWS) body.removeChild(body.lastChild);
  liveCount += 1;
  document.getElementById("live-count").textContent = `(${liveCount} seen)`;
}

function connectLive() {
  const badge = document.getElementById("live-status");
  const source = new EventSource("/api/stream");
  source.addEventListener("hello", () => {
    badge.textContent = "live: connected"; badge.className = "badge on"; badge.dataset.state = "connected";
  });
  source.addEventListener("change", ev => addLive(JSON.parse(ev.data)));
  source.onerror = () => {
    badge.textContent = "live: reconnecting"; badge.className = "badge off"; badge.dataset.state = "reconnecting";
  };
}

// -- main loop ---------------------------------------------------------------------------

async function refresh() {
  try {
    const data = await getJSON("/api/pillows");
    if (data.interval) refreshMs = Math.max(500, data.interval * 1000);
    renderPillows(data);
    await refreshErrors();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
  setTimeout(refresh, refreshMs);
}

async function refreshHistoryLoop() {
  try { await refreshHistory(); } catch (err) { /* shown by the main refresh */ }
  setTimeout(refreshHistoryLoop, 10000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("error-pillow").addEventListener("change", refreshErrors);
  document.getElementById("error-status").addEventListener("change", refreshErrors);
  connectLive();
  refresh();
  refreshHistoryLoop();
  refreshReportsLoop();
});
