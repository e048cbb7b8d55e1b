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

// --- the access policy ------------------------------------------------------------------
const ROLE_KEYS = ["staff", "helpdesk", "system_admin", "security_admin", "audit_admin"];
const form = $("policy");
let version = 0;
let defaults = null;
const lines = (text) => text.split("\n").map((l) => l.trim()).filter((l) => l);

function showPolicy(data) {
  version = data.version;
  if (data.defaults) defaults = data.defaults;
  const p = data.policy;
  form.elements.admin_networks.value = p.admin_networks.join("\n");
  form.elements.session_idle_s.value = p.session_idle_s ?? "";
  form.elements.session_absolute_s.value = p.session_absolute_s ?? "";
  form.elements.session_idle_s.placeholder = defaults.session_idle_s;
  form.elements.session_absolute_s.placeholder = defaults.session_absolute_s;
  $("session-defaults").textContent = fill(t("Empty: the configuration file's {idle} s idle, {absolute} s at most."),
    { idle: defaults.session_idle_s, absolute: defaults.session_absolute_s });
  const own = p.role_groups !== null;
  form.elements.own_groups.checked = own;
  const groups = own ? p.role_groups : defaults.role_groups;
  for (const k of ROLE_KEYS) {
    form.elements[k].value = groups[k].join("\n");
    form.elements[k].disabled = !own;
  }
  $("policy-version").textContent = data.updated_by
    ? fill(t("Version {version}, changed by {who} at {when}"), { version: data.version, who: data.updated_by, when: when(data.updated_at) })
    : t("Never changed: the configuration file applies.");
}

async function loadPolicy() {
  const r = await api("GET", "/api/security/policy");
  if (r.status !== 200) { $("policy-result").textContent = fail(r); return; }
  showPolicy(r.data);
}

form.elements.own_groups.addEventListener("change", () => {
  for (const k of ROLE_KEYS) form.elements[k].disabled = !form.elements.own_groups.checked;
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const number = (name) => (form.elements[name].value.trim() === "" ? null : Number(form.elements[name].value));
  const policy = {
    admin_networks: lines(form.elements.admin_networks.value),
    session_idle_s: number("session_idle_s"),
    session_absolute_s: number("session_absolute_s"),
    role_groups: form.elements.own_groups.checked
      ? Object.fromEntries(ROLE_KEYS.map((k) => [k, lines(form.elements[k].value)])) : null,
  };
  const out = $("policy-result");
  out.className = "verdict";
  const r = await api("PUT", "/api/security/policy",
    { policy, version, reason: form.elements.reason.value.trim() }, csrf);
  if (r.status === 200) {
    showPolicy(r.data);
    form.elements.reason.value = "";
    out.classList.add("intact");
    out.textContent = fill(t("Saved: version {version}. Every broker follows it within seconds."), { version: r.data.version });
  } else {
    out.classList.add("broken");
    out.textContent = fail(r);
  }
});

loadPolicy();
