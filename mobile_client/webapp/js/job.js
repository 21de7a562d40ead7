// One job: state, where it runs and why, per-input states (live), kill, release, run again;
// tabs for outputs and the plot.
import { getJSON, jobPath, request } from "./api.js";
import * as draft from "./draft.js";
import { confirmStep, fill, formatTime, h, stateBadge, toast } from "./dom.js";
import { isFinal, watchJob } from "./live.js";
import { getFresh, onReconnect, showFresh, staleRetryDelay } from "./offline.js";
import * as outputs from "./outputs.js";
import * as histogram from "./histogram.js";

const TABS = [["status", "Status"], ["outputs", "Outputs"], ["plot", "Plot"]];
const MODES = { live: "Live (pushed by the peer)", polling: "Live (checking with long polls)",
  offline: "Offline: waiting for the link", done: "Finished: no more changes", error: "Not updating", stale: "Stale" };

/** Why an input is in its current state (the peer keeps the current state's reason only). */
export function currentReason(i) {
  if (i.state === "held") return i.hold_reason || null;
  // a peer of an older version may send a stale note: leave out what a state never has
  if (i.state === "completed") return null;
  if (i.state === "running" && i.note && !/^(disconnected|reconnected)/.test(i.note)) return null;
  return i.note || null;
}

/** What a person (and a screen reader) should know about one input. */
export function inputLabel(i) {
  let s = `input ${i.index}: ${i.state}`;
  if (i.exit_code !== undefined && i.exit_code !== null) s += `, exit ${i.exit_code}`;
  if (i.signal) s += `, signal ${i.signal}`;
  if (i.state === "held" && i.hold_reason) s += `, held: ${i.hold_reason}`;
  return s;
}

function shortReason(r) {
  const head = (r.reason || "").split(";")[0].trim();
  if (!head.startsWith("est") && r.score !== undefined && r.score !== null) return `score ${r.score}${head ? ` (${head})` : ""}`;
  return head || "no score";
}

/** Where the job went and why, in one line: the chosen peer's estimate, then the next candidate's. */
export function placementLine(p) {
  if (!p || !p.chosen) return null;
  const ranking = p.ranking || [];
  const chosen = p.chosen.split(",");
  const shares = Object.fromEntries((p.shares || []).map((s) => [s.site, s]));
  const picked = ranking.find((r) => r.name === chosen[0]);
  let s = chosen.length === 1
    ? `${chosen[0]}${picked ? `: ${shortReason(picked)}` : ""}`
    : chosen.map((n) => (shares[n] ? `${n} (${shares[n].count} inputs)` : n)).join(", ");
  if ((p.rounds || 1) > 1) s += ` (round ${p.rounds})`;
  const failed = (p.failed || []).map((f) => f.name);
  if (failed.length) s += ` (after ${failed.join(", ")} failed)`;
  const rest = ranking.filter((r) => !chosen.includes(r.name));
  if (rest.length) s += `; ${rest[0].name} ${shortReason(rest[0])}`;
  if (rest.length > 1) s += ` (+${rest.length - 1} more)`;
  return s;
}

/** Why an idle input waits (its site's ``match``). */
function matchText(m) {
  if (!m) return null;
  if (m.slots) return `${m.slots} of ${m.of ?? "?"} slots match: waiting for one to be free`;
  return `no slot matches (of ${m.of ?? "?"}): ${m.failing || "no reason given"}`;
}

function inputRow(i) {
  const reason = currentReason(i);
  return h("li", { class: "input-row", "aria-label": inputLabel(i), "data-index": i.index },
    h("div", { class: "head" }, h("span", { class: "name" }, `${i.index}. ${i.input}`), stateBadge(i.state)),
    i.site ? h("div", { class: "muted site" }, `on ${i.site}${i.attempt > 1 ? ` (attempt ${i.attempt})` : ""}`) : null,
    i.exit_code !== undefined && i.exit_code !== null ? h("div", { class: "muted" }, `exit code ${i.exit_code}`) : null,
    i.signal ? h("div", { class: "muted" }, `killed by signal ${i.signal}`) : null,
    reason ? h("div", { class: i.state === "held" ? "note" : "muted" }, i.state === "held" ? `Held: ${reason}` : reason) : null,
    i.state === "idle" && i.match ? h("div", { class: "muted match" }, matchText(i.match)) : null,
    i.removal ? h("div", { class: "note removal" }, `Removal ${i.removal}`) : null,
    i.stderr_tail ? h("details", { open: i.state === "failed" },
      h("summary", {}, `stderr${i.stderr_file ? ` (${i.stderr_file})` : ""}, last lines`),
      h("pre", { class: "stderr", "aria-label": `stderr of input ${i.index}` }, i.stderr_tail)) : null);
}

function statusTab(body, ctx) {
  const summary = h("div", { id: "job-summary" });
  const list = h("ul", { class: "list", id: "job-inputs", "aria-label": "Inputs" });
  const actions = h("div", { class: "row", id: "job-actions" });
  const confirmArea = h("div");

  async function kill() {
    const yes = await confirmStep(confirmArea, { question: "Kill this job? Running inputs stop; finished outputs stay.",
      yes: "Kill job", no: "Keep running" });
    if (!yes) return;
    try {
      const r = await (await request(jobPath(ctx.id), { method: "DELETE" })).json();
      toast(`Kill sent: ${r.removed_procs} input${r.removed_procs === 1 ? "" : "s"} stopped`);
    } catch (err) {
      toast(`Kill failed: ${err.message}`);
    }
  }

  async function release() {
    const held = (ctx.status?.inputs || []).filter((i) => i.state === "held").length;
    const yes = await confirmStep(confirmArea, {
      question: `Release ${held === 1 ? "the held input" : `the ${held} held inputs`}? ${held === 1 ? "It runs" : "They run"} again from the start.`,
      yes: "Release", no: "Keep held", danger: false });
    if (!yes) return;
    try {
      const r = await (await request(jobPath(ctx.id, "/release"), { method: "POST" })).json();
      toast(`Released: ${r.released_procs} input${r.released_procs === 1 ? "" : "s"} queued again`);
    } catch (err) {
      toast(`Release failed: ${err.message}`);
    }
  }

  async function runAgain() {
    try {
      const spec = await getJSON(jobPath(ctx.id, "/spec"));
      draft.fromJob(ctx.id, spec);
      location.hash = "#submit";
    } catch (err) {
      toast(`Could not load the job's spec: ${err.message}`);
    }
  }

  function render(st) {
    fill(summary,
      h("dl", { class: "facts" },
        h("dt", {}, "State"), h("dd", {}, stateBadge(st.state)),
        h("dt", {}, "Inputs"), h("dd", {}, Object.entries(st.counts || {}).map(([k, n]) => `${n} ${k}`).join(", ")),
        h("dt", {}, "Home"), h("dd", {}, st.peer),
        st.sites?.length ? [h("dt", {}, "Sites"), h("dd", {}, st.sites.join(", "))] : null,
        st.placement ? [h("dt", {}, "Placed on"), h("dd", { id: "job-placement" }, placementLine(st.placement))] : null,
        h("dt", {}, "Submitted"), h("dd", {}, st.created_at ? formatTime(st.created_at) : ""),
        h("dt", {}, "ID"), h("dd", {}, h("code", {}, st.id))),
      (st.warnings || []).map((w) => h("p", { class: "note" }, w)));
    fill(list, (st.inputs || []).map(inputRow));
    fill(actions,
      isFinal(st) ? null : h("button", { type: "button", class: "danger", onclick: kill }, "Kill job"),
      (st.inputs || []).some((i) => i.state === "held")
        ? h("button", { type: "button", onclick: release }, "Release held inputs") : null,
      h("button", { type: "button", onclick: runAgain }, "Run again with other inputs"));
  }
  body.append(summary, actions, confirmArea, h("h2", {}, "Inputs"), list);
  return ctx.subscribe(render);
}

export function mount(main, { id, tab }) {
  tab = TABS.some(([t]) => t === tab) ? tab : "status";
  const title = h("h1", { id: "job-title" }, "Job");
  const mode = h("p", { id: "job-live", class: "muted", role: "status", "aria-live": "polite" }, "Loading…");
  // What changed, said once for a screen reader (the list itself is redrawn silently).
  const changes = h("p", { id: "job-changes", class: "sr-only", role: "status", "aria-live": "polite" });
  let known = new Map();
  const body = h("div", { id: "job-body" });
  const nav = h("nav", { class: "subnav", "aria-label": "Job" },
    TABS.map(([t, label]) => h("a", { href: `#job/${encodeURIComponent(id)}${t === "status" ? "" : `/${t}`}`,
      "aria-current": t === tab ? "page" : null }, label)));
  main.append(h("p", {}, h("a", { href: "#jobs" }, "‹ All jobs")), title, mode, changes, nav, body);

  const listeners = new Set();
  let current = null;
  let stop = null;
  let gone = false;
  let retry = 0;
  let staleTries = 0;
  const ctx = {
    id,
    get status() { return current; },
    subscribe(fn) { listeners.add(fn); if (current) fn(current); return () => listeners.delete(fn); },
  };
  function publish(st) {
    const labels = new Map((st.inputs || []).map((i) => [i.index, inputLabel(i)]));
    const changed = known.size ? [...labels].filter(([i, l]) => known.get(i) !== l).map(([, l]) => l) : [];
    if (changed.length) changes.textContent = changed.slice(0, 5).join("; ") + (changed.length > 5 ? ` and ${changed.length - 5} more` : "");
    known = labels;
    current = st;
    title.textContent = st.name || id;
    document.title = `${st.name || id} — pocketgrid`;
    for (const fn of listeners) fn(st);
  }

  async function start() {
    if (gone) return;
    stop?.();
    clearTimeout(retry);
    try {
      const { data, staleAt } = await getFresh(jobPath(id));
      mode.className = "muted";
      publish(data);
      if (staleAt) {
        mode.textContent = MODES.stale;
        retry = setTimeout(start, staleRetryDelay(staleTries++)); // catch up by itself
        return;
      }
      staleTries = 0;
      if (isFinal(data)) { mode.textContent = MODES.done; return; }
      stop = watchJob(id, {
        version: data.version,
        onStatus: (st) => { showFresh(); publish(st); },
        onMode: (m) => { mode.textContent = MODES[m] || m; },
      });
    } catch (err) {
      mode.textContent = err.offline ? "Offline, and this phone knows nothing about this job yet." : err.message;
      mode.className = "error";
      if (err.offline) retry = setTimeout(start, staleRetryDelay(staleTries++));
    }
  }

  const cleanups = [];
  const tabModule = { status: { mount: statusTab }, outputs, plot: histogram }[tab];
  const undo = tabModule.mount(body, ctx);
  if (typeof undo === "function") cleanups.push(undo);
  start();
  cleanups.push(onReconnect(start));
  return () => { gone = true; clearTimeout(retry); stop?.(); cleanups.forEach((f) => f()); };
}
