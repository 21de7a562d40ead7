// The jobs list: every peer's jobs of this user, with state and counts; stale when offline.
import { fill, formatTime, h, stateBadge } from "./dom.js";
import { getFresh, onReconnect, showStale, staleRetryDelay } from "./offline.js";

function countsText(counts) {
  return Object.entries(counts || {}).map(([state, n]) => `${n} ${state}`).join(", ");
}

export function mount(main) {
  const list = h("ul", { class: "list", id: "jobs-list", "aria-label": "Jobs" },
    h("li", { class: "empty" }, "Loading…"));
  const note = h("div", { id: "jobs-note" });
  let timer = 0;
  let gone = false;
  let staleTries = 0;

  async function load() {
    clearTimeout(timer);
    try {
      const { data, staleAt } = await getFresh("/api/v1/jobs");
      fill(list, data.jobs.length ? data.jobs.map((j) => h("li", {},
        h("a", { class: "item", href: `#job/${encodeURIComponent(j.id)}`,
          "aria-label": `job ${j.name}: ${j.state}${staleAt ? " (stale)" : ""}` },
          h("span", { class: "main" }, h("strong", {}, j.name), h("br"),
            h("span", { class: "muted" }, `${countsText(j.counts)} · ${j.peer} · ${formatTime(j.created_at)}`)),
          stateBadge(j.state))))
        : h("li", { class: "empty" }, "No jobs yet. Start one in New job."));
      fill(note, data.unreachable_peers?.length
        ? h("p", { class: "note" }, `Not reachable now (their jobs are missing): ${data.unreachable_peers.join(", ")}`) : null);
      // Stale (from the offline cache): try again by itself — an `online` event may never come
      // (a link that drops upstream of the radio).  A list with running jobs refreshes now and then.
      if (staleAt) { if (!gone) timer = setTimeout(load, staleRetryDelay(staleTries++)); return; }
      staleTries = 0;
      if (!gone && data.jobs.some((j) => !["completed", "failed", "removed"].includes(j.state))) timer = setTimeout(load, 15000);
    } catch (err) {
      if (err.offline) {
        showStale(null);
        fill(list, h("li", { class: "empty" }, "Offline, and this phone has no saved list yet."));
        if (!gone) timer = setTimeout(load, staleRetryDelay(staleTries++));
      } else {
        fill(list, h("li", { class: "empty error" }, err.message));
      }
    }
  }

  main.append(
    h("div", { class: "row" }, h("h1", { class: "grow" }, "Jobs"),
      h("button", { type: "button", onclick: load }, "Refresh")),
    note, list);
  load();
  const off = onReconnect(load);
  // Back to the app (from another app, or the phone woke up): show what changed meanwhile.
  const onVisible = () => { if (document.visibilityState === "visible") load(); };
  document.addEventListener("visibilitychange", onVisible);
  return () => { gone = true; clearTimeout(timer); off(); document.removeEventListener("visibilitychange", onVisible); };
}
