// Hosts: state and load, maintenance on or off, drain; registering a host.
import { api, bar, change, confirmed, el, emptyRow, enc, fail, fill, label, mib, row, t, when } from "./util.js";

const rows = document.getElementById("host-rows");
const form = document.getElementById("host-form");

function maintenance(h, mode, question, done) {
  return el("button", { type: "button", class: mode === "drain" ? "danger" : "secondary", text: question.button, onclick: async () => {
    if (question.ask && !await confirmed(fill(question.ask, { host: h.name }))) return;
    const r = await change("POST", `/api/admin/hosts/${enc(h.name)}/maintenance`, { mode }, fill(done, { host: h.name }));
    if (r) await load();
  } });
}

export async function load() {
  const r = await api("GET", "/api/admin/hosts");
  if (r.status !== 200) { emptyRow(rows, 7, fail(r)); return; }
  rows.replaceChildren(...r.data.hosts.map((h) => {
    const state = h.maintenance ? "maintenance" : h.status;
    const actions = el("td", { class: "actions" },
      h.maintenance
        ? maintenance(h, "off", { button: t("End maintenance") }, t("Host {host} takes desktops again."))
        : maintenance(h, "on", { button: t("Maintenance"), ask: t("Stop placing new desktops on {host}?") },
          t("Host {host} is in maintenance: no new desktop goes there.")),
      maintenance(h, "drain", { button: t("Drain"), ask: t("Drain {host}? Its desktops are moved to other hosts (dedicated ones live-migrated).") },
        t("Host {host} is being drained.")));
    return row(el("span", {}, el("strong", { text: h.name }), el("br"), el("span", { class: "hint small", text: h.uri })),
      el("span", {}, el("span", { class: `state s-${state}`, text: label(state) }), h.error ? el("p", { class: "hint bad small", text: h.error }) : null),
      bar(h.memory_used_mib, h.memory_mib, `${mib(h.memory_used_mib)} / ${mib(h.memory_mib)}`),
      bar(h.vcpus_used, h.cpus, `${h.vcpus_used} / ${h.cpus}`), String(h.desktops), when(h.last_seen_at), actions);
  }));
  if (!r.data.hosts.length) emptyRow(rows, 7, t("No host has been seen yet."));
}

export function wire() {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const e = form.elements;
    const result = form.querySelector(".result");
    const missing = ["name", "uri", "graphics_listen"].find((f) => !e[f].value.trim());
    if (missing) { result.textContent = fill(t("{field} is needed."), { field: e[missing].closest("label").firstChild.textContent.trim() }); return; }
    const body = { shared_storage: e.shared_storage.checked };
    for (const f of ["name", "uri", "graphics_listen", "storage_pool", "storage_dir"]) body[f] = e[f].value.trim();
    const done = await change("POST", "/api/admin/hosts", body, fill(t("Host {host} added; the broker asks it for its capacity within seconds."), { host: body.name }));
    result.textContent = "";
    if (done) { form.reset(); await load(); }
  });
}
