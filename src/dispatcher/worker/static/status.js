// The status page: builds its content from the worker's JSON (textContent only, never HTML)
// and fetches it again every 2 s. Read-only: it only ever sends GET requests to its own origin.
"use strict";

const EVERY_MS = 2000;
const STATE_WORDS = {
  waiting_kueue: "waiting for Kueue",
  waiting_room: "waiting for room",
  running: "running",
  ending: "ending",
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function section(title, wide, ...children) {
  return el("section", { class: wide ? "wide" : "", id: title.replace(/\W+/g, "-") },
    el("h2", {}, title), ...children);
}

function table(headings, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
      c instanceof Node ? el("td", {}, c) : el("td", typeof c === "number" ? { class: "n" } : {}, c))))));
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}

function taskLink(id) {
  return el("a", { href: `/tasks/${encodeURIComponent(id)}` }, id);
}

function overview(data) {
  const states = el("div", { class: "states" }, ...Object.entries(data.states).map(([state, s]) =>
    el("div", { class: "state", id: `state-${state}` },
      el("div", { class: "muted" }, STATE_WORDS[state] || state),
      el("div", { class: "big count" }, s.count),
      s.oldest ? el("div", { class: "muted" }, "oldest ", taskLink(s.oldest), ` ${age(s.oldest_seconds)}`) : null)));
  const queues = table(["queue", "name", "ready", "consumers"], data.queues.map((q) =>
    q.ready === null ? [q.role, q.name, el("span", { class: "error" }, `unknown: ${q.problem}`), ""]
      : [q.role, q.name, q.ready, q.consumers]));
  const nodes = Object.keys(data.nodes).length
    ? table(["node", "running"], Object.entries(data.nodes).map(([n, c]) => [n, c]))
    : el("p", { class: "muted" }, "no task running");
  const errors = data.errors.length
    ? table(["answered", "task", "error"], data.errors.map((e) =>
      [e.answered || "", taskLink(e.id), el("span", { class: "error" }, e.error)]))
    : el("p", { class: "muted" }, "none among the answered Jobs still kept");
  const shown = data.tasks.length < data.in_flight ? ` (oldest ${data.tasks.length} shown)` : "";
  const tasks = table(["task", "state", "since", "node"], data.tasks.map((t) =>
    [taskLink(t.id), STATE_WORDS[t.state] || t.state, t.since || "", t.node || ""]));
  return [
    section(`tasks in flight: ${data.in_flight}`, true, states),
    section("queues (ready messages)", false, queues,
      el("p", { class: "muted" }, "a passive declare tells ready messages and consumers, not unacknowledged ones")),
    section("running per node", false, nodes),
    section("last answers with an error", true, errors),
    section(`tasks${shown}`, true, tasks),
  ];
}

function taskPage(data) {
  const timeline = table(["step", "at", ""], data.timeline.map((s) => [s.step, s.at || "", s.detail]));
  const events = data.events.length
    ? table(["at", "type", "reason", "object", "message"], data.events.map((e) =>
      [e.at || "", e.type, e.reason, e.object, e.count > 1 ? `${e.message} (x${e.count})` : e.message]))
    : el("p", { class: "muted" }, "none");
  const log = data.log_tail === null ? el("p", { class: "muted" }, data.log_note)
    : el("pre", { id: "log" }, data.log_tail || "(empty)");
  return [
    section(`task ${data.id}: ${data.state}`, true,
      data.error ? el("p", { class: "error" }, `answered with error: ${data.error}`) : null, timeline),
    section("events", true, events),
    section("log (last lines)", true, log),
  ];
}

async function refresh() {
  const match = location.pathname.match(/^\/tasks\/([^/]+)$/);
  const url = match ? `/tasks/${match[1]}.json` : "/status.json";
  const updated = document.getElementById("updated");
  try {
    const response = await fetch(url, { cache: "no-store" });
    const data = await response.json();
    const main = document.getElementById("main");
    if (!response.ok) {
      main.replaceChildren(section("not found", true, el("p", { class: "error" }, data.error || response.status)));
    } else {
      main.replaceChildren(...(match ? taskPage(data) : overview(data)));
      document.title = match ? `task ${data.id}` : `dispatcher: ${data.in_flight} in flight`;
    }
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    updated.textContent = `not updated: ${error}`;
  }
}

refresh();
setInterval(refresh, EVERY_MS);
