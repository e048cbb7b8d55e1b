// Desktops: state, clerk, host, address and age of each; removing one (the pool makes a
// fresh one in its place when it needs one), with a confirmation.
import { age, api, change, confirmed, el, emptyRow, enc, fail, fill, label, row, t } from "./util.js";

const rows = document.getElementById("desktop-rows");
const poolFilter = document.getElementById("desktop-pool");

async function remove(d) {
  const question = d.clerk
    ? fill(t("Desktop {id} belongs to {clerk}. Remove it with its disk? Everything on it is lost."), { id: d.id, clerk: d.clerk })
    : fill(t("Remove desktop {id}? The pool makes a fresh one when it needs one."), { id: d.id });
  if (!await confirmed(question)) return;
  const done = await change("POST", `/api/admin/desktops/${enc(d.id)}/remove`, { even_if_held: Boolean(d.clerk) },
    fill(t("Desktop {id} is being removed."), { id: d.id }));
  if (done) await load();
}

export async function load() {
  const r = await api("GET", "/api/admin/desktops");
  if (r.status !== 200) { emptyRow(rows, 8, fail(r)); return; }
  const pools = [...new Set(r.data.desktops.map((d) => d.pool))].sort();
  const chosen = poolFilter.value;
  poolFilter.replaceChildren(poolFilter.options[0], ...pools.map((p) => el("option", { value: p, text: p })));
  poolFilter.value = pools.includes(chosen) ? chosen : "";
  const shown = r.data.desktops.filter((d) => !poolFilter.value || d.pool === poolFilter.value);
  rows.replaceChildren(...shown.map((d) => row(
    el("strong", { text: d.id }), d.pool,
    el("span", {}, el("span", { class: `state d-${d.state}`, text: label(d.state) }),
      d.power !== "on" ? el("span", { class: "hint small", text: ` (${d.power})` }) : null,
      d.error ? el("p", { class: "hint bad small", text: d.error }) : null),
    d.clerk || "-", d.host, d.addresses.join(" ") || "-", age(d.created_at),
    el("button", { type: "button", class: d.clerk ? "danger" : "secondary", text: t("Remove"), onclick: () => remove(d) }))));
  if (!shown.length) emptyRow(rows, 8, t("No desktop."));
}

export function wire() {
  poolFilter.addEventListener("change", load);
}
