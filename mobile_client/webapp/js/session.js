// Who is logged in: whoami on load (the HttpOnly cookie is invisible to script), pairing, logout.
import { ApiError, getJSON, request, sendJSON, setCsrf } from "./api.js";

const LAST_USER = "pg.lastUser";
let user = null;

export function currentUser() { return user; }

function remember(who) {
  user = who;
  setCsrf(who.csrf);
  try { localStorage.setItem(LAST_USER, JSON.stringify({ dn: who.dn, vo: who.vo })); } catch { /* private mode */ }
}

/** Whether this browser was logged in before (else the first screen is pairing, with no
 *  whoami that would only answer 401 — a console error in the browser). */
export function wasLoggedIn() {
  try { return Boolean(localStorage.getItem(LAST_USER)); } catch { return false; }
}

function lastUser() {
  try {
    const last = JSON.parse(localStorage.getItem(LAST_USER) || "null");
    if (last) { user = { ...last, offline: true }; return user; }
  } catch { /* nothing stored */ }
  return null;
}

/** The user, or null when not logged in (401); {offline: true, ...} when the link is down
 *  and this phone was logged in before (the app then shows what it knew). */
export async function whoami() {
  // Known to be offline: do not even try (a failed request is a console error in the browser).
  if (navigator.onLine === false && lastUser()) return user;
  try {
    const who = await getJSON("/api/v1/auth/whoami", { quiet401: true, retries: 1 });
    remember(who);
    return who;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { user = null; return null; }
    if (err instanceof ApiError && err.offline && lastUser()) return user;
    throw err;
  }
}

export async function pair(code, device) {
  const answer = await sendJSON("/api/v1/auth/pair", "POST",
    { code: code.trim().toUpperCase(), device, cookie: true }, { quiet401: true, retries: 2 });
  remember(answer);
  return answer;
}

export async function logout() {
  try {
    await request("/api/v1/auth/logout", { method: "POST", quiet401: true, accept: [401] });
  } finally {
    forget();
  }
}

export async function forget() {
  user = null;
  setCsrf(null);
  try { localStorage.removeItem(LAST_USER); } catch { /* ignore */ }
  // What this phone knew about the jobs is the user's: drop it with the session.
  if (self.caches) for (const key of await caches.keys()) if (key.startsWith("pg-data")) await caches.delete(key);
}
