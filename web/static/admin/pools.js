// Pools: the list, and one form to create or change a pool with its idle policy and
// spare schedule.
import { api, change, el, emptyRow, fail, fill, label, row, t } from "./util.js";
import * as policy from "./policy.js";

const form = document.getElementById("pool-form");
const rows = document.getElementById("pool-rows");
const result = document.getElementById("pool-result");
let editing = null; // the pool being changed; null: a new one
const NUMBERS = ["vcpus", "memory_mib", "min_ready", "max_size"];

function sizes(p) {
  return fill(t("{vcpus} vCPU · {memory} MiB · {min}-{max} desktops"),
    { vcpus: p.vcpus, memory: p.memory_mib, min: p.min_ready, max: p.max_size });
}

export async function load() {
  const r = await api("GET", "/api/admin/pools");
  if (r.status !== 200) { emptyRow(rows, 8, fail(r)); return []; }
  rows.replaceChildren(...r.data.pools.map((p) => row(
    el("strong", { text: p.id }), p.name, label(p.kind),
    p.image_version ? fill(t("{image} v{version} (trial)"), { image: p.image, version: p.image_version }) : p.image,
    sizes(p), p.network, p.office || t("District"),
    el("button", { type: "button", class: "link", text: t("Edit"), onclick: () => open(p) }))));
  if (!r.data.pools.length) emptyRow(rows, 8, t("No pool yet: create one under Pools."));
  return r.data.pools;
}

function open(p) {
  editing = p;
  const e = form.elements;
  document.getElementById("pool-form-title").textContent = p ? fill(t("Pool {id}"), { id: p.id }) : t("New pool");
  e.id.value = p ? p.id : "";
  e.id.disabled = Boolean(p);
  e.kind.disabled = false;
  e.name.value = p ? p.name : "";
  e.kind.value = p ? p.kind : "floating";
  e.image.value = p ? p.image : "";
  for (const f of NUMBERS) e[f].value = p ? p[f] : e[f].defaultValue;
  e.network.value = p ? p.network : "none";
  e.office.value = p && p.office ? p.office : "";
  e.groups.value = p ? p.groups.join("\n") : "";
  policy.show(form, p ? p.policy : null);
  result.textContent = p && p.policy_error ? p.policy_error : "";
  form.hidden = false;
  form.scrollIntoView({ behavior: "smooth", block: "start" });
  (p ? e.name : e.id).focus();
}

function values() {
  const e = form.elements;
  const out = { name: e.name.value.trim(), kind: e.kind.value, image: e.image.value.trim(),
    network: e.network.value.trim() || "none", office: e.office.value.trim() || null,
    groups: e.groups.value.split("\n").map((g) => g.trim()).filter(Boolean), policy: policy.read(form) };
  for (const f of NUMBERS) out[f] = Number(e[f].value);
  return out;
}

/** What the browser can tell before sending: the first field left wrong, named. */
function problem() {
  const e = form.elements;
  if (!editing && !/^[A-Za-z0-9-]{1,32}$/.test(e.id.value.trim())) return t("Pool ID: 1-32 letters, digits or '-'.");
  if (!e.name.value.trim()) return t("Give the pool a name.");
  if (!e.image.value.trim()) return t("Name the image the pool runs.");
  for (const f of NUMBERS) {
    if (e[f].value === "" || !Number.isInteger(Number(e[f].value))) return fill(t("{field}: a whole number."), { field: e[f].closest("label").firstChild.textContent.trim() });
  }
  return "";
}

async function save(event) {
  event.preventDefault();
  const wrong = problem();
  if (wrong) { result.textContent = wrong; return; }
  const body = values();
  if (editing && body.kind === editing.kind) delete body.kind;
  const done = editing
    ? await change("PATCH", `/api/admin/pools/${encodeURIComponent(editing.id)}`, body, t("Saved."))
    : await change("POST", "/api/admin/pools", { id: form.elements.id.value.trim(), ...body }, t("Pool created."));
  if (!done) { result.textContent = document.getElementById("notice").textContent; return; }
  form.hidden = true;
  await load();
}

export function wire() {
  policy.wire(form);
  form.addEventListener("submit", save);
  document.getElementById("pool-new").addEventListener("click", () => open(null));
  document.getElementById("pool-cancel").addEventListener("click", () => { form.hidden = true; });
}
