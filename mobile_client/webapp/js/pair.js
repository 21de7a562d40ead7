// The pairing screen: a code from `pocketgrid pair` (typed, or from the QR code's #pair=CODE).
import { append, h, toast } from "./dom.js";
import { pair } from "./session.js";

let pending = null;

/** Read (and clear) #pair=CODE from the address so the code is not kept in history. */
export function takeCodeFromFragment() {
  const m = location.hash.match(/^#pair=([A-Za-z0-9-]{4,32})$/);
  if (!m) return null;
  history.replaceState(null, "", location.pathname + location.search);
  pending = m[1];
  return pending;
}

function defaultDevice() {
  const ua = navigator.userAgent;
  const kind = /iPhone|iPad/.test(ua) ? "iPhone" : /Android/.test(ua) ? "Android phone" : "browser";
  return `${kind} (web)`;
}

export function mount(main, { reason, onPaired, tryCertificate }) {
  const code = h("input", { id: "pair-code", name: "code", class: "code-input", autocomplete: "one-time-code",
    autocapitalize: "characters", spellcheck: "false", required: true, placeholder: "XXXX-XXXX",
    inputmode: "text", value: pending || "" });
  const device = h("input", { id: "pair-device", name: "device", value: defaultDevice(), maxlength: "64", required: true });
  const message = h("p", { id: "pair-message", role: "status", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "primary" }, "Pair this phone");
  const form = h("form", { class: "card", "aria-labelledby": "pair-title" },
    h("label", { for: "pair-code" }, "Pairing code"),
    code,
    h("p", { class: "muted" }, "Get one with ", h("code", {}, "pocketgrid pair"), " on a computer that is logged in."),
    h("label", { for: "pair-device" }, "Device name"),
    device,
    h("div", { class: "row" }, button),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    message.className = "";
    message.textContent = "Pairing…";
    try {
      const who = await pair(code.value, device.value.trim() || "browser");
      pending = null;
      message.textContent = "Paired.";
      toast(`Paired as ${who.dn}`);
      onPaired(who);
    } catch (err) {
      message.className = "error";
      message.textContent = err.offline ? "No connection to the peer. Check the link and try again."
        : `Pairing failed: ${err.message}`;
      button.disabled = false;
      code.focus();
    }
  });
  const certMessage = h("p", { role: "status", "aria-live": "polite" });
  const certButton = h("button", { type: "button" }, "Log in with my certificate");
  certButton.addEventListener("click", async () => {
    certButton.disabled = true;
    try {
      const who = await tryCertificate();
      if (!who) certMessage.textContent = "This browser has no certificate the peer accepts: pair it with a code instead.";
    } catch (err) {
      certMessage.textContent = `No answer from the peer: ${err.message}`;
    } finally {
      certButton.disabled = false;
    }
  });
  append(main, [
    h("h1", { id: "pair-title" }, "Pair this phone"),
    reason ? h("p", { class: "note", role: "status" }, reason) : null,
    form,
    h("section", { class: "card", "aria-labelledby": "cert-title" },
      h("h2", { id: "cert-title" }, "On a computer"),
      h("p", { class: "muted" }, "A browser that has your grid certificate installed can log in with it directly."),
      h("div", { class: "row" }, certButton), certMessage)]);
  if (pending) form.requestSubmit ? form.requestSubmit() : button.click();
  else code.focus();
}
