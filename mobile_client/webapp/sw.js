// pocketgrid service worker.  App shell: cache-first (a versioned cache; a new VERSION installs a
// new shell and deletes the old caches).  The jobs list and job statuses (GET /api/v1/jobs and
// GET /api/v1/jobs/<id>): network-first, falling back to the last copy, marked with
// X-Pocketgrid-Cached-At (ms) so the page can say how old it is.  Everything else: the network.
const VERSION = "shell-6f6e4e53a3db5368";
const SHELL_CACHE = `pg-shell-${VERSION}`;
const DATA_CACHE = "pg-data-v1";
const SHELL = [
  "/", "/app.css", "/manifest.webmanifest", "/icons/icon.svg", "/icons/icon-192.png", "/vendor/tus.js", "/vendor/sha256.js",
  "/js/main.js", "/js/api.js", "/js/dom.js", "/js/session.js", "/js/pair.js", "/js/files.js", "/js/draft.js",
  "/js/submit.js", "/js/upload.js", "/js/jobs.js", "/js/job.js", "/js/live.js", "/js/outputs.js",
  "/js/download.js", "/js/store.js", "/js/histogram.js", "/js/offline.js", "/js/account.js",
  "/js/inputs.js", "/js/attempts.js", "/js/job_actions.js",
];
const NETWORK_TIMEOUT_MS = 10000;
const DATA_PATH = /^\/api\/v1\/jobs(\/[^/]+)?$/;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL_CACHE)
    .then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { cache: "no-cache" }))))
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith("pg-shell-") && k !== SHELL_CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

async function shellFirst(request) {
  const cache = await caches.open(SHELL_CACHE);
  const hit = await cache.match(request, { ignoreSearch: true });
  if (hit) return hit;
  const res = await fetch(request);
  if (res.ok && res.type === "basic") cache.put(request, res.clone());
  return res;
}

async function networkFirst(request) {
  const cache = await caches.open(DATA_CACHE);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), NETWORK_TIMEOUT_MS);
  try {
    const res = await fetch(request, { signal: abort.signal });
    if (res.status === 200) {
      const body = await res.clone().arrayBuffer();
      const headers = new Headers(res.headers);
      headers.set("X-Pocketgrid-Cached-At", String(Date.now()));
      headers.delete("Content-Encoding"); // the body kept is the decoded one (the peer may send gzip)
      headers.delete("Content-Length");
      await cache.put(request, new Response(body, { status: 200, headers }));
    } else if (res.status === 401) {
      await caches.delete(DATA_CACHE); // not logged in any more: forget what was known
    }
    return res;
  } catch (err) {
    const hit = await cache.match(request);
    if (hit) return hit;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/api/")) {
    // Only the plain list and status; long polls (?wait=), streams and downloads go straight out.
    if (DATA_PATH.test(url.pathname) && url.search === "" && !request.headers.has("If-None-Match")) {
      event.respondWith(networkFirst(request));
    }
    return;
  }
  if (request.mode === "navigate" && (url.pathname === "/" || url.pathname === "/index.html")) {
    event.respondWith(caches.open(SHELL_CACHE).then((c) => c.match("/")).then((hit) => hit || fetch(request)));
    return;
  }
  if (SHELL.includes(url.pathname) || url.pathname.startsWith("/icons/")) event.respondWith(shellFirst(request));
});
