// Live status of one job: Server-Sent Events (/events; the browser's EventSource resends
// Last-Event-ID itself on reconnect, so nothing is missed), falling back to the long poll
// (?wait=25 with If-None-Match) when the stream fails repeatedly (an old proxy, 429, ...).
import { ApiError, backoff, jobPath, request, sleep } from "./api.js";

const FINAL = new Set(["completed", "failed", "removed"]);
const MAX_STREAM_FAILURES = 3;

export function isFinal(status) { return FINAL.has(status?.state); }

/**
 * Calls onStatus(status) on every change, onMode("live" | "polling" | "offline" | "done").
 * Returns stop().
 */
export function watchJob(jobId, { onStatus, onMode = () => {}, version = null }) {
  let stopped = false;
  let source = null;
  let failures = 0;
  const abort = new AbortController();
  let last = version;

  function deliver(status) {
    if (stopped) return;
    last = status.version;
    onStatus(status);
  }

  function stream() {
    if (!window.EventSource) return poll();
    source = new EventSource(jobPath(jobId, "/events"));
    source.addEventListener("open", () => { failures = 0; onMode("live"); });
    source.addEventListener("status", (e) => {
      failures = 0;
      try { deliver(JSON.parse(e.data)); } catch { /* a broken event: the next one repairs it */ }
    });
    source.addEventListener("end", () => { source.close(); onMode("done"); });
    source.addEventListener("error", () => {
      if (stopped) return;
      failures += 1;
      // CLOSED: the server refused the stream (4xx/5xx) — EventSource will not retry by itself.
      if (source.readyState === EventSource.CLOSED || failures >= MAX_STREAM_FAILURES) {
        source.close();
        source = null;
        if (navigator.onLine === false) onMode("offline");
        poll();
      }
    });
  }

  async function poll() {
    onMode("polling");
    let attempt = 0;
    while (!stopped) {
      try {
        const headers = last !== null ? { "If-None-Match": `"${last}"` } : {};
        const res = await request(jobPath(jobId, "?wait=25"), { headers, accept: [304], retries: 0, signal: abort.signal });
        attempt = 0;
        onMode("polling");
        if (res.status === 200) {
          const status = await res.json();
          deliver(status);
          if (isFinal(status)) { onMode("done"); return; }
        }
      } catch (err) {
        if (err.name === "AbortError" || stopped) return;
        if (err instanceof ApiError && !err.offline && ![429, 502, 503, 504].includes(err.status)) {
          onMode("error");
          return;
        }
        onMode(navigator.onLine === false || err.offline ? "offline" : "polling");
        try { await sleep(backoff(attempt++, 15000), abort.signal); } catch { return; }
      }
    }
  }

  stream();
  return function stop() {
    stopped = true;
    abort.abort();
    if (source) source.close();
  };
}
