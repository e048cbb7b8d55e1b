// The helpdesk console: find a clerk of the offices one serves, see their desktops (a
// live screen refreshed every few seconds) and the last days' events, and act on a
// desktop with a reason (disconnect, reboot, log off, reset), send the clerk a message,
// or open a read-only view of the desktop (noVNC through the broker, which lets only
// display requests through to the desktop: the page's view-only mode is a courtesy).
import RFB from "@novnc/novnc";
import { api, fill, t, wireLogout } from "./common.js";

wireLogout();
const csrf = document.body.dataset.csrf;
const form = document.getElementById("find");
const q = document.getElementById("q");
const findStatus = document.getElementById("find-status");
const clerks = document.getElementById("clerks");
const panel = document.getElementById("clerk");
const cardTemplate = document.getElementById("desktop-card");
const viewerBox = document.getElementById("viewer");
const viewerTitle = document.getElementById("viewer-title");
const viewerStatus = document.getElementById("viewer-status");
const viewerScreen = document.getElementById("viewer-screen");
const SCREEN_EVERY_MS = 3000;
let screenTimer = null;
let viewer = null; // the read-only view's noVNC client, while one is open

// What each event of the timeline was, in words (the codes are the audit trail's)
const EVENT_WORDS = {
  login: "Signed in",
  logout: "Signed out",
  connect: "Asked for their desktop",
  console: "Desktop connection",
  logoff: "Logged off the desktop",
  "session-end": "Session ended (directory check)",
  "session-roles": "Roles changed (directory check)",
  "reclaim:disconnect": "Disconnected by the idle policy",
  "reclaim:log_off": "Logged off by the idle policy",
  "reclaim:shut_down": "Shut down by the idle policy",
  "reclaim:suspend": "Suspended by the idle policy",
};
const OUTCOME_WORDS = { ok: "Succeeded", closed: "Closed", denied: "Refused", refused: "Refused" };
const words = (table, code) => (table[code] ? t(table[code]) : code);

const enc = encodeURIComponent;
const say = (el, text) => { el.textContent = text; };
const fail = (r) => (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = q.value.trim();
  if (!text) return;
  say(findStatus, t("Searching…"));
  clerks.replaceChildren();
  const r = await api("GET", `/api/helpdesk/clerks?q=${enc(text)}`);
  if (r.status !== 200) { say(findStatus, fail(r)); return; }
  say(findStatus, r.data.clerks.length ? "" : t("No clerk found among the offices you serve."));
  for (const c of r.data.clerks) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "clerk-pick";
    b.textContent = `${c.name} (${c.username})`;
    b.addEventListener("click", () => open(c.username));
    li.appendChild(b);
    clerks.appendChild(li);
  }
});

function refreshScreens() {
  if (!viewerBox.hidden) return; // the view shows the screen live
  for (const img of panel.querySelectorAll("img.shot[data-src]")) {
    img.src = `${img.dataset.src}?t=${Date.now()}`;
  }
}

async function open(username) {
  const r = await api("GET", `/api/helpdesk/clerks/${enc(username)}`);
  if (r.status !== 200) { say(findStatus, fail(r)); return; }
  const { clerk, desktops, events } = r.data;
  say(document.getElementById("clerk-name"), `${clerk.name} (${clerk.username})`);
  say(document.getElementById("clerk-offices"),
    fill(t("Street office: {offices}"), { offices: clerk.offices.join(", ") || "-" }));
  const box = document.getElementById("desktops");
  box.replaceChildren();
  if (!desktops.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = t("No desktop in use.");
    box.appendChild(p);
  }
  for (const d of desktops) box.appendChild(card(d));
  const rows = document.getElementById("events");
  rows.replaceChildren();
  for (const e of events) {
    const tr = document.createElement("tr");
    const cells = [new Date(e.at).toLocaleString(), words(EVENT_WORDS, e.what),
      words(OUTCOME_WORDS, e.outcome), e.source, e.detail];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
  panel.hidden = false;
  if (screenTimer) clearInterval(screenTimer);
  refreshScreens();
  screenTimer = setInterval(refreshScreens, SCREEN_EVERY_MS);
}

function card(d) {
  const node = cardTemplate.content.cloneNode(true);
  const result = node.querySelector(".result");
  node.querySelector(".title").textContent = `${d.id}`;
  node.querySelector(".facts").textContent =
    fill(t("Pool {pool} · {state} · {addresses}"), { pool: d.pool, state: d.state, addresses: d.addresses.join(" ") || "-" });
  const img = node.querySelector("img.shot");
  img.dataset.src = `/api/helpdesk/desktops/${enc(d.id)}/screen`;
  for (const b of node.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", async () => {
      const reason = window.prompt(fill(t("Why? ({action}; it is recorded)"), { action: b.textContent }));
      if (reason === null) return;
      const r = await api("POST", `/api/helpdesk/desktops/${enc(d.id)}/actions`,
        { action: b.dataset.action, reason }, csrf);
      say(result, r.status === 200 ? t("Done.") : fail(r));
    });
  }
  node.querySelector("button[data-view]").addEventListener("click", (event) =>
    openView(d, event.currentTarget, result));
  const send = node.querySelector("form.send");
  send.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = send.querySelector("textarea").value.trim();
    if (!text) return;
    const r = await api("POST", `/api/helpdesk/desktops/${enc(d.id)}/messages`, { text }, csrf);
    if (r.status === 200) { send.querySelector("textarea").value = ""; say(result, t("Message sent.")); }
    else say(result, fail(r));
  });
  return node;
}

// -- the read-only view ----------------------------------------------------------------

async function openView(d, button, result) {
  const reason = window.prompt(fill(t("Why? ({action}; it is recorded)"), { action: button.textContent }));
  if (reason === null) return;
  const r = await api("POST", `/api/helpdesk/desktops/${enc(d.id)}/view`, { reason }, csrf);
  if (r.status !== 200) { say(result, fail(r)); return; }
  closeView();
  say(viewerTitle, fill(t("Viewing {desktop} (read-only)"), { desktop: d.id }));
  say(viewerStatus, t("Connecting…"));
  viewerBox.hidden = false;
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const client = new RFB(viewerScreen, `${scheme}//${window.location.host}${r.data.view}`,
    { wsProtocols: ["binary"], shared: true });
  client.viewOnly = true;
  client.scaleViewport = true;
  client.addEventListener("connect", () => {
    viewerScreen.dataset.desktop = d.id;
    say(viewerStatus, t("Connected"));
  });
  client.addEventListener("disconnect", () => {
    if (viewer === client) viewer = null;
    delete viewerScreen.dataset.desktop;
    say(viewerStatus, t("The view has ended."));
  });
  viewer = client;
}

function closeView() {
  if (viewer) viewer.disconnect();
  viewer = null;
  viewerScreen.replaceChildren();
  delete viewerScreen.dataset.desktop;
  viewerBox.hidden = true;
}

document.getElementById("viewer-close").addEventListener("click", () => {
  closeView();
  refreshScreens();
});
