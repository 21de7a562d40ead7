// A job's inputs on its status page: a summary by state that filters the list (a job of 200
// inputs shows 25 rows at a time, "Show more" for the next), and per input its state, the site
// it runs or ran on, why it is in that state, and on demand its attempts (attempts.js).  Rows are
// kept per input and only redrawn when that input changed, so a live update does not close an
// open history or take the focus away from a button.
import { fill, h, stateBadge } from "./dom.js";
import { historySource, renderAttempts } from "./attempts.js";
import { staleRetryDelay } from "./offline.js";

export const PAGE = 25;
const ORDER = ["failed", "held", "idle", "running", "removed", "completed"];
const FINISHED = new Set(["failed", "removed"]); // what a row offers to run again

/** Why an input is in its current state (the peer keeps the current state's reason only). */
export function currentReason(i) {
  if (i.state === "held") return i.hold_reason || null;
  // a peer of an older version may send a stale note: a completed input's only current ones are
  // a retry that did not succeed (the earlier result is kept) and outputs at a silent site
  if (i.state === "completed") return /^(the retry \(attempt|its outputs are on )/.test(i.note || "") ? i.note : null;
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

/** Why an idle input waits (its site's ``match``). */
export function matchText(m) {
  if (!m) return null;
  if (m.slots) return `${m.slots} of ${m.of ?? "?"} slots match: waiting for one to be free`;
  return `no slot matches (of ${m.of ?? "?"}): ${m.failing || "no reason given"}`;
}

function where(i) {
  if (i.site) return `on ${i.site}${i.attempt > 1 ? ` (attempt ${i.attempt})` : ""}`;
  return i.state === "idle" ? "waiting to be sent to a site" : null;
}

function info(i, many) {
  const reason = currentReason(i);
  const place = where(i);
  return [
    h("div", { class: "head" }, h("span", { class: "name" }, `${i.index}. ${i.input}`), stateBadge(i.state)),
    place ? h("div", { class: "muted site" }, place) : null,
    i.exit_code !== undefined && i.exit_code !== null ? h("div", { class: "muted" }, `exit code ${i.exit_code}`) : null,
    i.signal ? h("div", { class: "muted" }, `killed by signal ${i.signal}`) : null,
    reason ? h("div", { class: i.state === "held" ? "note" : "muted reason" }, i.state === "held" ? `Held: ${reason}` : reason) : null,
    i.state === "idle" && i.match ? h("div", { class: "muted match" }, `Why it waits: ${matchText(i.match)}`) : null,
    i.removal ? h("div", { class: "note removal" }, `Kill ${i.removal}`) : null,
    i.stderr_tail ? h("details", { open: i.state === "failed" && !many }, // open unless many failed
      h("summary", {}, `stderr${i.stderr_file ? ` (${i.stderr_file})` : ""}, last lines`),
      h("pre", { class: "stderr", "aria-label": `stderr of input ${i.index}` }, i.stderr_tail)) : null,
  ];
}

/**
 * The inputs section into ``container``; returns {update(status), stop()}.  ``onRetry(index, slot)``: the
 * row's *Retry* button (``slot``: where the row's confirm step goes).
 */
export function inputsList(container, ctx, { onRetry }) {
  const summary = h("div", { class: "counts", role: "group", "aria-label": "Show only the inputs in a state", id: "job-filter" });
  const list = h("ul", { class: "list", id: "job-inputs", "aria-label": "Inputs" });
  const more = h("div", { class: "row", hidden: true });
  container.append(summary, list, more);
  const rows = new Map(); // index -> {li, body, history, retry, panel, sig}
  const open = new Set(); // inputs whose history is shown
  const history = historySource(ctx.id);
  let filter = "all";
  let shown = PAGE;
  let last = null;
  let historyError = null;
  let historyTries = 0;
  let historyTimer = 0;
  let stopped = false;

  function row(i) {
    let r = rows.get(i.index);
    if (!r) {
      const panel = h("div", { class: "attempts-panel", id: `attempts-${i.index}`, role: "region",
        "aria-label": `history of input ${i.index}`, hidden: true });
      const toggle = h("button", { type: "button", class: "small", "aria-expanded": "false", "aria-controls": panel.id,
        "aria-label": `History of input ${i.index}`, onclick: () => toggleHistory(i.index) }, "History");
      const retry = h("button", { type: "button", class: "small", "aria-label": `Retry input ${i.index}`, hidden: true,
        onclick: () => onRetry(i.index, r.slot) }, "Retry");
      const body = h("div", { class: "info" });
      const slot = h("div");
      r = { li: h("li", { class: "input-row", "data-index": i.index }, body, h("div", { class: "row tools" }, toggle, retry), slot, panel),
        body, toggle, retry, slot, panel, sig: null };
      rows.set(i.index, r);
    }
    const sig = JSON.stringify(i);
    if (r.sig !== sig) {
      r.sig = sig;
      r.li.setAttribute("aria-label", inputLabel(i));
      fill(r.body, info(i, (last?.counts?.failed || 0) > 3));
      r.retry.hidden = !FINISHED.has(i.state);
    }
    return r.li;
  }

  function toggleHistory(index) {
    const r = rows.get(index);
    if (open.has(index)) {
      open.delete(index);
      r.panel.hidden = true;
      r.toggle.setAttribute("aria-expanded", "false");
      return;
    }
    open.add(index);
    r.panel.hidden = false;
    r.toggle.setAttribute("aria-expanded", "true");
    drawPanel(index);
    loadHistory();
  }

  function drawPanel(index) {
    const r = rows.get(index);
    if (!r || r.panel.hidden) return;
    const data = history.data;
    if (data) fill(r.panel, renderAttempts((data.inputs || []).find((x) => x.index === index)));
    else if (historyError) fill(r.panel, h("p", { class: "error" }, historyError));
    else fill(r.panel, h("p", { class: "loading" }, "Loading the history…"));
    if (historyError && data) r.panel.append(h("p", { class: "note" }, `Not refreshed: ${historyError}`));
  }

  async function loadHistory() {
    clearTimeout(historyTimer);
    if (!open.size || stopped) return;
    const version = ctx.status?.version;
    try {
      const data = await history.load(version);
      historyError = null;
      historyTries = 0;
      if (data && version !== undefined && data.version < (ctx.status?.version ?? 0)) historyTimer = setTimeout(loadHistory, 0);
    } catch (err) {
      historyError = err.offline ? "Offline: the history cannot be loaded now; it loads when the link is back." : err.message;
      // A link that dropped comes back without telling (a finished job has no live stream to notice).
      historyTimer = setTimeout(loadHistory, staleRetryDelay(historyTries++));
    }
    if (!stopped) for (const index of open) drawPanel(index);
  }

  // Named by what they show ("failed 15"): the group says what they do (what a voice user says is what is seen).
  // Kept per state and changed in place, so a live update does not take the focus away from one.
  const chips = new Map();
  function chip(state, label) {
    let b = chips.get(state);
    if (!b) {
      b = h("button", { type: "button", class: "chip", onclick: () => { filter = state; shown = PAGE; draw(); } });
      chips.set(state, b);
    }
    if (b.textContent !== label) b.textContent = label;
    b.setAttribute("aria-pressed", String(filter === state));
    return b;
  }
  const moreButton = h("button", { type: "button", onclick: () => { shown += PAGE; draw(); } });
  const moreText = h("span", { class: "muted grow" });
  more.append(moreText, moreButton);

  /** Make ``parent``'s children ``wanted``, moving only what moved (a node taken out of the page loses the focus). */
  function place(parent, wanted) {
    wanted.forEach((el, k) => { if (parent.children[k] !== el) parent.insertBefore(el, parent.children[k] || null); });
    while (parent.children.length > wanted.length) parent.lastElementChild.remove();
  }

  function draw() {
    const st = last;
    const inputs = st.inputs || [];
    const counts = st.counts || {};
    const states = [...ORDER.filter((s) => counts[s]), ...Object.keys(counts).filter((s) => !ORDER.includes(s))];
    if (filter !== "all" && !states.includes(filter)) states.push(filter); // chosen, none left now: say so
    place(summary, inputs.length > 1 ? [chip("all", `All ${inputs.length}`), ...states.map((s) => chip(s, `${s} ${counts[s] || 0}`))] : []);
    const matching = filter === "all" ? inputs : inputs.filter((i) => i.state === filter);
    const visible = matching.slice(0, shown);
    const wanted = visible.length ? visible.map(row)
      : [h("li", { class: "empty" }, inputs.length ? `No input is ${filter} now.` : "No inputs.")];
    place(list, wanted);
    const left = matching.length - visible.length;
    more.hidden = left <= 0;
    moreText.textContent = `${visible.length} of ${matching.length} shown`;
    moreButton.textContent = `Show ${Math.min(PAGE, left)} more`;
  }

  return {
    update(st) {
      last = st;
      draw();
      if (open.size && history.data?.version !== st.version) loadHistory();
    },
    stop() { stopped = true; clearTimeout(historyTimer); },
  };
}
