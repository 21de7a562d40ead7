// Download a job output into this phone's storage by ranges, resuming after a dropped link
// from the bytes already stored (Range + If-Range with the ETag), then verify its SHA-256
// over the stored file and hand it over (a download link, and the share sheet where it exists).
import { ApiError, backoff, sha256Hex, sleep } from "./api.js";
import { openStore } from "./store.js";
import { formatBytes } from "./dom.js";

const MAX_ATTEMPTS_WITHOUT_PROGRESS = 12;
const START_SPAN = 256 * 1024;
const MIN_SPAN = 32 * 1024;
const MAX_SPAN = 8 * 1024 * 1024;
const GROW_AFTER = 8; // whole ranges in a row before a larger one, once the link has dropped

function metaKey(key) { return `pg.dl.${key}`; }
function loadMeta(key) {
  try { return JSON.parse(localStorage.getItem(metaKey(key)) || "{}"); } catch { return {}; }
}
function saveMeta(key, meta) {
  try { localStorage.setItem(metaKey(key), JSON.stringify(meta)); } catch { /* quota */ }
}

function totalOf(res, have) {
  const range = res.headers.get("Content-Range");
  const m = range && range.match(/\/(\d+)$/);
  if (m) return Number(m[1]);
  const length = res.headers.get("Content-Length");
  return length === null ? null : Number(length) + (res.status === 206 ? have : 0);
}

/**
 * Fetch `url` into the store named `key`; resolves with a File once its SHA-256 matches.
 * ui.progress(have, total), ui.say(text).
 */
export async function download({ url, key, name, sha256, size = null, ui, signal }) {
  // Ask the browser not to evict what is stored under pressure (best effort; no prompt in Chromium).
  navigator.storage?.persist?.().catch(() => {});
  const store = await openStore(key);
  let meta = loadMeta(key);
  let have = await store.size();
  // Bytes of another version of the file (or of unknown length) are no use: start over.
  if (meta.sha256 !== sha256 || meta.total === undefined || have > meta.total) { have = 0; meta = {}; }
  meta.sha256 = sha256;
  saveMeta(key, meta);
  let total = meta.total ?? size;
  let attempts = 0;
  // Bounded ranges, sized like TCP's window: doubled after each whole range until the first
  // drop (slow start), then halved at each drop and doubled only after GROW_AFTER whole ranges
  // in a row.  A browser drops what it had queued of a response whose connection breaks, so
  // on a link that keeps dropping only ranges that complete count; smaller ones complete.
  let span = START_SPAN;
  let slowStart = true;
  let streak = 0;
  if (have) ui.say(`Resuming from ${formatBytes(have)} already on this phone…`);
  for (;;) {
    if (total !== null && total !== undefined && have >= total) break;
    const headers = {};
    if (have > 0 || total) headers.Range = `bytes=${have}-${have + span - 1}`;
    if (have > 0 && meta.etag) headers["If-Range"] = meta.etag;
    let writer = null;
    let writing = Promise.resolve();
    try {
      const res = await fetch(url, { headers, credentials: "same-origin", signal, cache: "no-store" });
      if (res.status === 416 && have > 0) { total = have; break; } // we have it all already
      if (res.status !== 200 && res.status !== 206) {
        let message = `${res.status}`;
        try { message = (await res.json()).error || message; } catch { /* not JSON */ }
        throw new ApiError(res.status, message);
      }
      if (res.status === 200) have = 0; // the file changed (If-Range) or a full answer: start over
      total = totalOf(res, have);
      if (res.status === 200 || !meta.etag) meta.etag = res.headers.get("ETag");
      meta.total = total;
      saveMeta(key, meta);
      writer = await store.writer(have);
      const w = writer;
      const reader = res.body.getReader();
      // Read as fast as the bytes come and write behind: a stream that errors (the link
      // dropped) discards what it had queued but the page had not read yet.
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        have += value.byteLength;
        writing = writing.then(() => w.write(value));
        ui.progress(have, total);
      }
      await writing;
      await writer.close();
      writer = null;
      attempts = 0;
      streak += 1;
      if (slowStart || streak >= GROW_AFTER) { span = Math.min(MAX_SPAN, span * 2); streak = 0; }
      if (total === null) { total = have; break; }
    } catch (err) {
      if (writer) { // keep what arrived
        await writing.catch(() => {});
        await writer.close().catch(() => {});
        writing = Promise.resolve();
      }
      if (err.name === "AbortError") throw err;
      const transient = !(err instanceof ApiError) || [429, 502, 503, 504].includes(err.status);
      if (!transient) throw err;
      attempts += 1;
      span = Math.max(MIN_SPAN, Math.floor(span / 2));
      slowStart = false;
      streak = 0;
      if (attempts > MAX_ATTEMPTS_WITHOUT_PROGRESS) {
        throw new Error(`the link keeps dropping (${formatBytes(have)} kept on this phone: tap Download again to resume)`);
      }
      have = await store.size();
      const delay = backoff(attempts - 1);
      ui.say(`Link dropped at ${formatBytes(have)} — resuming in ${Math.ceil(delay / 1000)} s (attempt ${attempts + 1})…`);
      await sleep(delay, signal);
    }
  }
  ui.say("Verifying SHA-256…");
  const stored = await store.file();
  const digest = await sha256Hex(stored, {
    onProgress: (done, all) => ui.say(`Verifying SHA-256… ${Math.floor((100 * done) / all)}%`),
  });
  if (sha256 && digest !== sha256) {
    await store.remove();
    localStorage.removeItem(metaKey(key));
    throw new Error(`SHA-256 mismatch (got ${digest.slice(0, 12)}…, expected ${sha256.slice(0, 12)}…): the copy was discarded; download again`);
  }
  return { file: new File([stored], name, { type: "application/octet-stream" }), sha256: digest, store: store.kind };
}

/** Forget a stored download (after the user saved it, or to free space). */
export async function discard(key) {
  const store = await openStore(key);
  await store.remove();
  localStorage.removeItem(metaKey(key));
}

export function canShare(file) {
  try { return Boolean(navigator.canShare && navigator.share && navigator.canShare({ files: [file] })); } catch { return false; }
}
