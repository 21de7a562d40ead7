// The merged histogram of a job's `histogram.json` outputs (format: docs/webapp.md), drawn as
// inline SVG and merged here in the page; redrawn as more inputs complete.
import { getJSON, jobPath, outputPath } from "./api.js";
import { fill, h } from "./dom.js";

const W = 360, H = 220, LEFT = 40, RIGHT = 8, TOP = 10, BOTTOM = 28;
const NAME = "histogram.json";

/** Merge histograms with the same binning; returns {merged, used, skipped}. */
export function merge(histograms) {
  let merged = null;
  const used = [], skipped = [];
  for (const [index, hist] of histograms) {
    const valid = hist && Number.isInteger(hist.bins) && Array.isArray(hist.counts) && hist.counts.length === hist.bins;
    if (!valid) { skipped.push([index, "not a histogram"]); continue; }
    if (!merged) {
      merged = { bins: hist.bins, low: hist.low, high: hist.high, counts: [...hist.counts], n: hist.n || 0,
        underflow: hist.underflow || 0, overflow: hist.overflow || 0 };
      used.push(index);
    } else if (hist.bins === merged.bins && hist.low === merged.low && hist.high === merged.high) {
      hist.counts.forEach((c, i) => { merged.counts[i] += c; });
      merged.n += hist.n || 0;
      merged.underflow += hist.underflow || 0;
      merged.overflow += hist.overflow || 0;
      used.push(index);
    } else {
      skipped.push([index, `other binning (${hist.bins} bins ${hist.low}..${hist.high})`]);
    }
  }
  return { merged, used, skipped };
}

function fmt(x) { return Number.isInteger(x) ? String(x) : x.toFixed(Math.abs(x) < 10 ? 2 : 1); }

export function plot(m, label) {
  const max = Math.max(1, ...m.counts);
  const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
  const bw = plotW / m.bins;
  const width = (m.high - m.low) / m.bins;
  const bars = m.counts.map((c, i) => {
    const bh = (c / max) * plotH;
    return h("rect", { class: "bar-rect", x: (LEFT + i * bw + 0.5).toFixed(2), y: (TOP + plotH - bh).toFixed(2),
      width: Math.max(0.5, bw - 1).toFixed(2), height: bh.toFixed(2) },
      h("title", {}, `[${fmt(m.low + i * width)}, ${fmt(m.low + (i + 1) * width)}): ${c}`));
  });
  const xTicks = [0, 0.5, 1].map((f) => {
    const x = LEFT + f * plotW;
    return h("text", { class: "tick", x: x.toFixed(1), y: String(H - 8), "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" },
      fmt(m.low + f * (m.high - m.low)));
  });
  return h("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, id: "histogram-svg" },
    h("line", { class: "axis", x1: LEFT, y1: TOP + plotH, x2: W - RIGHT, y2: TOP + plotH }),
    h("line", { class: "axis", x1: LEFT, y1: TOP, x2: LEFT, y2: TOP + plotH }),
    h("text", { class: "tick", x: String(LEFT - 4), y: String(TOP + 10), "text-anchor": "end" }, String(max)),
    h("text", { class: "tick", x: String(LEFT - 4), y: String(TOP + plotH), "text-anchor": "end" }, "0"),
    bars, xTicks);
}

export function mount(body, ctx) {
  const area = h("div", { id: "plot-area", "aria-live": "polite" }, h("p", { class: "loading" }, "Loading…"));
  body.append(h("h2", {}, "Merged histogram"), area,
    h("p", { class: "muted" }, "Every completed input's ", h("code", {}, NAME), " with the same binning is added up."));
  const cache = new Map(); // index -> {sha256, hist}
  let seen = null;
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const { outputs } = await getJSON(jobPath(ctx.id, "/outputs"));
      const total = outputs.length;
      const ready = [];
      for (const o of outputs) {
        const f = o.files.find((x) => x.name === NAME);
        if (o.state !== "completed" || !f) continue;
        const hit = cache.get(o.index);
        if (!hit || hit.sha256 !== f.sha256) {
          cache.set(o.index, { sha256: f.sha256, hist: await getJSON(outputPath(ctx.id, o.index, NAME)).catch(() => null) });
        }
        ready.push([o.index, cache.get(o.index).hist]);
      }
      const { merged, used, skipped } = merge(ready);
      if (!merged) {
        fill(area, h("p", { id: "plot-inputs", "data-count": "0", role: "status" },
          `No ${NAME} yet: 0 of ${total} inputs have finished with one.`));
        return;
      }
      const label = `histogram merged from ${used.length} of ${total} inputs`;
      fill(area,
        h("figure", { class: "plot" }, plot(merged, label),
          h("figcaption", {}, `${merged.n} values in ${merged.bins} bins from ${fmt(merged.low)} to ${fmt(merged.high)}; `
            + `underflow ${merged.underflow}, overflow ${merged.overflow}.`)),
        h("p", { id: "plot-inputs", "data-count": String(used.length), role: "status" },
          `Merged from ${used.length} of ${total} inputs.`),
        skipped.length ? h("p", { class: "note" }, `Left out: ${skipped.map(([i, why]) => `input ${i} (${why})`).join(", ")}`) : null);
    } catch (err) {
      fill(area, h("p", { class: "error" }, err.offline ? "Offline: the plot cannot be refreshed now." : err.message));
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  refresh();
  return ctx.subscribe((st) => {
    if (seen === st.version) return;
    seen = st.version;
    refresh();
  });
}
