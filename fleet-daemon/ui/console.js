// The fleet console: reads GET /v1/console/events (server-sent events,
// read with fetch so the token rides in the Authorization header, never in
// a URL) and draws each `state` it sends. Everything shown is set as text,
// never parsed as HTML. The simulator view reads a fleet-sim result.json
// in the browser; nothing of it leaves the page.
"use strict";

const TOKEN_KEY = "fleet-console-token";
const WORKSPACE_KEY = "fleet-console-workspace";

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** A tagged enum's name: "ready", {state: "granted"}, {kind: "x", …}. */
function tag(v) {
  if (v === undefined || v === null) return "";
  if (typeof v === "string") return v;
  if (typeof v === "object") return v.state || v.kind || v.type || Object.keys(v)[0] || "";
  return String(v);
}

const usd = (micros) => "$" + (Number(micros || 0) / 1e6).toFixed(4);
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
function span(ms) {
  if (ms === undefined || ms === null) return "";
  const s = ms / 1000;
  if (s < 1) return Math.round(ms) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    const cols = $(id).tHead.rows[0].cells.length;
    body.append(el("tr", {}, el("td", { colspan: cols, class: "empty" }, "none")));
  }
}

// ---- the session -------------------------------------------------------

let session = null; // { token, workspace, abort }
let current = null; // the last ConsoleState

function signIn(token, workspace) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(WORKSPACE_KEY, workspace || "");
  if (session) session.abort.abort();
  session = { token, workspace, abort: new AbortController() };
  $("sign-in-error").textContent = "";
  setLive("connecting…");
  follow(session);
}

function signOut(why) {
  if (session) session.abort.abort();
  session = null;
  current = null;
  shownJob = null;
  shownPool = null;
  $("job-detail").hidden = true;
  $("pool-detail").hidden = true;
  sessionStorage.removeItem(TOKEN_KEY);
  $("fleet").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("token").value = "";
  $("sign-in-error").textContent = why || "";
  setLive("signed out");
  if (why) $("token").focus();
}

function setLive(text) {
  $("live").textContent = text;
}

function query(s) {
  return s.workspace ? "?workspace=" + encodeURIComponent(s.workspace) : "";
}

async function api(method, path) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + session.token },
  });
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) throw new Error((body && body.error) || res.status + " " + res.statusText);
  return body;
}

/** Reads the event stream until it ends, then tries again. */
async function follow(s) {
  let wait = 1000;
  while (session === s) {
    try {
      const res = await fetch("/v1/console/events" + query(s), {
        headers: { Authorization: "Bearer " + s.token, Accept: "text/event-stream" },
        signal: s.abort.signal,
      });
      if (res.status === 401) return signOut("The daemon does not know this token.");
      if (res.status === 400 || res.status === 403) {
        let why = res.status + "";
        try {
          why = (await res.json()).error;
        } catch (_) {}
        return signOut("Refused: " + why);
      }
      if (!res.ok) throw new Error(res.status + " " + res.statusText);
      setLive("live");
      wait = 1000;
      await readEvents(res.body, s);
    } catch (e) {
      if (s.abort.signal.aborted) return;
      setLive("reconnecting: " + e.message);
    }
    if (session !== s) return;
    setLive("reconnecting…");
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

/** Server-sent events: blocks split by a blank line, `event:` and `data:` lines. */
async function readEvents(body, s) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || session !== s) return;
    buf += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "state" && data.length) {
        current = JSON.parse(data.join("\n"));
        render(current);
      }
    }
  }
}

// ---- drawing a state --------------------------------------------------

function render(st) {
  $("sign-in").hidden = true;
  $("fleet").hidden = false;
  $("sign-out").hidden = false;
  const v = st.viewer;
  const scope = v.operator ? "operator" : "workspaces " + v.workspaces.join(", ");
  $("who").textContent =
    "fleet " + st.fleet_id + " · epoch " + st.epoch + " · signed in as " + v.name + " (" + scope + ")" +
    (st.workspace ? " · showing " + st.workspace : "");
  setLive("live · " + new Date(st.at).toLocaleTimeString());
  renderPools(st);
  // At most a read a second of the open pool's decisions, however busy.
  if (shownPool && v.operator && Date.now() - poolReadAt > 1000) showPool(shownPool, true);
  renderAlerts(st);
  renderClaims(st);
  renderNodes(st);
  renderJobs(st);
  renderCosts(st);
}

function renderPools(st) {
  fillTable(
    "pools-table",
    st.pools.map((p) => {
      const nodes = Object.entries(p.nodes).map(([k, n]) => n + " " + k).join(", ") || "none";
      const idle = p.idle_cost;
      const idleText =
        usd(idle.per_hour) + "/h" + (idle.setup ? " after " + usd(idle.setup) + " over " + span(idle.settle_ms) : "");
      // Operators may read why the strategy did what it did.
      const name = st.viewer.operator
        ? el("button", { type: "button", class: "link", "aria-label": "Decisions of pool " + p.name, onclick: () => showPool(p.name) }, p.name)
        : p.name;
      return el(
        "tr",
        {},
        el("th", { scope: "row" }, name),
        el("td", {}, el("strong", {}, p.strategy), el("div", { class: "hint" }, p.summary)),
        el("td", { title: p.cost_model }, idleText),
        el("td", {}, nodes),
        el("td", {}, p.min_nodes + "–" + p.max_nodes + " nodes × " + p.slots_per_node + " slots"),
      );
    }),
  );
}

/** The pool whose decisions are shown, if any. */
let shownPool = null;
let poolReadAt = 0;

/** A pool's strategy and its recent decisions with their reasons (GET /v1/pools/<pool>/explain). */
async function showPool(pool, quiet) {
  shownPool = pool;
  poolReadAt = Date.now();
  $("pool-detail").hidden = false;
  $("pool-detail-h").textContent = "Why pool " + pool + " did what it did";
  let x;
  try {
    x = await api("GET", "/v1/pools/" + encodeURIComponent(pool) + "/explain");
  } catch (e) {
    $("pool-detail-summary").textContent = e.message;
    fillTable("decisions-table", []);
    return;
  }
  if (shownPool !== pool) return;
  const params = Object.entries(x.parameters || {}).map(([k, v]) => k + " " + v).join(", ");
  $("pool-detail-summary").textContent =
    x.strategy + ": " + x.summary + (params ? " (" + params + ")" : "") +
    (x.planned_at ? " · last planned " + new Date(x.planned_at).toLocaleTimeString() : "") +
    (x.wake_at ? " · plans again by " + new Date(x.wake_at).toLocaleTimeString() : "");
  fillTable(
    "decisions-table",
    [...x.decisions].reverse().map((d) =>
      el(
        "tr",
        {},
        el("td", {}, new Date(d.at).toLocaleTimeString()),
        el("th", { scope: "row" }, d.action + (d.instance_type ? " " + d.instance_type : "")),
        el("td", {}, d.node || ""),
        el("td", {}, d.why),
        el("td", { class: d.refused ? "error" : "ok" }, d.refused ? "refused: " + d.refused : "done"),
      ),
    ),
  );
  if (!quiet) $("pool-detail").scrollIntoView({ block: "nearest" });
}

function renderAlerts(st) {
  const list = $("alerts-list");
  if (!st.diagnosis) {
    list.replaceChildren(el("li", { class: "hint" }, "Alerts are shown to operators."));
    return;
  }
  const findings = st.diagnosis.findings;
  list.replaceChildren(
    ...(findings.length
      ? findings.map((f) =>
          el("li", { class: "sev-" + tag(f.severity) }, el("strong", {}, tag(f.severity) + " "), f.subject + ": " + f.what),
        )
      : [el("li", { class: "ok" }, "Nothing needs a look.")]),
  );
}

function claimCost(st, id) {
  const c = st.costs.claims && st.costs.claims[id];
  return c ? usd(c.cost) : "";
}

/** An operator's button that POSTs to `path` once `question` is confirmed. */
function actionButton(label, name, question, path, attrs) {
  return el(
    "button",
    { ...attrs, type: "button", class: "danger", "aria-label": name, onclick: () => confirmThen(question, () => api("POST", path)) },
    label,
  );
}

/** A table's caption, with what the daemon left out of it. */
function caption(id, text, omitted) {
  $(id).caption.textContent = text + (omitted ? " (" + omitted + " older ended ones not shown)" : "");
}

function renderClaims(st) {
  caption("claims-table", "Claims, newest first", st.omitted && st.omitted.claims);
  const claims = [...st.claims].sort((a, b) => b.enqueued_at - a.enqueued_at);
  fillTable(
    "claims-table",
    claims.map((c) => {
      const r = c.request;
      const state = tag(c.state);
      const live = state === "pending" || state === "granted" || state === "active";
      const waited = c.granted_at ? span(c.granted_at - c.enqueued_at) : state === "pending" ? span(st.at - c.enqueued_at) : "";
      const reason = c.pending_reason ? tag(c.pending_reason).replace(/_/g, " ") : "";
      const action =
        st.viewer.operator && live
          ? actionButton(
              "Release",
              "Release claim " + r.claim_id,
              "Release claim " + r.claim_id + " of " + r.workspace + "? Its node goes back to the pool.",
              "/v1/claims/" + encodeURIComponent(r.workspace) + "/" + encodeURIComponent(r.claim_id) + "/release",
              { "data-claim": r.claim_id },
            )
          : "";
      return el(
        "tr",
        { "data-claim-row": r.claim_id },
        el("th", { scope: "row" }, r.claim_id),
        el("td", {}, r.workspace),
        el("td", {}, r.pool),
        el("td", { class: "state-" + state }, state, reason ? el("div", { class: "hint" }, reason) : ""),
        el("td", {}, c.node || ""),
        el("td", {}, waited),
        el("td", {}, claimCost(st, r.claim_id)),
        el("td", {}, action),
      );
    }),
  );
}

function renderNodes(st) {
  fillTable(
    "nodes-table",
    st.nodes.map((n) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, n.record.node),
        el("td", {}, n.record.pool),
        el("td", { class: "state-" + tag(n.state) }, tag(n.state)),
        el("td", {}, n.record.instance_type || ""),
        el("td", {}, tag(n.record.market)),
        el("td", {}, n.connected ? "connected" : "not connected", el("div", { class: "hint" }, n.agent_version || "")),
        el("td", {}, n.claims.join(", ")),
      ),
    ),
  );
}

function renderJobs(st) {
  caption("jobs-table", "Jobs, newest first", st.omitted && st.omitted.jobs);
  const jobs = [...st.jobs].sort((a, b) => b.submitted_at - a.submitted_at);
  fillTable(
    "jobs-table",
    jobs.map((j) => {
      const s = j.spec;
      const state = tag(j.state);
      const live = state === "queued" || state === "leased" || state === "running";
      const outcome = j.receipt
        ? tag(j.receipt.result) + (j.receipt.exit_code !== undefined && j.receipt.exit_code !== null ? " (exit " + j.receipt.exit_code + ")" : "")
        : "";
      const cancel =
        st.viewer.operator && live
          ? actionButton(
              "Cancel",
              "Cancel job " + s.id,
              "Cancel job " + s.id + " of " + s.workspace + "?",
              "/v1/jobs/" + encodeURIComponent(s.workspace) + "/" + encodeURIComponent(s.id) + "/cancel",
            )
          : "";
      const show = el("button", { type: "button", class: "link", onclick: () => showJob(j) }, s.id);
      return el(
        "tr",
        {},
        el("th", { scope: "row" }, show),
        el("td", {}, s.workspace),
        el("td", {}, s.pool),
        el("td", { class: "state-" + state }, state),
        el("td", {}, j.attempts),
        el("td", {}, outcome),
        el("td", {}, cancel),
      );
    }),
  );
  if (shownJob) {
    const j = jobs.find((x) => x.spec.id === shownJob.id && x.spec.workspace === shownJob.workspace);
    if (j && tag(j.state) + ":" + (j.last_event_at || 0) !== shownJob.seen) showJob(j, true);
  }
  fillTable(
    "runs-table",
    st.runs.map((r) => {
      const byState = {};
      for (const t of r.tasks) byState[tag(t.state)] = (byState[tag(t.state)] || 0) + 1;
      return el(
        "tr",
        {},
        el("th", { scope: "row" }, r.name ? r.id + " (" + r.name + ")" : r.id),
        el("td", {}, r.workspace),
        el("td", {}, tag(r.status)),
        el("td", {}, Object.entries(byState).map(([k, n]) => n + " " + k).join(", ")),
      );
    }),
  );
}

/** The job shown below the tables, and what it looked like then. */
let shownJob = null;

/** A job's record, then its events and output as the daemon keeps them. */
function showJob(j, quiet) {
  const s = j.spec;
  shownJob = { workspace: s.workspace, id: s.id, seen: tag(j.state) + ":" + (j.last_event_at || 0) };
  $("job-detail").hidden = false;
  $("job-detail-h").textContent = "Job " + s.id;
  const rows = [
    ["Command", (s.argv || []).join(" ")],
    ["Workspace / pool", s.workspace + " / " + s.pool],
    ["State", tag(j.state) + (j.state.node ? " on " + j.state.node : "")],
    ["Submitted", when(j.submitted_at)],
    ["Last event", when(j.last_event_at)],
    ["Attempts", j.attempts],
    ["Escalated", j.escalated ? "yes" : "no"],
  ];
  if (j.receipt) {
    rows.push(["Result", tag(j.receipt.result)]);
    rows.push(["Exit code", j.receipt.exit_code ?? ""]);
    rows.push(["Reason", j.receipt.reason || ""]);
    rows.push(["Completed", when(j.receipt.completed_at)]);
    rows.push(["Artifacts", (j.receipt.artifacts || []).map((a) => a.name).join(", ")]);
  }
  $("job-detail-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  loadJobLog(s.workspace, s.id);
  if (!quiet) $("job-detail").scrollIntoView({ block: "nearest" });
}

async function loadJobLog(workspace, id) {
  let log;
  try {
    log = await api("GET", "/v1/console/jobs/" + encodeURIComponent(workspace) + "/" + encodeURIComponent(id) + "/log");
  } catch (e) {
    $("job-events").replaceChildren();
    $("job-output").replaceChildren();
    $("job-log-note").textContent = e.message;
    return;
  }
  if (!shownJob || shownJob.id !== id || shownJob.workspace !== workspace) return;
  const events = log.entries.filter((e) => e.kind === "event");
  $("job-events").replaceChildren(
    ...events.map((e) => {
      const ev = e.event;
      const detail = Object.entries(ev)
        .filter(([k]) => k !== "state")
        .map(([k, v]) => k + " " + (typeof v === "object" ? JSON.stringify(v) : v))
        .join(", ");
      return el("li", {}, new Date(e.at).toLocaleTimeString() + " · attempt " + e.attempt + " · " + tag(ev) + (detail ? " (" + detail + ")" : ""));
    }),
  );
  $("job-output").replaceChildren(
    ...log.entries
      .filter((e) => e.kind === "output")
      .map((e) => el("span", { class: e.stream }, e.data)),
  );
  $("job-log-note").textContent = log.dropped ? log.dropped + " older entries were dropped (the daemon keeps a bounded tail)." : "";
}

// ---- charts ------------------------------------------------------------

const charts = {};
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/** Draws (or updates) the chart on canvas `id`. */
function chart(id, config) {
  if (typeof Chart === "undefined") return;
  const old = charts[id];
  if (old && old.config.type === config.type) {
    old.data = config.data;
    old.options = config.options;
    old.update("none");
    return;
  }
  if (old) old.destroy();
  charts[id] = new Chart($(id), config);
}

/** A time axis over the samples (a minute back when there is one). */
function timeAxis(samples) {
  const last = samples.length ? samples[samples.length - 1].at : Date.now();
  const first = samples.length > 1 ? samples[0].at : last - 60000;
  return {
    type: "linear",
    min: first,
    max: last,
    ticks: { callback: (v) => new Date(v).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), maxTicksLimit: 6 },
  };
}

const dollarAxis = { beginAtZero: true, ticks: { callback: (v) => "$" + Number(v).toPrecision(3) } };

function seriesOf(samples, field) {
  const names = new Set();
  for (const s of samples) for (const k of Object.keys(s[field] || {})) names.add(k);
  return [...names].sort().map((name, i) => ({
    label: name,
    data: samples.map((s) => ({ x: s.at, y: ((s[field] || {})[name] || 0) / 1e6 })),
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length],
    pointRadius: samples.length < 30 ? 3 : 0,
  }));
}

function renderCosts(st) {
  const last = st.cost_series[st.cost_series.length - 1] || { pools: {}, workspaces: {} };
  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
  $("costs-total").textContent = st.viewer.operator
    ? "All pools so far: " + usd(sum(last.pools)) + " · attributed to workspaces: " + usd(sum(last.workspaces))
    : "Your workspaces so far: " + usd(sum(last.workspaces));
  const tooltip = { callbacks: { label: (c) => c.dataset.label + ": $" + c.parsed.y.toFixed(6) } };
  const line = (datasets) => ({
    type: "line",
    data: { datasets },
    options: { animation: false, scales: { x: timeAxis(st.cost_series), y: dollarAxis }, plugins: { tooltip } },
  });
  $("chart-pools").closest("figure").hidden = !st.viewer.operator;
  if (st.viewer.operator) chart("chart-pools", line(seriesOf(st.cost_series, "pools")));
  chart("chart-workspaces", line(seriesOf(st.cost_series, "workspaces")));
  const top = Object.entries(st.costs.claims || {})
    .sort((a, b) => b[1].cost - a[1].cost)
    .slice(0, 10);
  chart("chart-claims", {
    type: "bar",
    data: {
      labels: top.map(([id]) => id),
      datasets: [{ label: "cost", data: top.map(([, c]) => c.cost / 1e6), backgroundColor: PALETTE[0] }],
    },
    options: { animation: false, indexAxis: "y", scales: { x: dollarAxis }, plugins: { legend: { display: false }, tooltip } },
  });
}

// ---- actions -----------------------------------------------------------

/** Asks in a modal dialog, then runs `action`; its error is shown. */
function confirmThen(text, action) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "ok") return;
      try {
        await action();
        setLive("done: " + text.split("?")[0].toLowerCase());
      } catch (e) {
        setLive("refused: " + e.message);
      }
    },
    { once: true },
  );
  dialog.showModal();
  // Enter on its own does not release or cancel: Cancel has the focus.
  dialog.querySelector("button[value=cancel]").focus();
}

// ---- the simulator view -------------------------------------------------

function loadSimulation(text) {
  let r;
  try {
    r = JSON.parse(text);
  } catch (e) {
    throw new Error("not JSON: " + e.message);
  }
  if (!r || !Array.isArray(r.strategies) || !Array.isArray(r.ranking)) {
    throw new Error("not a fleet-sim result.json: it has no strategies and ranking");
  }
  const byId = Object.fromEntries(r.strategies.map((s) => [s.id, s]));
  const sc = r.scenario || {};
  $("sim-summary").textContent =
    (r.simulator || "fleet-sim") + " · " + (sc.horizon_hours || "?") + " h of " + (sc.price_book || "?") +
    " · " + (sc.arrivals ?? "?") + " jobs · SLA p" + ((sc.sla && sc.sla.percentile) || "?") + " ≤ " + ((sc.sla && sc.sla.max_wait_s) ?? "?") + " s";
  fillTable(
    "sim-table",
    r.ranking.map((e) => {
      const s = byId[e.strategy] || { wait_s: {} };
      return el(
        "tr",
        {},
        el("td", {}, e.rank),
        el("th", { scope: "row" }, e.strategy),
        el("td", {}, String(e.total_usd).startsWith("$") ? e.total_usd : "$" + e.total_usd),
        el("td", {}, span((s.wait_s.p50 || 0) * 1000)),
        el("td", {}, span((s.wait_s.p95 || 0) * 1000)),
        el("td", { class: e.meets_sla ? "ok" : "error" }, e.meets_sla ? "met" : "missed"),
        el("td", {}, e.reason),
      );
    }),
  );
  $("sim-result").hidden = false;
  chart("chart-sim-scatter", {
    type: "scatter",
    data: {
      datasets: r.strategies.map((s, i) => ({
        label: s.id,
        data: [{ x: Math.max(s.wait_s.p95, 0.1), y: s.cost.total_micros / 1e6 }],
        backgroundColor: PALETTE[i % PALETTE.length],
        pointRadius: 6,
      })),
    },
    options: {
      animation: false,
      scales: {
        // Waits span seconds to hours: a log axis keeps them apart.
        x: { type: "logarithmic", title: { display: true, text: "p95 wait (s, log scale)" } },
        y: { title: { display: true, text: "cost ($)" }, beginAtZero: true },
      },
      plugins: {
        tooltip: { callbacks: { label: (c) => c.dataset.label + ": $" + c.parsed.y.toFixed(2) + ", p95 " + c.parsed.x.toFixed(1) + " s" } },
      },
    },
  });
  chart("chart-sim-cost", {
    type: "line",
    data: {
      datasets: r.strategies.map((s, i) => ({
        label: s.id,
        data: (s.cost_over_time || []).map(([h, m]) => ({ x: h, y: m / 1e6 })),
        borderColor: PALETTE[i % PALETTE.length],
        backgroundColor: PALETTE[i % PALETTE.length],
        pointRadius: 0,
      })),
    },
    options: {
      animation: false,
      scales: { x: { type: "linear", title: { display: true, text: "hours" } }, y: dollarAxis },
    },
  });
}

// ---- start -------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim(), $("workspace").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("sim-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    $("sim-error").textContent = "";
    if (!file) return;
    try {
      loadSimulation(await file.text());
    } catch (err) {
      $("sim-result").hidden = true;
      $("sim-error").textContent = file.name + ": " + err.message;
    }
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    const ws = sessionStorage.getItem(WORKSPACE_KEY) || "";
    $("workspace").value = ws;
    signIn(token, ws);
  }
});
