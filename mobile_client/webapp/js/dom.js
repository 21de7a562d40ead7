// Building DOM without innerHTML (no injection from file names or job output) and without
// inline styles (the CSP forbids them): h("li", {class: "x", "aria-label": "..."}, child, "text").
const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["svg", "g", "rect", "line", "text", "title", "path", "polyline"]);
const PROPS = new Set(["checked", "value", "disabled", "hidden", "selected", "multiple", "required", "indeterminate"]);

export function h(tag, attrs, ...children) {
  const svg = SVG_TAGS.has(tag);
  const el = svg ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "style") throw new Error("no inline styles (the CSP refuses them): use a class");
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let toastTimer = 0;
/** A short message in the page's polite live region (no window.alert). */
export function toast(message, ms = 2500) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), ms);
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function formatTime(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

/** A moment of a job's life: the time with seconds today, else the day and the time. */
export function formatClock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const d = new Date(seconds * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function hhmm(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

export function stateBadge(state) {
  return h("span", { class: `state state-${state}` }, state);
}

/** An inline confirm step (not window.confirm): resolves true/false. */
export function confirmStep(container, { question, yes, no = "Cancel", danger = true }) {
  return new Promise((resolve) => {
    const box = h("div", { class: "card confirm", role: "alertdialog", "aria-label": question },
      h("p", { text: question }),
      h("div", { class: "row" },
        h("button", { type: "button", class: danger ? "danger primary" : "primary", onclick: () => done(true) }, yes),
        h("button", { type: "button", onclick: () => done(false) }, no)));
    function done(answer) { box.remove(); resolve(answer); }
    container.append(box);
    box.querySelector("button").focus();
  });
}
