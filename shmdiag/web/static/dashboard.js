// shmdiag dashboard: polls the JSON API once a second, follows /api/events/stream (SSE).
// Everything that comes from the network (event text, peer ids, addresses, type names) is put
// into the page with textContent, never as HTML; the server's Content-Security-Policy allows
// only this file's script besides.
"use strict";

const HISTORY = 300;            // samples kept for the charts: 5 minutes at 1 s
const TAIL_ROWS = 500;          // rows kept in the live tail
const PEER_ROWS = 25;           // peers shown (the busiest, or first by the chosen sort)
const SEVERITIES = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const SEV_COLORS = { DEBUG: "#6e7781", INFO: "#58a6ff", WARNING: "#d29922", ERROR: "#f85149", CRITICAL: "#ff7bff" };
const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#ff9bce", "#8b96a5"];

const $ = (id) => document.getElementById(id);
const samples = [];             // {t, total, byType, bySev}
const writerLast = new Map();   // pid -> {t, total}
let peerSort = "bytes";
let paused = false;
let source = null;

// -- formatting -----------------------------------------------------------------------------
function num(n) { return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"); }
function rate(n) { return n >= 100 ? num(n) : n.toFixed(1); }
function pct(x) { return (100 * x).toFixed(2) + "%"; }
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function dur(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}
function clock(ts) { return ts ? ts.replace("T", " ").replace("Z", "").slice(0, 23) : "–"; }

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;                       // text, never markup
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function setText(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}
function pick(obj, ...names) {                 // field names before and after the JSON unification
  for (const n of names) if (obj[n] !== undefined) return obj[n];
  return undefined;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok && !(path === "/api/health" && r.status === 503)) throw new Error(body.error || r.status);
  return body;
}

// -- figures --------------------------------------------------------------------------------
async function refresh() {
  try {
    const [stats, health, writers, latency, alerts] = await Promise.all(
      [getJSON("/api/stats"), getJSON("/api/health"), getJSON("/api/writers"), getJSON("/api/latency"),
       getJSON("/api/alerts")]);
    $("conn").textContent = "live · " + new Date().toISOString().slice(11, 19) + " UTC";
    $("conn").classList.remove("down");
    showStats(stats, health);
    showWriters(writers.writers || writers);
    showLatency(latency.operations || latency);
    showAlerts(alerts);
  } catch (e) {
    $("conn").textContent = "disconnected: " + e.message;
    $("conn").classList.add("down");
  }
}

function showStats(s, h) {
  const now = performance.now() / 1000;
  const last = samples[samples.length - 1];
  if (last && s.total_events < last.total) samples.length = 0;     // cleared: start over
  samples.push({ t: now, total: s.total_events, byType: s.events_by_type, bySev: s.events_by_severity });
  if (samples.length > HISTORY + 1) samples.shift();

  let evRate = 0, errRate = 0;
  if (samples.length >= 2) {
    const a = samples[samples.length - 2], b = samples[samples.length - 1];
    const dt = Math.max(b.t - a.t, 1e-3);
    evRate = (b.total - a.total) / dt;
    errRate = ((b.bySev.ERROR + b.bySev.CRITICAL) - (a.bySev.ERROR + a.bySev.CRITICAL)) / dt;
  }
  setText("t-total", num(s.total_events), s.total_events);
  setText("t-rate", rate(evRate), evRate);
  setText("t-errors", pct(s.error_rate), s.error_rate);
  setText("t-error-rate", rate(errRate), errRate);
  setText("t-peers", num(s.active_peers), s.active_peers);
  const retained = pick(h, "retained", "event_count"), cap = pick(h, "capacity", "max_events");
  setText("t-retained", num(retained) + " / " + num(cap), retained);
  const lost = pick(h, "lost", "events_lost"), abandoned = pick(h, "abandoned", "events_abandoned");
  setText("t-lost", num(lost) + " / " + num(abandoned), lost + abandoned);
  setText("t-writers", num(h.writers_alive) + " / " + num(h.writers_dead), h.writers_alive);
  $("health").dataset.status = h.status;
  setText("health-status", h.status);
  setText("health-message", h.message);
  drawRates("chart-type", "legend-type", byTypeSeries(), null);
  drawRates("chart-sev", "legend-sev", bySevSeries(), SEV_COLORS);
}

// Per-interval rates of a counter map, for the charts.
function series(get, keys) {
  const out = {};
  for (const k of keys) out[k] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = Math.max(b.t - a.t, 1e-3);
    for (const k of keys) out[k].push(Math.max(0, ((get(b)[k] || 0) - (get(a)[k] || 0)) / dt));
  }
  return out;
}
function byTypeSeries() {
  if (samples.length < 2) return {};
  const first = samples[0].byType, last = samples[samples.length - 1].byType;
  const moved = Object.keys(last).map((k) => [k, last[k] - (first[k] || 0)]).sort((x, y) => y[1] - x[1]);
  return series((s) => s.byType, moved.slice(0, 7).map((kv) => kv[0]));
}
function bySevSeries() { return samples.length < 2 ? {} : series((s) => s.bySev, SEVERITIES); }

function drawRates(canvasId, legendId, data, colors) {
  const cv = $(canvasId), ctx = cv.getContext("2d");
  const w = cv.clientWidth || cv.width, h = cv.clientHeight || cv.height;
  if (cv.width !== w * devicePixelRatio) { cv.width = w * devicePixelRatio; cv.height = h * devicePixelRatio; }
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const keys = Object.keys(data);
  let max = 1;
  for (const k of keys) for (const v of data[k]) max = Math.max(max, v);
  const left = 56, bottom = h - 16;
  ctx.strokeStyle = "#2a323d"; ctx.fillStyle = "#8b96a5"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - 6) * i / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(rate(max * i / 4), 2, y + 4);
  }
  // The x axis spans what has been seen, up to 5 minutes (at least 30 s).
  const span = Math.min(HISTORY, Math.max(30, ...keys.map((k) => data[k].length)));
  ctx.fillText(span >= 120 ? "-" + Math.round(span / 60) + " min" : "-" + span + " s", left, h - 2);
  ctx.fillText("now", w - 24, h - 2);
  const legend = $(legendId);
  legend.replaceChildren();
  keys.forEach((k, idx) => {
    const col = (colors && colors[k]) || PALETTE[idx % PALETTE.length];
    const vals = data[k];
    ctx.strokeStyle = col; ctx.lineWidth = 1.5; ctx.beginPath();
    vals.forEach((v, i) => {
      const x = left + (w - left) * (span - vals.length + i) / span;
      const y = bottom - (bottom - 6) * v / max;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "sw"; sw.style.background = col;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(k + " " + rate(vals.length ? vals[vals.length - 1] : 0) + "/s"));
    legend.appendChild(item);
  });
}

function showWriters(list) {
  const tb = $("writers").tBodies[0], now = performance.now() / 1000;
  tb.replaceChildren();
  for (const w of list) {
    const total = pick(w, "total_events", "recorded");
    const prev = writerLast.get(w.pid);
    const r = prev && now > prev.t ? (total - prev.total) / (now - prev.t) : 0;
    writerLast.set(w.pid, { t: now, total });
    const tr = document.createElement("tr");
    if (!w.alive) tr.className = "dead";
    cell(tr, String(w.pid)); cell(tr, w.state + (w.alive ? "" : " (not running)"));
    cell(tr, num(total), "num"); cell(tr, w.alive ? rate(r) : "–", "num");
    cell(tr, num(w.overwritten), "num"); cell(tr, num(w.lost), "num");
    tb.appendChild(tr);
  }
}

const ALERT_ORDER = { firing: 0, pending: 1, inactive: 2 };
function showAlerts(doc) {
  const tb = $("alerts").tBodies[0];
  tb.replaceChildren();
  if (!doc.evaluated) {
    setText("alerts-summary", "no collector evaluates alert rules for this ring");
    return;
  }
  const list = [...doc.alerts].sort((a, b) => ALERT_ORDER[a.state] - ALERT_ORDER[b.state]);
  const firing = list.filter((a) => a.state === "firing").length;
  const n = doc.notifications, failed = n.failed.alertmanager + n.failed.webhook;
  setText("alerts-summary", firing + " firing of " + list.length + " rules" +
    (failed ? " · " + failed + " notifications failed" : ""), firing);
  for (const a of list) {
    const tr = document.createElement("tr");
    tr.className = "alert-" + a.state;
    cell(tr, a.state.toUpperCase()); cell(tr, a.name); cell(tr, a.severity);
    cell(tr, a.state === "inactive" ? "–" : clock(a.since)); cell(tr, a.description, "msg"); cell(tr, a.found, "msg");
    tb.appendChild(tr);
  }
}

function showLatency(lat) {
  const tb = $("latency").tBodies[0];
  tb.replaceChildren();
  for (const [op, s] of Object.entries(lat)) {
    const tr = document.createElement("tr");
    cell(tr, op); cell(tr, num(s.count), "num"); cell(tr, num(s.errors), "num");
    for (const f of ["mean", "p50", "p90", "p99", "max"]) cell(tr, dur(s[f]), "num");
    tb.appendChild(tr);
  }
}

function perMsg(d) {
  return Object.entries(d || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([k, v]) => k + " " + bytes(v)).join(", ");
}

async function refreshPeers() {
  try {
    const d = await getJSON("/api/peers?limit=" + PEER_ROWS + "&sort=" + encodeURIComponent(peerSort));
    const tb = $("peers").tBodies[0];
    tb.replaceChildren();
    for (const p of d.peers) {
      const tr = document.createElement("tr");
      cell(tr, p.peer_id); cell(tr, p.address || "–");
      cell(tr, p.status + (p.status_reason ? " (" + p.status_reason + ")" : ""), "status-" + p.status);
      cell(tr, num(p.messages_sent) + " / " + num(p.messages_received), "num");
      cell(tr, bytes(p.bytes_sent), "num"); cell(tr, bytes(p.bytes_received), "num");
      cell(tr, perMsg(p.bytes_sent_per_msg), "per-msg");
      cell(tr, perMsg(pick(p, "bytes_received_per_msg", "bytes_recv_per_msg")), "per-msg");
      cell(tr, dur(p.latency), "num"); cell(tr, num(pick(p, "errors", "error_count")), "num");
      cell(tr, clock(p.last_activity).slice(11));
      tb.appendChild(tr);
    }
    setText("peers-summary", `${num(d.active_peers)} connected, ${num(d.disconnected_peers)} disconnected` +
      (d.omitted_peers ? `, ${num(d.omitted_peers)} more not shown` : "") +
      (d.network_latency !== null ? `, mean ping ${dur(d.network_latency)}` : ""));
  } catch (e) { /* shown by refresh() */ }
}

// -- live tail ------------------------------------------------------------------------------
function tailRow(item) {
  const tr = document.createElement("tr");
  if (item.kind === "gap") {
    tr.className = "gap";
    const parts = [];
    if (item.overwritten) parts.push(item.overwritten + " overwritten before they could be read");
    if (item.unreadable) parts.push(item.unreadable + " never completed or expired");
    if (item.dropped) parts.push(item.dropped + " not sent: faster than the live stream shows (or this page fell behind)");
    const td = cell(tr, "— " + num(item.skipped) + " events went by unread: " + parts.join(", ") + " —");
    td.colSpan = 6;
    return tr;
  }
  tr.className = "sev-" + item.severity;
  tr.dataset.seq = String(item.seq);
  tr.dataset.arrived = String(Date.now());   // ms since the epoch: the tests measure the delay
  cell(tr, clock(item.timestamp)); cell(tr, item.severity); cell(tr, String(item.pid ?? "–"));
  cell(tr, item.event_type); cell(tr, item.peer_id || "–");
  cell(tr, item.message + (item.error ? "  error: " + item.error : ""), "msg");
  return tr;
}

function follow() {
  if (source) source.close();
  const q = new URLSearchParams({ n: "50", min_severity: $("f-sev").value });
  if ($("f-type").value.trim()) q.append("type", $("f-type").value.trim());
  if ($("f-peer").value.trim()) q.append("peer", $("f-peer").value.trim());
  $("tail").tBodies[0].replaceChildren();
  source = new EventSource("/api/events/stream?" + q.toString());
  source.onopen = () => { $("tail-status").textContent = "following"; };
  source.onerror = () => { $("tail-status").textContent = "reconnecting…"; };
  source.onmessage = (m) => {
    if (paused) return;
    const item = JSON.parse(m.data);
    if (item.kind === "end") { $("tail-status").textContent = "stream ended: " + item.reason; return; }
    const tb = $("tail").tBodies[0];
    tb.insertBefore(tailRow(item), tb.firstChild);         // newest first
    while (tb.rows.length > TAIL_ROWS) tb.deleteRow(tb.rows.length - 1);
  };
}

// -- wiring ---------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", async () => {
  try { setText("ring", (await getJSON("/api/ring")).name); } catch (e) { /* refresh() reports */ }
  for (const th of document.querySelectorAll("#peers th[data-sort]")) {
    th.addEventListener("click", () => {
      peerSort = th.dataset.sort;
      for (const o of document.querySelectorAll("#peers th")) o.classList.toggle("sorted", o === th);
      refreshPeers();
    });
  }
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); follow(); });
  $("f-pause").addEventListener("click", () => {
    paused = !paused;
    $("f-pause").textContent = paused ? "resume" : "pause";
  });
  follow();
  refresh(); refreshPeers();
  setInterval(refresh, 1000);
  setInterval(refreshPeers, 2000);
});
