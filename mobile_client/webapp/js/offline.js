// Offline: the service worker (/sw.js) keeps the app shell and the last known jobs list and
// statuses; a response it serves from its cache carries X-Pocketgrid-Cached-At (ms).  The page
// marks such data as stale and catches up on the `online` event.
import { hhmm } from "./dom.js";
import { request } from "./api.js";

export const CACHED_AT = "X-Pocketgrid-Cached-At";

export function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return;
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => { /* the app works without it */ });
}

function banner() { return document.getElementById("offline"); }

export function showStale(atMs) {
  const el = banner();
  el.textContent = atMs ? `offline — showing what was known at ${hhmm(atMs)}` : "offline — nothing known yet";
  el.hidden = false;
  document.body.classList.add("is-offline");
}

export function showFresh() {
  const el = banner();
  // Back from stale data: tell the app (it refreshes its session, e.g. the CSRF token).
  if (!el.hidden) window.dispatchEvent(new CustomEvent("pg:fresh"));
  el.hidden = true;
  el.textContent = "";
  document.body.classList.remove("is-offline");
}

/** GET JSON; returns {data, staleAt}: staleAt is set when the answer came from the offline cache. */
export async function getFresh(path, opts = {}) {
  const res = await request(path, { retries: 1, ...opts });
  const cached = res.headers.get(CACHED_AT);
  const staleAt = cached ? Number(cached) : null;
  if (staleAt) showStale(staleAt); else showFresh();
  return { data: await res.json(), staleAt };
}

/** Delay before the next try of a page showing stale data: 3 s, 6 s, ... at most 30 s. */
export function staleRetryDelay(attempt) { return Math.min(30000, 3000 * 2 ** Math.min(attempt, 4)); }

/** Run fn when the link returns (and when the page becomes visible again after being away). */
export function onReconnect(fn) {
  const handler = () => fn();
  window.addEventListener("online", handler);
  return () => window.removeEventListener("online", handler);
}
