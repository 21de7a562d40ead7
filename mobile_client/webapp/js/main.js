// The router (by hash) and the start: pairing from #pair=CODE, whoami, 401 -> pairing screen.
import { fill, h } from "./dom.js";
import { registerServiceWorker } from "./offline.js";
import { currentUser, forget, wasLoggedIn, whoami } from "./session.js";
import * as pair from "./pair.js";
import * as files from "./files.js";
import * as submit from "./submit.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as account from "./account.js";

const main = document.getElementById("main");
const tabs = document.getElementById("tabs");
const who = document.getElementById("who");
let unmount = null;
let pairReason = null;

function parse() {
  const raw = location.hash.replace(/^#/, "");
  const [route, query = ""] = raw.split("?");
  const parts = route.split("/").map(decodeURIComponent);
  return { name: parts[0] || "jobs", parts, params: new URLSearchParams(query) };
}

/** "CN=Alice Smith,OU=cms,O=pocketgrid" -> "Alice Smith". */
function shortName(dn = "") {
  const m = /(?:^|,)CN=((?:\\,|[^,])+)/.exec(dn);
  return m ? m[1].replace(/\\,/g, ",") : dn;
}

function setTab(name) {
  for (const a of tabs.querySelectorAll("a")) {
    if (a.dataset.tab === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function render() {
  if (typeof unmount === "function") unmount();
  unmount = null;
  fill(main);
  const user = currentUser();
  const route = parse();
  if (!user) {
    tabs.hidden = true;
    who.textContent = "";
    document.title = "Pair — pocketgrid";
    unmount = pair.mount(main, { reason: pairReason, onPaired: loggedIn, tryCertificate });
    return;
  }
  tabs.hidden = false;
  who.textContent = shortName(user.dn);
  who.title = user.dn;
  const titles = { jobs: "Jobs", files: "Files", submit: "New job", account: "Account", job: "Job" };
  document.title = `${titles[route.name] || "pocketgrid"} — pocketgrid`;
  switch (route.name) {
    case "files": setTab("files"); unmount = files.mount(main, route.params); break;
    case "submit": setTab("submit"); unmount = submit.mount(main); break;
    case "account": setTab("account"); unmount = account.mount(main, { onLoggedOut: loggedOut }); break;
    case "job": setTab("jobs"); unmount = job.mount(main, { id: route.parts[1], tab: route.parts[2] }); break;
    default: setTab("jobs"); unmount = jobs.mount(main);
  }
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

/** A desktop browser with the user's TLS client certificate is logged in without pairing. */
async function tryCertificate() {
  const user = await whoami();
  if (user) loggedIn();
  return user;
}

function loggedIn() {
  pairReason = null;
  if (location.hash === "" || location.hash === "#" || location.hash.startsWith("#pair")) location.hash = "#jobs";
  else render();
}

function loggedOut(reason) {
  pairReason = reason;
  forget();
  history.replaceState(null, "", location.pathname);
  render();
}

async function start() {
  registerServiceWorker();
  const code = pair.takeCodeFromFragment();
  try {
    if (!code && wasLoggedIn() && !(await whoami())) {
      pairReason = "Your session has ended (logged out elsewhere, revoked or expired). Pair this phone again.";
      await forget(); // what this phone knew about the jobs was that session's
    }
  } catch (err) {
    fill(main, h("h1", {}, "pocketgrid"), h("p", { class: "error", role: "alert" }, `The peer did not answer: ${err.message}`),
      h("button", { type: "button", onclick: () => location.reload() }, "Try again"));
    return;
  }
  render();
  window.addEventListener("hashchange", render);
  window.addEventListener("pg:unauthorized", () => {
    if (currentUser()) loggedOut("Your session ended (logged out or revoked). Pair this phone again.");
  });
  const refreshSession = async () => {
    if (currentUser()?.offline) {
      try {
        if (await whoami()) who.textContent = shortName(currentUser().dn);
        else loggedOut("Your session ended while this phone was offline. Pair it again.");
      } catch { /* still down */ }
    }
  };
  window.addEventListener("online", refreshSession);
  window.addEventListener("pg:fresh", refreshSession);
}

start();
