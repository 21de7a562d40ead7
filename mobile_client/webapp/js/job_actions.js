// What the person can do to a job from its page: kill, release held inputs, retry failed inputs
// (or one input), pin / unpin, run again.  Kill, release and retry ask first in the page (an
// alertdialog); a refusal (e.g. 409: nothing to retry) is shown as the peer said it, and stays.
import { getJSON, jobPath, request, sendJSON } from "./api.js";
import * as draft from "./draft.js";
import { confirmStep, fill, h, toast } from "./dom.js";
import { isFinal } from "./live.js";

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** The job's actions into ``container``; returns {update(status), retryOne(index, slot)}. */
export function jobActions(container, ctx) {
  const buttons = h("div", { class: "row", id: "job-actions" });
  const confirmArea = h("div");
  const said = h("p", { id: "job-action-error", class: "error", role: "alert", hidden: true });
  container.append(buttons, confirmArea, said);

  function refused(what, err) {
    said.textContent = err.offline ? `${what} not sent: ${err.message}`
      : `${what} ${err.status >= 500 ? "failed" : "refused"}: ${err.message}`;
    said.hidden = false;
  }
  function clear() { said.hidden = true; said.textContent = ""; }

  async function kill() {
    clear();
    const yes = await confirmStep(confirmArea, { question: "Kill this job? Running inputs stop; finished outputs stay.",
      yes: "Kill job", no: "Keep running" });
    if (!yes) return;
    try {
      const r = await (await request(jobPath(ctx.id), { method: "DELETE" })).json();
      toast(`Kill sent: ${plural(r.removed_procs, "input")} stopped${r.removal ? `; ${r.removal}` : ""}`, r.removal ? 6000 : 2500);
    } catch (err) {
      refused("Kill", err);
    }
  }

  async function release() {
    clear();
    const held = (ctx.status?.inputs || []).filter((i) => i.state === "held").length;
    const yes = await confirmStep(confirmArea, {
      question: `Release ${held === 1 ? "the held input" : `the ${held} held inputs`}? ${held === 1 ? "It runs" : "They run"} again from the start.`,
      yes: "Release", no: "Keep held", danger: false });
    if (!yes) return;
    try {
      const r = await (await request(jobPath(ctx.id, "/release"), { method: "POST" })).json();
      toast(`Released: ${plural(r.released_procs, "input")} queued again`);
    } catch (err) {
      refused("Release", err);
    }
  }

  /** Run inputs again: ``body`` is {"failed": true} or {"inputs": [i]}; ``where``: the confirm's place. */
  async function retry(body, question, where) {
    clear();
    const yes = await confirmStep(where, { question, yes: "Retry", no: "Cancel", danger: false });
    if (!yes) return;
    try {
      const r = await sendJSON(jobPath(ctx.id, "/retry"), "POST", body);
      const which = r.inputs.length === 1 ? `Input ${r.inputs[0]} runs again (attempt ${r.attempts[r.inputs[0]]})`
        : `${plural(r.inputs.length, "input")} run again`;
      toast(which);
    } catch (err) {
      refused("Retry", err);
    }
    ctx.reload(); // a finished job is watched again
  }

  function retryFailed() {
    const n = ctx.status?.counts?.failed || 0;
    return retry({ failed: true }, `Run ${n === 1 ? "the failed input" : `the ${n} failed inputs`} again? `
      + `Each gets a new attempt; an earlier result stays until the new one succeeds.`, confirmArea);
  }

  function retryOne(index, slot) {
    const i = (ctx.status?.inputs || []).find((x) => x.index === index);
    return retry({ inputs: [index] }, `Run input ${index}${i ? ` (${i.input}, ${i.state})` : ""} again? It gets a new attempt.`, slot);
  }

  async function pin(on) {
    clear();
    try {
      // Pinning twice is pinning once: safe to repeat over a link that drops.
      const r = await (await request(jobPath(ctx.id, "/pin"), { method: on ? "POST" : "DELETE", retries: 4 })).json();
      toast(r.pinned ? "Pinned: kept until you unpin it" : "Unpinned: removed after the site's retention time");
    } catch (err) {
      refused(on ? "Pin" : "Unpin", err);
    }
    ctx.reload();
  }

  async function runAgain() {
    try {
      const spec = await getJSON(jobPath(ctx.id, "/spec"));
      draft.fromJob(ctx.id, spec);
      location.hash = "#submit";
    } catch (err) {
      toast(`Could not load the job's spec: ${err.message}`);
    }
  }

  function update(st) {
    const inputs = st.inputs || [];
    fill(buttons,
      isFinal(st) ? null : h("button", { type: "button", class: "danger", onclick: kill }, "Kill job"),
      inputs.some((i) => i.state === "held") ? h("button", { type: "button", onclick: release }, "Release held inputs") : null,
      inputs.some((i) => i.state === "failed") ? h("button", { type: "button", onclick: retryFailed }, "Retry failed inputs") : null,
      st.pinned === undefined ? null : st.pinned
        ? h("button", { type: "button", onclick: () => pin(false) }, "Unpin job")
        : h("button", { type: "button", onclick: () => pin(true) }, "Pin job"),
      h("button", { type: "button", onclick: runAgain }, "Run again with other inputs"));
  }

  return { update, retryOne };
}
