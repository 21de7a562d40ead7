// The job being put together: inputs, executable, submit file and the Idempotency-Key.
// Kept in localStorage so a reload after a dropped link re-sends the same key (the peer
// then answers the job it already made instead of making a second one).  Any change to
// the draft drops the key: a different job gets a different key.
import { uuid } from "./api.js";

const STORE = "pg.draft";
const events = new EventTarget();
let localExecutable = null; // a File from the phone: not storable in localStorage

function load() {
  try {
    const d = JSON.parse(localStorage.getItem(STORE) || "null");
    if (d && Array.isArray(d.inputs)) return d;
  } catch { /* corrupt or private mode */ }
  return { name: "", inputs: [], executable: null, submit: null, key: null };
}

let draft = load();
if (draft.executable?.source === "local") draft.executable = { ...draft.executable, missing: true };

function save() {
  try { localStorage.setItem(STORE, JSON.stringify(draft)); } catch { /* quota or private mode */ }
  events.dispatchEvent(new Event("change"));
}

export function get() { return draft; }
export function onChange(fn) { events.addEventListener("change", fn); return () => events.removeEventListener("change", fn); }
export function executableFile() { return localExecutable; }

/** Change fields of the draft (drops the Idempotency-Key: it is another job now). */
export function update(fields) {
  draft = { ...draft, ...fields, key: null };
  save();
}

export function setExecutable(exe, file = null) {
  localExecutable = file;
  update({ executable: exe });
}

export function toggleInput(path, on) {
  const has = draft.inputs.includes(path);
  if (on && !has) update({ inputs: [...draft.inputs, path] });
  else if (!on && has) update({ inputs: draft.inputs.filter((p) => p !== path) });
}

export function hasInput(path) { return draft.inputs.includes(path); }

/** The key for this submission: made on the first try, kept for every retry. */
export function submissionKey() {
  if (!draft.key) {
    draft.key = uuid();
    save();
  }
  return draft.key;
}

export function clear() {
  localExecutable = null;
  draft = { name: "", inputs: [], executable: null, submit: null, key: null };
  save();
}

/** "Run again with other inputs": the executable and submit file of an earlier job. */
export function fromJob(jobId, spec) {
  localExecutable = null;
  draft = {
    name: spec.name || "",
    inputs: [],
    executable: { source: "job", job: jobId, name: spec.executable_name },
    submit: { source: "text", name: spec.submit_name || "job.sub", text: spec.submit_text || "" },
    key: null,
    previousInputs: spec.inputs || [],
  };
  save();
}
