// The publishing area: browse folders, wildcard search, search inside files; pick inputs
// (checkboxes) or, in pick mode, the executable or the submit file.
import { filePath, getJSON, request } from "./api.js";
import * as draft from "./draft.js";
import { fill, formatBytes, h, toast } from "./dom.js";

let rowIds = 0;
const PICK_TITLES = { executable: "Choose the executable", submit: "Choose the submit file" };

function base(path) { return path.split("/").pop() || path; }

function href(params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  const s = q.toString();
  return `#files${s ? `?${s}` : ""}`;
}

export function mount(main, params) {
  const path = params.get("path") || "";
  const pick = PICK_TITLES[params.get("pick")] ? params.get("pick") : null;
  const glob = params.get("glob") || "";
  const grep = params.get("grep") || "";
  const results = h("div", { id: "file-results", "aria-live": "polite" }, h("p", { class: "loading" }, "Loading…"));
  const picked = h("p", { id: "picked-count", role: "status", class: "muted" });

  const globInput = h("input", { id: "file-glob", type: "search", name: "glob", value: glob, placeholder: "*.txt",
    autocapitalize: "none", spellcheck: "false" });
  const grepInput = h("input", { id: "file-grep", type: "search", name: "grep", value: grep, placeholder: "text",
    autocapitalize: "none", spellcheck: "false" });
  const search = h("form", { role: "search", "aria-label": "Search the publishing area", class: "card" },
    h("label", { for: "file-glob" }, "Wildcard search"), globInput,
    h("label", { for: "file-grep" }, "Search inside files"), grepInput,
    h("div", { class: "row" },
      h("button", { type: "submit", class: "primary" }, "Search"),
      glob || grep ? h("a", { class: "button", href: href({ path, pick }) }, "Clear search") : null));
  search.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = href({ path, pick, glob: globInput.value.trim(), grep: grepInput.value.trim() });
  });

  const crumbs = h("nav", { "aria-label": "Folder", class: "row" });
  const parts = path ? path.split("/") : [];
  crumbs.append(h("a", { class: "button", href: href({ pick }) }, "Publishing area"));
  parts.forEach((part, i) => crumbs.append(
    h("a", { class: "button", href: href({ pick, path: parts.slice(0, i + 1).join("/") }),
      "aria-current": i === parts.length - 1 ? "location" : null }, part)));

  function countPicked() {
    const n = draft.get().inputs.length;
    fill(picked, `${n} input${n === 1 ? "" : "s"} picked. `, n ? h("a", { href: "#submit" }, "Go to New job") : "");
  }
  countPicked();

  function chooseFor(entry) {
    return h("button", { type: "button", class: "item", "aria-label": `${PICK_TITLES[pick]}: ${entry.path}`,
      onclick: () => choose(entry.path) },
      h("span", { class: "icon", "aria-hidden": "true" }, "📄"),
      h("span", { class: "main" }, glob || grep ? entry.path : base(entry.path)),
      h("span", { class: "side" }, formatBytes(entry.size)));
  }

  async function choose(p) {
    try {
      if (pick === "executable") {
        draft.setExecutable({ source: "area", path: p, name: base(p) });
      } else {
        const res = await request(filePath(p));
        draft.update({ submit: { source: "text", name: base(p), text: await res.text(), from: p } });
      }
      location.hash = "#submit";
    } catch (err) {
      toast(`Could not use ${p}: ${err.message}`);
    }
  }

  function fileRow(entry, extra = null) {
    if (pick) return h("li", {}, chooseFor(entry), extra);
    const id = `pick-${++rowIds}`;
    const shown = glob || grep ? entry.path : base(entry.path);
    const box = h("input", { type: "checkbox", id, checked: draft.hasInput(entry.path), "aria-label": shown,
      onchange: (e) => { draft.toggleInput(entry.path, e.target.checked); countPicked(); } });
    return h("li", {},
      h("label", { class: "item", for: id },
        box,
        h("span", { class: "main" }, shown, extra),
        h("span", { class: "side" }, formatBytes(entry.size))));
  }

  function dirRow(entry) {
    return h("li", {}, h("a", { class: "item", href: href({ pick, path: entry.path }), "aria-label": `folder ${base(entry.path)}` },
      h("span", { class: "icon", "aria-hidden": "true" }, "📁"),
      h("span", { class: "main" }, base(entry.path)),
      h("span", { class: "side", "aria-hidden": "true" }, "›")));
  }

  async function load() {
    try {
      if (grep) {
        const q = new URLSearchParams({ grep, glob: glob || "*", icase: "1" });
        const r = await getJSON(`/api/v1/files?${q}`);
        const byPath = new Map();
        for (const m of r.matches) {
          if (!byPath.has(m.path)) byPath.set(m.path, []);
          byPath.get(m.path).push(m);
        }
        const items = [...byPath].map(([p, ms]) => fileRow({ path: p },
          ms.slice(0, 3).map((m) => h("span", { class: "match" }, `${m.line}: ${m.text}`))));
        fill(results,
          h("h2", {}, `Files containing “${grep}”`),
          h("ul", { class: "list", "aria-label": "Search results" }, items.length ? items : h("li", { class: "empty" }, "No matches.")),
          r.truncated ? h("p", { class: "note" }, "Only the first matches are shown: search for something more precise.") : null,
          r.skipped.length ? h("p", { class: "muted" }, `Not searched (binary or too big): ${r.skipped.join(", ")}`) : null);
      } else if (glob) {
        const r = await getJSON(`/api/v1/files?${new URLSearchParams({ glob })}`);
        fill(results, h("h2", {}, `Files matching ${glob}`),
          h("ul", { class: "list", "aria-label": "Search results" },
            r.files.length ? r.files.map((e) => fileRow(e)) : h("li", { class: "empty" }, "Nothing matches.")));
      } else {
        const r = await getJSON(`/api/v1/files?${new URLSearchParams({ path })}`);
        const dirs = r.files.filter((e) => e.type === "dir").map(dirRow);
        const files = r.files.filter((e) => e.type !== "dir").map((e) => fileRow(e));
        fill(results, h("ul", { class: "list", "aria-label": path ? `Folder ${path}` : "Publishing area" },
          dirs.length + files.length ? [...dirs, ...files] : h("li", { class: "empty" }, "This folder is empty.")));
      }
    } catch (err) {
      fill(results, h("p", { class: "error", role: "alert" }, err.offline ? "Offline: the files cannot be listed now." : err.message));
    }
  }

  main.append(
    h("h1", {}, pick ? PICK_TITLES[pick] : "Files"),
    pick ? h("p", { class: "row" }, h("a", { class: "button", href: "#submit" }, "Cancel")) : picked,
    search, crumbs, results);
  load();
}
