// The helpdesk console: find a clerk of the offices one serves, see their desktops (a
// live screen refreshed every few seconds) and the last days' events, and act on a
// desktop with a reason, or send the clerk a message.
import { api, fill, t, wireLogout } from "./common.js";

wireLogout();
const csrf = document.body.dataset.csrf;
const form = document.getElementById("find");
const q = document.getElementById("q");
const findStatus = document.getElementById("find-status");
const clerks = document.getElementById("clerks");
const panel = document.getElementById("clerk");
const cardTemplate = document.getElementById("desktop-card");
const SCREEN_EVERY_MS = 3000;
let screenTimer = null;

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
    for (const v of [new Date(e.at).toLocaleString(), e.what, e.outcome, e.source, e.detail]) {
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
