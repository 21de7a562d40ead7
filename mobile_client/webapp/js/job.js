// One job: state, where it runs and why, how long it is kept, its inputs (inputs.js: live,
// filtered by state, each with its site and attempts) and what can be done (job_actions.js);
// tabs for outputs and the plot.
import { jobPath } from "./api.js";
import { fill, formatTime, h, stateBadge } from "./dom.js";
import { inputLabel, inputsList } from "./inputs.js";
import { jobActions } from "./job_actions.js";
import { isFinal, watchJob } from "./live.js";
import { getFresh, onReconnect, showFresh, staleRetryDelay } from "./offline.js";
import * as outputs from "./outputs.js";
import * as histogram from "./histogram.js";

const TABS = [["status", "Status"], ["outputs", "Outputs"], ["plot", "Plot"]];
const MODES = { live: "Live (pushed by the peer)", polling: "Live (checking with long polls)",
  offline: "Offline: waiting for the link", done: "Finished: no more changes", error: "Not updating", stale: "Stale",
  pending: "Finished; a kill still waits for a site (checking again every 10 s)" };
const PENDING_RECHECK_MS = 10000;

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

/** How long the job is kept: pinned, or until when (retention), in words. */
export function keptText(st) {
  if (st.pinned) return "pinned: kept until you unpin it";
  if (st.expires_at) return `until ${formatTime(st.expires_at)}, then removed with its outputs`;
  if (st.finished_at) return "for as long as this site keeps jobs (no expiry set)";
  return "while it runs; then for the site's retention time";
}

function statusTab(body, ctx) {
  const summary = h("div", { id: "job-summary" });
  const actions = jobActions(body, ctx);
  const inputsArea = h("section", { "aria-labelledby": "inputs-title" }, h("h2", { id: "inputs-title" }, "Inputs"));
  body.prepend(summary);
  body.append(inputsArea);
  const inputs = inputsList(inputsArea, ctx, { onRetry: actions.retryOne });

  function render(st) {
    fill(summary,
      h("dl", { class: "facts" },
        h("dt", {}, "State"), h("dd", {}, stateBadge(st.state)),
        h("dt", {}, "Inputs"), h("dd", {}, Object.entries(st.counts || {}).map(([k, n]) => `${n} ${k}`).join(", ")),
        h("dt", {}, "Home"), h("dd", {}, st.peer),
        st.sites?.length ? [h("dt", {}, "Sites"), h("dd", { id: "job-sites" }, st.sites.join(", "))] : null,
        st.placement ? [h("dt", {}, "Placed on"), h("dd", { id: "job-placement" }, placementLine(st.placement))] : null,
        h("dt", {}, "Submitted"), h("dd", {}, st.created_at ? formatTime(st.created_at) : ""),
        st.pinned === undefined ? null : [h("dt", {}, "Kept"), h("dd", { id: "job-retention" }, keptText(st))],
        h("dt", {}, "ID"), h("dd", {}, h("code", {}, st.id))),
      st.removal ? h("p", { class: "note", id: "job-removal" }, `Kill ${st.removal}.`) : null,
      (st.warnings || []).map((w) => h("p", { class: "note" }, w)));
    actions.update(st);
    inputs.update(st);
  }
  const unsubscribe = ctx.subscribe(render);
  return () => { unsubscribe(); inputs.stop(); };
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
    reload() { start(); }, // after an action: a finished job may run again (retry) or change (pin)
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

  /** A final state; while a kill still waits for a silent site, look again now and then until it is done. */
  function finished(st) {
    mode.textContent = st.removal ? MODES.pending : MODES.done;
    clearTimeout(retry);
    if (st.removal) retry = setTimeout(start, PENDING_RECHECK_MS);
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
      if (isFinal(data)) { finished(data); return; }
      stop = watchJob(id, {
        version: data.version,
        onStatus: (st) => { showFresh(); publish(st); },
        onMode: (m) => { if (m === "done" && current) finished(current); else mode.textContent = MODES[m] || m; },
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
