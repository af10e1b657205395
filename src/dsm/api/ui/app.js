// The node's dashboard: polls this node's API (members, readiness, metrics, and the overlay assembled from
// every member's links) and redraws. No build step, no library. The API token, when the node needs one, is
// typed into the page, kept in this tab's sessionStorage and sent as an Authorization header, never in a URL.
"use strict";

const TOKEN_KEY = "dsm-token";
const POLL_MS = 1000;
const OVERLAY_EVERY = 3; // polls between two overlay requests (each asks every member)
const SVG = "http://www.w3.org/2000/svg";

let previous = null; // {at, writes, reads, repairs} of the last metrics poll
let polls = 0;
let nodeId = "";

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, asText) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Error("unauthorized");
  if (!response.ok && response.status !== 503) throw new Error(path + ": HTTP " + response.status);
  return { status: response.status, body: asText ? await response.text() : await response.json() };
}

function text(el, value) { document.getElementById(el).textContent = value; }

function parseMetrics(body) {
  const samples = [];
  for (const line of body.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || line.startsWith("#")) continue;
    const labels = {};
    for (const pair of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function total(samples, name, test) {
  return samples.filter(s => s.name === name && (!test || test(s.labels))).reduce((a, s) => a + s.value, 0);
}

function median(samples, name) {
  const buckets = samples.filter(s => s.name === name + "_bucket")
    .map(s => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), count: s.value }))
    .sort((a, b) => a.le - b.le);
  const all = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (!all) return null;
  return buckets.find(b => b.count >= all / 2).le;
}

function seconds(s) {
  if (s === null) return "–";
  if (s === Infinity) return "> 1 h";
  return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(1) + " s";
}

function renderRates(samples) {
  const now = performance.now() / 1000;
  const current = {
    at: now,
    writes: total(samples, "dsm_operation_seconds_count", l => l.op === "put" || l.op === "delete"),
    reads: total(samples, "dsm_operation_seconds_count", l => l.op === "get" || l.op === "list"),
    repairs: total(samples, "dsm_anti_entropy_repaired_keys_total"),
  };
  if (previous && now > previous.at) {
    const dt = now - previous.at;
    text("rate-writes", ((current.writes - previous.writes) / dt).toFixed(1));
    text("rate-reads", ((current.reads - previous.reads) / dt).toFixed(1));
    text("rate-repairs", ((current.repairs - previous.repairs) / dt).toFixed(1));
  }
  previous = current;
  text("rate-delay", seconds(median(samples, "dsm_replication_delay_seconds")));
  const gossip = samples.find(s => s.name === "dsm_gossip_interval_seconds");
  text("rate-gossip", gossip ? seconds(gossip.value) : "–");
}

function renderMembers(members) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const m of members.slice().sort((a, b) => a.id.localeCompare(b.id))) {
    const row = document.createElement("tr");
    row.dataset.member = m.id;
    row.dataset.state = m.state;
    const heard = m.id === nodeId ? "this node" : m.heard_ms_ago === null ? "never" : seconds(m.heard_ms_ago / 1000) + " ago";
    const tags = Object.entries(m.metadata || {}).map(([k, v]) => k + "=" + v).join(", ");
    for (const [value, cls] of [[m.id], [m.state, "state-" + m.state], [m.region], [m.incarnation], [m.addr], [heard], [tags]]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      if (cls) cell.className = cls;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

function renderAlerts(ready, members, problem) {
  const box = document.getElementById("alerts");
  box.replaceChildren();
  const add = (message, bad) => {
    const div = document.createElement("div");
    div.textContent = message;
    if (bad) div.className = "bad";
    box.appendChild(div);
  };
  if (problem) add(problem, true);
  if (ready && ready.status !== 200) add("this node has not joined its cluster (not ready)", true);
  for (const m of members) {
    if (m.state === "suspect") add("member " + m.id + " is suspected of having failed", false);
    if (m.state === "dead") add("member " + m.id + " is dead (it stopped answering)", true);
  }
}

function renderOverlay(overlay) {
  const svg = document.getElementById("ring");
  svg.replaceChildren();
  const ring = document.createElementNS(SVG, "circle");
  ring.setAttribute("r", "100");
  ring.setAttribute("class", "ring");
  svg.appendChild(ring);
  const at = {};
  for (const n of overlay.nodes) {
    const angle = n.position * 2 * Math.PI - Math.PI / 2;
    at[n.id] = [100 * Math.cos(angle), 100 * Math.sin(angle)];
  }
  for (const n of overlay.nodes) {
    for (const [kind, targets] of [["near", n.near], ["long", n.long_out]]) {
      for (const t of targets) {
        if (!at[t]) continue;
        const line = document.createElementNS(SVG, "line");
        line.setAttribute("x1", at[n.id][0]); line.setAttribute("y1", at[n.id][1]);
        line.setAttribute("x2", at[t][0]); line.setAttribute("y2", at[t][1]);
        line.setAttribute("class", kind);
        svg.appendChild(line);
      }
    }
  }
  for (const n of overlay.nodes) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", at[n.id][0]); dot.setAttribute("cy", at[n.id][1]); dot.setAttribute("r", "4");
    dot.setAttribute("class", "node " + n.state + (n.id === nodeId ? " me" : ""));
    dot.dataset.member = n.id;
    svg.appendChild(dot);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", at[n.id][0] * 1.12); label.setAttribute("y", at[n.id][1] * 1.12);
    label.setAttribute("text-anchor", "middle");
    label.textContent = n.id;
    svg.appendChild(label);
  }
  text("unreachable", overlay.unreachable.length ? "not reached for their links: " + overlay.unreachable.join(", ") : "");
}

async function poll() {
  polls += 1;
  let ready = null, members = [], problem = null;
  try {
    ready = await api("/health/ready");
    nodeId = ready.body.node_id || nodeId;
    text("node-id", nodeId);
    const badge = document.getElementById("ready");
    badge.textContent = ready.status === 200 ? "ready" : "not ready";
    badge.className = "badge " + (ready.status === 200 ? "ok" : "bad");
    members = (await api("/v1/members")).body.members;
    renderMembers(members);
    renderRates(parseMetrics((await api("/metrics", true)).body));
    if (polls % OVERLAY_EVERY === 1) renderOverlay((await api("/v1/overlay")).body);
  } catch (error) {
    problem = error.message === "unauthorized"
      ? "the node needs an API token: type it above"
      : "cannot reach the node: " + error.message;
  }
  renderAlerts(ready, members, problem);
}

document.getElementById("token-form").addEventListener("submit", event => {
  event.preventDefault();
  const field = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, field.value);
  field.value = "";
  polls = 0;
  poll();
});
poll();
setInterval(poll, POLL_MS);
