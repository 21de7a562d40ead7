// An input's attempts, on demand: where each ran (site), when it started and ended, how it ended
// and why, from GET /api/v1/jobs/<id>?history=1 (fetched only while a history is open; the answer
// is kept with its ETag, so a refresh over a slow link costs a 304 when nothing changed).
import { jobPath, request } from "./api.js";
import { formatClock, h } from "./dom.js";

/** What each attempt state means to a person. */
const WORDS = {
  pending: "waiting to be sent to a site", dispatching: "being sent to its site", idle: "waiting for a slot",
  running: "running", held: "held", completed: "completed", failed: "failed", removed: "removed",
  lost: "lost with its site", superseded: "not needed any more",
};

/** The accessible name of one attempt: `attempt N on SITE: STATE[, REASON]`. */
export function attemptLabel(a) {
  let s = `attempt ${a.attempt} on ${a.site || "no site yet"}: ${a.state}`;
  if (a.reason) s += `, ${a.reason}`;
  return s;
}

function attemptRow(a) {
  const start = a.started_at || a.dispatched_at || a.created_at;
  const times = [start ? `${a.started_at ? "started" : a.dispatched_at ? "sent" : "made"} ${formatClock(start)}` : null,
    a.finished_at ? `ended ${formatClock(a.finished_at)}` : null].filter(Boolean).join(" · ");
  const marks = [a.retry ? "started by a retry" : null, a.result ? "its outputs are the input's result" : null,
    a.cleanup === "remove" ? "to be removed at its site" : null].filter(Boolean);
  return h("li", { class: "attempt", "aria-label": attemptLabel(a) },
    h("div", { class: "head" }, h("span", { class: "name" }, `Attempt ${a.attempt}`),
      h("span", { class: `state state-${a.state}` }, a.state)),
    h("div", { class: "site" }, `on ${a.site || "no site yet"}`, a.state in WORDS && WORDS[a.state] !== a.state ? ` (${WORDS[a.state]})` : ""),
    times ? h("div", { class: "muted" }, times) : null,
    a.reason ? h("div", { class: a.state === "held" || a.state === "lost" ? "note" : "muted" }, a.reason) : null,
    marks.length ? h("div", { class: "muted" }, marks.join("; ")) : null);
}

function eventRow(e) {
  return h("li", {}, `${e.at ? `${formatClock(e.at)} ` : ""}${e.event} → ${e.state}${e.reason ? `: ${e.reason}` : ""}`);
}

/** The history panel's content for one input of a ``?history=1`` status (null: not there). */
export function renderAttempts(input) {
  if (!input) return [h("p", { class: "muted" }, "This input is not in the job's history.")];
  const attempts = input.attempts || [];
  const events = input.history || [];
  const current = attempts[attempts.length - 1];
  return [
    attempts.length ? h("ol", { class: "attempts", "aria-label": `attempts of input ${input.index}` }, attempts.map(attemptRow))
      : h("p", { class: "muted" }, "No attempt yet."),
    events.length ? [
      h("p", { class: "muted events-title" }, `Events of attempt ${current?.attempt ?? input.attempt} at ${current?.site || input.site || "its site"}:`),
      h("ul", { class: "events", "aria-label": `events of input ${input.index}` }, events.map(eventRow))] : null,
  ];
}

/**
 * The job's status with every input's attempts, fetched when asked and refreshed when the
 * status version moves on.  ``load(version)`` resolves to the status (or throws ApiError).
 */
export function historySource(jobId) {
  let etag = null;
  let data = null;
  let pending = null;
  return {
    get data() { return data; },
    async load(version) {
      if (data && version !== undefined && data.version === version) return data;
      if (pending) return pending;
      pending = (async () => {
        try {
          const res = await request(jobPath(jobId, "?history=1"), { headers: etag && data ? { "If-None-Match": etag } : {},
            accept: [304] });
          if (res.status === 200) {
            data = await res.json();
            etag = res.headers.get("ETag");
          }
          return data;
        } finally {
          pending = null;
        }
      })();
      return pending;
    },
  };
}
