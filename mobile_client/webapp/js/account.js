// Account: who is logged in on this phone, and log out (revokes this device's token everywhere).
import { h } from "./dom.js";
import { currentUser, logout } from "./session.js";

export function mount(main, { onLoggedOut }) {
  const who = currentUser() || {};
  const message = h("p", { role: "status", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "danger" }, "Log out");
  button.addEventListener("click", async () => {
    button.disabled = true;
    message.textContent = "Logging out…";
    try {
      await logout();
      onLoggedOut("Logged out. Pair again to use this phone.");
    } catch (err) {
      message.textContent = `Logout failed: ${err.message}`;
      message.className = "error";
      button.disabled = false;
    }
  });
  main.append(
    h("h1", {}, "Account"),
    h("dl", { class: "facts card" },
      h("dt", {}, "User"), h("dd", {}, who.dn || "?"),
      h("dt", {}, "VO"), h("dd", {}, who.vo || "none"),
      h("dt", {}, "Signed in"), h("dd", {}, who.kind === "device" || who.token?.kind === "device" ? "as a paired device" : who.kind || "?"),
      who.token?.expires_at ? [h("dt", {}, "Until"), h("dd", {}, new Date(who.token.expires_at * 1000).toLocaleString())] : null),
    h("p", { class: "muted" }, "Logging out ends this phone's session on every peer."),
    h("div", { class: "row" }, button),
    message);
}
