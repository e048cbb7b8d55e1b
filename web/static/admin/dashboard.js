// The overview: each pool's desktops by what they do, the hosts' load, the alerts;
// read again every few seconds without reloading the page.
import { api, bar, clock, el, fill, label, mib, t } from "./util.js";

const BUCKETS = ["ready", "booting", "in_use", "disconnected", "reclaiming", "failed"];
export const EVERY_MS = 5000;

function poolCard(p) {
  const total = BUCKETS.reduce((n, b) => n + p[b], 0);
  const stack = el("div", { class: "stack", title: fill(t("{n} of at most {max}"), { n: total, max: p.max_size }) });
  for (const b of BUCKETS) {
    if (!p[b]) continue;
    const part = el("span", { class: `b-${b}`, title: `${label(b)}: ${p[b]}` });
    part.style.width = `${(100 * p[b]) / Math.max(p.max_size, total, 1)}%`;
    stack.append(part);
  }
  return el("article", { class: "pool-card", data: { pool: p.id } },
    el("h3", {}, p.name, el("span", { class: "hint", text: ` ${p.id}` })),
    stack,
    el("ul", { class: "counts" }, BUCKETS.map((b) => el("li", { class: `b-${b}`, data: { bucket: b } },
      el("span", { class: "n", text: p[b] }), ` ${label(b)}`))),
    el("p", { class: "hint", text: fill(t("{n} of at most {max} desktops · keeps {min} ready"),
      { n: total, max: p.max_size, min: p.min_ready }) }));
}

function hostLine(h) {
  const state = h.maintenance ? "maintenance" : h.status;
  return el("article", { class: "host-line", data: { host: h.name } },
    el("h3", {}, h.name, el("span", { class: `state s-${state}`, text: label(state) })),
    bar(h.memory_used_mib, h.memory_mib, `${t("Memory")} ${mib(h.memory_used_mib)} / ${mib(h.memory_mib)}`),
    bar(h.vcpus_used, h.cpus, `${t("vCPUs")} ${h.vcpus_used} / ${h.cpus}`),
    h.error ? el("p", { class: "hint bad", text: h.error }) : null);
}

export async function refresh() {
  const r = await api("GET", "/api/admin/dashboard");
  if (r.status !== 200) return false;
  const d = r.data;
  const pools = document.getElementById("board-pools");
  pools.replaceChildren(...d.pools.map(poolCard));
  if (!d.pools.length) pools.append(el("p", { class: "hint", text: t("No pool yet: create one under Pools.") }));
  const hosts = document.getElementById("board-hosts");
  hosts.replaceChildren(...d.hosts.map(hostLine));
  if (!d.hosts.length) hosts.append(el("p", { class: "hint", text: t("No host has been seen yet.") }));
  const alerts = document.getElementById("board-alerts");
  alerts.replaceChildren(...d.alerts.map((a) => el("li", { class: `alert a-${a.kind}` },
    el("strong", { text: label(a.kind) }), ` ${a.target}`, a.detail ? el("span", { class: "hint", text: ` · ${a.detail}` }) : null)));
  if (!d.alerts.length) alerts.append(el("li", { class: "ok", text: t("Nothing needs attention.") }));
  document.getElementById("updated").textContent = fill(t("Updated {time}"), { time: clock(new Date(d.at)) });
  return true;
}
