// The security administrator's sessions page: who is signed in, from where, using which
// desktops (refreshed every few seconds), and ending a session with a recorded reason.
import { api, fill, t, wireLogout } from "./common.js";

wireLogout();
const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);
const lang = document.documentElement.lang || "zh-CN";
const REFRESH_MS = 5000;
const ROLES = {
  staff: "Clerk", helpdesk: "Helpdesk", sysadmin: "System administrator",
  secadmin: "Security administrator", auditadmin: "Audit administrator",
};
const fail = (r) => (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");
let sessions = [];

function when(iso) {
  return new Date(iso).toLocaleString(lang, { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
}

function draw() {
  const needle = $("filter").value.trim().toLowerCase();
  const body = $("sessions").tBodies[0];
  body.replaceChildren();
  const shown = sessions.filter((s) => !needle || [s.username, s.name, s.source]
    .some((v) => String(v).toLowerCase().includes(needle)));
  for (const s of shown) {
    const tr = document.createElement("tr");
    const roles = s.roles.map((r) => t(ROLES[r] || r)).join(", ") || t("Clerk");
    for (const v of [s.name, s.username, roles, s.source, when(s.since), when(s.last_seen),
      s.desktops.join(", ") || "-"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "danger";
    b.textContent = t("End session");
    b.addEventListener("click", () => end(s));
    td.appendChild(b);
    tr.appendChild(td);
    body.appendChild(tr);
  }
  $("status").textContent = shown.length ? fill(t("{n} signed in."), { n: shown.length })
    : t("No one matches.");
}

async function load() {
  const r = await api("GET", "/api/security/sessions");
  if (r.status !== 200) { $("status").textContent = fail(r); return; }
  sessions = r.data.sessions;
  draw();
}

async function end(s) {
  const reason = window.prompt(fill(t("Why end the session of {name}? (it is recorded)"), { name: `${s.name} (${s.username})` }));
  if (reason === null) return;
  const r = await api("POST", `/api/security/sessions/${encodeURIComponent(s.handle)}/end`,
    { reason: reason.trim() }, csrf);
  if (r.status === 200) await load();
  $("result").textContent = r.status === 200
    ? fill(t("The session of {name} was ended."), { name: s.username }) : fail(r);
}

$("filter").addEventListener("input", draw);
load();
setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
