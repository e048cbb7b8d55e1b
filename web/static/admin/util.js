// Shared by the system administrator's console: elements, labels, messages, confirmation.
import { api, fill, t } from "../common.js";

export { api, fill, t };
export const csrf = document.body.dataset.csrf;
export const enc = encodeURIComponent;

// the codes the API answers with, as the console shows them (translated by t)
const LABELS = {
  ready: "Ready", booting: "Booting", in_use: "In use", disconnected: "Disconnected",
  reclaiming: "Reclaiming", failed: "Faulty", provisioning: "Booting", assigned: "In use",
  error: "Faulty", maintenance: "Maintenance", deleted: "Deleted",
  up: "Up", down: "Down", unknown: "Not seen yet",
  released: "Released", previous: "Previous", available: "Available",
  floating: "Floating", dedicated: "Dedicated",
  desktop_failed: "Desktop failed", host_down: "Host down", host_maintenance: "Host in maintenance",
  foreign_domains: "Domains the broker did not make",
  sysadmin: "System administrator", secadmin: "Security administrator",
  auditadmin: "Audit administrator", helpdesk: "Helpdesk", staff: "Staff",
};
export const label = (code) => (code in LABELS ? t(LABELS[code]) : code);

/** An element with properties (class, text, dataset, on...) and children. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const row = (...cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))));

export function emptyRow(tbody, columns, text) {
  tbody.replaceChildren(el("tr", {}, el("td", { colSpan: columns, class: "hint", text })));
}

export const fail = (r) => (r.data && r.data.message) || t("Something went wrong. Try again or call the helpdesk.");

let noticeTimer = null;
/** A message over the page: what was done, or why it was not. */
export function notify(text, bad = false) {
  const bar = document.getElementById("notice");
  bar.textContent = text;
  bar.classList.toggle("bad", bad);
  bar.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { bar.hidden = true; }, bad ? 12000 : 5000);
}

/** Send a change; tell the admin the outcome. The answer, or null when refused. */
export async function change(method, path, body, done) {
  const r = await api(method, path, body, csrf);
  if (r.status >= 200 && r.status < 300) {
    if (done) notify(done);
    return r.data;
  }
  notify(fail(r), true);
  return null;
}

/** Ask before a destructive step; resolves true when the admin confirms. */
export function confirmed(question) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector(".question").textContent = question;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/** A load bar: used against total, with its text. */
export function bar(used, total, text) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * used) / total)) : 0;
  const fill_ = el("span");
  fill_.style.width = `${pct}%`;
  const level = pct >= 90 ? "high" : pct >= 70 ? "mid" : "low";
  return el("div", { class: "load" }, el("div", { class: `meter ${level}`, title: `${pct}%` }, fill_),
    el("span", { class: "load-text", text }));
}

const lang = () => document.documentElement.lang || "zh-CN";
export const when = (iso) => (iso ? new Date(iso).toLocaleString(lang(), { dateStyle: "short", timeStyle: "short" }) : "-");
export const clock = (date) => date.toLocaleTimeString(lang(), { hour: "2-digit", minute: "2-digit" });

/** How long ago, roughly: "5 min", "3 h", "2 d". */
export function age(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 3600) return fill(t("{n} min"), { n: Math.floor(s / 60) });
  if (s < 86400) return fill(t("{n} h"), { n: Math.floor(s / 3600) });
  return fill(t("{n} d"), { n: Math.floor(s / 86400) });
}

export const mib = (n) => (n >= 1024 ? `${(n / 1024).toFixed(n % 1024 ? 1 : 0)} GiB` : `${n} MiB`);
