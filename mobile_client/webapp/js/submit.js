// New job: name, inputs (publishing area or uploaded), executable and submit file (publishing
// area, this phone's storage, or an earlier job), then submit with the draft's Idempotency-Key,
// retried with backoff over a dropped link: a retry never makes a second job.
import { ApiError, backoff, filePath, jobPath, request, sleep } from "./api.js";
import * as draft from "./draft.js";
import { fill, h } from "./dom.js";
import { uploadControl } from "./upload.js";

const ATTEMPTS = 8;

async function blobOf(exe) {
  if (exe.source === "local") {
    const file = draft.executableFile();
    if (!file) throw new Error("pick the executable from this phone again (a reload forgets it)");
    return file;
  }
  const url = exe.source === "job" ? jobPath(exe.job, "/executable") : filePath(exe.path);
  return (await request(url)).blob();
}

function describe(thing, empty) {
  if (!thing) return h("span", { class: "muted" }, empty);
  const from = { area: `publishing area: ${thing.path}`, local: "this phone", job: `job ${thing.job}`,
    text: thing.from ? `publishing area: ${thing.from}` : "text below" }[thing.source];
  return h("span", {}, h("strong", {}, thing.name), " ", h("span", { class: "muted" }, `(${from})`),
    thing.missing ? h("span", { class: "error" }, " — pick it again") : null);
}

export function mount(main) {
  const d0 = draft.get();
  const status = h("div", { id: "submit-status", role: "status", "aria-live": "polite" });
  const name = h("input", { id: "job-name", name: "name", value: d0.name, maxlength: "100", autocapitalize: "none",
    placeholder: "histogram" });
  name.addEventListener("input", () => draft.update({ name: name.value.trim() }));

  const inputs = h("ul", { class: "list", id: "draft-inputs", "aria-label": "Inputs" });
  const exeLine = h("p", { id: "exe-chosen" });
  const subLine = h("p", { id: "sub-chosen" });
  const subText = h("textarea", { id: "submit-text", name: "submit_text", spellcheck: "false", autocapitalize: "none",
    placeholder: "executable = …\narguments = $(input)\nqueue" });
  subText.addEventListener("input", () => {
    const cur = draft.get().submit;
    draft.update({ submit: { source: "text", name: cur?.name || "job.sub", text: subText.value, from: null } });
  });

  const exeFile = h("input", { type: "file", id: "exe-file" });
  exeFile.addEventListener("change", () => {
    const f = exeFile.files[0];
    if (f) draft.setExecutable({ source: "local", name: f.name, size: f.size }, f);
  });
  const subFile = h("input", { type: "file", id: "sub-file", accept: ".sub,.txt,text/plain" });
  subFile.addEventListener("change", async () => {
    const f = subFile.files[0];
    if (f) draft.update({ submit: { source: "text", name: f.name, text: await f.text() } });
  });

  function render() {
    const d = draft.get();
    if (document.activeElement !== name) name.value = d.name;
    fill(inputs, d.inputs.length ? d.inputs.map((p) => h("li", { class: "item" },
      h("span", { class: "main" }, p),
      h("button", { type: "button", "aria-label": `Remove input ${p}`, onclick: () => draft.toggleInput(p, false) }, "Remove")))
      : h("li", { class: "empty" }, "No inputs yet: pick them in Files or upload them below."));
    fill(exeLine, describe(d.executable, "No executable chosen."));
    fill(subLine, describe(d.submit, "No submit file chosen."));
    if (document.activeElement !== subText) subText.value = d.submit?.text || "";
    again.hidden = !(d.previousInputs && d.previousInputs.length);
    fill(again, d.previousInputs?.length ? [
      h("p", { class: "muted" }, `The earlier job's inputs: ${d.previousInputs.join(", ")}`),
      h("button", { type: "button", onclick: () => draft.update({ inputs: [...d.previousInputs] }) }, "Use the same inputs")] : []);
  }
  const again = h("div", { class: "card", hidden: true });

  const submitButton = h("button", { type: "submit", class: "primary" }, "Submit job");
  const form = h("form", { "aria-labelledby": "submit-title" },
    h("label", { for: "job-name" }, "Job name"), name,
    h("h2", {}, "Inputs"), inputs, again,
    h("div", { class: "row" }, h("a", { class: "button", href: "#files" }, "Pick inputs in Files")),
    uploadControl((path) => draft.toggleInput(path, true)),
    h("h2", {}, "Executable"), exeLine,
    h("div", { class: "row" }, h("a", { class: "button", href: "#files?pick=executable" }, "Choose from the publishing area")),
    h("label", { for: "exe-file" }, "Executable from this phone"), exeFile,
    h("h2", {}, "Submit file"), subLine,
    h("div", { class: "row" }, h("a", { class: "button", href: "#files?pick=submit" }, "Choose from the publishing area")),
    h("label", { for: "sub-file" }, "Submit file from this phone"), subFile,
    h("label", { for: "submit-text" }, "Submit file text"), subText,
    h("p", { class: "muted" }, "Run again with other inputs: open a job and tap “Run again”."),
    h("div", { class: "row" }, submitButton, h("button", { type: "button", onclick: () => { draft.clear(); status.textContent = "Draft cleared."; } }, "Clear draft")),
    status);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    draft.update({ name: name.value.trim() });
    const d = draft.get();
    const problems = [];
    if (!d.name) problems.push("a job name");
    if (!d.inputs.length) problems.push("at least one input");
    if (!d.executable || d.executable.missing) problems.push("an executable");
    if (!d.submit?.text?.trim()) problems.push("a submit file");
    if (problems.length) {
      fill(status, h("p", { class: "error" }, `Add ${problems.join(", ")}.`));
      return;
    }
    submitButton.disabled = true;
    try {
      const job = await send(d, (text) => fill(status, h("p", {}, text)));
      draft.clear();
      location.hash = `#job/${encodeURIComponent(job.id)}`;
    } catch (err) {
      fill(status, h("p", { class: "error", role: "alert" }, err.message));
    } finally {
      submitButton.disabled = false;
    }
  });

  main.append(h("h1", { id: "submit-title" }, "New job"), form);
  render();
  return draft.onChange(render);
}

/** POST the job; retried with the same Idempotency-Key (the peer answers 200 for a replay). */
async function send(d, say) {
  const key = draft.submissionKey();
  say("Preparing…");
  const executable = await blobOf(d.executable);
  const body = new FormData();
  body.set("name", d.name);
  body.set("executable_name", d.executable.name);
  body.set("submit_name", d.submit.name || "job.sub");
  body.set("inputs", JSON.stringify(d.inputs));
  body.set("executable", executable, d.executable.name);
  body.set("submit", new Blob([d.submit.text], { type: "text/plain" }), d.submit.name || "job.sub");
  for (let attempt = 1; ; attempt++) {
    say(attempt === 1 ? "Sending…" : `Sending again (attempt ${attempt} of ${ATTEMPTS}, same key: no second job)…`);
    try {
      const res = await request("/api/v1/jobs", { method: "POST", body, headers: { "Idempotency-Key": key }, retries: 0 });
      const job = await res.json();
      say(res.status === 200 ? `The peer already had this job (${job.id}): no second one was made.` : `Submitted: ${job.id}`);
      return job;
    } catch (err) {
      const transient = err instanceof ApiError && (err.offline || [502, 503, 504, 429].includes(err.status));
      if (!transient) throw err;
      if (attempt >= ATTEMPTS) {
        throw new Error("Not sent: the link is down. The draft and its key are kept: tap Submit again when the link is back (it will not make two jobs).");
      }
      const delay = backoff(attempt - 1);
      say(`${err.offline ? "The link dropped" : `The peer answered ${err.status}`}; retrying in ${Math.ceil(delay / 1000)} s with the same key…`);
      await sleep(delay);
    }
  }
}
