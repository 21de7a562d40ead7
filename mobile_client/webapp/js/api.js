// The fetch wrapper: same-origin cookie auth, the CSRF header on writes, retries with
// backoff on a dropped link (network error) and on 502/503/504/429 for requests that are
// safe to repeat (GET, or a POST carrying an Idempotency-Key).
let csrf = null;

export function setCsrf(token) { csrf = token || null; }
export function csrfToken() { return csrf; }

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
  /** No answer at all: the link is down (or the peer is). */
  get offline() { return this.status === 0; }
}

export const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); reject(new DOMException("aborted", "AbortError")); }, { once: true });
});

/** Exponential backoff with jitter: 0.5 s, 1 s, 2 s, 4 s, 8 s (cap). */
export function backoff(attempt, cap = 8000) {
  const base = Math.min(cap, 500 * 2 ** attempt);
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

const RETRY_STATUS = new Set([429, 502, 503, 504]);

async function errorOf(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const message = (body && (body.error || body.message)) || `${res.status} ${res.statusText || "error"}`;
  return new ApiError(res.status, message, body);
}

/**
 * fetch(path) with the app's rules.  Options: method, headers, body, signal, retries,
 * onRetry({attempt, delay, reason}), accept (extra OK statuses, e.g. [304, 416]), cache
 * (fetch's cache mode; "no-store" unless told: the API's answers change under the same URL,
 * and the browser's cache has patched a growing file's tail from old bytes).
 * Returns the Response; throws ApiError (status 0 when the link is down).
 */
export async function request(path, opts = {}) {
  const method = (opts.method || "GET").toUpperCase();
  const headers = new Headers(opts.headers || {});
  const safe = method === "GET" || method === "HEAD" || headers.has("Idempotency-Key");
  const retries = opts.retries ?? (safe ? 4 : 0);
  if (!["GET", "HEAD", "OPTIONS"].includes(method) && csrf) headers.set("X-CSRF-Token", csrf);
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(path, { method, headers, body: opts.body, credentials: "same-origin", signal: opts.signal,
        cache: opts.cache || "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      if (attempt >= retries) throw new ApiError(0, "no connection to the peer (the link is down?)");
      const delay = backoff(attempt);
      opts.onRetry?.({ attempt: attempt + 1, delay, reason: "link dropped" });
      await sleep(delay, opts.signal);
      continue;
    }
    if (RETRY_STATUS.has(res.status) && attempt < retries) {
      const after = Number(res.headers.get("Retry-After"));
      const delay = Number.isFinite(after) && after > 0 ? Math.min(after * 1000, 30000) : backoff(attempt);
      opts.onRetry?.({ attempt: attempt + 1, delay, reason: `peer answered ${res.status}` });
      await sleep(delay, opts.signal);
      continue;
    }
    if (res.status === 401 && !opts.quiet401) window.dispatchEvent(new CustomEvent("pg:unauthorized"));
    if (!res.ok && !(opts.accept || []).includes(res.status)) throw await errorOf(res);
    return res;
  }
}

export async function getJSON(path, opts) {
  const res = await request(path, opts);
  return res.json();
}

export async function sendJSON(path, method, body, opts = {}) {
  const res = await request(path, { ...opts, method, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...(opts.headers || {}) } });
  return res.status === 204 ? null : res.json();
}

/** URL of a publishing-area file or of a job output (each path segment encoded). */
export function filePath(path) {
  return `/api/v1/files/${path.split("/").map(encodeURIComponent).join("/")}`;
}
export function outputPath(jobId, index, name) {
  return `/api/v1/jobs/${encodeURIComponent(jobId)}/outputs/${index}/${name.split("/").map(encodeURIComponent).join("/")}`;
}
export function jobPath(jobId, rest = "") {
  return `/api/v1/jobs/${encodeURIComponent(jobId)}${rest}`;
}

/** crypto.randomUUID where it exists (Safari >= 15.4), else the same from getRandomValues. */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const hex = (bytes) => [...bytes].map((v) => v.toString(16).padStart(2, "0")).join("");

/** Files larger than this are hashed in slices: crypto.subtle wants all the bytes in memory at once. */
export const WHOLE_HASH_MAX = 64 * 1024 * 1024;
const SLICE = 4 * 1024 * 1024;

/**
 * Hex SHA-256 of a Blob: crypto.subtle (needs a secure context) for a file that fits in memory,
 * else incrementally, 4 MiB at a time, with @noble/hashes (vendor/sha256.js, loaded only then).
 * onProgress(done, total) while hashing in slices.
 */
export async function sha256Hex(blob, { wholeMax = WHOLE_HASH_MAX, onProgress } = {}) {
  if (blob.size <= wholeMax) return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer())));
  const { sha256 } = await import("../vendor/sha256.js");
  const hasher = sha256.create();
  for (let at = 0; at < blob.size; at += SLICE) {
    hasher.update(new Uint8Array(await blob.slice(at, at + SLICE).arrayBuffer()));
    onProgress?.(Math.min(blob.size, at + SLICE), blob.size);
  }
  return hex(hasher.digest());
}
