// Outputs per input: read a text output in the page (the tail while it grows), download any
// output into this phone's storage with resume and SHA-256 verification, then save or share it.
// A big job's outputs come a page of inputs at a time (the peer asks only the sites holding
// them); "Show more" asks for the next page, and a live update asks again only for those shown.
import { getJSON, jobPath, outputPath, request } from "./api.js";
import { fill, formatBytes, h, toast } from "./dom.js";
import { canShare, discard, download } from "./download.js";
import { PAGE } from "./inputs.js";
import { isFinal } from "./live.js";

const TAIL_BYTES = 8192;
const TEXT = /\.(txt|log|out|err|json|csv|tsv|dat|sub|sh|py|md|cfg|ini|xml|ya?ml)$|^[^.]+$/i;

function storeKey(jobId, index, name) {
  return `${jobId}_${index}_${name}`.replace(/[^A-Za-z0-9._-]/g, "_");
}

export function mount(body, ctx) {
  const viewer = h("section", { id: "viewer", class: "card", "aria-labelledby": "viewer-title", hidden: true });
  const groups = h("div", { id: "output-groups" }, h("p", { class: "loading" }, "Loading…"));
  const moreText = h("span", { class: "muted grow" });
  const moreButton = h("button", { type: "button", onclick: () => { shown += PAGE; refresh(); } });
  const more = h("div", { class: "row", hidden: true }, moreText, moreButton);
  body.append(viewer, groups, more);
  let shown = PAGE; // how many inputs' outputs are asked for
  let reading = null; // {index, name}
  let seen = null;
  let timer = 0;
  let tailTimer = 0;
  let lastList = [];
  let silent = new Set(); // sites holding outputs that did not answer (unreachable_sites)
  const downloads = new Map(); // key -> the card of a running/finished download (survives re-renders)

  let asked = 0; // the latest refresh: an older answer arriving after it (a live update's) is dropped

  async function refresh() {
    const mine = ++asked;
    try {
      const r = await getJSON(jobPath(ctx.id, `/outputs?start=0&limit=${shown}`));
      if (mine !== asked) return; // a newer question (Show more) is under way: its answer is the one shown
      silent = new Set(r.unreachable_sites || []);
      render(r.outputs);
      const total = r.total ?? r.outputs.length;
      more.hidden = r.next === null || r.next === undefined;
      moreText.textContent = `Outputs of ${r.outputs.length} of ${total} inputs shown`;
      moreButton.textContent = `Show ${Math.min(PAGE, total - r.outputs.length)} more`;
    } catch (err) {
      if (mine !== asked) return;
      fill(groups, h("p", { class: "error" }, err.offline ? "Offline: outputs cannot be listed now." : err.message));
    }
  }

  function render(list) {
    lastList = list;
    const unreachable = [...silent].map((site) => {
      const which = list.filter((o) => o.site === site).map((o) => o.index);
      return h("p", { class: "note", role: "status" }, `${site} does not answer now: the outputs kept there`
        + `${which.length ? ` (${which.length === 1 ? "input" : "inputs"} ${which.join(", ")})` : ""} cannot be listed or fetched`
        + " until it does. They are not lost.");
    });
    fill(groups, h("div", { id: "outputs-unreachable" }, unreachable),
      list.length ? list.map((o) => h("section", { class: "output-group", "aria-label": `outputs of input ${o.index}` },
        h("h3", {}, `Input ${o.index}: ${o.input} `, h("span", { class: `state state-${o.state}` }, o.state)),
        o.site ? h("p", { class: "muted site" }, `on ${o.site}`) : null,
        o.files.length ? h("ul", { class: "list" }, o.files.map((f) => fileRow(o, f)))
          : h("p", { class: "muted" }, silent.has(o.site) ? `Not listed: ${o.site} does not answer now.` : "No outputs yet.")))
        : h("p", { class: "muted" }, "No outputs."));
  }

  function fileRow(o, f) {
    const key = storeKey(ctx.id, o.index, f.name);
    const li = h("li", { class: "output-row", "aria-label": `output ${f.name} of input ${o.index}` },
      h("span", { class: "main" }, h("span", { class: "name" }, f.name), h("br"), h("span", { class: "muted" }, formatBytes(f.size))),
      h("span", { class: "actions" },
        TEXT.test(f.name) ? h("button", { type: "button", "aria-label": `Read ${f.name} of input ${o.index}`,
          onclick: () => read(o.index, f.name, f.size) }, "Read") : null,
        h("button", { type: "button", "aria-label": `Download ${f.name} of input ${o.index}`,
          onclick: () => startDownload(key, o, f) }, "Download")));
    if (downloads.has(key)) li.append(downloads.get(key));
    return li;
  }

  let text = null;
  let note = null;

  async function read(index, name, size) {
    reading = { index, name, size };
    text = h("pre", { id: "viewer-text", tabindex: "0", "aria-label": `${name} of input ${index}` });
    note = h("p", { class: "muted", role: "status" }, "Reading…");
    fill(viewer, h("div", { class: "row" }, h("h2", { id: "viewer-title", class: "grow" }, `${name} (input ${index})`),
      h("button", { type: "button", onclick: () => { reading = null; viewer.hidden = true; clearTimeout(tailTimer); } }, "Close")),
    note, text);
    viewer.hidden = false;
    viewer.scrollIntoView({ block: "start" });
    await showTail();
  }

  async function showTail() {
    clearTimeout(tailTimer);
    if (!reading) return;
    const current = reading;
    const { index, name } = reading;
    const listed = lastList.find((o) => o.index === index)?.files.find((f) => f.name === name)?.size ?? 0;
    const size = Math.max(listed, reading.size || 0); // a growing file: what the last read saw
    const input = ctx.status?.inputs?.find((i) => i.index === index);
    const growing = input && !["completed", "failed", "removed"].includes(input.state);
    note.className = "muted";
    try {
      // The tail (a suffix range) once the file is longer than that; a small file whole (the
      // peer answers a suffix range longer than the file with 416, a console error in a browser).
      const headers = size > TAIL_BYTES ? { Range: `bytes=-${TAIL_BYTES}` } : {};
      const res = await request(outputPath(ctx.id, index, name), { headers, accept: [416] });
      if (res.status === 416) {
        text.textContent = "";
        note.textContent = "(empty so far)";
      } else {
        const range = res.headers.get("Content-Range");
        const body = await res.arrayBuffer();
        const total = range ? Number(range.split("/")[1]) : body.byteLength;
        if (reading !== current) return; // closed, or another file opened meanwhile
        reading.size = total;
        let content = new TextDecoder().decode(body);
        const cut = res.status === 206 && total > TAIL_BYTES;
        if (cut) content = content.slice(content.indexOf("\n") + 1); // start at a whole line
        note.textContent = content ? `${cut ? `The end of ${formatBytes(total)} (tail)` : "The whole file"}${growing ? " — updates while the input runs" : ""}.`
          : `(empty${growing ? " so far" : ""})`;
        const atEnd = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
        text.textContent = content;
        if (growing && atEnd) text.scrollTop = text.scrollHeight; // follow the end unless scrolled up
      }
    } catch (err) {
      note.textContent = `Could not read ${name}: ${err.message}`;
      note.className = "error";
    }
    if (growing) tailTimer = setTimeout(showTail, 5000);
  }

  async function startDownload(key, o, f) {
    if (downloads.get(key)?.dataset.busy) return;
    const bar = h("progress", { max: String(f.size || 1), value: "0", "aria-label": `download ${f.name}` });
    const line = h("p", { role: "status", "aria-live": "polite" }, "Starting…");
    const card = h("div", { class: "stack", "aria-label": `download ${f.name}`, "data-busy": "1" }, bar, line);
    downloads.set(key, card);
    render(lastList);
    try {
      const result = await download({
        url: outputPath(ctx.id, o.index, f.name), key, name: f.name.split("/").pop(), sha256: f.sha256, size: f.size,
        ui: {
          say: (t) => { line.textContent = t; },
          progress: (have, total) => { bar.max = total || f.size || 1; bar.value = have; line.textContent = `${formatBytes(have)} of ${formatBytes(total ?? f.size)}`; },
        },
      });
      bar.value = bar.max;
      const url = URL.createObjectURL(result.file);
      fill(card,
        h("p", { class: "ok", role: "status" }, `Verified: SHA-256 matches (${result.sha256.slice(0, 16)}…), kept in ${result.store === "opfs" ? "this phone's file storage" : "IndexedDB"}.`),
        h("div", { class: "row" },
          h("a", { class: "button primary", href: url, download: result.file.name, "aria-label": `Save ${f.name}` }, `Save ${result.file.name}`),
          canShare(result.file) ? h("button", { type: "button", onclick: () => navigator.share({ files: [result.file], title: f.name }).catch(() => {}) }, "Share") : null,
          h("button", { type: "button", class: "link", onclick: async () => { await discard(key); URL.revokeObjectURL(url); downloads.delete(key); render(lastList); toast(`${f.name} removed from this phone`); } }, "Remove from phone")));
      card.setAttribute("aria-label", `download ${f.name}: verified`);
    } catch (err) {
      line.textContent = `Download failed: ${err.message}`;
      line.className = "error";
      card.setAttribute("aria-label", `download ${f.name}: failed`);
    } finally {
      delete card.dataset.busy;
    }
  }

  refresh();
  const unsubscribe = ctx.subscribe((st) => {
    if (seen === st.version) return;
    seen = st.version;
    clearTimeout(timer);
    timer = setTimeout(() => { refresh(); if (reading) showTail(); }, 300);
    if (isFinal(st)) clearTimeout(tailTimer);
  });
  return () => { unsubscribe(); clearTimeout(timer); clearTimeout(tailTimer); };
}
